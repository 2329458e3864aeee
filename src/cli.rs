//! Command-line arguments and their resolution into library settings, as
//! ripgrep does it: clap parses raw arguments (option groups shared by the
//! commands are flattened once), then each group resolves once into what the
//! library takes (hub options, placement, generation overrides, summarizer).
//! Parsing, resolving and printing only: the work happens in the library.
//! Progress display lives in `cli/progress.rs`.

mod progress;

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

use transum::device::Placement;
use transum::generation::GenerationOverrides;
use transum::hub::{self, HubOptions, ModelSpec};
use transum::lang::{Route, Routing};
use transum::outputs::{Manifest, ModelRecord, Status};
use transum::summary::embed::SentenceEncoder;
use transum::summary::{
    Article, Embedder, Summarizer, Writer, DEFAULT_EMBED_MODEL, DEFAULT_SUMMARY_MODEL,
};
use transum::{Translator, DEFAULT_MODEL};

const EXAMPLES: &str = "\
Examples:
  Nightly job (cron): translate every article of corpus/ into outputs/ and write one merged
  summary (outputs/summary.md), models from models/ only:
    15 2 * * *  cd /srv/transum && transum run --offline >> run.log 2>&1
  Fetch the models once on a connected machine (then copy models/ over):
    transum download
  ... and those that German, Spanish and Portuguese articles need:
    transum download --langs de,es,pt
  A corpus in several languages, German through a local model, the summary also in German:
    transum run --model de=./opus-mt-de-en --summary-lang de
  Summarize English files without any model weights, 100 words at most:
    transum summarize outputs/*.en.txt --summarizer extractive --max-words 100
  Quantize the model once to q8_0 (GGUF), then translate with it:
    transum quantize --dtype q8_0 --out models/opus-mt-fr-en-q8_0
    transum run --model models/opus-mt-fr-en-q8_0
  A large corpus over 3 machines (or a Slurm array / Kubernetes Indexed Job), then one merge:
    transum run --shard 0/3     # on machine 0; 1/3 and 2/3 on the others, one outputs/
    transum merge               # after all shards finished: summary + manifest
  Translate a file, one output line per input line:
    transum translate article.txt > article.en.txt
  Translate from stdin, splitting lines into sentences first:
    cat article.txt | transum translate - --segment sentences
  Greedy search (fastest) with a local checkpoint directory:
    transum translate article.txt --model ./opus-mt-fr-en --beams 1
  Use only the local model cache (no network):
    transum translate article.txt --offline";

/// Translate news articles into English with Marian/OPUS-MT models run through candle,
/// and write one merged English summary of them (each fact once, with its sources).
#[derive(Debug, Parser)]
#[command(name = "transum", version, about, after_help = EXAMPLES)]
pub struct Cli {
    /// Log progress details (set RUST_LOG for finer control).
    #[arg(short, long, global = true)]
    pub verbose: bool,

    /// CPU threads for the model's maths (default: all cores).
    #[arg(long, global = true, env = "TRANSUM_THREADS")]
    pub threads: Option<usize>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Translate every article of the corpus into outputs/, then write one merged summary and a manifest.
    #[command(after_help = EXAMPLES)]
    Run(RunArgs),
    /// Translate one text file (or stdin) into English on stdout.
    #[command(after_help = EXAMPLES)]
    Translate(TranslateArgs),
    /// Fetch everything a run needs into the model cache (for offline machines).
    #[command(after_help = EXAMPLES)]
    Download(DownloadArgs),
    /// Write one merged summary of English articles: each fact once, with its sources.
    #[command(after_help = EXAMPLES)]
    Summarize(SummarizeArgs),
    /// After every shard of `run --shard I/N` finished: write the summary and the corpus
    /// manifest, exactly as a single run would. Exits 1 naming unfinished shards.
    #[command(after_help = EXAMPLES)]
    Merge(MergeArgs),
    /// Write a quantized copy of a model (model.gguf + config and tokenizer files).
    #[command(after_help = EXAMPLES)]
    Quantize(QuantizeArgs),
}

#[derive(Debug, Args)]
pub struct QuantizeArgs {
    /// Model to quantize: a hub id `org/name[@revision]` or a local checkpoint directory.
    #[arg(long, short = 'm', default_value = DEFAULT_MODEL)]
    pub model: String,

    /// Storage format of the projections: q8_0 (best accuracy), q6k, q4k (smallest), f16.
    #[arg(long, default_value = "q8_0")]
    pub dtype: String,

    /// Output directory; it then loads with `--model DIR`.
    #[arg(long)]
    pub out: PathBuf,

    #[command(flatten)]
    pub cache: CacheArgs,
}

/// The model cache directory.
#[derive(Debug, Args)]
pub struct CacheDir {
    /// Cache directory for downloaded models (hub layout).
    #[arg(long, env = "TRANSUM_MODELS", default_value = "models")]
    pub models_dir: PathBuf,
}

/// Where models come from: the cache, and whether the network may be used.
#[derive(Debug, Args)]
pub struct CacheArgs {
    #[command(flatten)]
    pub dir: CacheDir,

    /// Never use the network; read models from the cache only.
    #[arg(long, env = "HF_HUB_OFFLINE", value_parser = clap::builder::BoolishValueParser::new(), default_value = "false", num_args = 0, default_missing_value = "true")]
    pub offline: bool,
}

impl CacheArgs {
    /// The hub options every model of the command is resolved with.
    fn hub(&self) -> HubOptions {
        HubOptions {
            cache_dir: self.dir.models_dir.clone(),
            offline: self.offline,
            endpoint: None,
        }
    }
}

/// Where the models run, and in which precision: shared by `run`,
/// `translate`, `summarize` and `merge`.
#[derive(Debug, Args)]
pub struct DeviceArgs {
    /// Where the models run: cpu, cuda, cuda:N, or auto (the first GPU when this
    /// build has CUDA and the machine a GPU, else the CPU; the log says which).
    #[arg(
        long,
        env = "TRANSUM_DEVICE",
        default_value = "auto",
        value_name = "cpu|cuda[:N]|auto"
    )]
    pub device: String,

    /// Precision of activations and float weights. Default: bf16 on CUDA, f32 on the
    /// CPU. f16 and bf16 on the CPU run candle's generic ops (slower than f32's
    /// kernels; for tests and small memory). f16 can overflow: inf or NaN in the
    /// logits stops the article with a hint to use bf16.
    #[arg(long, value_name = "f32|f16|bf16")]
    pub dtype: Option<String>,
}

impl DeviceArgs {
    /// The device, chosen once per command (`auto` logs its pick).
    fn device(&self) -> Result<candle_core::Device> {
        Ok(transum::device::DeviceChoice::parse(&self.device)?.device()?)
    }

    /// A placement on `device` with these flags and `quantize` (`--quantize`
    /// or `--summary-quantize`).
    fn placement(&self, device: &candle_core::Device, quantize: Option<&str>) -> Result<Placement> {
        let dtype = self
            .dtype
            .as_deref()
            .map(transum::device::parse_dtype)
            .transpose()?;
        let quantize = quantize.map(transum::device::parse_quant).transpose()?;
        Ok(Placement::resolve(device, dtype, quantize)?)
    }
}

/// Which summarizer writes the merged summary.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum SummarizerKind {
    /// A BART/Pegasus model rewrites the deduplicated, ranked sentences (needs the model).
    Abstractive,
    /// One source sentence per fact, most-reported facts first; no model weights.
    Extractive,
    /// No summary (`run` only).
    None,
}

/// Summary settings shared by `run` and `summarize`.
#[derive(Debug, Args)]
pub struct SummaryArgs {
    /// How the summary is written.
    #[arg(long, value_enum, default_value_t = SummarizerKind::Abstractive)]
    pub summarizer: SummarizerKind,

    /// Abstractive model: a hub id `org/name[@revision]` or a local directory (BART or Pegasus).
    #[arg(long, default_value = DEFAULT_SUMMARY_MODEL)]
    pub summary_model: String,

    /// Word budget of the summary.
    #[arg(long, default_value_t = 150)]
    pub max_words: usize,

    /// Quantize the summary model's projections at load (q8_0, q4k, q6k): a BART
    /// summarizer takes a quarter to a sixth of its f32 memory.
    #[arg(long)]
    pub summary_quantize: Option<String>,

    /// Also write the summary in this language (summary.LANG.md and .json beside the
    /// English one), sentence by sentence, each keeping its sources. Default model:
    /// Helsinki-NLP/opus-mt-en-LANG where OPUS-MT has one, else opus-mt-en-mul.
    #[arg(long, value_name = "LANG")]
    pub summary_lang: Option<String>,

    /// The English-to-LANG model for --summary-lang (a hub id or a local directory).
    #[arg(long, value_name = "MODEL", requires = "summary_lang")]
    pub summary_lang_model: Option<String>,

    /// Sentence encoder that decides which sentences state the same fact, so that a fact
    /// restated in other words is told once: a sentence-transformers checkpoint (hub id or
    /// local directory; fetched and cached like the other models). `none`: word overlap
    /// only, for machines without the model.
    #[arg(long, env = "TRANSUM_EMBED_MODEL", default_value = DEFAULT_EMBED_MODEL, value_name = "MODEL|none")]
    pub embed_model: String,
}

impl SummaryArgs {
    /// The summarizer's command-line name (for the progress bars).
    fn summarizer_name(&self) -> String {
        self.summarizer
            .to_possible_value()
            .map(|v| v.get_name().to_string())
            .unwrap_or_default()
    }

    /// `--summary-lang` resolved: the language and its English-to-it model.
    fn summary_lang(&self) -> Result<Option<(String, String)>> {
        let Some(l) = &self.summary_lang else {
            return Ok(None);
        };
        let lang = transum::lang::parse_code(l)?.to_string();
        if lang == transum::lang::ENGLISH {
            anyhow::bail!(
                "--summary-lang en: the summary is written in English already\n  hint: drop the flag, or name another language"
            );
        }
        let model = self
            .summary_lang_model
            .clone()
            .unwrap_or_else(|| transum::lang::from_english_model(&lang));
        Ok(Some((lang, model)))
    }
}

#[derive(Debug, Args)]
pub struct SummarizeArgs {
    /// English text files, one article each (paragraphs separated by blank lines).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,

    #[command(flatten)]
    pub summary: SummaryArgs,

    /// Write summary.md and summary.json into this directory instead of printing Markdown.
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,

    #[command(flatten)]
    pub cache: CacheArgs,

    #[command(flatten)]
    pub device: DeviceArgs,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Directory of articles (*.txt, UTF-8), one article per file.
    #[arg(long, default_value = "corpus")]
    pub corpus: PathBuf,

    /// Directory for <article>.en.txt files and manifest.json.
    #[arg(long, default_value = "outputs")]
    pub outputs: PathBuf,

    #[command(flatten)]
    pub tr: TranslationArgs,

    #[command(flatten)]
    pub summary: SummaryArgs,

    /// Redo every article and the summary, even those unchanged since the last run.
    #[arg(long)]
    pub force: bool,

    /// If another run is using the outputs directory, wait for it instead of exiting.
    #[arg(long)]
    pub wait: bool,

    /// Delete the outputs of articles no longer in the corpus. Without it they are
    /// kept, listed in the manifest as orphaned_outputs, and never summarized.
    #[arg(long, conflicts_with_all = ["shard", "shards"])]
    pub prune: bool,

    /// Run one shard of the corpus, I of N (0-based): the articles whose file name
    /// hashes to I, into the shared --outputs, with the manifest
    /// outputs/shards/I-of-N.json and no summary; `transum merge` then writes the
    /// summary and the corpus manifest. Default: from a Slurm job array
    /// (SLURM_ARRAY_TASK_ID) or a Kubernetes Indexed Job (JOB_COMPLETION_INDEX, with
    /// --shards); the flag wins over both.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<String>,

    /// The number of shards, for a Kubernetes Indexed Job (its pods see only their
    /// index): the Job's completions.
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,
}

#[derive(Debug, Args)]
pub struct MergeArgs {
    /// The corpus the shards ran on (to check every article was translated).
    #[arg(long, default_value = "corpus")]
    pub corpus: PathBuf,

    /// The outputs directory the shards shared.
    #[arg(long, default_value = "outputs")]
    pub outputs: PathBuf,

    /// The shard count; default: the one the manifests in outputs/shards/ agree on.
    #[arg(long, value_name = "N")]
    pub shards: Option<usize>,

    #[command(flatten)]
    pub summary: SummaryArgs,

    /// Quantize the --summary-lang model at load, as `run --quantize` would.
    #[arg(long)]
    pub quantize: Option<String>,

    #[command(flatten)]
    pub search: SearchArgs,

    #[command(flatten)]
    pub cache: CacheArgs,

    /// If another run or merge is using the outputs directory, wait for it.
    #[arg(long)]
    pub wait: bool,

    #[command(flatten)]
    pub device: DeviceArgs,
}

#[derive(Debug, Args)]
pub struct DownloadArgs {
    /// Models to fetch (hub ids `org/name[@revision]`). Default, when no --langs is
    /// given either: the French translation model, the summary model and the sentence
    /// encoder (--embed-model).
    pub models: Vec<String>,

    /// Fetch the translation models these languages need (ISO codes, comma-separated):
    /// the built-in table's, or the fallback model for languages it lacks. English
    /// needs none.
    #[arg(long, value_delimiter = ',', value_name = "LANG,...")]
    pub langs: Vec<String>,

    #[command(flatten)]
    pub cache: CacheDir,

    /// Fetch every file again even if cached (repairs a corrupt or truncated download).
    #[arg(long)]
    pub force: bool,
}

/// Search and batching settings shared by `run` and `translate`.
#[derive(Debug, Args)]
pub struct SearchArgs {
    /// Beam size; 1 is greedy search. Default: the checkpoint's (4 for opus-mt).
    #[arg(long)]
    pub beams: Option<usize>,

    /// Maximum generated tokens per unit, exactly (the relative cap then steps aside).
    /// Default: the checkpoint's max_length, bounded by the decoder's positions and
    /// by --max-length-factor.
    #[arg(long)]
    pub max_new_tokens: Option<usize>,

    /// Cap each unit's new tokens at ceil(F x source tokens) + 5, as marian-decoder's
    /// --max-length-factor does: a model that loops on a scraped fragment is stopped
    /// early instead of running to max_length. Outputs cut by a limit are counted in
    /// the manifest. 0 turns the cap off (transformers' exact lengths).
    #[arg(long, value_name = "F", default_value_t = transum::generation::DEFAULT_LENGTH_FACTOR, conflicts_with = "max_new_tokens")]
    pub max_length_factor: f64,

    /// Minimum generated tokens per unit (EOS is suppressed before that).
    #[arg(long)]
    pub min_new_tokens: Option<usize>,

    /// Budget of padded source tokens per batch (larger is faster, uses more memory).
    /// Default: 2048 on the CPU, 16384 on a GPU.
    #[arg(long)]
    pub batch_tokens: Option<usize>,
}

impl SearchArgs {
    /// The checkpoint's own search settings (for models the user tunes no flag of).
    fn defaults() -> Self {
        SearchArgs {
            beams: None,
            max_new_tokens: None,
            min_new_tokens: None,
            max_length_factor: transum::generation::DEFAULT_LENGTH_FACTOR,
            batch_tokens: None,
        }
    }

    fn overrides(&self) -> Result<GenerationOverrides> {
        if self.batch_tokens == Some(0) {
            anyhow::bail!(
                "--batch-tokens must be at least 1\n  hint: omit it for the default (2048 on the CPU, 16384 on a GPU)"
            );
        }
        Ok(GenerationOverrides {
            num_beams: self.beams,
            max_new_tokens: self.max_new_tokens,
            min_new_tokens: self.min_new_tokens,
            max_length_factor: Some(self.max_length_factor),
            ..Default::default()
        })
    }
}

/// How input text is cut into units for the model.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Segment {
    /// Each input line is one unit; output line i translates input line i.
    Lines,
    /// Each line is split into sentences, translated, and rejoined on its line.
    Sentences,
}

/// What translating takes, shared by `run` and `translate`: the models, where
/// they come from, and how to search.
#[derive(Debug, Args)]
pub struct TranslationArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    #[command(flatten)]
    pub cache: CacheArgs,

    #[command(flatten)]
    pub search: SearchArgs,

    #[command(flatten)]
    pub device: DeviceArgs,
}

/// Which models translate, and from which language.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// Translation model: `LANG=MODEL` for one language (repeatable), or a bare MODEL for
    /// every article not in English. MODEL is a hub id `org/name[@revision]` or a local
    /// checkpoint directory. Default: the built-in OPUS-MT table per detected language
    /// (opus-mt-fr-en for French, opus-mt-de-en for German, ...).
    #[arg(long, short = 'm', value_name = "[LANG=]MODEL")]
    pub model: Vec<String>,

    /// The articles' language: `auto` detects each article's (whatlang), or an ISO code
    /// (fr, de, ...) for all of them. An article whose language is unclear is never
    /// translated on a guess: it fails alone, naming the best guess.
    #[arg(long, default_value = "auto", value_name = "auto|LANG")]
    pub source_lang: String,

    /// Model for languages the table has no pair model for (pt, ro, el, ...); `none`
    /// makes such articles fail alone with a hint instead.
    #[arg(long, default_value = transum::lang::FALLBACK_MODEL, value_name = "MODEL|none")]
    pub fallback_model: String,

    /// Quantize the translation model's projections at load (q8_0, q4k, q6k): smaller
    /// and, with q8_0, nearly as accurate; no files written (see `transum quantize`).
    #[arg(long)]
    pub quantize: Option<String>,
}

impl ModelArgs {
    /// The routing these flags ask for, and the language they fix (if any).
    fn routing(&self) -> Result<(Routing, Option<String>)> {
        let mut routing = Routing::auto().with_models(&self.model)?;
        if self.fallback_model.eq_ignore_ascii_case("none") {
            routing.fallback = None;
        } else {
            routing.fallback = Some(self.fallback_model.clone());
        }
        let source = if self.source_lang.eq_ignore_ascii_case("auto") {
            None
        } else {
            Some(transum::lang::parse_code(&self.source_lang)?.to_string())
        };
        Ok((routing, source))
    }
}

/// Loads the models a run asks for, all with the same search settings and placement.
struct CliModels<'a> {
    search: &'a SearchArgs,
    placement: Placement,
    hub: HubOptions,
}

impl transum::pipeline::Models for CliModels<'_> {
    fn load(&mut self, spec: &str) -> transum::Result<(Translator, ModelRecord)> {
        load_translator(spec, &self.placement, self.search, &self.hub).map_err(|e| {
            match e.downcast::<transum::Error>() {
                Ok(e) => e,
                Err(e) => transum::Error::setting(format!("{e:#}"), "check the flags above"),
            }
        })
    }
}

#[derive(Debug, Args)]
pub struct TranslateArgs {
    /// Input text file, or `-` for stdin (UTF-8).
    #[arg(default_value = "-")]
    pub input: String,

    #[command(flatten)]
    pub tr: TranslationArgs,

    /// How to cut the input into units.
    #[arg(long, value_enum, default_value_t = Segment::Lines)]
    pub segment: Segment,
}

/// Run the parsed command.
pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run(args) => run_corpus(args),
        Command::Translate(args) => translate(args),
        Command::Download(args) => download(args),
        Command::Summarize(args) => summarize(args),
        Command::Merge(args) => merge(args),
        Command::Quantize(args) => quantize(args),
    }
}

fn quantize(args: QuantizeArgs) -> Result<ExitCode> {
    let dtype = transum::quantize::parse_dtype(&args.dtype)?;
    let files = hub::resolve(&ModelSpec::parse(&args.model)?, &args.cache.hub())?;
    files.record()?;
    let report = transum::quantize::quantize_checkpoint(&files, dtype, &args.out)?;
    eprintln!(
        "{}: {} projections as {}, model.gguf {:.1} MB; load it with --model {}",
        report.out.display(),
        report.quantized,
        args.dtype,
        report.bytes as f64 / 1e6,
        report.out.display()
    );
    if !report.kept_float.is_empty() {
        let shown: Vec<&str> = report
            .kept_float
            .iter()
            .take(4)
            .map(String::as_str)
            .collect();
        let more = report.kept_float.len() - shown.len();
        eprintln!(
            "kept f32 (input width not a multiple of the {}-wide block): {}{}",
            dtype.block_size(),
            shown.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Load the summarizer `args` ask for (`None` for `--summarizer none`).
fn load_summarizer(
    args: &SummaryArgs,
    hub: &HubOptions,
    dev: &DeviceArgs,
    device: &candle_core::Device,
) -> Result<Option<Summarizer>> {
    if args.max_words == 0 {
        anyhow::bail!("--max-words must be at least 1\n  hint: the default is 150");
    }
    let writer = match args.summarizer {
        SummarizerKind::None => return Ok(None),
        SummarizerKind::Extractive => Writer::Extractive,
        SummarizerKind::Abstractive => {
            let files = hub::resolve(&ModelSpec::parse(&args.summary_model)?, hub)?;
            let record = files.record()?;
            let placement = dev.placement(device, args.summary_quantize.as_deref())?;
            let model = Translator::load(&files, &placement, &GenerationOverrides::default())?;
            let kind = model.model.config().model_type.clone();
            if kind == "marian" {
                anyhow::bail!(
                    "--summary-model {}: is a Marian translation model, not a summarizer\n  hint: use a BART or Pegasus summarization checkpoint, e.g. {DEFAULT_SUMMARY_MODEL}, or --summarizer extractive",
                    args.summary_model
                );
            }
            Writer::Abstractive {
                model: Box::new(model),
                id: args.summary_model.clone(),
                record,
            }
        }
    };
    let embedder = if args.embed_model == "none" {
        None
    } else {
        let files = hub::resolve(&ModelSpec::parse(&args.embed_model)?, hub)?;
        let record = files.record()?;
        let encoder = SentenceEncoder::load(&files.dir)?;
        Some(Embedder {
            encoder,
            id: args.embed_model.clone(),
            record,
        })
    };
    Ok(Some(Summarizer { writer, embedder }))
}

fn summarize(args: SummarizeArgs) -> Result<ExitCode> {
    if args.summary.summarizer == SummarizerKind::None {
        anyhow::bail!("--summarizer none makes no summary\n  hint: use extractive or abstractive");
    }
    let device = args.device.device()?;
    let mut articles = Vec::with_capacity(args.files.len());
    for f in &args.files {
        let text = read_input(&f.to_string_lossy())?;
        let name = f
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| f.display().to_string());
        articles.push(Article { name, text });
    }
    let summarizer = load_summarizer(&args.summary, &args.cache.hub(), &args.device, &device)?
        .expect("none was rejected above");
    let summary = summarizer.summarize(&articles, args.summary.max_words)?;
    // The reader's language, if asked: the translated summary is what is shown.
    let translated = match args.summary.summary_lang()? {
        Some((lang, spec)) => {
            let (translator, record) = load_translator(
                &spec,
                &Placement::cpu(),
                &SearchArgs::defaults(),
                &args.cache.hub(),
            )?;
            Some(summary.translated(&translator, &lang, &record.id)?)
        }
        None => None,
    };
    match &args.output {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| {
                format!("{}: cannot create the output directory", dir.display())
            })?;
            summary.write(dir)?;
            if let Some(t) = &translated {
                t.write_as(dir, &t.stem())?;
            }
            eprintln!(
                "summary of {} article(s), {} sentence(s): {}",
                articles.len(),
                summary.sentences.len(),
                dir.join("summary.md").display()
            );
        }
        None => print!("{}", translated.as_ref().unwrap_or(&summary).to_markdown()),
    }
    Ok(ExitCode::SUCCESS)
}

fn load_translator(
    spec: &str,
    placement: &Placement,
    search: &SearchArgs,
    hub: &HubOptions,
) -> Result<(Translator, ModelRecord)> {
    let overrides = search.overrides()?;
    let files = hub::resolve(&ModelSpec::parse(spec)?, hub)?;
    // Hash (and check against the hub) before loading: a corrupt download is
    // named as such, not as whatever parse error it happens to cause.
    let record = files.record()?;
    let mut translator = Translator::load(&files, placement, &overrides)?;
    if let Some(n) = search.batch_tokens {
        translator.batch_tokens = n;
    }
    Ok((translator, record))
}

fn run_corpus(args: RunArgs) -> Result<ExitCode> {
    // The device once, and both placements, before anything else.
    let device = args.tr.device.device()?;
    let placement = args
        .tr
        .device
        .placement(&device, args.tr.model.quantize.as_deref())?;
    args.tr
        .device
        .placement(&device, args.summary.summary_quantize.as_deref())?;
    if !args.corpus.is_dir() {
        anyhow::bail!(
            "{}: corpus directory not found\n  hint: create it and put the articles (*.txt, UTF-8) in it, or pass --corpus DIR",
            args.corpus.display()
        );
    }
    let hub = args.tr.cache.hub();
    let (routing, source_lang) = args.tr.model.routing()?;
    // Flags are checked before anything loads.
    args.tr.search.overrides()?;
    let summary_lang = args.summary.summary_lang()?;
    let shard = transum::shard::Shard::resolve(args.shard.as_deref(), args.shards, &|k| {
        std::env::var(k).ok()
    })?;
    if shard.is_some() && args.prune {
        anyhow::bail!(
            "--prune in a sharded run (the scheduler's environment names a shard)\n  hint: prune from one place after the merge: `transum run --prune` with the same flags, which keeps every merged translation"
        );
    }
    if let Some((s, source)) = &shard {
        eprintln!(
            "shard {} of {} (from {}); the summary is left to `transum merge`",
            s.index,
            s.count,
            source.describe()
        );
    }
    // Loaded before translating: a missing summary model is a setup error, found
    // at once. A shard writes no summary, so it loads none.
    let summarizer = if shard.is_some() {
        None
    } else {
        load_summarizer(&args.summary, &hub, &args.tr.device, &device)?
    };
    let mut models = CliModels {
        search: &args.tr.search,
        placement,
        hub: hub.clone(),
    };
    let opts = transum::pipeline::RunOptions {
        corpus: args.corpus.clone(),
        outputs: args.outputs.clone(),
        max_words: args.summary.max_words,
        force: args.force,
        wait: args.wait,
        prune: args.prune,
        routing,
        source_lang,
        summary_lang,
        shard,
    };
    let mut bars = progress::RunBars::new(&args.summary.summarizer_name());
    let manifest = transum::pipeline::run(&mut models, summarizer.as_ref(), &opts, &mut bars)?;
    bars.finish();
    let manifest_path = match &opts.shard {
        Some((s, _)) => s.manifest_path(&args.outputs),
        None => args.outputs.join("manifest.json"),
    };
    Ok(report_run(
        &manifest,
        &args.corpus,
        &args.outputs,
        &manifest_path,
    ))
}

fn merge(args: MergeArgs) -> Result<ExitCode> {
    let device = args.device.device()?;
    let placement = args.device.placement(&device, args.quantize.as_deref())?;
    if !args.corpus.is_dir() {
        anyhow::bail!(
            "{}: corpus directory not found\n  hint: pass the --corpus the shards ran on",
            args.corpus.display()
        );
    }
    let hub = args.cache.hub();
    args.search.overrides()?;
    let summary_lang = args.summary.summary_lang()?;
    let summarizer = load_summarizer(&args.summary, &hub, &args.device, &device)?;
    let mut models = CliModels {
        search: &args.search,
        placement,
        hub,
    };
    let opts = transum::merge::MergeOptions {
        corpus: args.corpus.clone(),
        outputs: args.outputs.clone(),
        shards: args.shards,
        max_words: args.summary.max_words,
        summary_lang,
        wait: args.wait,
    };
    let mut bars = progress::RunBars::new(&args.summary.summarizer_name());
    let outcome = transum::merge::merge(&mut models, summarizer.as_ref(), &opts, &mut bars)?;
    bars.finish();
    match outcome {
        transum::merge::MergeOutcome::Done(manifest) => Ok(report_run(
            &manifest,
            &args.corpus,
            &args.outputs,
            &args.outputs.join("manifest.json"),
        )),
        transum::merge::MergeOutcome::Incomplete(problems) => {
            eprintln!("error: not every shard has finished; nothing was merged:");
            for p in problems {
                eprintln!("  {p}");
            }
            eprintln!("  hint: run the shards named above, then merge again");
            Ok(ExitCode::from(1))
        }
    }
}

/// The end-of-run lines on stderr, and the exit code: 0 when every article
/// and the summary are done, 1 when some failed (each named with its error).
fn report_run(
    manifest: &Manifest,
    corpus: &std::path::Path,
    outputs: &std::path::Path,
    manifest_path: &std::path::Path,
) -> ExitCode {
    if manifest.articles.is_empty() {
        eprintln!(
            "{}: no articles (*.txt) to translate{}; nothing to do",
            corpus.display(),
            if manifest.shard.is_some() {
                " in this shard"
            } else {
                ""
            }
        );
    }
    let failed: Vec<_> = manifest
        .articles
        .iter()
        .filter(|a| a.status == Status::Failed)
        .collect();
    let cached = manifest
        .articles
        .iter()
        .filter(|a| a.status == Status::Cached)
        .count();
    eprintln!(
        "{} of {} articles done ({cached} unchanged since the last run, kept) in {} ({} new tokens, {:.1} tokens/s); manifest: {}",
        manifest.articles.len() - failed.len(),
        manifest.articles.len(),
        outputs.display(),
        manifest.translated_tokens,
        manifest.tokens_per_second,
        manifest_path.display()
    );
    let mut cuts = std::collections::BTreeMap::<&str, usize>::new();
    for a in &manifest.articles {
        for (limit, n) in &a.cut_segments {
            *cuts.entry(limit.as_str()).or_default() += n;
        }
    }
    if !cuts.is_empty() {
        eprintln!(
            "{} segment(s) stopped at a length limit ({}); see cut_segments in the manifest",
            cuts.values().sum::<usize>(),
            describe_cuts(&cuts)
        );
    }
    let summary_failed = match &manifest.summary {
        Some(s) if s.status.succeeded() => {
            eprintln!(
                "{} summary ({}) of {} article(s), {} sentence(s): {}",
                s.summarizer,
                if s.status == Status::Cached {
                    "unchanged, kept"
                } else {
                    "written"
                },
                s.articles,
                s.sentences,
                outputs.join("summary.md").display()
            );
            false
        }
        Some(s) => {
            eprintln!(
                "summary failed: {}",
                s.error.as_deref().unwrap_or("unknown error")
            );
            true
        }
        None => false,
    };
    if failed.is_empty() && !summary_failed {
        return ExitCode::SUCCESS;
    }
    if !failed.is_empty() {
        eprintln!("{} article(s) failed:", failed.len());
    }
    for a in failed {
        eprintln!(
            "  {}: {}",
            a.source,
            a.error.as_deref().unwrap_or("unknown error")
        );
    }
    ExitCode::from(1)
}

/// "positions: 2, source_factor: 1".
fn describe_cuts(cuts: &std::collections::BTreeMap<&str, usize>) -> String {
    cuts.iter()
        .map(|(k, n)| format!("{k}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn download(args: DownloadArgs) -> Result<ExitCode> {
    let mut wanted: Vec<String> = args.models.clone();
    for l in &args.langs {
        let code = transum::lang::parse_code(l)?;
        match Routing::auto().route(code) {
            Some(Route::Model(spec)) => wanted.push(spec),
            _ => eprintln!("{code}: passes through untranslated; no model needed"),
        }
    }
    if args.models.is_empty() && args.langs.is_empty() {
        wanted = vec![
            DEFAULT_MODEL.to_string(),
            DEFAULT_SUMMARY_MODEL.to_string(),
            DEFAULT_EMBED_MODEL.to_string(),
        ];
    }
    let mut seen = std::collections::HashSet::new();
    wanted.retain(|m| seen.insert(m.clone()));
    for m in &wanted {
        let spec = ModelSpec::parse(m)?;
        let ModelSpec::Hub { id, revision } = &spec else {
            anyhow::bail!(
                "{m} is a local directory; `download` fetches hub models (org/name[@revision])"
            );
        };
        let hub = HubOptions {
            cache_dir: args.cache.models_dir.clone(),
            offline: false,
            endpoint: None,
        };
        let files = hub::download(id, revision, &hub, args.force)?;
        // Check what arrived against the hub's hashes now, not on the night.
        files.record()?;
        eprintln!("{id}@{revision}: ready in {}", files.dir.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn read_input(input: &str) -> Result<String> {
    let (bytes, name) = if input == "-" {
        let mut buf = Vec::new();
        std::io::stdin()
            .read_to_end(&mut buf)
            .context("cannot read stdin")?;
        (buf, "<stdin>".to_string())
    } else {
        (
            std::fs::read(input).with_context(|| format!("{input}: cannot read the input file"))?,
            input.to_string(),
        )
    };
    let text = String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{name}: not valid UTF-8 (first bad byte at offset {})\n  hint: convert it first, e.g. `iconv -f latin1 -t utf-8 {name}`",
            e.utf8_error().valid_up_to()
        )
    })?;
    let text = text
        .strip_prefix('\u{feff}')
        .unwrap_or(&text)
        .replace("\r\n", "\n");
    Ok(text)
}

fn translate(args: TranslateArgs) -> Result<ExitCode> {
    // Flags first: a bad device or dtype is named before any input is read.
    let device = args.tr.device.device()?;
    let placement = args
        .tr
        .device
        .placement(&device, args.tr.model.quantize.as_deref())?;
    let text = read_input(&args.input)?;
    let name = if args.input == "-" {
        "<stdin>"
    } else {
        args.input.as_str()
    };
    let (routing, source_lang) = args.tr.model.routing()?;
    // A bare --model translates the input, whatever its language; otherwise
    // the input's language picks the model, and English passes through.
    let mut input_lang = source_lang.clone();
    let spec = match &routing.every {
        Some(spec) => spec.clone(),
        None => {
            let lang = match source_lang {
                Some(l) => l,
                None => match transum::lang::detect(&text) {
                    Some(d) if d.reliable => {
                        tracing::info!("{name}: language {} (confidence {:.2})", d.lang, d.confidence);
                        input_lang = Some(d.lang.to_string());
                        d.lang.to_string()
                    }
                    guess => anyhow::bail!(
                        "{name}: the input's language is unclear{}\n  hint: pass --source-lang LANG, or --model MODEL to use one model whatever the language",
                        guess
                            .map(|d| format!(" (best guess {}, confidence {:.2})", d.lang, d.confidence))
                            .unwrap_or_default()
                    ),
                },
            };
            match routing.route(&lang) {
                Some(Route::Model(spec)) => spec,
                Some(Route::PassThrough) => {
                    eprintln!("{name}: already in English; passed through unchanged");
                    return write_lines(text.lines().map(str::to_string));
                }
                None => anyhow::bail!(
                    "{name}: no model translates {lang} into English\n  hint: pass --model {lang}=ORG/NAME (or a local directory)"
                ),
            }
        }
    };
    let (translator, _) =
        load_translator(&spec, &placement, &args.tr.search, &args.tr.cache.hub())?;
    if let Some(l) = &input_lang {
        translator.tokenizer.set_source_lang(l)?;
    }

    let lines: Vec<&str> = text.lines().collect();
    let window = translator.model.config().max_position_embeddings;
    // Units per line: the whole line, or its sentences; a unit longer than the
    // encoder's window is cut at its best boundaries and rejoined on its line.
    let mut units: Vec<usize> = Vec::with_capacity(lines.len());
    let mut encoded = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        let parts = match args.segment {
            Segment::Lines => vec![*line],
            Segment::Sentences => transum::text::split_sentences(line),
        };
        let before = encoded.len();
        for part in parts {
            let pieces = translator
                .encode_to_fit(part)
                .with_context(|| format!("{name}: line {}", n + 1))?;
            if pieces.len() > 1 {
                tracing::warn!(
                    "{name}: line {}: {} tokens exceed the model's {window}-token window; translated in {} pieces",
                    n + 1,
                    pieces.iter().map(|p| p.1.len()).sum::<usize>(),
                    pieces.len()
                );
            }
            encoded.extend(pieces.into_iter().map(|p| p.1));
        }
        units.push(encoded.len() - before);
    }

    let bar = progress::translate_bar(encoded.len());
    let out = translator.translate_encoded(encoded, |n| bar.inc(n as u64))?;
    bar.finish_and_clear();
    let mut cuts = std::collections::BTreeMap::<&str, usize>::new();
    for limit in out.iter().filter_map(|t| t.hypothesis.cut) {
        *cuts.entry(limit.name()).or_default() += 1;
    }
    if !cuts.is_empty() {
        eprintln!(
            "{name}: {} of {} unit(s) stopped at a length limit ({})",
            cuts.values().sum::<usize>(),
            out.len(),
            describe_cuts(&cuts)
        );
    }

    let mut next = out.into_iter();
    write_lines(units.iter().map(|&count| {
        (0..count)
            .map(|_| next.next().expect("one result per unit").text)
            .collect::<Vec<_>>()
            .join(" ")
    }))
}

/// Write `lines` to stdout. A reader that went away (`transum translate a.txt
/// | head`) is a normal end, as for any Unix filter, not an error.
fn write_lines(lines: impl Iterator<Item = String>) -> Result<ExitCode> {
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    let write = || -> std::io::Result<()> {
        for line in lines {
            writeln!(stdout, "{line}")?;
        }
        stdout.flush()
    };
    match write() {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        other => {
            other.context("cannot write to stdout")?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

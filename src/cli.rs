//! Command-line arguments (clap derive) and their resolution into library
//! settings. Parsing and printing only: the work happens in the library.

use std::io::{IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use transum::device::Placement;
use transum::generation::GenerationOverrides;
use transum::hub::{self, HubOptions, ModelSpec};
use transum::{Translator, DEFAULT_MODEL};

const EXAMPLES: &str = "\
Examples:
  Translate a file, one output line per input line:
    transum translate article.txt > article.en.txt
  Translate from stdin, splitting lines into sentences first:
    cat article.txt | transum translate - --segment sentences
  Greedy search (fastest) with a local checkpoint directory:
    transum translate article.txt --model ./opus-mt-fr-en --beams 1
  Use only the local model cache (no network):
    transum translate article.txt --offline";

/// Translate news articles into English with Marian/OPUS-MT models run through candle.
#[derive(Debug, Parser)]
#[command(name = "transum", version, about, after_help = EXAMPLES)]
pub struct Cli {
    /// Log progress details (set RUST_LOG for finer control).
    #[arg(short, long, global = true)]
    pub verbose: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Translate one text file (or stdin) into English on stdout.
    #[command(after_help = EXAMPLES)]
    Translate(TranslateArgs),
}

/// How input text is cut into units for the model.
#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Segment {
    /// Each input line is one unit; output line i translates input line i.
    Lines,
    /// Each line is split into sentences, translated, and rejoined on its line.
    Sentences,
}

/// Where the model comes from.
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// Model: a hub id `org/name[@revision]` or a local checkpoint directory.
    #[arg(long, short = 'm', default_value = DEFAULT_MODEL)]
    pub model: String,

    /// Cache directory for downloaded models (hub layout).
    #[arg(long, env = "TRANSUM_MODELS", default_value = "models")]
    pub models_dir: PathBuf,

    /// Never use the network; read models from the cache only.
    #[arg(long, env = "HF_HUB_OFFLINE", value_parser = clap::builder::BoolishValueParser::new(), default_value = "false", num_args = 0, default_missing_value = "true")]
    pub offline: bool,
}

#[derive(Debug, Args)]
pub struct TranslateArgs {
    /// Input text file, or `-` for stdin (UTF-8).
    #[arg(default_value = "-")]
    pub input: String,

    #[command(flatten)]
    pub model: ModelArgs,

    /// Beam size; 1 is greedy search. Default: the checkpoint's (4 for opus-mt).
    #[arg(long)]
    pub beams: Option<usize>,

    /// Maximum generated tokens per unit. Default: the checkpoint's max_length.
    #[arg(long)]
    pub max_new_tokens: Option<usize>,

    /// Minimum generated tokens per unit (EOS is suppressed before that).
    #[arg(long)]
    pub min_new_tokens: Option<usize>,

    /// Budget of padded source tokens per batch (larger is faster, uses more memory).
    #[arg(long, default_value_t = 2048)]
    pub batch_tokens: usize,

    /// How to cut the input into units.
    #[arg(long, value_enum, default_value_t = Segment::Lines)]
    pub segment: Segment,
}

/// Run the parsed command.
pub fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Translate(args) => translate(args),
    }
}

fn load_translator(model: &ModelArgs, overrides: &GenerationOverrides) -> Result<Translator> {
    let spec = ModelSpec::parse(&model.model)?;
    let files = hub::resolve(
        &spec,
        &HubOptions {
            cache_dir: model.models_dir.clone(),
            offline: model.offline,
            endpoint: None,
        },
    )?;
    Ok(Translator::load(&files, &Placement::cpu(), overrides)?)
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
    if args.batch_tokens == 0 {
        anyhow::bail!("--batch-tokens must be at least 1\n  hint: the default is 2048");
    }
    let text = read_input(&args.input)?;
    let overrides = GenerationOverrides {
        num_beams: args.beams,
        max_new_tokens: args.max_new_tokens,
        min_new_tokens: args.min_new_tokens,
        ..Default::default()
    };
    let mut translator = load_translator(&args.model, &overrides)?;
    translator.batch_tokens = args.batch_tokens;

    let lines: Vec<&str> = text.lines().collect();
    // Units per line: the whole line, or its sentences.
    let units: Vec<Vec<&str>> = lines
        .iter()
        .map(|l| match args.segment {
            Segment::Lines => vec![*l],
            Segment::Sentences => transum::text::split_sentences(l),
        })
        .collect();
    let flat: Vec<&str> = units.iter().flatten().copied().collect();

    let bar = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(flat.len() as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} translating [{bar:30}] {pos}/{len} units, {elapsed} elapsed, eta {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let out = translator.translate_with_progress(&flat, |n| bar.inc(n as u64))?;
    bar.finish_and_clear();

    let mut next = out.into_iter();
    let mut stdout = std::io::BufWriter::new(std::io::stdout().lock());
    for line_units in &units {
        let parts: Vec<String> = line_units
            .iter()
            .map(|_| next.next().expect("one result per unit").text)
            .collect();
        writeln!(stdout, "{}", parts.join(" ")).context("cannot write to stdout")?;
    }
    stdout.flush().context("cannot write to stdout")?;
    Ok(ExitCode::SUCCESS)
}

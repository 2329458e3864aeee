//! The batch run: every article of `corpus/` -> `outputs/<stem>.en.txt`, plus
//! `outputs/manifest.json` describing what decided the outputs.
//!
//! Data path per article: read -> decode -> clean (text/ingest.rs) -> sentences
//! (text/mod.rs) -> split what exceeds the model window -> translate (batched)
//! -> reassemble paragraphs -> atomic write. A failing article is reported and
//! skipped; the others are still written. Every file is written atomically
//! (temporary file in the same directory, then rename), so no output is ever
//! half-written.
//!
//! Nightly-grade: the run holds an exclusive lock on `outputs/` (lock.rs); it
//! rewrites the manifest after every article, so a run killed at any moment
//! leaves a record of what is finished; an article whose source, model files
//! and settings are unchanged, and whose output is intact, is not translated
//! again ("cached"), nor is the summary when none of its inputs changed.
//! `--force` redoes everything.
//!
//! Sharded (`RunOptions::shard`, shard.rs): the run takes only the articles
//! its shard owns, locks only its shard (a lock file that works across
//! machines), keeps its own manifest `outputs/shards/I-of-N.json` (the same
//! incremental, resumable record), and writes no summary; `crate::merge` then
//! checks that every shard finished and writes the corpus manifest and the
//! summary exactly as a single run would.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::error::{Error, Result};
use crate::lang::{Route, Routing};
use crate::outputs::{
    reusable, sha256_bytes, write_atomic, ArticleRecord, Manifest, ModelEntry, ModelRecord,
    ShardRecord, Status, SummaryRecord,
};
use crate::shard::{Shard, ShardSource};
use crate::summary::Summarizer;
use crate::text::ingest;
use crate::Translator;

/// What a run tells whoever watches it (the CLI's progress bars). Every
/// method has a default that ignores the event.
pub trait Progress {
    /// Article `index` of `total` starts (cached ones too).
    fn article(&mut self, _path: &Path, _index: usize, _total: usize) {}
    /// `done` of the article's `total` segments are translated.
    fn segments(&mut self, _path: &Path, _done: usize, _total: usize) {}
    /// The summary of `articles` articles starts.
    fn summary(&mut self, _articles: usize) {}
}

/// Nobody watching.
impl Progress for () {}

/// Where a run gets its translation models. The pipeline loads each when the
/// corpus first needs it and drops it after its last article, so that at most
/// one translation model is in memory at a time.
pub trait Models {
    /// Load `spec` (a hub id `org/name[@revision]` or a directory): the
    /// translator and its identity for the manifest.
    fn load(&mut self, spec: &str) -> Result<(Translator, ModelRecord)>;
}

/// What a run was asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub corpus: PathBuf,
    pub outputs: PathBuf,
    /// Word budget of the summary.
    pub max_words: usize,
    /// Redo every article and the summary even when cached.
    pub force: bool,
    /// Wait for another run holding `outputs/` instead of failing.
    pub wait: bool,
    /// Delete the outputs of articles no longer in the corpus (else they are
    /// kept, listed in the manifest as `orphaned_outputs`, and never summarized).
    pub prune: bool,
    /// Which model translates which language.
    pub routing: Routing,
    /// Every article's language, when given (`--source-lang`); else detected.
    pub source_lang: Option<String>,
    /// Also write the summary in this language, with this (English-to-it) model.
    pub summary_lang: Option<(String, String)>,
    /// Run one shard of the corpus (and no summary: `merge` writes it), and
    /// what gave its index (for the manifest).
    pub shard: Option<(Shard, ShardSource)>,
}

/// The corpus articles (`*.txt`), sorted by name.
pub fn list_corpus(corpus: &Path) -> Result<Vec<PathBuf>> {
    let rd = std::fs::read_dir(corpus).map_err(|e| {
        Error::file(
            corpus,
            "corpus directory cannot be read",
            "create it and put the articles (*.txt, UTF-8) in it, or pass --corpus DIR",
            Some(Box::new(e)),
        )
    })?;
    let mut out: Vec<PathBuf> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    out.sort();
    Ok(out)
}

/// The bytes of one article, or an error naming it.
fn read_article(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        let what = if path.is_dir() {
            "is a directory, not an article"
        } else {
            "cannot be read"
        };
        Error::file(
            path,
            what,
            "remove it from the corpus or fix its permissions",
            Some(Box::new(e)),
        )
    })
}

/// Translate one article's bytes into English paragraphs, recording counts
/// (sentences, segments, tokens, cuts) in `rec`.
fn translate_article(
    translator: &Translator,
    path: &Path,
    cleaned: &ingest::Cleaned,
    rec: &mut ArticleRecord,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<String> {
    let window = translator.model.config().max_position_embeddings;
    // Units per paragraph: sentences, each split further if it exceeds the window.
    let mut units: Vec<Vec<String>> = Vec::with_capacity(cleaned.paragraphs.len());
    let mut ids = Vec::new();
    for p in &cleaned.paragraphs {
        let mut u = Vec::new();
        for s in crate::text::split_sentences(p) {
            rec.sentences += 1;
            let pieces = translator.encode_to_fit(s)?;
            if pieces.len() > 1 {
                tracing::warn!(
                    "{}: a sentence exceeds the model's {window}-token window; split into {} segments",
                    path.display(),
                    pieces.len()
                );
            }
            for (text, encoded) in pieces {
                u.push(text);
                ids.push(encoded);
            }
        }
        units.push(u);
    }
    rec.paragraphs = units.len();
    rec.segments = ids.len();
    let total = ids.len();
    let mut done = 0;
    let out = translator.translate_encoded(ids, |n| {
        done += n;
        progress(done, total);
    })?;
    rec.source_tokens = out.iter().map(|t| t.source_ids.len()).sum();
    rec.output_tokens = out.iter().map(|t| t.hypothesis.tokens.len()).sum();
    for limit in out.iter().filter_map(|t| t.hypothesis.cut) {
        *rec.cut_segments
            .entry(limit.name().to_string())
            .or_default() += 1;
    }
    let mut it = out.into_iter();
    let paragraphs: Vec<String> = units
        .iter()
        .map(|u| {
            u.iter()
                .map(|_| it.next().expect("one result per unit").text)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect();
    Ok(paragraphs.join("\n\n") + "\n")
}

/// Output file of an article: `<stem>.en.txt`.
pub fn output_name(source: &Path) -> String {
    let stem = source
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{stem}.en.txt")
}

/// What the previous run in this outputs directory recorded.
pub(crate) struct Previous {
    pub articles: BTreeMap<String, ArticleRecord>,
    pub summary: Option<SummaryRecord>,
    pub orphaned_outputs: Vec<String>,
}

/// Read a manifest (outputs/manifest.json, or a shard's), if a usable one is
/// there (anything else means nothing is cached: the safe direction).
pub(crate) fn previous_manifest(path: &Path) -> Option<Previous> {
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let articles = v
        .get("articles")?
        .as_array()?
        .iter()
        .filter_map(|a| serde_json::from_value::<ArticleRecord>(a.clone()).ok())
        .map(|a| (a.source.clone(), a))
        .collect();
    let summary = v
        .get("summary")
        .and_then(|s| serde_json::from_value(s.clone()).ok());
    let orphaned_outputs = v
        .get("orphaned_outputs")
        .and_then(|o| serde_json::from_value(o.clone()).ok())
        .unwrap_or_default();
    Some(Previous {
        articles,
        summary,
        orphaned_outputs,
    })
}

/// Remove temporary files a killed run left in `dir` for the files `ours`
/// accepts (we hold their lock, so none is live; other shards' are theirs).
fn remove_stale_temporaries(dir: &Path, ours: &dyn Fn(&str) -> bool) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let target = name
            .strip_prefix('.')
            .and_then(|n| n.rsplit_once(".tmp-"))
            .map(|(t, _)| t);
        if target.is_some_and(ours) {
            tracing::info!("removing {name}, left by an interrupted run");
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// Outputs of articles that were in an earlier run's corpus and are not in
/// this one (known from the previous manifest, so files transum did not write
/// are never touched), still on disk; deleted when `prune`.
fn orphans(
    outputs: &Path,
    articles: &[PathBuf],
    previous: Option<&Previous>,
    prune: bool,
) -> Vec<String> {
    let Some(previous) = previous else {
        return Vec::new();
    };
    let current: std::collections::BTreeSet<String> =
        articles.iter().map(|p| output_name(p)).collect();
    let mut names: std::collections::BTreeSet<String> = previous
        .articles
        .values()
        .filter_map(|a| a.output.clone())
        .chain(previous.orphaned_outputs.iter().cloned())
        .filter(|n| !current.contains(n))
        // Only plain names of files in outputs/: never a path elsewhere.
        .filter(|n| Path::new(n).file_name().is_some_and(|f| f == n.as_str()))
        .filter(|n| outputs.join(n).is_file())
        .collect();
    if prune {
        names.retain(|n| match std::fs::remove_file(outputs.join(n)) {
            Ok(()) => {
                tracing::info!("removed {n}: its article is no longer in the corpus");
                false
            }
            Err(e) => {
                tracing::warn!("{n}: its article is gone but the file cannot be removed: {e}");
                true
            }
        });
    } else if !names.is_empty() {
        tracing::warn!(
            "{} output(s) of articles no longer in the corpus are kept but not summarized ({}); --prune deletes them",
            names.len(),
            names.iter().cloned().collect::<Vec<_>>().join(", ")
        );
    }
    names.into_iter().collect()
}

/// The cache key of everything in `settings` (plus transum's version) that
/// decides an output besides its inputs.
fn settings_key(settings: serde_json::Value) -> String {
    let all = serde_json::json!({"version": env!("CARGO_PKG_VERSION"), "settings": settings});
    sha256_bytes(all.to_string().as_bytes())
}

/// An article read, cleaned and routed.
struct Article {
    path: PathBuf,
    source_sha: String,
    cleaned: ingest::Cleaned,
    language: String,
    confidence: Option<f64>,
}

/// Read, decode and clean one article: its source sha256 and its text.
fn read_cleaned(path: &Path) -> Result<(String, ingest::Cleaned)> {
    let bytes = read_article(path)?;
    let text = ingest::decode(path, &bytes)?;
    let cleaned = ingest::clean(&text);
    if cleaned.paragraphs.is_empty() {
        return Err(Error::file(
            path,
            "has no text to translate (empty or only whitespace/noise)",
            "remove the file or fill it with the article's text",
            None,
        ));
    }
    Ok((sha256_bytes(&bytes), cleaned))
}

/// The language of a cleaned article: `source_lang` when given, else
/// detected, and an error when it is unclear.
fn detect_language(
    path: &Path,
    cleaned: &ingest::Cleaned,
    source_lang: Option<&str>,
) -> Result<(String, Option<f64>)> {
    if let Some(l) = source_lang {
        return Ok((l.to_string(), None));
    }
    match crate::lang::detect(&cleaned.paragraphs.join("\n\n")) {
        Some(d) if d.reliable => Ok((d.lang.to_string(), Some(d.confidence))),
        Some(d) => Err(Error::file(
            path,
            format!(
                "its language is unclear (best guess {}, confidence {:.2}; {} needed)",
                d.lang,
                d.confidence,
                crate::lang::MIN_CONFIDENCE
            ),
            format!(
                "if you know its language, pass --source-lang (e.g. --source-lang {}); it is not translated on a guess",
                d.lang
            ),
            None,
        )),
        None => Err(Error::file(
            path,
            "holds no language to detect (only digits, URLs or symbols?)",
            "remove it from the corpus if it is not an article, or pass --source-lang",
            None,
        )),
    }
}

/// A fresh record for the article at `path`.
fn new_record(path: &Path) -> ArticleRecord {
    ArticleRecord {
        source: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        output: None,
        status: Status::Ok,
        language: None,
        language_confidence: None,
        model: None,
        error: None,
        source_sha256: None,
        paragraphs: 0,
        sentences: 0,
        segments: 0,
        source_tokens: 0,
        output_tokens: 0,
        dropped_lines: Vec::new(),
        cut_segments: BTreeMap::new(),
        output_sha256: None,
        cache_key: None,
        seconds: 0.0,
    }
}

/// The state of a run: the manifest being written and every article's record
/// in corpus order (filled as articles finish).
struct RunState<'a> {
    opts: &'a RunOptions,
    /// outputs/manifest.json, or the shard's.
    manifest_path: PathBuf,
    manifest: Manifest,
    records: Vec<Option<ArticleRecord>>,
    previous: Option<Previous>,
    translated_seconds: f64,
    done: usize,
}

impl RunState<'_> {
    /// Record article `i`'s result and rewrite the manifest: from here on the
    /// finished work survives a kill.
    fn finish(&mut self, i: usize, mut rec: ArticleRecord, t0: Instant) -> Result<()> {
        if rec.status != Status::Cached {
            rec.seconds = t0.elapsed().as_secs_f64();
            self.translated_seconds += rec.seconds;
        }
        self.records[i] = Some(rec);
        self.manifest.articles = self.records.iter().flatten().cloned().collect();
        self.manifest.write_to(&self.manifest_path)?;
        self.done += 1;
        if crate::failpoint::armed() {
            crate::failpoint::hit(&format!("after-article:{}", self.done));
        }
        Ok(())
    }

    /// Write article `a`'s output with `make` unless a finished earlier run
    /// made it from the same source and settings (`settings_key`) and it is
    /// intact; fills `rec` either way.
    fn produce(
        &self,
        a: &Article,
        settings_key: &str,
        rec: &mut ArticleRecord,
        make: impl FnOnce(&mut ArticleRecord) -> Result<String>,
    ) -> Result<()> {
        let key = sha256_bytes(format!("{}\n{settings_key}", a.source_sha).as_bytes());
        let name = output_name(&a.path);
        let out_path = self.opts.outputs.join(&name);
        rec.source_sha256 = Some(a.source_sha.clone());
        rec.cache_key = Some(key.clone());
        if let Some(prev) = self
            .previous
            .as_ref()
            .and_then(|p| p.articles.get(&rec.source))
        {
            if prev.output.as_deref() == Some(name.as_str())
                && reusable(
                    prev.status,
                    prev.cache_key.as_deref(),
                    &key,
                    &[(&out_path, prev.output_sha256.as_deref())],
                )
            {
                *rec = ArticleRecord {
                    status: Status::Cached,
                    seconds: 0.0,
                    ..prev.clone()
                };
                return Ok(());
            }
        }
        rec.dropped_lines = a.cleaned.dropped_lines.clone();
        rec.paragraphs = a.cleaned.paragraphs.len();
        let text = make(rec)?;
        write_atomic(&out_path, text.as_bytes())?;
        rec.output_sha256 = Some(sha256_bytes(text.as_bytes()));
        rec.output = Some(name);
        Ok(())
    }
}

/// Run over the corpus, then summarize the English articles when a
/// summarizer is given (`summary.md`, `summary.json`).
///
/// Every article is read, cleaned and given its language first; articles are
/// then taken model by model (English ones pass through untranslated, models
/// the user named first, so that a broken one stops the run before anything
/// else is done). A model is loaded when its first article comes and dropped
/// after its last. Article and summary failures are recorded, not returned;
/// the error is for setup problems (corpus or outputs directory unusable,
/// outputs locked by another run, a model the user named that cannot load).
pub fn run(
    models: &mut dyn Models,
    summarizer: Option<&Summarizer>,
    opts: &RunOptions,
    progress: &mut dyn Progress,
) -> Result<Manifest> {
    let corpus = list_corpus(&opts.corpus)?;
    let shard = opts.shard.as_ref().map(|(s, _)| *s);
    // A shard's articles; the whole corpus still decides what is orphaned.
    let paths: Vec<PathBuf> = match &shard {
        Some(s) => corpus
            .iter()
            .filter(|p| s.owns(&file_name(p)))
            .cloned()
            .collect(),
        None => corpus.clone(),
    };
    std::fs::create_dir_all(&opts.outputs).map_err(|e| {
        Error::file(
            &opts.outputs,
            "outputs directory cannot be created",
            "check permissions or pass --outputs DIR",
            Some(Box::new(e)),
        )
    })?;
    let manifest_path = match &shard {
        Some(s) => s.manifest_path(&opts.outputs),
        None => opts.outputs.join("manifest.json"),
    };
    // One run per outputs directory (flock), or per shard (a lock file that
    // holds across machines, where flock does not).
    let _lock: Box<dyn std::any::Any> = match &shard {
        Some(s) => Box::new(crate::shard::ShardLock::acquire(
            &opts.outputs,
            s,
            opts.wait,
        )?),
        None => Box::new(crate::lock::OutputsLock::acquire(&opts.outputs, opts.wait)?),
    };
    // A single run and shards must not write one outputs directory at once
    // (shards hold their own locks, not the directory's).
    if shard.is_none() {
        if let Some((stem, who)) = crate::shard::running(&opts.outputs).into_iter().next() {
            return Err(Error::file(
                &opts.outputs,
                format!("is being written by shard {stem} ({who})"),
                "wait for the shards to finish and run `transum merge`, or use another --outputs",
                None,
            ));
        }
    }
    match &shard {
        Some(s) => {
            let mine: std::collections::BTreeSet<String> =
                paths.iter().map(|p| output_name(p)).collect();
            remove_stale_temporaries(&opts.outputs, &|t| mine.contains(t));
            let own = format!("{}.json", s.stem());
            remove_stale_temporaries(&Shard::dir(&opts.outputs), &|t| t == own);
        }
        None => remove_stale_temporaries(&opts.outputs, &|_| true),
    }
    let recorded = previous_manifest(&manifest_path);
    let orphaned_outputs = orphans(
        &opts.outputs,
        &corpus,
        recorded.as_ref(),
        opts.prune && shard.is_none(),
    );
    if let Some((s, source)) = &opts.shard {
        tracing::info!(
            "shard {} of {} (from {}): {} of the corpus's {} articles",
            s.index,
            s.count,
            source.describe(),
            paths.len(),
            corpus.len()
        );
    }
    let start = Instant::now();
    let mut state = RunState {
        opts,
        manifest_path: manifest_path.clone(),
        manifest: Manifest {
            complete: false,
            tool: "transum".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            models: Vec::new(),
            articles: Vec::with_capacity(paths.len()),
            orphaned_outputs,
            summary: None,
            seconds: 0.0,
            output_tokens: 0,
            translated_tokens: 0,
            tokens_per_second: 0.0,
            shard: None,
            shards: Vec::new(),
        },
        records: vec![None; paths.len()],
        previous: if opts.force { None } else { recorded },
        translated_seconds: 0.0,
        done: 0,
    };

    // Every article's route; articles that cannot be read or routed fail now.
    // Each group's articles: (index, language, confidence), the language
    // decided once here (the text is read again when its model comes, so
    // that no article's text is held while others are translated).
    type Member = (usize, String, Option<f64>);
    let mut groups: BTreeMap<(u8, Route), Vec<Member>> = BTreeMap::new();
    for (i, path) in paths.iter().enumerate() {
        let t0 = Instant::now();
        let mut rec = new_record(path);
        let routed = read_cleaned(path)
            .and_then(|(_, cleaned)| detect_language(path, &cleaned, opts.source_lang.as_deref()))
            .and_then(|(language, confidence)| {
                rec.language = Some(language.clone());
                rec.language_confidence = confidence;
                match opts.routing.route(&language) {
                    Some(route) => Ok((route, (i, language, confidence))),
                    None => Err(Error::file(
                        path,
                        format!(
                            "is in {language}{} and no model translates that language into English",
                            confidence
                                .map(|c| format!(" (confidence {c:.2})"))
                                .unwrap_or_default()
                        ),
                        format!(
                            "pass --model {language}=ORG/NAME (or a local directory), or `transum download --langs {language}` for the built-in choice"
                        ),
                        None,
                    )),
                }
            });
        match routed {
            // Models the user named first, then the table's, then English.
            Ok((route, member)) => {
                let order = match &route {
                    Route::Model(spec) if opts.routing.named(spec) => 0,
                    Route::Model(_) => 1,
                    Route::PassThrough => 2,
                };
                groups.entry((order, route)).or_default().push(member);
            }
            Err(e) => {
                rec.status = Status::Failed;
                rec.error = Some(e.to_string());
                tracing::error!("{e}");
                state.finish(i, rec, t0)?;
            }
        }
    }

    let mut position = 0;
    for ((order, route), members) in groups {
        let loaded = match &route {
            Route::PassThrough => None,
            Route::Model(spec) => match models.load(spec) {
                Ok(m) => Some(m),
                // A model the user named must load: a setup error.
                Err(e) if order == 0 => return Err(e),
                Err(e) => {
                    tracing::error!("{spec}: {e}");
                    for (i, lang, confidence) in &members {
                        let mut rec = new_record(&paths[*i]);
                        rec.language = Some(lang.clone());
                        rec.language_confidence = *confidence;
                        rec.status = Status::Failed;
                        let confidence = confidence
                            .map(|c| format!(", confidence {c:.2}"))
                            .unwrap_or_default();
                        rec.error = Some(format!(
                            "{}: is in {lang}{confidence}, and its model {spec} is not available: {e}\n  hint: `transum download --langs {lang}` fetches it, or pass --model {lang}=ORG/NAME (or a local directory)",
                            paths[*i].display(),
                        ));
                        state.finish(*i, rec, Instant::now())?;
                    }
                    position += members.len();
                    continue;
                }
            },
        };
        let settings_key = match &loaded {
            None => settings_key(serde_json::json!({"passthrough": true})),
            Some((translator, record)) => {
                let entry = ModelEntry {
                    model: record.clone(),
                    languages: Vec::new(),
                    device: translator.device_name(),
                    dtype: translator.precision(),
                    generation: translator.options.clone(),
                    batch_tokens: translator.batch_tokens,
                };
                // Everything besides the source that decides a translation.
                let mut key = serde_json::json!({
                    "model": entry.model,
                    "dtype": entry.dtype,
                    "generation": entry.generation,
                    "batch_tokens": translator.batch_tokens,
                    "max_batch": translator.max_batch,
                });
                // A GPU rounds differently from the CPU kernels (CPU keys
                // stay what they were).
                if entry.device != "cpu" {
                    key["device"] = entry.device.clone().into();
                }
                let key = settings_key(key);
                state.manifest.models.push(entry);
                key
            }
        };
        for (i, language, confidence) in members {
            let path = &paths[i];
            progress.article(path, position, paths.len());
            position += 1;
            let t0 = Instant::now();
            let mut rec = new_record(path);
            let result = read_cleaned(path).and_then(|(source_sha, cleaned)| {
                let a = Article {
                    path: path.clone(),
                    source_sha,
                    cleaned,
                    language,
                    confidence,
                };
                let done = match &loaded {
                    None => state.produce(&a, &settings_key, &mut rec, |_| {
                        Ok(a.cleaned.paragraphs.join("\n\n") + "\n")
                    }),
                    Some((translator, _)) => state.produce(&a, &settings_key, &mut rec, |rec| {
                        translator.tokenizer.set_source_lang(&a.language)?;
                        translate_article(translator, path, &a.cleaned, rec, &mut |d, t| {
                            progress.segments(path, d, t)
                        })
                    }),
                };
                // Set after `produce`, which may have taken a cached record.
                rec.language = Some(a.language.clone());
                rec.language_confidence = a.confidence;
                rec.model = loaded.as_ref().map(|(_, record)| record.id.clone());
                done
            });
            if let Err(e) = result {
                let e = e.in_file(path);
                tracing::error!("{e}");
                rec.status = Status::Failed;
                rec.error = Some(e.to_string());
            }
            if loaded.is_some() {
                if let (Some(entry), Some(l)) = (state.manifest.models.last_mut(), &rec.language) {
                    if !entry.languages.contains(l) {
                        entry.languages.push(l.clone());
                    }
                }
            }
            state.finish(i, rec, t0)?;
        }
        // The model is dropped here, before the next one loads.
    }
    let mut manifest = state.manifest;
    crate::failpoint::hit("before-summary");
    if corpus.is_empty() {
        // A quiet night: nothing to translate is not a failure, and an empty
        // summary would only overwrite the last good one.
        tracing::warn!(
            "{}: no articles (*.txt); nothing to do",
            opts.corpus.display()
        );
    }
    // A shard writes no summary: `merge` does, over every shard's articles.
    let summarizer = summarizer.filter(|_| !paths.is_empty() && shard.is_none());
    manifest.summary = summarizer.map(|s| {
        progress.summary(
            manifest
                .articles
                .iter()
                .filter(|r| r.status.succeeded())
                .count(),
        );
        summary_stage(
            s,
            models,
            &SummaryPlace::of(opts),
            &manifest.articles,
            state.previous.as_ref().and_then(|p| p.summary.as_ref()),
        )
    });
    manifest.complete = true;
    manifest.seconds = start.elapsed().as_secs_f64();
    manifest.output_tokens = manifest.articles.iter().map(|r| r.output_tokens).sum();
    // Throughput of the work done now: cached articles cost nothing.
    manifest.translated_tokens = manifest
        .articles
        .iter()
        .filter(|r| r.status == Status::Ok)
        .map(|r| r.output_tokens)
        .sum();
    manifest.tokens_per_second = if state.translated_seconds > 0.0 {
        manifest.translated_tokens as f64 / state.translated_seconds
    } else {
        0.0
    };
    manifest.shard = opts.shard.as_ref().map(|(s, source)| ShardRecord {
        index: s.index,
        count: s.count,
        source: source.describe().to_string(),
        host: crate::shard::hostname(),
        articles: paths.len(),
        seconds: manifest.seconds,
        translated_tokens: manifest.translated_tokens,
        tokens_per_second: manifest.tokens_per_second,
    });
    manifest.write_to(&manifest_path)?;
    Ok(manifest)
}

/// An article path's file name (what shards are assigned by).
fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Where and how the summary stage writes: the outputs directory, the word
/// budget and the translated summary's language and model.
pub(crate) struct SummaryPlace<'a> {
    pub outputs: &'a Path,
    pub max_words: usize,
    pub summary_lang: Option<&'a (String, String)>,
}

impl<'a> SummaryPlace<'a> {
    fn of(opts: &'a RunOptions) -> Self {
        SummaryPlace {
            outputs: &opts.outputs,
            max_words: opts.max_words,
            summary_lang: opts.summary_lang.as_ref(),
        }
    }
}

/// The summary in `lang` through the English-to-`lang` model `spec`, written
/// as `summary.<lang>.md` and `.json` beside the English one.
fn translate_summary(
    summary: &crate::summary::Summary,
    models: &mut dyn Models,
    (lang, spec): (&str, &str),
    outputs: &Path,
) -> Result<crate::outputs::SummaryTranslation> {
    let (translator, record) = models.load(spec)?;
    let translated = summary.translated(&translator, lang, &record.id)?;
    let (md, json) = translated.write_as(outputs, &translated.stem())?;
    Ok(crate::outputs::SummaryTranslation {
        language: lang.to_string(),
        model: record,
        md_sha256: md,
        json_sha256: json,
    })
}

/// The summary over the translated articles, read back from `outputs/` (so
/// translations are never all held in memory), unless nothing it depends on
/// changed since the previous run and its files are intact.
pub(crate) fn summary_stage(
    s: &Summarizer,
    models: &mut dyn Models,
    opts: &SummaryPlace,
    records: &[ArticleRecord],
    previous: Option<&SummaryRecord>,
) -> SummaryRecord {
    let t0 = Instant::now();
    let inputs: Vec<(&str, &str, Option<&str>)> = records
        .iter()
        .filter(|r| r.status.succeeded())
        .filter_map(|r| {
            Some((
                r.source.as_str(),
                r.output.as_deref()?,
                r.output_sha256.as_deref(),
            ))
        })
        .collect();
    let template = s.record(opts.max_words, &Err(String::new()), inputs.len(), 0.0);
    let key = settings_key(serde_json::json!({
            "summarizer": template.summarizer,
            "model": template.model,
            "precision": template.precision,
            "generation": template.generation,
            "max_words": opts.max_words,
            "thresholds": [template.same_fact_threshold, template.related_threshold, template.supports_threshold],
            "embed_model": template.embed_model,
            "semantic_threshold": template.semantic_threshold,
            "inputs": inputs,
            "summary_lang": opts.summary_lang,
    }));
    if let Some(prev) = previous {
        let mut files = vec![
            (
                opts.outputs.join("summary.md"),
                prev.summary_md_sha256.as_deref(),
            ),
            (
                opts.outputs.join("summary.json"),
                prev.summary_json_sha256.as_deref(),
            ),
        ];
        if let Some(t) = &prev.translation {
            let stem = format!("summary.{}", t.language);
            files.push((
                opts.outputs.join(format!("{stem}.md")),
                Some(t.md_sha256.as_str()),
            ));
            files.push((
                opts.outputs.join(format!("{stem}.json")),
                Some(t.json_sha256.as_str()),
            ));
        }
        let files: Vec<(&Path, Option<&str>)> =
            files.iter().map(|(p, h)| (p.as_path(), *h)).collect();
        if reusable(prev.status, prev.cache_key.as_deref(), &key, &files) {
            return SummaryRecord {
                status: Status::Cached,
                seconds: 0.0,
                ..prev.clone()
            };
        }
    }
    let result = if inputs.is_empty() {
        Err("no article was translated, so there is nothing to summarize".to_string())
    } else {
        inputs
            .iter()
            .map(|&(source, output, _)| {
                let p = opts.outputs.join(output);
                std::fs::read_to_string(&p)
                    .map(|text| crate::summary::Article {
                        name: source.to_string(),
                        text,
                    })
                    .map_err(|e| {
                        Error::file(
                            &p,
                            "cannot be read back",
                            "check the outputs directory",
                            Some(Box::new(e)),
                        )
                    })
            })
            .collect::<Result<Vec<_>>>()
            .and_then(|english| s.summarize(&english, opts.max_words))
            .and_then(|summary| summary.write(opts.outputs).map(|h| (summary, h)))
            .and_then(|(summary, h)| {
                let translation = match &opts.summary_lang {
                    Some((lang, spec)) => Some(translate_summary(
                        &summary,
                        models,
                        (lang, spec),
                        opts.outputs,
                    )?),
                    None => None,
                };
                Ok((summary, (h, translation)))
            })
            .map_err(|e| {
                tracing::error!("summary: {e}");
                e.to_string()
            })
    };
    let (hashes, translation) = match result.as_ref() {
        Ok((_, (h, t))) => (Some(h.clone()), t.clone()),
        Err(_) => (None, None),
    };
    let result = result.map(|(summary, _)| summary);
    let mut rec = s.record(
        opts.max_words,
        &result,
        inputs.len(),
        t0.elapsed().as_secs_f64(),
    );
    rec.cache_key = Some(key);
    rec.translation = translation;
    if let Some((md, json)) = hashes {
        rec.summary_md_sha256 = Some(md);
        rec.summary_json_sha256 = Some(json);
    }
    rec
}

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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::error::{Error, Result};
use crate::outputs::{
    reusable, sha256_bytes, write_atomic, ArticleRecord, Manifest, ModelRecord, Status,
    SummaryRecord,
};
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
    bytes: &[u8],
    rec: &mut ArticleRecord,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<String> {
    let text = ingest::decode(path, bytes)?;
    let cleaned = ingest::clean(&text);
    rec.dropped_lines = cleaned.dropped_lines.clone();
    if cleaned.paragraphs.is_empty() {
        return Err(Error::file(
            path,
            "has no text to translate (empty or only whitespace/noise)",
            "remove the file or fill it with the article's text",
            None,
        ));
    }
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
struct Previous {
    articles: BTreeMap<String, ArticleRecord>,
    summary: Option<SummaryRecord>,
    orphaned_outputs: Vec<String>,
}

/// Read outputs/manifest.json, if a usable one is there (anything else means
/// nothing is cached: the safe direction).
fn previous_manifest(outputs: &Path) -> Option<Previous> {
    let text = std::fs::read_to_string(outputs.join("manifest.json")).ok()?;
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

/// Remove temporary files a killed run left (we hold the lock, so none is live).
fn remove_stale_temporaries(outputs: &Path) {
    let Ok(rd) = std::fs::read_dir(outputs) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.contains(".tmp-") {
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

/// Run over the corpus, then summarize the English articles when a
/// summarizer is given (`summary.md`, `summary.json`). Article and summary
/// failures are recorded, not returned; the error is for setup problems
/// (corpus or outputs directory unusable, outputs locked by another run).
pub fn run(
    translator: &Translator,
    model: ModelRecord,
    summarizer: Option<&Summarizer>,
    opts: &RunOptions,
    progress: &mut dyn Progress,
) -> Result<Manifest> {
    let articles = list_corpus(&opts.corpus)?;
    std::fs::create_dir_all(&opts.outputs).map_err(|e| {
        Error::file(
            &opts.outputs,
            "outputs directory cannot be created",
            "check permissions or pass --outputs DIR",
            Some(Box::new(e)),
        )
    })?;
    let _lock = crate::lock::OutputsLock::acquire(&opts.outputs, opts.wait)?;
    remove_stale_temporaries(&opts.outputs);
    let recorded = previous_manifest(&opts.outputs);
    let orphaned_outputs = orphans(&opts.outputs, &articles, recorded.as_ref(), opts.prune);
    let previous = if opts.force { None } else { recorded };
    let start = Instant::now();
    let mut manifest = Manifest {
        complete: false,
        tool: "transum".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        model,
        device: "cpu".into(),
        dtype: translator.precision(),
        generation: translator.options.clone(),
        batch_tokens: translator.batch_tokens,
        articles: Vec::with_capacity(articles.len()),
        orphaned_outputs,
        summary: None,
        seconds: 0.0,
        output_tokens: 0,
        translated_tokens: 0,
        tokens_per_second: 0.0,
    };
    // Everything besides the source that decides a translation.
    let settings_key = sha256_bytes(
        serde_json::json!({
            "version": manifest.version,
            "model": manifest.model,
            "dtype": manifest.dtype,
            "generation": manifest.generation,
            "batch_tokens": translator.batch_tokens,
            "max_batch": translator.max_batch,
        })
        .to_string()
        .as_bytes(),
    );
    let mut translated_seconds = 0.0;
    for (i, path) in articles.iter().enumerate() {
        progress.article(path, i, articles.len());
        let t0 = Instant::now();
        let mut rec = ArticleRecord {
            source: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            output: None,
            status: Status::Ok,
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
        };
        let result = read_article(path).and_then(|bytes| {
            let source_sha = sha256_bytes(&bytes);
            let key = sha256_bytes(format!("{source_sha}\n{settings_key}").as_bytes());
            rec.source_sha256 = Some(source_sha);
            rec.cache_key = Some(key.clone());
            let name = output_name(path);
            let out_path = opts.outputs.join(&name);
            if let Some(prev) = previous.as_ref().and_then(|p| p.articles.get(&rec.source)) {
                if prev.output.as_deref() == Some(name.as_str())
                    && reusable(
                        prev.status,
                        prev.cache_key.as_deref(),
                        &key,
                        &[(&out_path, prev.output_sha256.as_deref())],
                    )
                {
                    rec = ArticleRecord {
                        status: Status::Cached,
                        seconds: 0.0,
                        ..prev.clone()
                    };
                    return Ok(name);
                }
            }
            let text = translate_article(translator, path, &bytes, &mut rec, &mut |d, t| {
                progress.segments(path, d, t)
            })?;
            write_atomic(&out_path, text.as_bytes())?;
            rec.output_sha256 = Some(sha256_bytes(text.as_bytes()));
            Ok(name)
        });
        match result {
            Ok(name) => rec.output = Some(name),
            Err(e) => {
                let e = e.in_file(path);
                tracing::error!("{e}");
                rec.status = Status::Failed;
                rec.error = Some(e.to_string());
            }
        }
        if rec.status != Status::Cached {
            rec.seconds = t0.elapsed().as_secs_f64();
            translated_seconds += rec.seconds;
        }
        manifest.articles.push(rec);
        // The record of finished work survives a kill from here on.
        manifest.write(&opts.outputs)?;
        if crate::failpoint::armed() {
            crate::failpoint::hit(&format!("after-article:{}", i + 1));
        }
    }
    crate::failpoint::hit("before-summary");
    if articles.is_empty() {
        // A quiet night: nothing to translate is not a failure, and an empty
        // summary would only overwrite the last good one.
        tracing::warn!(
            "{}: no articles (*.txt); nothing to do",
            opts.corpus.display()
        );
    }
    manifest.summary = summarizer.filter(|_| !articles.is_empty()).map(|s| {
        progress.summary(
            manifest
                .articles
                .iter()
                .filter(|r| r.status.succeeded())
                .count(),
        );
        summary_stage(
            s,
            opts,
            &manifest.articles,
            previous.as_ref().and_then(|p| p.summary.as_ref()),
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
    manifest.tokens_per_second = if translated_seconds > 0.0 {
        manifest.translated_tokens as f64 / translated_seconds
    } else {
        0.0
    };
    manifest.write(&opts.outputs)?;
    Ok(manifest)
}

/// The summary over the translated articles, read back from `outputs/` (so
/// translations are never all held in memory), unless nothing it depends on
/// changed since the previous run and its files are intact.
fn summary_stage(
    s: &Summarizer,
    opts: &RunOptions,
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
    let key = sha256_bytes(
        serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "summarizer": template.summarizer,
            "model": template.model,
            "precision": template.precision,
            "generation": template.generation,
            "max_words": opts.max_words,
            "thresholds": [template.same_fact_threshold, template.related_threshold, template.supports_threshold],
            "inputs": inputs,
        })
        .to_string()
        .as_bytes(),
    );
    if let Some(prev) = previous {
        if reusable(
            prev.status,
            prev.cache_key.as_deref(),
            &key,
            &[
                (
                    &opts.outputs.join("summary.md"),
                    prev.summary_md_sha256.as_deref(),
                ),
                (
                    &opts.outputs.join("summary.json"),
                    prev.summary_json_sha256.as_deref(),
                ),
            ],
        ) {
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
            .and_then(|summary| summary.write(&opts.outputs).map(|h| (summary, h)))
            .map_err(|e| {
                tracing::error!("summary: {e}");
                e.to_string()
            })
    };
    let hashes = result.as_ref().ok().map(|(_, h)| h.clone());
    let result = result.map(|(summary, _)| summary);
    let mut rec = s.record(
        opts.max_words,
        &result,
        inputs.len(),
        t0.elapsed().as_secs_f64(),
    );
    rec.cache_key = Some(key);
    if let Some((md, json)) = hashes {
        rec.summary_md_sha256 = Some(md);
        rec.summary_json_sha256 = Some(json);
    }
    rec
}

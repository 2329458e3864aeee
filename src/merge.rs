//! `transum merge`: after every shard of a sharded run (`run --shard I/N`)
//! finished, write the corpus manifest and the summary exactly as one
//! single-machine run would have: the same article records in corpus order,
//! the same summary (incremental: kept when nothing it reads changed), plus
//! each shard's record.
//!
//! It refuses, naming what to rerun, when a shard's manifest is missing or
//! incomplete, or when a corpus article is in no shard's manifest (added
//! after its shard ran). Talks to: the pipeline (the summary stage, the
//! manifest readers), shard.rs (assignment), outputs.rs (the manifest).

use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::error::{Error, Result};
use crate::outputs::{Manifest, ModelEntry};
use crate::pipeline::{
    list_corpus, output_name, previous_manifest, summary_stage, Models, Progress, SummaryPlace,
};
use crate::shard::Shard;
use crate::summary::Summarizer;

/// What `merge` was asked to do.
#[derive(Debug, Clone)]
pub struct MergeOptions {
    pub corpus: PathBuf,
    pub outputs: PathBuf,
    /// The shard count; default: the one the shard manifests agree on.
    pub shards: Option<usize>,
    pub max_words: usize,
    pub summary_lang: Option<(String, String)>,
    /// Wait for another run or merge holding `outputs/` instead of failing.
    pub wait: bool,
}

/// How a merge ended.
#[derive(Debug)]
pub enum MergeOutcome {
    /// The corpus manifest (and the summary, when a summarizer was given).
    Done(Box<Manifest>),
    /// Not every shard is finished: what is missing, one line each.
    Incomplete(Vec<String>),
}

/// The shard counts that shard manifests exist for in `outputs/shards/`.
fn counts_present(dir: &Path) -> Vec<usize> {
    let mut counts: Vec<usize> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Shard::from_manifest_name(&e.file_name().to_string_lossy()))
        .map(|s| s.count)
        .collect();
    counts.sort_unstable();
    counts.dedup();
    counts
}

/// Read a shard's manifest; None when absent, an error when unreadable.
fn read_shard(path: &Path) -> Result<Option<Manifest>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::file(
                path,
                "cannot be read",
                "check the shared outputs directory",
                Some(Box::new(e)),
            ))
        }
    };
    serde_json::from_str(&text).map(Some).map_err(|e| {
        Error::file(
            path,
            "is not a transum shard manifest",
            "run that shard again (`transum run --shard I/N`), which rewrites it",
            Some(Box::new(e)),
        )
    })
}

/// Check every shard, then write `outputs/manifest.json` and the summary.
pub fn merge(
    models: &mut dyn Models,
    summarizer: Option<&Summarizer>,
    opts: &MergeOptions,
    progress: &mut dyn Progress,
) -> Result<MergeOutcome> {
    let start = Instant::now();
    let corpus = list_corpus(&opts.corpus)?;
    let dir = Shard::dir(&opts.outputs);
    let count = match opts.shards {
        Some(n) => Shard::new(0, n)?.count,
        None => match counts_present(&dir)[..] {
            [n] => n,
            [] => {
                return Err(Error::file(
                    &dir,
                    "holds no shard manifests (I-of-N.json)",
                    "run the shards first (`transum run --shard I/N` on each machine), with this --outputs",
                    None,
                ))
            }
            ref several => {
                return Err(Error::file(
                    &dir,
                    format!(
                        "holds manifests of runs with different shard counts ({})",
                        several
                            .iter()
                            .map(|n| n.to_string())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    "pass --shards N for the current run (and delete the other count's files)",
                    None,
                ))
            }
        },
    };
    // One writer of manifest.json and the summary at a time (merge runs on
    // one machine, like a single run).
    let _lock = crate::lock::OutputsLock::acquire(&opts.outputs, opts.wait)?;

    let mut problems: Vec<String> = crate::shard::running(&opts.outputs)
        .into_iter()
        .map(|(stem, who)| format!("shard {stem}: running now ({who}); merge once it ends"))
        .collect();
    let mut shards = Vec::with_capacity(count);
    for index in 0..count {
        let shard = Shard { index, count };
        let path = shard.manifest_path(&opts.outputs);
        match read_shard(&path)? {
            None => problems.push(format!(
                "shard {index} of {count} ({}): no manifest; it has not run (run it: transum run --shard {index}/{count})",
                path.display()
            )),
            Some(m) if !m.complete => problems.push(format!(
                "shard {index} of {count} ({}): incomplete; it is still running or was killed (run it again: transum run --shard {index}/{count})",
                path.display()
            )),
            Some(m) => shards.push(m),
        }
    }
    if !problems.is_empty() {
        return Ok(MergeOutcome::Incomplete(problems));
    }

    // Every corpus article from the manifest of the shard that owns it.
    let mut articles = Vec::with_capacity(corpus.len());
    for path in &corpus {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let owner = crate::shard::shard_of(&name, count);
        match shards[owner].articles.iter().find(|a| a.source == name) {
            Some(a) => articles.push(a.clone()),
            None => problems.push(format!(
                "{}: not in shard {owner} of {count}'s manifest (added after it ran? run it again: transum run --shard {owner}/{count})",
                path.display()
            )),
        }
    }
    if !problems.is_empty() {
        return Ok(MergeOutcome::Incomplete(problems));
    }

    // Models in shard order, one entry per model, their languages joined.
    let mut entries: Vec<ModelEntry> = Vec::new();
    for m in shards.iter().flat_map(|s| &s.models) {
        let same = |e: &&mut ModelEntry| {
            e.model.id == m.model.id && e.model.files == m.model.files && e.dtype == m.dtype
        };
        match entries.iter_mut().find(|e| same(e)) {
            Some(e) => {
                for l in &m.languages {
                    if !e.languages.contains(l) {
                        e.languages.push(l.clone());
                    }
                }
            }
            None => entries.push(m.clone()),
        }
    }
    // Outputs of articles no longer in the corpus that a shard recorded.
    let current: std::collections::BTreeSet<String> =
        corpus.iter().map(|p| output_name(p)).collect();
    let mut orphaned: Vec<String> = shards
        .iter()
        .flat_map(|s| {
            s.orphaned_outputs.iter().cloned().chain(
                s.articles
                    .iter()
                    .filter(|a| {
                        !corpus.iter().any(|p| {
                            p.file_name()
                                .is_some_and(|n| n.to_string_lossy() == a.source)
                        })
                    })
                    .filter_map(|a| a.output.clone()),
            )
        })
        .filter(|n| !current.contains(n) && opts.outputs.join(n).is_file())
        .collect();
    orphaned.sort();
    orphaned.dedup();

    let previous = previous_manifest(&opts.outputs.join("manifest.json"));
    let summary = summarizer.filter(|_| !corpus.is_empty()).map(|s| {
        progress.summary(articles.iter().filter(|r| r.status.succeeded()).count());
        summary_stage(
            s,
            models,
            &SummaryPlace {
                outputs: &opts.outputs,
                max_words: opts.max_words,
                summary_lang: opts.summary_lang.as_ref(),
            },
            &articles,
            previous.as_ref().and_then(|p| p.summary.as_ref()),
        )
    });
    let translated_tokens: usize = shards.iter().map(|s| s.translated_tokens).sum();
    // Translation time summed over shards (tokens / their throughput).
    let seconds: f64 = shards
        .iter()
        .filter(|s| s.tokens_per_second > 0.0)
        .map(|s| s.translated_tokens as f64 / s.tokens_per_second)
        .sum();
    let manifest = Manifest {
        complete: true,
        tool: "transum".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        models: entries,
        output_tokens: articles.iter().map(|r| r.output_tokens).sum(),
        articles,
        orphaned_outputs: orphaned,
        summary,
        seconds: start.elapsed().as_secs_f64(),
        translated_tokens,
        tokens_per_second: if seconds > 0.0 {
            translated_tokens as f64 / seconds
        } else {
            0.0
        },
        shard: None,
        shards: shards.iter().filter_map(|s| s.shard.clone()).collect(),
    };
    manifest.write(&opts.outputs)?;
    Ok(MergeOutcome::Done(Box::new(manifest)))
}

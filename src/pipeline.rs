//! The batch run: every article of `corpus/` -> `outputs/<stem>.en.txt`, plus
//! `outputs/manifest.json` describing what decided the outputs.
//!
//! Data path per article: read -> decode -> clean (text/ingest.rs) -> sentences
//! (text/mod.rs) -> split what exceeds the model window -> translate (batched)
//! -> reassemble paragraphs -> atomic write. A failing article is reported and
//! skipped; the others are still written. Every file is written atomically
//! (temporary file in the same directory, then rename), so no output is ever
//! half-written.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::text::ingest;
use crate::Translator;

/// What a run was asked to do.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub corpus: PathBuf,
    pub outputs: PathBuf,
    /// Word budget of the summary.
    pub max_words: usize,
}

/// The model's identity for the manifest.
#[derive(Debug, Clone, Serialize)]
pub struct ModelRecord {
    /// What --model said.
    pub id: String,
    /// Requested revision (hub) or null (local directory).
    pub revision: Option<String>,
    /// The commit the files came from, when known (hub snapshot).
    pub resolved_revision: Option<String>,
    /// sha256 of every weight and tokenizer file used, by file name.
    pub files: BTreeMap<String, String>,
}

/// Per-article result.
#[derive(Debug, Clone, Serialize)]
pub struct ArticleRecord {
    pub source: String,
    pub output: Option<String>,
    pub status: String,
    pub error: Option<String>,
    pub source_sha256: Option<String>,
    pub paragraphs: usize,
    pub sentences: usize,
    pub segments: usize,
    pub source_tokens: usize,
    pub output_tokens: usize,
    pub dropped_lines: Vec<usize>,
    pub seconds: f64,
}

/// outputs/manifest.json
#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    pub tool: String,
    pub version: String,
    pub model: ModelRecord,
    pub device: String,
    pub dtype: String,
    pub generation: crate::generation::GenerationOptions,
    pub batch_tokens: usize,
    pub articles: Vec<ArticleRecord>,
    /// The summary stage (absent when the run made no summary).
    pub summary: Option<crate::summary::SummaryRecord>,
    pub seconds: f64,
    pub output_tokens: usize,
    pub tokens_per_second: f64,
}

/// sha256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::Digest;
    let mut f = std::fs::File::open(path).map_err(|e| {
        Error::file(
            path,
            "cannot be read",
            "check permissions",
            Some(Box::new(e)),
        )
    })?;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut f, &mut h)
        .map_err(|e| Error::file(path, "cannot be read", "check the disk", Some(Box::new(e))))?;
    Ok(format!("{:x}", h.finalize()))
}

fn sha256_bytes(b: &[u8]) -> String {
    use sha2::Digest;
    format!("{:x}", sha2::Sha256::digest(b))
}

/// Write `data` to `path` atomically: a temporary file in the same directory,
/// flushed and synced, then renamed over the target.
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let io = |e: std::io::Error| {
        Error::file(
            path,
            "cannot be written",
            "check free space and permissions of the outputs directory",
            Some(Box::new(e)),
        )
    };
    let mut f = std::fs::File::create(&tmp).map_err(io)?;
    f.write_all(data).map_err(io)?;
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e)
    })
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

/// Translate one article's text into English paragraphs.
fn translate_article(
    translator: &Translator,
    path: &Path,
    rec: &mut ArticleRecord,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|e| {
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
    })?;
    rec.source_sha256 = Some(sha256_bytes(&bytes));
    let text = ingest::decode(path, &bytes)?;
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
    // Each segment is encoded once: the window check's encodings are kept and
    // handed to the translator.
    let encoded = std::cell::RefCell::new(std::collections::HashMap::<String, Vec<u32>>::new());
    let count = |s: &str| {
        if let Some(ids) = encoded.borrow().get(s) {
            return ids.len();
        }
        match translator.encode_unit(s) {
            Ok(ids) => {
                let n = ids.len();
                encoded.borrow_mut().insert(s.to_string(), ids);
                n
            }
            Err(_) => usize::MAX,
        }
    };
    // Units per paragraph: sentences, each split further if it exceeds the window.
    let mut units: Vec<Vec<String>> = Vec::with_capacity(cleaned.paragraphs.len());
    for p in &cleaned.paragraphs {
        let mut u = Vec::new();
        for s in crate::text::split_sentences(p) {
            rec.sentences += 1;
            let pieces = ingest::split_to_fit(s, window, &count);
            if pieces.len() > 1 {
                tracing::warn!(
                    "{}: a sentence of {} tokens exceeds the model's {window}-token window; split into {} segments",
                    path.display(),
                    count(s),
                    pieces.len()
                );
            }
            u.extend(pieces);
        }
        units.push(u);
    }
    rec.paragraphs = units.len();
    let mut memo = encoded.into_inner();
    let ids = units
        .iter()
        .flatten()
        .map(|u| match memo.remove(u) {
            Some(ids) => Ok(ids),
            None => translator.encode_unit(u),
        })
        .collect::<Result<Vec<_>>>()?;
    rec.segments = ids.len();
    let total = ids.len();
    let mut done = 0;
    let out = translator.translate_encoded(ids, |n| {
        done += n;
        progress(done, total);
    })?;
    rec.source_tokens = out.iter().map(|t| t.source_ids.len()).sum();
    rec.output_tokens = out.iter().map(|t| t.hypothesis.tokens.len()).sum();
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

/// Run over the corpus, then summarize the English articles when a
/// summarizer is given (`summary.md`, `summary.json`). Article and summary
/// failures are recorded, not returned; the error is for setup problems
/// (corpus or outputs directory unusable).
pub fn run(
    translator: &Translator,
    model: ModelRecord,
    summarizer: Option<&crate::summary::Summarizer>,
    opts: &RunOptions,
    mut on_article: impl FnMut(&Path, usize, usize),
    mut on_progress: impl FnMut(&Path, usize, usize),
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
    let start = Instant::now();
    let mut records = Vec::with_capacity(articles.len());
    let mut english = Vec::with_capacity(articles.len());
    for (i, path) in articles.iter().enumerate() {
        on_article(path, i, articles.len());
        let t0 = Instant::now();
        let mut rec = ArticleRecord {
            source: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            output: None,
            status: "ok".into(),
            error: None,
            source_sha256: None,
            paragraphs: 0,
            sentences: 0,
            segments: 0,
            source_tokens: 0,
            output_tokens: 0,
            dropped_lines: Vec::new(),
            seconds: 0.0,
        };
        let result = translate_article(translator, path, &mut rec, &mut |d, t| {
            on_progress(path, d, t)
        })
        .and_then(|text| {
            let name = output_name(path);
            write_atomic(&opts.outputs.join(&name), text.as_bytes())?;
            english.push(crate::summary::Article {
                name: rec.source.clone(),
                text,
            });
            Ok(name)
        });
        match result {
            Ok(name) => rec.output = Some(name),
            Err(e) => {
                tracing::error!("{e}");
                rec.status = "failed".into();
                rec.error = Some(e.to_string());
            }
        }
        rec.seconds = t0.elapsed().as_secs_f64();
        records.push(rec);
    }
    let summary = summarizer.map(|s| {
        let t0 = Instant::now();
        let result = if english.is_empty() {
            Err("no article was translated, so there is nothing to summarize".to_string())
        } else {
            s.summarize(&english, opts.max_words)
                .and_then(|summary| summary.write(&opts.outputs).map(|_| summary))
                .map_err(|e| {
                    tracing::error!("summary: {e}");
                    e.to_string()
                })
        };
        s.record(
            opts.max_words,
            &result,
            english.len(),
            t0.elapsed().as_secs_f64(),
        )
    });
    let seconds = start.elapsed().as_secs_f64();
    let output_tokens: usize = records.iter().map(|r| r.output_tokens).sum();
    let manifest = Manifest {
        tool: "transum".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        model,
        device: "cpu".into(),
        dtype: format!("{:?}", translator.model_dtype()).to_lowercase(),
        generation: translator.options.clone(),
        batch_tokens: translator.batch_tokens,
        articles: records,
        summary,
        seconds,
        output_tokens,
        tokens_per_second: if seconds > 0.0 {
            output_tokens as f64 / seconds
        } else {
            0.0
        },
    };
    let json = serde_json::to_vec_pretty(&manifest).expect("the manifest serializes");
    write_atomic(&opts.outputs.join("manifest.json"), &json)?;
    Ok(manifest)
}

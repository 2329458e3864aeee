//! What a run leaves in `outputs/` and how it is written: sha256 hashing,
//! atomic writes (temporary file, then rename), the manifest and its record
//! types, the status of an article or of the summary, and the one check that
//! decides whether an earlier result can be kept.
//!
//! Low level on purpose: the pipeline, the summary and the hub import it from
//! above, and it imports none of them, so data flows one way.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What became of an article or of the summary in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Made by this run.
    Ok,
    /// Kept from a finished earlier run: its inputs and settings are
    /// unchanged and its files intact.
    Cached,
    /// Failed; the record's `error` says why.
    Failed,
}

impl Status {
    /// Whether a result exists (made now or kept).
    pub fn succeeded(self) -> bool {
        self != Status::Failed
    }
}

/// The model's identity for the manifest.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ArticleRecord {
    pub source: String,
    pub output: Option<String>,
    pub status: Status,
    /// Its language (ISO 639-1 where there is one), detected or given.
    #[serde(default)]
    pub language: Option<String>,
    /// The detector's confidence; null when `--source-lang` gave the language.
    #[serde(default)]
    pub language_confidence: Option<f64>,
    /// The model that translated it (its id); null when it was already in
    /// English and passed through, or failed before a model was chosen.
    #[serde(default)]
    pub model: Option<String>,
    pub error: Option<String>,
    pub source_sha256: Option<String>,
    pub paragraphs: usize,
    pub sentences: usize,
    pub segments: usize,
    pub source_tokens: usize,
    pub output_tokens: usize,
    pub dropped_lines: Vec<usize>,
    /// Segments whose translation reached a length limit, by the bound that
    /// stopped it (`positions`, `source_factor`, `checkpoint`, `requested`).
    #[serde(default)]
    pub cut_segments: BTreeMap<String, usize>,
    /// sha256 of the output file as written.
    #[serde(default)]
    pub output_sha256: Option<String>,
    /// Hash of the source and of everything that decides its translation.
    #[serde(default)]
    pub cache_key: Option<String>,
    pub seconds: f64,
}

/// The summary stage's entry in `manifest.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SummaryRecord {
    pub summarizer: String,
    pub model: Option<ModelRecord>,
    /// Precision of the summary model's projections (f32, q8_0, ...).
    #[serde(default)]
    pub precision: Option<String>,
    pub generation: Option<crate::generation::GenerationOptions>,
    pub max_words: usize,
    pub same_fact_threshold: f32,
    pub related_threshold: f32,
    pub supports_threshold: f32,
    /// The sentence encoder of "same fact" (`--embed-model`), if any.
    #[serde(default)]
    pub embed_model: Option<ModelRecord>,
    /// Its cosine threshold.
    #[serde(default)]
    pub semantic_threshold: Option<f32>,
    pub articles: usize,
    pub sentences: usize,
    pub status: Status,
    pub error: Option<String>,
    /// Hash of everything the summary depends on (settings and inputs).
    #[serde(default)]
    pub cache_key: Option<String>,
    /// sha256 of summary.md and summary.json as written.
    #[serde(default)]
    pub summary_md_sha256: Option<String>,
    #[serde(default)]
    pub summary_json_sha256: Option<String>,
    /// The summary translated from English (`--summary-lang`), if asked.
    #[serde(default)]
    pub translation: Option<SummaryTranslation>,
    pub seconds: f64,
}

/// The translated summary: `summary.<language>.md` and `.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SummaryTranslation {
    pub language: String,
    pub model: ModelRecord,
    pub md_sha256: String,
    pub json_sha256: String,
}

/// outputs/manifest.json, or a shard's `outputs/shards/I-of-N.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Manifest {
    /// False while the run is in progress (the manifest is rewritten after
    /// every article), true once it finished.
    pub complete: bool,
    pub tool: String,
    pub version: String,
    /// The translation models this run used, in the order it loaded them.
    pub models: Vec<ModelEntry>,
    /// Articles in corpus (name) order.
    pub articles: Vec<ArticleRecord>,
    /// Output files in the outputs directory whose article is no longer in the
    /// corpus: kept (unless `--prune`), but not current, and never summarized.
    pub orphaned_outputs: Vec<String>,
    /// The summary stage (absent when the run made no summary).
    pub summary: Option<SummaryRecord>,
    pub seconds: f64,
    /// Output tokens of all articles' translations (cached ones included).
    pub output_tokens: usize,
    /// Tokens generated by this run (not by earlier runs whose output was kept).
    pub translated_tokens: usize,
    /// translated_tokens per second of translation time.
    pub tokens_per_second: f64,
    /// In a shard's manifest: which shard of how many, and how it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<ShardRecord>,
    /// In the manifest `transum merge` writes: every shard's record.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<ShardRecord>,
}

/// One shard's run (`transum run --shard I/N`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardRecord {
    pub index: usize,
    pub count: usize,
    /// What gave the index: `--shard`, a Slurm job array, a Kubernetes Indexed Job.
    pub source: String,
    pub host: String,
    /// The corpus articles this shard owns.
    pub articles: usize,
    pub seconds: f64,
    pub translated_tokens: usize,
    pub tokens_per_second: f64,
}

/// A translation model a run used, and what decided its outputs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelEntry {
    #[serde(flatten)]
    pub model: ModelRecord,
    /// The languages of the articles it translated.
    pub languages: Vec<String>,
    pub device: String,
    pub dtype: String,
    pub generation: crate::generation::GenerationOptions,
    pub batch_tokens: usize,
}

impl Manifest {
    /// Write `outputs/manifest.json` atomically.
    pub fn write(&self, outputs: &Path) -> Result<()> {
        self.write_to(&outputs.join("manifest.json"))
    }

    /// Write the manifest to `path` atomically.
    pub fn write_to(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_vec_pretty(self).expect("the manifest serializes");
        write_atomic(path, &json)
    }
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

/// sha256 of bytes, hex.
pub fn sha256_bytes(b: &[u8]) -> String {
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
    if crate::failpoint::armed() {
        f.write_all(&data[..data.len() / 2]).map_err(io)?;
        f.flush().map_err(io)?;
        crate::failpoint::hit(&format!("mid-write:{name}"));
        f.write_all(&data[data.len() / 2..]).map_err(io)?;
    } else {
        f.write_all(data).map_err(io)?;
    }
    f.sync_all().map_err(io)?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e)
    })
}

/// Whether `path` holds exactly the bytes whose sha256 is `want`.
fn intact(path: &Path, want: Option<&str>) -> bool {
    match want {
        Some(w) => sha256_file(path).is_ok_and(|h| h == w),
        None => false,
    }
}

/// The one cache check, for articles and the summary alike: an earlier
/// result is kept when it succeeded, was made from exactly the inputs and
/// settings hashed into `key`, and every file it wrote still holds the bytes
/// it recorded.
pub fn reusable(
    status: Status,
    recorded_key: Option<&str>,
    key: &str,
    files: &[(&Path, Option<&str>)],
) -> bool {
    status.succeeded()
        && recorded_key == Some(key)
        && files.iter().all(|(path, sha)| intact(path, *sha))
}

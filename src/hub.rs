//! Model location: a local checkpoint directory, or a Hugging Face Hub id with an
//! optional revision (`org/name[@rev]`) fetched with `hf-hub` into the cache
//! directory (`models/` by default, in the hub's own `models--org--name` layout).
//! In offline mode only the cache is read, and a missing file is an error naming
//! the file and the command that fetches it.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};

use crate::error::{Error, Result};
use crate::weights::WEIGHT_FILES;

/// Files used when present.
pub const OPTIONAL_FILES: [&str; 3] = [
    "generation_config.json",
    "tokenizer_config.json",
    "target_vocab.json",
];
/// Files a sentence-transformers checkpoint (`model_type` bert, e.g.
/// all-MiniLM-L6-v2) needs besides config.json: its tokenizer, and the
/// modules that say how it pools and normalizes (see summary/embed.rs).
const ENCODER_FILES: [&str; 3] = ["tokenizer.json", "modules.json", "1_Pooling/config.json"];
/// Used when present: the encoder's maximum length.
const ENCODER_OPTIONAL_FILES: [&str; 1] = ["sentence_bert_config.json"];
/// A sentence encoder's weights: safetensors only.
const ENCODER_WEIGHT_FILES: [&str; 1] = ["model.safetensors"];
/// Every tokenizer file any family uses (for the manifest's hashes).
const TOKENIZER_FILES: [&str; 7] = [
    "sentencepiece.bpe.model",
    "source.spm",
    "target.spm",
    "vocab.json",
    "merges.txt",
    "tokenizer.json",
    "spiece.model",
];

/// The tokenizer files a checkpoint of `model_type` needs: alternative sets,
/// in order of preference (see tokenizer/).
pub fn tokenizer_file_sets(model_type: &str) -> &'static [&'static [&'static str]] {
    match model_type {
        "marian" => &[&["source.spm", "target.spm", "vocab.json"]],
        "pegasus" => &[&["tokenizer.json"], &["spiece.model"]],
        // M2M100's own files, or NLLB-200's tokenizer.json.
        "m2m_100" => &[
            &["sentencepiece.bpe.model", "vocab.json"],
            &["tokenizer.json"],
        ],
        _ => &[&["tokenizer.json"], &["vocab.json", "merges.txt"]],
    }
}

/// The files a checkpoint needs, decided by its config.json's `model_type`.
struct FilePlan {
    /// Alternative sets of required files besides config.json, in order of preference.
    sets: &'static [&'static [&'static str]],
    /// Used when present.
    optional: &'static [&'static str],
    /// Weight files, in order of preference.
    weights: &'static [&'static str],
}

/// What a config.json's `model_type` needs, checked to be one transum runs
/// (an unsupported one is named as such, not as a tokenizer file it lacks):
/// a seq2seq family of models/bart.rs, or a BERT sentence encoder.
fn file_plan(config: &Path) -> Result<FilePlan> {
    let v = crate::tokenizer::read_json(config)?;
    let t = v
        .get("model_type")
        .and_then(|t| t.as_str())
        .unwrap_or_default()
        .to_string();
    if t == "bert" {
        return Ok(FilePlan {
            sets: &[&ENCODER_FILES],
            optional: &ENCODER_OPTIONAL_FILES,
            weights: &ENCODER_WEIGHT_FILES,
        });
    }
    crate::models::bart::Arch::for_model_type(&t).map_err(|e| e.in_file(config))?;
    Ok(FilePlan {
        sets: tokenizer_file_sets(&t),
        optional: &OPTIONAL_FILES,
        weights: &WEIGHT_FILES,
    })
}

fn describe_sets(sets: &[&[&str]]) -> String {
    sets.iter()
        .map(|s| s.join(" + "))
        .collect::<Vec<_>>()
        .join(", or ")
}

/// The first tokenizer file set fully present in `dir`, or an error naming them.
fn check_tokenizer_files(dir: &Path, hint: &str) -> Result<()> {
    let config = dir.join("config.json");
    if !config.is_file() {
        return Err(Error::file(
            config,
            "is missing from the model directory",
            hint.to_string(),
            None,
        ));
    }
    let sets = file_plan(&config)?.sets;
    if sets
        .iter()
        .any(|set| set.iter().all(|f| dir.join(f).is_file()))
    {
        return Ok(());
    }
    Err(Error::file(
        dir,
        format!(
            "has no complete tokenizer: expected {}",
            describe_sets(sets)
        ),
        hint.to_string(),
        None,
    ))
}

/// What `--model` names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSpec {
    /// A directory holding the checkpoint files.
    Local(PathBuf),
    /// A hub repository and revision (branch, tag or commit; default `main`).
    Hub { id: String, revision: String },
}

impl ModelSpec {
    /// Parse `DIR` or `org/name[@revision]`; an existing directory wins.
    pub fn parse(s: &str) -> Result<Self> {
        let path = Path::new(s);
        if path.is_dir() {
            return Ok(ModelSpec::Local(path.to_path_buf()));
        }
        let (id, revision) = match s.split_once('@') {
            Some((id, rev)) if !rev.is_empty() => (id, rev.to_string()),
            Some(_) => {
                return Err(Error::setting(
                    format!("--model {s:?} has an empty revision after '@'"),
                    "write org/name@revision, e.g. Helsinki-NLP/opus-mt-fr-en@main",
                ))
            }
            None => (s, "main".to_string()),
        };
        let parts: Vec<&str> = id.split('/').collect();
        if parts.len() != 2
            || parts.iter().any(|p| p.is_empty())
            || s.starts_with('.')
            || s.starts_with('/')
        {
            return Err(Error::setting(
                format!("--model {s:?} is neither an existing directory nor a hub id"),
                "pass a checkpoint directory, or a hub id like Helsinki-NLP/opus-mt-fr-en[@revision]",
            ));
        }
        Ok(ModelSpec::Hub {
            id: id.to_string(),
            revision,
        })
    }
}

/// A model's files on disk.
#[derive(Debug, Clone)]
pub struct ModelFiles {
    /// Directory holding the files (a hub snapshot or the local directory).
    pub dir: PathBuf,
    /// The weight file chosen (safetensors preferred).
    pub weights: PathBuf,
    /// What `--model` said.
    pub spec: ModelSpec,
}

/// Where and how to fetch models.
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// Cache directory (`models/`).
    pub cache_dir: PathBuf,
    /// Never touch the network.
    pub offline: bool,
    /// Hub endpoint override (tests, mirrors); `HF_ENDPOINT` otherwise.
    pub endpoint: Option<String>,
}

fn fetch_hint(id: &str, revision: &str) -> String {
    format!("run `transum download {id}@{revision}` on a connected machine, or copy the model folder here and pass it to --model")
}

/// Resolve `spec` to files on disk, downloading what is missing unless offline.
pub fn resolve(spec: &ModelSpec, opts: &HubOptions) -> Result<ModelFiles> {
    match spec {
        ModelSpec::Local(dir) => {
            check_tokenizer_files(
                dir,
                "a checkpoint directory needs config.json, its tokenizer files and its weights \
                 (as on the hub; `transum download` fetches them)",
            )?;
            Ok(ModelFiles {
                weights: crate::weights::find_weight_file(dir)?,
                dir: dir.clone(),
                spec: spec.clone(),
            })
        }
        ModelSpec::Hub { id, revision } => {
            if opts.offline {
                resolve_cached(id, revision, opts)
            } else {
                download(id, revision, opts, false)
            }
        }
    }
}

fn repo(id: &str, revision: &str) -> Repo {
    Repo::with_revision(id.to_string(), RepoType::Model, revision.to_string())
}

fn resolve_cached(id: &str, revision: &str, opts: &HubOptions) -> Result<ModelFiles> {
    let cache = Cache::new(opts.cache_dir.clone()).repo(repo(id, revision));
    let missing = |f: &str| Error::Hub {
        what: format!(
            "{}: {f} of {id}@{revision} is not in the model cache and --offline is set",
            opts.cache_dir.display()
        ),
        hint: fetch_hint(id, revision),
        source: None,
    };
    let config = cache
        .get("config.json")
        .ok_or_else(|| missing("config.json"))?;
    let dir = config.parent().map(Path::to_path_buf);
    let plan = file_plan(&config)?;
    let sets = plan.sets;
    if !sets
        .iter()
        .any(|set| set.iter().all(|f| cache.get(f).is_some()))
    {
        let first_missing = sets[sets.len() - 1]
            .iter()
            .find(|f| cache.get(f).is_none())
            .copied()
            .unwrap_or("tokenizer files");
        return Err(missing(first_missing));
    }
    let weights = plan
        .weights
        .iter()
        .find_map(|f| cache.get(f))
        .ok_or_else(|| Error::Hub {
            what: format!(
                "{}: no weight file ({}) of {id}@{revision} in the cache and --offline is set",
                opts.cache_dir.display(),
                plan.weights.join(" or ")
            ),
            hint: fetch_hint(id, revision),
            source: None,
        })?;
    Ok(ModelFiles {
        dir: dir.unwrap_or_default(),
        weights,
        spec: ModelSpec::Hub {
            id: id.to_string(),
            revision: revision.to_string(),
        },
    })
}

/// Fetch every file a run needs into the cache and return their location.
/// Files already cached are reused unless `force`, which fetches them again
/// (the fix for a corrupt or truncated download).
pub fn download(id: &str, revision: &str, opts: &HubOptions, force: bool) -> Result<ModelFiles> {
    let mut builder = ApiBuilder::from_env()
        .with_cache_dir(opts.cache_dir.clone())
        .with_progress(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if let Some(e) = &opts.endpoint {
        builder = builder.with_endpoint(e.clone());
    }
    let api = builder.build().map_err(|e| Error::Hub {
        what: "cannot set up the Hugging Face Hub client".into(),
        hint: "check HF_ENDPOINT and HF_HOME, or use --offline with a filled models/ cache".into(),
        source: Some(Box::new(e)),
    })?;
    let repo = api.repo(repo(id, revision));
    let get = |f: &str| {
        if force {
            repo.download(f)
        } else {
            repo.get(f)
        }
    };
    let fetch = |f: &str| {
        get(f).map_err(|e| Error::Hub {
            what: format!("cannot fetch {f} of {id}@{revision}"),
            hint: format!(
                "check the model id and revision and the network; offline machines need `transum download {id}@{revision}` run elsewhere and models/ copied over"
            ),
            source: Some(Box::new(e)),
        })
    };
    let config = fetch("config.json")?;
    let dir = config.parent().map(Path::to_path_buf).unwrap_or_default();
    // The tokenizer files depend on the family: try each set in order.
    let plan = file_plan(&config)?;
    let sets = plan.sets;
    let mut fetched = false;
    let mut last = None;
    for set in sets {
        match set.iter().map(|f| fetch(f)).collect::<Result<Vec<_>>>() {
            Ok(_) => {
                fetched = true;
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    if !fetched {
        return Err(last.expect("every family has a tokenizer file set"));
    }
    for &f in plan.optional {
        if let Err(e) = get(f) {
            tracing::debug!("optional file {f} of {id}@{revision} not fetched: {e}");
        }
    }
    // Prefer safetensors; the real opus-mt checkpoints only have pytorch_model.bin on main.
    let mut weights = None;
    let mut last_err = None;
    for &f in plan.weights {
        match get(f) {
            Ok(p) => {
                weights = Some(p);
                break;
            }
            Err(e) => last_err = Some(e),
        }
    }
    let weights = weights.ok_or_else(|| Error::Hub {
        what: format!(
            "{id}@{revision} has no weight file ({})",
            plan.weights.join(" or ")
        ),
        hint: "pick a revision that carries weights (e.g. refs/pr/N for converted safetensors)"
            .into(),
        source: last_err.map(|e| Box::new(e) as _),
    })?;
    Ok(ModelFiles {
        dir,
        weights,
        spec: ModelSpec::Hub {
            id: id.to_string(),
            revision: revision.to_string(),
        },
    })
}

/// The sha256 the hub reported for a cached file: hf-hub names LFS blobs (the
/// weights) after their sha256 ETag, and links the snapshot file to the blob.
/// None for local files and small git files (their ETag is a git sha1).
fn hub_sha256(path: &Path) -> Option<String> {
    let target = std::fs::read_link(path).ok()?;
    let name = target.file_name()?.to_str()?.to_string();
    (name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit())).then_some(name)
}

impl ModelFiles {
    /// The model's identity for a manifest: id, revisions and file hashes.
    /// A hub file whose sha256 differs from what the hub reported is an error
    /// (a truncated or altered download), found before anything is loaded.
    pub fn record(&self) -> Result<crate::outputs::ModelRecord> {
        let mut files = std::collections::BTreeMap::new();
        let mut names: Vec<&str> = vec!["config.json"];
        names.extend(TOKENIZER_FILES);
        names.extend(OPTIONAL_FILES);
        names.extend(&ENCODER_FILES[1..]);
        names.extend(ENCODER_OPTIONAL_FILES);
        let weights = self
            .weights
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut paths: Vec<(String, PathBuf)> = names
            .iter()
            .map(|n| (n.to_string(), self.dir.join(n)))
            .filter(|(_, p)| p.is_file())
            .collect();
        paths.push((weights, self.weights.clone()));
        for (name, p) in paths {
            let got = crate::outputs::sha256_file(&p)?;
            if let Some(want) = hub_sha256(&p) {
                if want != got {
                    let fix = match &self.spec {
                        ModelSpec::Hub { id, revision } => {
                            format!("fetch it again: `transum download --force {id}@{revision}`")
                        }
                        ModelSpec::Local(_) => "fetch the checkpoint again".into(),
                    };
                    return Err(Error::file(
                        &p,
                        format!("has sha256 {got}, but the hub reported {want}: the download is corrupt or was altered"),
                        fix,
                        None,
                    ));
                }
            }
            files.insert(name, got);
        }
        Ok(match &self.spec {
            ModelSpec::Local(dir) => crate::outputs::ModelRecord {
                id: dir.display().to_string(),
                revision: None,
                resolved_revision: None,
                files,
            },
            ModelSpec::Hub { id, revision } => crate::outputs::ModelRecord {
                id: id.clone(),
                revision: Some(revision.clone()),
                // hf-hub keeps files under snapshots/<commit>/.
                resolved_revision: self
                    .dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned()),
                files,
            },
        })
    }
}

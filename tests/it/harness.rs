//! Test harness: fixtures, goldens, the binary under test, readable diffs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use transum::device::Placement;
use transum::generation::{EarlyStopping, GenerationOverrides};
use transum::hub::{self, HubOptions, ModelSpec};
use transum::Translator;

/// The fixture checkpoints (see tests/fixtures/make_fixtures.py): three
/// Marian translators, then a BART and a Pegasus summarizer.
pub const MODELS: [&str; 5] = ["marian-a", "marian-b", "marian-c", "bart-a", "pegasus-a"];

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixture_model(name: &str) -> PathBuf {
    repo().join("tests/fixtures/models").join(name)
}

pub fn golden(name: &str) -> Value {
    let p = repo()
        .join("tests/fixtures/goldens")
        .join(format!("{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

pub fn u32s(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// Generation overrides from a golden run's `settings` (transformers kwargs).
pub fn overrides(settings: &Value) -> GenerationOverrides {
    let u = |k: &str| settings.get(k).and_then(Value::as_u64).map(|x| x as usize);
    GenerationOverrides {
        num_beams: u("num_beams"),
        max_length: u("max_length"),
        max_new_tokens: u("max_new_tokens"),
        min_new_tokens: u("min_new_tokens"),
        min_length: u("min_length"),
        no_repeat_ngram_size: u("no_repeat_ngram_size"),
        length_penalty: settings
            .get("length_penalty")
            .and_then(Value::as_f64)
            .map(|x| x as f32),
        early_stopping: settings.get("early_stopping").map(|v| match v {
            Value::Bool(true) => EarlyStopping::Always,
            Value::Bool(false) => EarlyStopping::Heuristic,
            Value::String(s) => s.parse().unwrap(),
            other => panic!("bad early_stopping {other}"),
        }),
        max_length_factor: settings.get("max_length_factor").and_then(Value::as_f64),
    }
}

/// Load a fixture model with the given overrides.
pub fn translator(name: &str, ov: &GenerationOverrides) -> Translator {
    let spec = ModelSpec::Local(fixture_model(name));
    let files = hub::resolve(
        &spec,
        &HubOptions {
            cache_dir: repo().join("models"),
            offline: true,
            endpoint: None,
        },
    )
    .unwrap();
    Translator::load(&files, &Placement::cpu(), ov).unwrap()
}

/// A fresh temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "transum-it-{tag}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Run the built `transum` binary with `args` (and optional stdin) in `dir`.
/// Tests never reach the real hub: HF_HUB_OFFLINE=1.
pub fn transum(dir: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    transum_env(dir, args, stdin, &[("HF_HUB_OFFLINE", "1")])
}

/// As `transum`, with exactly the given hub-related environment variables.
pub fn transum_env(dir: &Path, args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Output {
    use std::io::Write;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_transum"));
    cmd.args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_ENDPOINT")
        // A test run inside a scheduler's job must not turn every run into a shard.
        .env_remove("SLURM_ARRAY_TASK_ID")
        .env_remove("SLURM_ARRAY_TASK_MIN")
        .env_remove("SLURM_ARRAY_TASK_MAX")
        .env_remove("SLURM_ARRAY_TASK_COUNT")
        .env_remove("JOB_COMPLETION_INDEX")
        // Lexical "same fact" unless a test names a sentence encoder: the
        // default, all-MiniLM-L6-v2, is not downloadable here.
        .env("TRANSUM_EMBED_MODEL", "none");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    {
        let mut sin = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            // A run that fails setup exits without reading stdin; the broken
            // pipe is then expected, and its exit status is what is checked.
            if let Err(e) = sin.write_all(s.as_bytes()) {
                assert_eq!(
                    e.kind(),
                    std::io::ErrorKind::BrokenPipe,
                    "writing stdin: {e}"
                );
            }
        }
    }
    child.wait_with_output().unwrap()
}

/// Assert equality, printing expected and actual side by side when they differ.
pub fn assert_lines_eq(what: &str, expected: &str, actual: &str) {
    if expected == actual {
        return;
    }
    let e: Vec<&str> = expected.lines().collect();
    let a: Vec<&str> = actual.lines().collect();
    let mut report = format!(
        "{what}: output differs\n{:<60} | {}\n",
        "expected", "actual"
    );
    for i in 0..e.len().max(a.len()) {
        let l = e.get(i).copied().unwrap_or("<missing>");
        let r = a.get(i).copied().unwrap_or("<missing>");
        let mark = if l == r { ' ' } else { '!' };
        report.push_str(&format!("{mark}{:<59} | {}\n", l, r));
    }
    panic!("{report}");
}

/// Assert the binary exited 0, showing its stderr otherwise.
pub fn assert_success(out: &Output) {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Assert a setup error: exit code 2 and every one of `needles` in stderr.
pub fn assert_setup_error(out: &Output, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}: {err}");
    }
}

/// The largest |got[i] - want[i]|, `want` being a golden's JSON array of numbers.
pub fn max_abs_diff(got: &[f32], want: &Value) -> f32 {
    let want = want.as_array().expect("a JSON array");
    assert_eq!(got.len(), want.len(), "lengths differ");
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b.as_f64().expect("a number") as f32).abs())
        .fold(0f32, f32::max)
}

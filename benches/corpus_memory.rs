//! Peak memory of `transum run` as the corpus grows: synthetic corpora of 50
//! and 500 articles (the five corpus articles with variations: paragraphs
//! rotated, an edition line added, so no two sources are identical and
//! nothing is cached), translated and summarized (extractive) by the release
//! binary in a child process whose peak RSS comes from `wait4`. Articles are
//! streamed (each written, then dropped; the summary reads them back), so the
//! two peaks should be close.
//!
//! Run: `cargo build --release && cargo bench --bench corpus_memory`
//! (`-- --model DIR` for another checkpoint, e.g. target/bench-model written by
//! the throughput bench; default: the marian-a fixture, which keeps 500
//! articles quick; `--sizes 50,500`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Write `n` articles derived from the corpus into `dir`.
fn synthetic_corpus(dir: &Path, n: usize) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let mut base: Vec<PathBuf> = std::fs::read_dir(repo().join("corpus"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    base.sort();
    for i in 0..n {
        let text = std::fs::read_to_string(&base[i % base.len()]).unwrap();
        let mut paras: Vec<&str> = text
            .split("\n\n")
            .filter(|p| !p.trim().is_empty())
            .collect();
        let k = (i / base.len()) % paras.len().max(1);
        paras.rotate_left(k);
        let body = format!("{}\n\nÉdition numéro {i}.\n", paras.join("\n\n"));
        std::fs::write(dir.join(format!("{i:04}.txt")), body).unwrap();
    }
}

/// Run the binary, returning (exit code, seconds, peak RSS in MiB).
fn run_measured(cmd: &mut Command) -> (i32, f64, f64) {
    let t0 = Instant::now();
    let child = cmd.spawn().expect("run `cargo build --release` first");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: plain libc call with valid out-pointers; reaps our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    std::mem::forget(child); // already reaped
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    (
        code,
        t0.elapsed().as_secs_f64(),
        usage.ru_maxrss as f64 / 1024.0,
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let model = arg("--model")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("tests/fixtures/models/marian-a"));
    let sizes: Vec<usize> = arg("--sizes")
        .unwrap_or_else(|| "50,500".into())
        .split(',')
        .map(|s| s.parse().unwrap())
        .collect();
    let bin = repo().join("target/release/transum");
    println!("model: {}", model.display());
    println!("| articles | exit | seconds | peak RSS (MiB) |");
    println!("|---|---|---|---|");
    for n in sizes {
        let work = repo().join(format!("target/bench-corpus-{n}"));
        synthetic_corpus(&work.join("corpus"), n);
        let _ = std::fs::remove_dir_all(work.join("outputs"));
        let (code, secs, rss) = run_measured(
            Command::new(&bin)
                .args([
                    "run",
                    "--offline",
                    "--summarizer",
                    "extractive",
                    "--beams",
                    "1",
                ])
                .args(["--max-new-tokens", "16", "--model"])
                .arg(&model)
                .current_dir(&work)
                .stderr(std::process::Stdio::null()),
        );
        println!("| {n} | {code} | {secs:.1} | {rss:.0} |");
    }
}

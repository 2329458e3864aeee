//! `transum run` end to end over the corpus, ingestion rules, and bad input.

use std::path::Path;

use serde_json::Value;
use transum::text::ingest;

use crate::harness::{assert_success, fixture_model, repo, transum, TempDir};

pub(crate) fn corpus_dir() -> std::path::PathBuf {
    repo().join("corpus")
}

#[test]
fn noise_rules_drop_exactly_the_page_chrome() {
    // Source line numbers (1-based) dropped per corpus file; everything else is story.
    let expected: &[(&str, &[usize])] = &[
        ("000_9b90b2f7d3885cef.txt", &[]),
        ("001_dae3dd2aefba3372.txt", &[]),
        // "in", newsletter box, comment form, GIPHY widget, two unrelated headlines.
        (
            "002_3950d335cd70a6ef.txt",
            &[1, 41, 43, 46, 48, 50, 52, 54, 56],
        ),
        ("003_71a2eea3c861eece.txt", &[]),
        ("004_d8317d7c2a06040d.txt", &[]),
    ];
    for (name, dropped) in expected {
        let path = corpus_dir().join(name);
        let text = ingest::decode(&path, &std::fs::read(&path).unwrap()).unwrap();
        let c = ingest::clean(&text);
        assert_eq!(&c.dropped_lines, dropped, "{name}");
        // No story line is lost: every kept non-empty line is a paragraph, in order.
        let kept: Vec<&str> = text
            .split('\n')
            .enumerate()
            .filter(|(i, l)| !l.trim().is_empty() && !dropped.contains(&(i + 1)))
            .map(|(_, l)| l.trim())
            .collect();
        assert_eq!(kept.len(), c.paragraphs.len(), "{name}: paragraph count");
        for (k, p) in kept.iter().zip(&c.paragraphs) {
            assert!(
                k.ends_with(p.as_str()),
                "{name}: paragraph changed:\n  {k}\n  {p}"
            );
        }
    }
    let text = std::fs::read_to_string(corpus_dir().join("004_d8317d7c2a06040d.txt")).unwrap();
    let first = &ingest::clean(&text).paragraphs[0];
    assert!(
        first.starts_with("Le dirigeant de la Corée du Nord"),
        "date stamp removed: {first}"
    );
}

#[test]
fn long_segments_split_at_the_best_boundary() {
    let words = |s: &str| s.split_whitespace().count();
    let s = "un deux trois, quatre cinq six; sept huit neuf dix";
    let parts = ingest::split_to_fit(s, 6, &words);
    assert_eq!(
        parts,
        vec!["un deux trois, quatre cinq six;", "sept huit neuf dix"]
    );
    let long = vec!["mot"; 3000].join(" ");
    let parts = ingest::split_to_fit(&long, 400, &words);
    assert!(parts.iter().all(|p| words(p) <= 400));
    assert_eq!(
        parts.iter().map(|p| words(p)).sum::<usize>(),
        3000,
        "nothing lost"
    );
}

pub(crate) fn run_args(model: &str) -> Vec<&str> {
    vec![
        "run",
        "--model",
        model,
        "--beams",
        "1",
        "--max-new-tokens",
        "8",
        "--summarizer",
        "extractive",
    ]
}

pub(crate) fn copy_corpus(dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(corpus_dir()).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
}

pub(crate) fn manifest(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("outputs/manifest.json")).unwrap())
        .unwrap()
}

/// Only finished outputs and the manifest: no temporary or partial files.
pub(crate) fn assert_no_partial_files(dir: &Path) {
    for e in std::fs::read_dir(dir.join("outputs")).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            name == "manifest.json"
                || name == ".transum.lock"
                || name == "summary.md"
                || name == "summary.json"
                || name.ends_with(".en.txt"),
            "unexpected file in outputs/: {name}"
        );
    }
}

#[test]
fn run_translates_the_corpus_with_a_manifest() {
    let dir = TempDir::new("run");
    copy_corpus(&dir.path().join("corpus"));
    let model = fixture_model("marian-a");
    let bart = fixture_model("bart-a");
    let mut args = run_args(model.to_str().unwrap());
    args.truncate(args.len() - 2);
    args.extend(["--summary-model", bart.to_str().unwrap()]);
    let out = transum(dir.path(), &args, None);
    assert_success(&out);
    let m = manifest(dir.path());
    let articles = m["articles"].as_array().unwrap();
    assert_eq!(articles.len(), 5);
    for a in articles {
        let source = a["source"].as_str().unwrap();
        let text = std::fs::read_to_string(corpus_dir().join(source)).unwrap();
        let cleaned = ingest::clean(&text);
        let output = dir
            .path()
            .join("outputs")
            .join(a["output"].as_str().unwrap());
        let translated = std::fs::read_to_string(&output).unwrap();
        assert_eq!(
            translated.split("\n\n").count(),
            cleaned.paragraphs.len(),
            "{source}: paragraphs"
        );
        assert_eq!(a["status"], "ok");
        assert_eq!(
            a["paragraphs"].as_u64().unwrap() as usize,
            cleaned.paragraphs.len()
        );
        assert!(a["sentences"].as_u64().unwrap() >= a["paragraphs"].as_u64().unwrap());
        assert!(
            a["source_tokens"].as_u64().unwrap() > 0 && a["output_tokens"].as_u64().unwrap() > 0
        );
        assert_eq!(
            a["source_sha256"].as_str().unwrap(),
            transum::outputs::sha256_file(&corpus_dir().join(source)).unwrap()
        );
    }
    assert_eq!(m["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(m["models"][0]["dtype"], "f32");
    assert_eq!(m["models"][0]["generation"]["num_beams"], 1);
    assert_eq!(m["models"][0]["generation"]["max_length"], 9);
    let files = m["models"][0]["files"].as_object().unwrap();
    assert_eq!(
        files["model.safetensors"].as_str().unwrap(),
        transum::outputs::sha256_file(&model.join("model.safetensors")).unwrap()
    );
    assert!(m["tokens_per_second"].as_f64().unwrap() > 0.0);
    // The summary stage ran last, with the default (abstractive) summarizer.
    let s = &m["summary"];
    assert_eq!(s["summarizer"], "abstractive");
    assert_eq!(s["status"], "ok");
    assert_eq!(s["articles"], 5);
    assert_eq!(s["generation"]["num_beams"], 4);
    assert_eq!(s["generation"]["no_repeat_ngram_size"], 3);
    assert_eq!(
        s["model"]["files"]["model.safetensors"].as_str().unwrap(),
        transum::outputs::sha256_file(&bart.join("model.safetensors")).unwrap()
    );
    let summary: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("outputs/summary.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(summary["summarizer"], "abstractive");
    assert!(summary["raw_output"].is_string());
    assert_eq!(summary["articles"].as_array().unwrap().len(), 5);
    assert!(
        std::fs::read_to_string(dir.path().join("outputs/summary.md"))
            .unwrap()
            .starts_with("# Summary")
    );
    assert_no_partial_files(dir.path());
}

#[test]
fn bad_articles_fail_alone_and_name_the_file() {
    let dir = TempDir::new("bad");
    let corpus = dir.path().join("corpus");
    copy_corpus(&corpus);
    let write = |name: &str, data: &[u8]| std::fs::write(corpus.join(name), data).unwrap();
    write("empty.txt", b"");
    write("blank.txt", b"  \n\t\n   \n");
    write("latin1.txt", b"Le caf\xe9 est ferm\xe9.\n");
    write(
        "junk.txt",
        &[
            0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a, 0xff, 0xfe, 0x00, 0x10,
        ],
    );
    write("nul.txt", b"Bonjour\x00le monde.\n");
    std::fs::create_dir_all(corpus.join("foo.txt")).unwrap();
    std::os::unix::fs::symlink(
        dir.path().join("does-not-exist"),
        corpus.join("unreadable.txt"),
    )
    .unwrap();
    // A 2 MB article (a real one repeated: its language must stay clear) and
    // a 3,000-word sentence without punctuation translate fine.
    let article = std::fs::read_to_string(corpus_dir().join("000_9b90b2f7d3885cef.txt")).unwrap();
    let big: String = std::iter::repeat_n(
        format!("{article}\n\n"),
        2_000_000 / (article.len() + 2) + 1,
    )
    .collect();
    assert!(big.len() >= 2_000_000);
    write("big.txt", big.as_bytes());
    // The run-on sentence: the same article's words, punctuation removed.
    let words: Vec<String> = article
        .split_whitespace()
        .map(|w| {
            w.chars()
                .filter(|c| c.is_alphanumeric())
                .collect::<String>()
        })
        .filter(|w| !w.is_empty())
        .collect();
    let run_on: Vec<&str> = words
        .iter()
        .cycle()
        .take(3000)
        .map(String::as_str)
        .collect();
    write("run-on.txt", run_on.join(" ").as_bytes());

    let model = fixture_model("marian-a");
    let bart = fixture_model("bart-a");
    let mut args = run_args(model.to_str().unwrap());
    args.truncate(args.len() - 2);
    args.extend(["--summary-model", bart.to_str().unwrap()]);
    let out = transum(dir.path(), &args, None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "some articles failed: exit 1\n{err}"
    );
    let m = manifest(dir.path());
    let status: std::collections::HashMap<String, String> = m["articles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["source"].as_str().unwrap().to_string(),
                a["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    for bad in [
        "empty.txt",
        "blank.txt",
        "latin1.txt",
        "junk.txt",
        "nul.txt",
        "foo.txt",
        "unreadable.txt",
    ] {
        assert_eq!(status[bad], "failed", "{bad}");
        assert!(err.contains(bad), "the error names {bad}:\n{err}");
        assert!(!dir
            .path()
            .join("outputs")
            .join(transum::pipeline::output_name(Path::new(bad)))
            .exists());
    }
    assert!(err.contains("UTF-8") && err.contains("iconv"), "{err}");
    assert!(err.contains("NUL"), "{err}");
    assert!(err.contains("is a directory"), "{err}");
    for good in [
        "000_9b90b2f7d3885cef.txt",
        "002_3950d335cd70a6ef.txt",
        "big.txt",
        "run-on.txt",
    ] {
        assert_eq!(status[good], "ok", "{good}");
        let out = dir
            .path()
            .join("outputs")
            .join(transum::pipeline::output_name(Path::new(good)));
        assert!(std::fs::metadata(&out).unwrap().len() > 0, "{good} written");
    }
    // The run-on sentence was split to fit the model window, and said so.
    assert!(
        err.contains("run-on.txt") && err.contains("split into"),
        "{err}"
    );
    assert_no_partial_files(dir.path());
}

#[test]
fn missing_corpus_is_a_setup_error() {
    let dir = TempDir::new("nocorpus");
    let model = fixture_model("marian-a");
    let mut args = run_args(model.to_str().unwrap());
    args.extend(["--corpus", "nowhere"]);
    let out = transum(dir.path(), &args, None);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("nowhere") && err.contains("--corpus"), "{err}");
    assert!(
        !dir.path().join("outputs").exists(),
        "nothing written on a setup error"
    );
}

#[test]
fn an_empty_corpus_is_a_quiet_night() {
    let dir = TempDir::new("empty-corpus");
    std::fs::create_dir_all(dir.path().join("corpus")).unwrap();
    let model = fixture_model("marian-a");
    let out = transum(dir.path(), &run_args(model.to_str().unwrap()), None);
    assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing to do"));
    let m = manifest(dir.path());
    assert!(m["articles"].as_array().unwrap().is_empty());
    assert!(m["summary"].is_null());
    assert!(!dir.path().join("outputs/summary.md").exists());
}

/// The real models, end to end. Ignored by default because it downloads about
/// 1.5 GB from the Hugging Face Hub; run it where the hub is reachable with
/// `cargo test --release -- --ignored real_models`.
#[test]
#[ignore = "needs the network: downloads Helsinki-NLP/opus-mt-fr-en and sshleifer/distilbart-cnn-12-6"]
fn real_models_translate_and_summarize_the_corpus() {
    let dir = TempDir::new("real");
    copy_corpus(&dir.path().join("corpus"));
    let models = repo().join("models");
    let out = crate::harness::transum_env(
        dir.path(),
        &["run", "--models-dir", models.to_str().unwrap()],
        None,
        &[],
    );
    assert_success(&out);
    let m = manifest(dir.path());
    assert!(m["articles"]
        .as_array()
        .unwrap()
        .iter()
        .all(|a| a["status"] == "ok"));
    assert!(m["models"][0]["resolved_revision"].is_string());
    // Real translations mention the story's names in English.
    let all: String = m["articles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            std::fs::read_to_string(
                dir.path()
                    .join("outputs")
                    .join(a["output"].as_str().unwrap()),
            )
            .unwrap()
        })
        .collect();
    assert!(all.contains("Kim") && all.contains("Putin"), "{all}");
    let summary: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("outputs/summary.json")).unwrap(),
    )
    .unwrap();
    let sentences = summary["sentences"].as_array().unwrap();
    assert!(!sentences.is_empty(), "{summary}");
    assert!(sentences
        .iter()
        .all(|s| !s["sources"].as_array().unwrap().is_empty()));
}

//! Language identification and routing.

use transum::lang::{self, Route, Routing};
use transum::text::ingest;

use crate::harness::repo;

fn detect_file(path: &std::path::Path) -> Option<lang::Detection> {
    let text = ingest::decode(path, &std::fs::read(path).unwrap()).unwrap();
    lang::detect(&ingest::clean(&text).paragraphs.join("\n\n"))
}

#[test]
fn articles_are_identified_with_their_confidence() {
    let mut seen = Vec::new();
    for e in std::fs::read_dir(repo().join("corpus")).unwrap() {
        let d = detect_file(&e.unwrap().path()).unwrap();
        seen.push(("fr", d));
    }
    let dir = repo().join("tests/fixtures/multilingual");
    for (f, want) in [
        ("de_gipfel", "de"),
        ("es_cumbre", "es"),
        ("en_summit", "en"),
        ("it_vertice", "it"),
        ("pt_cimeira", "pt"),
        ("nl_top", "nl"),
        ("de_short", "de"),
    ] {
        seen.push((want, detect_file(&dir.join(format!("{f}.txt"))).unwrap()));
    }
    for (want, d) in &seen {
        eprintln!("{want}: {d:?}");
        assert_eq!(d.lang, *want, "{d:?}");
        assert!(d.reliable, "{want}: {d:?}");
    }
    // Digits, dates and URLs: nothing a route can be chosen on.
    let junk = detect_file(&dir.join("junk_digits.txt"));
    eprintln!("junk: {junk:?}");
    assert!(junk.as_ref().is_none_or(|d| !d.reliable), "{junk:?}");
}

#[test]
fn routing_prefers_what_the_user_named() {
    let auto = Routing::auto();
    assert_eq!(auto.route("en"), Some(Route::PassThrough));
    assert_eq!(
        auto.route("fr"),
        Some(Route::Model("Helsinki-NLP/opus-mt-fr-en".into()))
    );
    // No opus-mt-pt-en: the fallback.
    assert_eq!(
        auto.route("pt"),
        Some(Route::Model(lang::FALLBACK_MODEL.into()))
    );
    let r = Routing::auto()
        .with_models(&["de=./de-model".into(), "org/every".into()])
        .unwrap();
    assert_eq!(r.route("de"), Some(Route::Model("./de-model".into())));
    assert_eq!(r.route("fr"), Some(Route::Model("org/every".into())));
    assert_eq!(r.route("en"), Some(Route::PassThrough));
    assert!(r.named("./de-model") && !r.named("Helsinki-NLP/opus-mt-fr-en"));
    let none = Routing::default();
    assert_eq!(none.route("pt"), None);
    let err = Routing::auto()
        .with_models(&["a/b".into(), "c/d".into()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("--model de="), "{err}");
    assert!(Routing::auto().with_models(&["xx=a/b".into()]).is_err());
    assert_eq!(lang::parse_code("DEU").unwrap(), "de");
}

/// A corpus of French, German, Spanish and English articles, a two-line
/// German one, and one of digits and URLs only.
fn mixed_corpus(dir: &std::path::Path) {
    let corpus = dir.join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    std::fs::copy(
        repo().join("corpus/000_9b90b2f7d3885cef.txt"),
        corpus.join("000_9b90b2f7d3885cef.txt"),
    )
    .unwrap();
    let ml = repo().join("tests/fixtures/multilingual");
    for f in [
        "de_gipfel",
        "es_cumbre",
        "en_summit",
        "de_short",
        "junk_digits",
    ] {
        std::fs::copy(ml.join(format!("{f}.txt")), corpus.join(format!("{f}.txt"))).unwrap();
    }
}

fn by_source(m: &serde_json::Value) -> std::collections::BTreeMap<String, serde_json::Value> {
    m["articles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["source"].as_str().unwrap().to_string(), a.clone()))
        .collect()
}

#[test]
fn a_mixed_corpus_goes_language_by_language() {
    use crate::harness::{fixture_model, transum, TempDir};
    let dir = TempDir::new("mixed");
    mixed_corpus(dir.path());
    let (fr, de, es) = (
        fixture_model("marian-a"),
        fixture_model("marian-b"),
        fixture_model("marian-c"),
    );
    let fr_arg = format!("fr={}", fr.display());
    let de_arg = format!("de={}", de.display());
    let es_arg = format!("es={}", es.display());
    let args = [
        "run",
        "--model",
        &fr_arg,
        "--model",
        &de_arg,
        "--model",
        &es_arg,
        "--beams",
        "1",
        "--max-new-tokens",
        "6",
        "--summarizer",
        "extractive",
    ];
    let run = || transum(dir.path(), &args, None);
    let out = run();
    let err = String::from_utf8_lossy(&out.stderr);
    // Only the junk article fails.
    assert_eq!(out.status.code(), Some(1), "{err}");
    let m = crate::run::manifest(dir.path());
    let a = by_source(&m);
    let expect = [
        ("000_9b90b2f7d3885cef.txt", "fr", Some(&fr)),
        ("de_gipfel.txt", "de", Some(&de)),
        ("de_short.txt", "de", Some(&de)),
        ("es_cumbre.txt", "es", Some(&es)),
        ("en_summit.txt", "en", None),
    ];
    for (source, lang, model) in expect {
        let r = &a[source];
        assert_eq!(r["status"], "ok", "{r}");
        assert_eq!(r["language"], lang, "{r}");
        assert!(r["language_confidence"].as_f64().unwrap() >= 0.5, "{r}");
        assert_eq!(
            r["model"].as_str(),
            model.map(|p| p.to_str().unwrap()),
            "{source}"
        );
    }
    // English passes through: its cleaned paragraphs, untranslated.
    let en = std::fs::read_to_string(dir.path().join("outputs/en_summit.en.txt")).unwrap();
    let src = std::fs::read_to_string(dir.path().join("corpus/en_summit.txt")).unwrap();
    let cleaned = transum::text::ingest::clean(&src).paragraphs.join("\n\n") + "\n";
    assert_eq!(en, cleaned);
    // Digits and URLs: no language, never guessed.
    let junk = &a["junk_digits.txt"];
    assert_eq!(junk["status"], "failed");
    assert!(
        junk["error"].as_str().unwrap().contains("--source-lang"),
        "{junk}"
    );
    assert!(err.contains("junk_digits.txt"), "{err}");
    // Each model loaded once, with the languages it served.
    let models: Vec<(String, Vec<String>)> = m["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["id"].as_str().unwrap().to_string(),
                e["languages"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|l| l.as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect();
    assert_eq!(models.len(), 3, "{models:?}");
    assert!(models.contains(&(de.display().to_string(), vec!["de".to_string()])));
    // The summary covers every article that made it, English included.
    assert_eq!(m["summary"]["articles"], 5);

    // A rerun keeps everything, and still records languages.
    let out = run();
    assert_eq!(out.status.code(), Some(1));
    let a = by_source(&crate::run::manifest(dir.path()));
    assert_eq!(a["de_gipfel.txt"]["status"], "cached");
    assert_eq!(a["de_gipfel.txt"]["language"], "de");
}

#[test]
fn an_article_without_a_model_fails_alone_with_the_fix() {
    use crate::harness::{fixture_model, transum, TempDir};
    let dir = TempDir::new("nomodel");
    mixed_corpus(dir.path());
    std::fs::remove_file(dir.path().join("corpus/junk_digits.txt")).unwrap();
    let ml = repo().join("tests/fixtures/multilingual");
    std::fs::copy(
        ml.join("it_vertice.txt"),
        dir.path().join("corpus/it_vertice.txt"),
    )
    .unwrap();
    std::fs::copy(
        ml.join("pt_cimeira.txt"),
        dir.path().join("corpus/pt_cimeira.txt"),
    )
    .unwrap();
    let fr = format!("fr={}", fixture_model("marian-a").display());
    let de = format!("de={}", fixture_model("marian-b").display());
    let es = format!("es={}", fixture_model("marian-c").display());
    let models = dir.path().join("empty-cache");
    let out = transum(
        dir.path(),
        &[
            "run",
            "--model",
            &fr,
            "--model",
            &de,
            "--model",
            &es,
            "--beams",
            "1",
            "--max-new-tokens",
            "4",
            "--summarizer",
            "extractive",
            "--fallback-model",
            "none",
            "--offline",
            "--models-dir",
            models.to_str().unwrap(),
        ],
        None,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let a = by_source(&crate::run::manifest(dir.path()));
    // Portuguese: no pair model and no fallback.
    let pt = &a["pt_cimeira.txt"];
    assert_eq!(pt["status"], "failed");
    let e = pt["error"].as_str().unwrap();
    assert!(
        e.contains("pt_cimeira.txt")
            && e.contains("is in pt (confidence")
            && e.contains("--model pt="),
        "{e}"
    );
    // Italian: the table's model is not in the (offline) cache.
    let it = &a["it_vertice.txt"];
    assert_eq!(it["status"], "failed");
    let e = it["error"].as_str().unwrap();
    assert!(
        e.contains("opus-mt-tc-big-it-en")
            && e.contains("is in it, confidence")
            && e.contains("transum download --langs it")
            && e.contains("--model it="),
        "{e}"
    );
    assert_eq!(it["language"], "it");
    // The others went on.
    for ok in [
        "000_9b90b2f7d3885cef.txt",
        "de_gipfel.txt",
        "es_cumbre.txt",
        "en_summit.txt",
    ] {
        assert_eq!(a[ok]["status"], "ok", "{ok}");
    }
    // A model the user named that does not load is a setup error, at once.
    let out = transum(
        dir.path(),
        &[
            "run",
            "--model",
            "de=./no-such-model",
            "--summarizer",
            "none",
            "--offline",
        ],
        None,
    );
    crate::harness::assert_setup_error(&out, &[]);
}

#[test]
fn translate_picks_the_model_of_its_input() {
    use crate::harness::{fixture_model, transum, TempDir};
    let dir = TempDir::new("translate-lang");
    let ml = repo().join("tests/fixtures/multilingual");
    // English passes through unchanged.
    let out = transum(
        dir.path(),
        &["translate", ml.join("en_summit.txt").to_str().unwrap()],
        None,
    );
    crate::harness::assert_success(&out);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        std::fs::read_to_string(ml.join("en_summit.txt")).unwrap()
    );
    // German goes to the German model; French to the French one (none here).
    let de = format!("de={}", fixture_model("marian-b").display());
    let out = transum(
        dir.path(),
        &[
            "translate",
            ml.join("de_gipfel.txt").to_str().unwrap(),
            "--model",
            &de,
            "--beams",
            "1",
            "--max-new-tokens",
            "3",
        ],
        None,
    );
    crate::harness::assert_success(&out);
    // Unclear input: a setup error naming the flag to use.
    let out = transum(
        dir.path(),
        &["translate", ml.join("junk_digits.txt").to_str().unwrap()],
        None,
    );
    crate::harness::assert_setup_error(&out, &["language is unclear", "--source-lang"]);
}

#[test]
fn summary_lang_translates_the_summary_and_keeps_its_sources() {
    use crate::harness::{assert_success, fixture_model, transum, TempDir};
    let dir = TempDir::new("summary-lang");
    // English articles pass through untranslated, so the summary has real
    // sentences to translate (random-weight translations state no fact).
    let corpus = dir.path().join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    for e in std::fs::read_dir(crate::harness::repo().join("tests/fixtures/summary")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), corpus.join(e.file_name())).unwrap();
    }
    let stand_in = fixture_model("marian-b");
    let args = [
        "run",
        "--model",
        &fixture_model("marian-a").display().to_string(),
        "--beams",
        "1",
        "--max-new-tokens",
        "6",
        "--summarizer",
        "extractive",
        "--summary-lang",
        "de",
        "--summary-lang-model",
        &stand_in.display().to_string(),
    ]
    .map(String::from);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    assert_success(&transum(dir.path(), &args, None));
    let read = |f: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("outputs").join(f)).unwrap())
            .unwrap()
    };
    let (en, de) = (read("summary.json"), read("summary.de.json"));
    let (en_s, de_s) = (
        en["sentences"].as_array().unwrap(),
        de["sentences"].as_array().unwrap(),
    );
    assert!(!en_s.is_empty());
    assert_eq!(en_s.len(), de_s.len());
    for (e, d) in en_s.iter().zip(de_s) {
        assert_eq!(d["english"], e["text"], "each sentence keeps its English");
        assert_eq!(d["sources"], e["sources"], "provenance unchanged");
        assert_eq!(d["support"], e["support"]);
    }
    assert_eq!(de["language"], "de");
    let md = std::fs::read_to_string(dir.path().join("outputs/summary.de.md")).unwrap();
    assert!(md.contains("translated from English into de"), "{md}");
    let m = crate::run::manifest(dir.path());
    let t = &m["summary"]["translation"];
    assert_eq!(t["language"], "de");
    assert_eq!(t["model"]["id"], stand_in.display().to_string());
    // A rerun keeps both, unchanged.
    assert_success(&transum(dir.path(), &args, None));
    let m = crate::run::manifest(dir.path());
    assert_eq!(m["summary"]["status"], "cached");
    assert_eq!(m["summary"]["translation"]["language"], "de");

    // The default models, and the target token of multi-target ones.
    assert_eq!(lang::from_english_model("de"), "Helsinki-NLP/opus-mt-en-de");
    assert_eq!(
        lang::from_english_model("pt"),
        "Helsinki-NLP/opus-mt-en-mul"
    );
    assert_eq!(lang::target_token("pt"), [">>por<<", ">>pt<<"]);
    let out = transum(dir.path(), &["run", "--summary-lang", "en"], None);
    crate::harness::assert_setup_error(&out, &["--summary-lang en"]);
}

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

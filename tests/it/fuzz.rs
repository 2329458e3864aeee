//! Property tests on arbitrary input: ingestion, sentence splitting, window
//! splitting and the summary's text handling never panic, whatever the bytes.
//! Bounded (a fixed number of cases per property) so CI time stays small.

use proptest::prelude::*;
use std::path::Path;
use transum::summary::{extractive, Article};
use transum::text::{ingest, split_sentences};

/// Bytes that look like scraped text often enough to reach deep code paths:
/// arbitrary bytes, and strings mixing French punctuation, quotes, digits,
/// spaces, newlines and multi-byte characters.
fn texty() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..400),
        "[a-zA-Zéèà0-9 .,;:!?…«»“”’'\"()\\-–—\n\r\t\u{a0}\u{202f}\u{feff}😀]{0,300}"
            .prop_map(|s| s.into_bytes()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn ingestion_never_panics(bytes in texty()) {
        let path = Path::new("fuzz.txt");
        if let Ok(text) = ingest::decode(path, &bytes) {
            let cleaned = ingest::clean(&text);
            for p in &cleaned.paragraphs {
                for s in split_sentences(p) {
                    let words = |t: &str| t.split_whitespace().count();
                    let parts = ingest::split_to_fit(s, 5, &words);
                    // Nothing is lost or added when a segment is split, and no
                    // word is cut (each word alone fits the 5-word window).
                    let squeeze = |t: &str| t.split_whitespace().collect::<String>();
                    prop_assert_eq!(squeeze(&parts.concat()), squeeze(s));
                    prop_assert_eq!(parts.iter().map(|p| words(p)).sum::<usize>(), words(s));
                    prop_assert!(parts.iter().all(|p| words(p) <= 5));
                }
            }
        }
    }

    #[test]
    fn summaries_never_panic(a in texty(), b in texty()) {
        let articles = vec![
            Article { name: "a.txt".into(), text: String::from_utf8_lossy(&a).into_owned() },
            Article { name: "b.txt".into(), text: String::from_utf8_lossy(&b).into_owned() },
        ];
        let s = extractive::summarize(&articles, 50, None).unwrap();
        prop_assert!(s.sentences.iter().all(|x| !x.sources.is_empty()));
    }
}

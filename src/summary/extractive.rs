//! The extractive summarizer: no model weights. One representative sentence
//! per top-ranked fact group, up to a word budget, printed in story order.
//!
//! Never two sentences from one group, and never a sentence that reaches
//! [`SAME_FACT`] with one already chosen (groups are built greedily, so two
//! groups can still hold near-duplicates; this second check closes that gap).

use super::{
    cite, group_facts, match_back, word_count, Article, Corpus, LeftOut, Summary, SAME_FACT,
};
use crate::summary::similarity::RELATED;

/// Summarize `articles` in at most `max_words` words.
pub fn summarize(articles: &[Article], max_words: usize) -> Summary {
    let corpus = Corpus::new(articles);
    let groups = group_facts(&corpus);
    let mut chosen: Vec<(usize, usize)> = Vec::new(); // (group, sentence)
    let mut words = 0;
    let mut left_out = Vec::new();
    for (g, group) in groups.iter().enumerate() {
        let s = group.representative;
        let text = &corpus.sentences[s].text;
        if !group.eligible {
            left_out.push(group.left_out_as_unrelated(&corpus));
            continue;
        }
        if let Some(&(_, dup)) = chosen
            .iter()
            .find(|&&(_, c)| corpus.index.sim(s, c) >= SAME_FACT)
        {
            left_out.push(LeftOut {
                text: text.clone(),
                reason: format!(
                    "repeats a chosen sentence: {:?}",
                    corpus.sentences[dup].text
                ),
            });
            continue;
        }
        let n = word_count(text);
        if words + n > max_words {
            left_out.push(LeftOut {
                text: text.clone(),
                reason: format!(
                    "word budget: {words} + {n} words exceeds --max-words {max_words} (reported by {} article(s))",
                    group.articles.len()
                ),
            });
            continue;
        }
        words += n;
        chosen.push((g, s));
    }
    // Story order.
    chosen.sort_by(|a, b| {
        groups[a.0]
            .position
            .total_cmp(&groups[b.0].position)
            .then(a.1.cmp(&b.1))
    });
    let sentences = chosen
        .iter()
        .map(|&(g, s)| {
            // Provenance: the group's members, plus any sentence that matches
            // the chosen one back at the same-fact threshold.
            let mut support: Vec<(usize, f32)> = groups[g]
                .members
                .iter()
                .map(|&m| (m, corpus.index.sim(s, m)))
                .collect();
            for (m, sim) in match_back(&corpus, &corpus.sentences[s].text, SAME_FACT) {
                if !support.iter().any(|&(x, _)| x == m) {
                    support.push((m, sim));
                }
            }
            support.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            cite(&corpus, corpus.sentences[s].text.clone(), &support)
        })
        .collect();
    Summary {
        summarizer: "extractive".into(),
        model: None,
        max_words,
        same_fact_threshold: SAME_FACT,
        related_threshold: RELATED,
        articles: corpus.names.clone(),
        sentences,
        raw_output: None,
        left_out,
        language: None,
        translated_by: None,
    }
}

//! Selection by facts covered, in the manner of Gillick and Favre's ICSI
//! summarizer (the strong extractive baseline of the DUC/TAC multi-document
//! evaluations): concepts are the corpus' facts ([`Facts`]), each weighted by
//! the number of articles reporting it, and sentences are chosen to cover
//! the most fact weight per word.
//!
//! The objective is solved greedily, as budgeted maximum coverage is: at each
//! step the sentence with the most uncovered weight per word that still fits
//! the budget. Two rules are stricter than ICSI's, because the summary must
//! state every fact once: a sentence that states a fact already covered adds
//! nothing and is never taken, and neither is one with a clause that states
//! the same fact as a chosen clause (the same-fact rule, which catches what
//! grouping split). The chosen sentences are returned in story order.
//!
//! Talks to: `facts` (groups, coverage, the same-fact graph); used by
//! `extractive` (a word budget) and `abstractive` (the model's token window).

use super::facts::{Corpus, Facts};
use super::{is_sentence, word_count, LeftOut};
use crate::error::Result;

/// What [`select`] chose.
pub struct Selection {
    /// Chosen sentences, in story order.
    pub sentences: Vec<usize>,
    /// The facts (group indices) each chosen sentence states.
    pub facts: Vec<Vec<usize>>,
    /// The facts not stated, and why.
    pub left_out: Vec<LeftOut>,
}

/// Why a sentence was passed over.
#[derive(Clone)]
enum Passed {
    /// It does not fit the budget; the budget's own words.
    Budget(String),
    /// It restates a fact of this chosen sentence.
    Repeats(usize),
}

/// Choose sentences by facts covered per word. `fits` says whether the
/// chosen sentences (story order) fit the budget, and if not, why.
pub fn select(
    corpus: &Corpus,
    facts: &Facts,
    fits: &mut dyn FnMut(&[usize]) -> Result<Option<String>>,
) -> Result<Selection> {
    let n = corpus.sentences.len();
    let groups = &facts.groups;
    let any_sentence = corpus.sentences.iter().any(|s| is_sentence(&s.text));
    let covers: Vec<Vec<usize>> = (0..n).map(|s| facts.covered_by(corpus, s)).collect();
    let words: Vec<f64> = corpus
        .sentences
        .iter()
        .map(|s| word_count(&s.text).max(1) as f64)
        .collect();
    // Candidates: whole sentences stating at least one eligible fact.
    let mut open: Vec<usize> = (0..n)
        .filter(|&s| !any_sentence || is_sentence(&corpus.sentences[s].text))
        .filter(|&s| covers[s].iter().any(|&g| groups[g].weight() > 0.0))
        .collect();
    let mut passed: Vec<Option<Passed>> = vec![None; n];
    let mut covered = vec![false; groups.len()];
    let mut is_chosen = vec![false; n];
    let mut chosen: Vec<usize> = Vec::new();
    loop {
        // Drop what can no longer be taken: covered facts and chosen
        // clauses only grow.
        open.retain(|&s| {
            if is_chosen[s] || passed[s].is_some() {
                return false;
            }
            let repeats = covers[s]
                .iter()
                .find(|&&g| covered[g])
                .and_then(|&g| chosen.iter().copied().find(|&c| covers[c].contains(&g)))
                .or_else(|| {
                    corpus.sentences[s].units.clone().find_map(|u| {
                        facts.edges[u]
                            .iter()
                            .map(|&v| corpus.units[v].sentence)
                            .find(|&o| is_chosen[o])
                    })
                });
            match repeats {
                Some(c) => {
                    passed[s] = Some(Passed::Repeats(c));
                    false
                }
                None => true,
            }
        });
        let gain = |s: usize| -> f64 {
            covers[s]
                .iter()
                .filter(|&&g| !covered[g])
                .map(|&g| groups[g].weight())
                .sum()
        };
        let best = open
            .iter()
            .copied()
            .filter(|&s| gain(s) > 0.0)
            .max_by(|&a, &b| {
                (gain(a) / words[a])
                    .total_cmp(&(gain(b) / words[b]))
                    .then(gain(a).total_cmp(&gain(b)))
                    .then(
                        corpus
                            .relative_position(b)
                            .total_cmp(&corpus.relative_position(a)),
                    )
                    .then(b.cmp(&a))
            });
        let Some(s) = best else { break };
        let mut trial = chosen.clone();
        trial.push(s);
        sort_story(corpus, &covers, facts, &mut trial);
        if let Some(why) = fits(&trial)? {
            passed[s] = Some(Passed::Budget(why));
            continue;
        }
        for &g in &covers[s] {
            covered[g] = true;
        }
        is_chosen[s] = true;
        chosen = trial;
    }
    // Every fact left unstated, most reported first, with the reason.
    let mut left_out = Vec::new();
    for (g, group) in groups.iter().enumerate() {
        if covered[g] {
            continue;
        }
        if !group.eligible {
            left_out.push(group.left_out_as_unrelated(corpus));
            continue;
        }
        let rep = corpus.units[group.representative].sentence;
        let reason = group
            .members
            .iter()
            .map(|&m| corpus.units[m].sentence)
            .chain([rep])
            .find_map(|s| passed[s].clone().map(|p| (s, p)));
        let (s, reason) = match reason {
            Some((s, Passed::Budget(why))) => (
                s,
                format!("{why} (reported by {} article(s))", group.articles.len()),
            ),
            Some((s, Passed::Repeats(c))) => (
                s,
                format!(
                    "restates a fact of a chosen sentence: {:?}",
                    corpus.sentences[c].text
                ),
            ),
            None => (rep, "no whole sentence states it".to_string()),
        };
        left_out.push(LeftOut {
            text: corpus.sentences[s].text.clone(),
            reason,
        });
    }
    let facts_of = chosen.iter().map(|&s| covers[s].clone()).collect();
    Ok(Selection {
        sentences: chosen,
        facts: facts_of,
        left_out,
    })
}

/// Story order: by the mean position of the facts a sentence states across
/// all articles reporting them, then by article and position.
fn sort_story(corpus: &Corpus, covers: &[Vec<usize>], facts: &Facts, chosen: &mut [usize]) {
    let key = |s: usize| -> f32 {
        let c = &covers[s];
        if c.is_empty() {
            return corpus.relative_position(s);
        }
        c.iter().map(|&g| facts.groups[g].position).sum::<f32>() / c.len() as f32
    };
    chosen.sort_by(|&a, &b| key(a).total_cmp(&key(b)).then(a.cmp(&b)));
}

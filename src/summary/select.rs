//! Selection by facts covered, in the manner of Gillick and Favre's ICSI
//! summarizer (the strong extractive baseline of the DUC/TAC multi-document
//! evaluations): concepts are the corpus' facts ([`Facts`]), each weighted by
//! the number of articles reporting it, and sentences are chosen to cover
//! the most fact weight per word.
//!
//! The objective is solved as budgeted maximum coverage usually is: greedily,
//! at each step the sentence with the most uncovered weight per word that
//! still fits the budget, then improved by swaps (a chosen sentence replaced
//! by one stating more weight without repeating the others), refilling after
//! each swap. Two rules are stricter than ICSI's, because the summary must
//! state every fact once: a sentence that states a fact already covered adds
//! nothing and is never taken, and neither is one with a clause that states
//! the same fact as a chosen clause (the same-fact rule, which catches what
//! grouping split). The chosen sentences are returned in story order.
//!
//! Talks to: `facts` (groups, coverage, the same-fact graph); used by
//! `extractive` (a word budget) and `abstractive` (the model's token window).

use super::facts::{Corpus, Facts};
use super::{word_count, LeftOut};
use crate::error::Result;

/// Worth of a detail (see `select`) per article beyond the first that uses
/// it; a fact is worth 1 per article.
const DETAIL: f64 = 0.2;

/// What [`select`] chose.
pub struct Selection {
    /// Chosen sentences, in story order.
    pub sentences: Vec<usize>,
    /// The facts (group indices) each chosen sentence states.
    pub facts: Vec<Vec<usize>>,
    /// The facts not stated, and why.
    pub left_out: Vec<LeftOut>,
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
    let statement = corpus.statements();
    let covers: Vec<Vec<usize>> = (0..n).map(|s| facts.covered_by(corpus, s, true)).collect();
    let weight: Vec<f64> = covers
        .iter()
        .map(|c| c.iter().map(|&g| groups[g].weight()).sum())
        .collect();
    let words: Vec<f64> = corpus
        .sentences
        .iter()
        .map(|s| word_count(&s.text).max(1) as f64)
        .collect();
    // Candidates: statements stating at least one eligible fact.
    let candidates: Vec<usize> = (0..n)
        .filter(|&s| statement[corpus.sentences[s].units.start])
        .filter(|&s| weight[s] > 0.0)
        .collect();
    // The chosen sentence `s` would repeat a fact of, if any: a fact both
    // state, or a clause pair stating the same fact (what grouping split).
    let conflict = |s: usize, chosen: &[usize]| -> Option<usize> {
        chosen.iter().copied().find(|&c| {
            c == s
                || covers[s].iter().any(|g| covers[c].contains(g))
                || corpus.sentences[s].units.clone().any(|u| {
                    facts.edges[u]
                        .iter()
                        .any(|&v| corpus.units[v].sentence == c)
                })
        })
    };
    // Details, the secondary concepts: a distinctive term two or more
    // articles use ("bulletproof vest") is worth a little, once, so that
    // of two sentences stating the same facts the one with more of what
    // the articles report wins (ICSI's concepts are such terms).
    let mut ids: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let details: Vec<Vec<(usize, f64)>> = facts
        .details
        .iter()
        .map(|d| {
            d.iter()
                .map(|(t, a)| {
                    let next = ids.len();
                    let id = *ids.entry(t.as_str()).or_insert(next);
                    (id, DETAIL * (*a as f64 - 1.0))
                })
                .collect()
        })
        .collect();
    let terms = ids.len();
    let have = |chosen: &[usize]| -> Vec<bool> {
        let mut h = vec![false; terms];
        for &c in chosen {
            for &(t, _) in &details[c] {
                h[t] = true;
            }
        }
        h
    };
    let value = |s: usize, have: &[bool]| -> f64 {
        weight[s]
            + details[s]
                .iter()
                .filter(|&&(t, _)| !have[t])
                .map(|&(_, w)| w)
                .sum::<f64>()
    };
    let better = |a: usize, b: usize, have: &[bool]| {
        let (va, vb) = (value(a, have), value(b, have));
        (va / words[a])
            .total_cmp(&(vb / words[b]))
            .then(va.total_cmp(&vb))
            .then(
                corpus
                    .relative_position(b)
                    .total_cmp(&corpus.relative_position(a)),
            )
            .then(b.cmp(&a))
    };
    // `chosen` with `s` added, in story order, if it fits; else the reason.
    let mut trial =
        |chosen: &[usize], s: usize| -> Result<std::result::Result<Vec<usize>, String>> {
            let mut t = chosen.to_vec();
            t.push(s);
            sort_story(corpus, &covers, facts, &mut t);
            Ok(match fits(&t)? {
                None => Ok(t),
                Some(why) => Err(why),
            })
        };
    let mut chosen: Vec<usize> = Vec::new();
    // Greedy fill, then swaps: a chosen sentence gives way to one that
    // states more fact weight without repeating the others' (the greedy
    // step takes the short sentence, a swap the one that also says who
    // waved goodbye); each swap may free budget for another fill.
    for _round in 0..32 {
        // Fill: the most uncovered weight per word that fits.
        let mut tried = vec![false; n];
        loop {
            let h = have(&chosen);
            let best = candidates
                .iter()
                .copied()
                .filter(|&s| !tried[s] && conflict(s, &chosen).is_none())
                .max_by(|&a, &b| better(a, b, &h));
            let Some(s) = best else { break };
            tried[s] = true;
            if let Ok(t) = trial(&chosen, s)? {
                chosen = t;
            }
        }
        // Swap: the first improvement found, then fill again.
        let mut swapped = false;
        'swap: for i in 0..chosen.len() {
            let c = chosen[i];
            let others: Vec<usize> = chosen.iter().copied().filter(|&x| x != c).collect();
            let h = have(&others);
            let mut options: Vec<usize> = candidates
                .iter()
                .copied()
                .filter(|&s| value(s, &h) > value(c, &h) + 1e-9 && conflict(s, &others).is_none())
                .collect();
            options.sort_by(|&a, &b| value(b, &h).total_cmp(&value(a, &h)).then(better(b, a, &h)));
            for s in options {
                if let Ok(t) = trial(&others, s)? {
                    chosen = t;
                    swapped = true;
                    break 'swap;
                }
            }
        }
        if !swapped {
            break;
        }
    }
    let mut covered = vec![false; groups.len()];
    for &s in &chosen {
        for &g in &covers[s] {
            covered[g] = true;
        }
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
        let reason = match conflict(rep, &chosen) {
            Some(c) => format!(
                "restates a fact of a chosen sentence: {:?}",
                corpus.sentences[c].text
            ),
            None => match trial(&chosen, rep)? {
                Err(why) => format!("{why} (reported by {} article(s))", group.articles.len()),
                Ok(_) => "no statement states it".to_string(),
            },
        };
        left_out.push(LeftOut {
            text: corpus.sentences[rep].text.clone(),
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

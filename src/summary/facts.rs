//! Facts: the units a summary counts, and which of them state the same fact.
//!
//! Real sentences carry several facts ("the two leaders exchanged rifles and
//! Putin accepted an invitation"), so a sentence is split into clauses
//! ([`clauses`]) and the clause is the unit of "same fact". Every unit gets a
//! lexical vector ([`SimilarityIndex`]), its numbers and, with a sentence
//! encoder, an embedding; [`Corpus::same_fact`] applies the one rule,
//! [`similarity::same_fact`]. [`Facts::new`] clusters the units into facts by
//! average linkage over the same-fact graph: two groups merge only when more
//! than half of the unit pairs across them state the same fact, so A~B and
//! B~C alone never merge A and C (no chaining), while a fact restated in six
//! wordings still forms one group. Groups are then ranked (most articles
//! first) and marked eligible or not (noise, off-topic, headings).
//!
//! Talks to: `similarity` (lexical vectors and the rule), `embed` (the
//! encoder); used by `select` (coverage), `extractive` and `abstractive`.

use std::collections::{BinaryHeap, HashMap};
use std::ops::Range;

use serde::Serialize;

use super::embed::SentenceEncoder;
use super::similarity::{
    self, SimilarityIndex, Vector, RELATED, SEMANTIC_RELATED, SEMANTIC_SAME_FACT,
};
use super::{is_sentence, states_fact, Article, LeftOut};
use crate::error::Result;

/// Words a clause needs on each side of a split: shorter pieces ("Kim" of
/// "Kim and Putin met") are not clauses.
const MIN_CLAUSE_WORDS: usize = 4;

/// Connectives after a comma that open a new clause.
const COMMA_CONNECTIVES: &[&str] = &[
    "and that ",
    "which ",
    "who ",
    "where ",
    "while ",
    "and ",
    "but ",
    "as ",
    "after ",
    "before ",
    "even though ",
    "although ",
    "whereas ",
    "in exchange for ",
];

/// The clauses of a sentence: split at semicolons, dashes, a comma before a
/// connective ("..., where ...", "..., and ...") or a participle ("...,
/// opening a crack 4 km long"), and "and" before a
/// capitalised word (a new subject: "... rifles and Putin accepted ..."),
/// wherever both sides keep [`MIN_CLAUSE_WORDS`] words. A sentence without
/// such a point is one clause.
pub fn clauses(sentence: &str) -> Vec<&str> {
    let mut points: Vec<(usize, usize)> = Vec::new(); // (end of left, start of right)
    let bytes = sentence.as_bytes();
    for (i, _) in sentence.char_indices() {
        let rest = &sentence[i..];
        if rest.starts_with("; ") {
            points.push((i, i + 2));
        } else if rest.starts_with(" — ") || rest.starts_with(" – ") {
            points.push((
                i,
                i + rest.chars().take(3).map(char::len_utf8).sum::<usize>(),
            ));
        } else if let Some(after) = rest.strip_prefix(", ") {
            // A connective, or a participle ("..., sending lava 100 metres
            // up"): both open a clause with a fact of its own.
            let word = after.split([' ', ',']).next().unwrap_or("");
            let participle =
                word.len() > 4 && word.ends_with("ing") && word.chars().all(|c| c.is_lowercase());
            if participle || COMMA_CONNECTIVES.iter().any(|c| after.starts_with(c)) {
                points.push((i, i + 2));
            }
        } else if rest.starts_with(" and ")
            && i > 0
            && bytes[i - 1] != b','
            && (rest[5..].starts_with(|c: char| c.is_uppercase()) || rest[5..].starts_with("that "))
        {
            points.push((i, i + 1));
        }
    }
    let words = |s: &str| s.split_whitespace().count();
    let mut out = Vec::new();
    let mut start = 0;
    for (end, next) in points {
        if end <= start {
            continue;
        }
        if words(&sentence[start..end]) >= MIN_CLAUSE_WORDS
            && words(&sentence[next..]) >= MIN_CLAUSE_WORDS
        {
            out.push(sentence[start..end].trim());
            start = next;
        }
    }
    out.push(sentence[start..].trim());
    out
}

/// A sentence of the corpus.
#[derive(Debug, Clone)]
pub struct Sentence {
    /// Index of its article.
    pub article: usize,
    /// Index of the sentence within its article.
    pub position: usize,
    pub text: String,
    /// Its clauses: indices into [`Corpus::units`].
    pub units: Range<usize>,
}

/// A clause: the unit of "same fact".
#[derive(Debug, Clone)]
pub struct Unit {
    /// Index of its sentence.
    pub sentence: usize,
    pub text: String,
}

/// The sentences and clauses of all articles, indexed for similarity.
pub struct Corpus<'e> {
    pub names: Vec<String>,
    pub sentences: Vec<Sentence>,
    pub units: Vec<Unit>,
    /// Sentences per article.
    counts: Vec<usize>,
    /// Lexical vectors of the units.
    pub index: SimilarityIndex,
    numbers: Vec<Vec<(String, String)>>,
    /// Each unit's content terms (stems), sorted, once each.
    terms: Vec<Vec<String>>,
    /// Each unit's rare names (stems), sorted, once each: see [`rare_names`].
    unit_names: Vec<Vec<String>>,
    /// Every rare name of the corpus.
    rare: std::collections::HashSet<String>,
    /// Whether each unit can state a fact (see [`Corpus::statements`]).
    statement: Vec<bool>,
    /// Unit embeddings, row-major, L2-normalised (with an encoder).
    embeddings: Option<Vec<f32>>,
    dim: usize,
    encoder: Option<&'e SentenceEncoder>,
}

/// A text outside the corpus (a generated sentence), ready to compare.
#[derive(Debug, Clone)]
pub struct Query {
    lexical: Vector,
    embedding: Option<Vec<f32>>,
    numbers: Vec<(String, String)>,
    names: Vec<String>,
}

impl Query {
    /// The same-fact rule between two outside texts.
    pub fn same_fact(&self, other: &Query) -> bool {
        let cos = self
            .embedding
            .as_ref()
            .zip(other.embedding.as_ref())
            .map(|(a, b)| dot(a, b));
        similarity::same_fact(
            self.lexical.sim(&other.lexical),
            cos,
            &self.numbers,
            &other.numbers,
            shares(&self.names, &other.names),
        )
    }
}

/// Whether two sorted lists share an element.
fn shares(a: &[String], b: &[String]) -> bool {
    a.iter().any(|x| b.binary_search(x).is_ok())
}

/// Whether a comma-delimited part of a sentence only says who reported it
/// ("the Meteorological Office said", "according to state media"): its
/// names are a source many facts share, not one event.
fn attribution(part: &str) -> bool {
    const VERBS: &[&str] = &[
        "said",
        "says",
        "reported",
        "reports",
        "told",
        "added",
        "announced",
        "stated",
    ];
    let p = part
        .trim()
        .trim_end_matches(|c: char| !c.is_alphanumeric())
        .to_lowercase();
    p.starts_with("according to") || VERBS.iter().any(|v| p.ends_with(&format!(" {v}")))
}

/// The stems of the capitalised words of `text` that are names, but for its
/// first word when `sentence_start` (a capital there says nothing) and for
/// the parts that attribute it ([`attribution`]).
fn capitalised(text: &str, sentence_start: bool) -> impl Iterator<Item = String> + '_ {
    text.split(',')
        .enumerate()
        .filter(|(_, part)| !attribution(part))
        .flat_map(move |(i, part)| {
            part.split_whitespace()
                .skip(usize::from(sentence_start && i == 0))
        })
        .map(|w| w.trim_matches(|c: char| !c.is_alphanumeric()))
        .filter(|w| w.starts_with(char::is_uppercase))
        .filter(|w| !similarity::is_calendar(w))
        .flat_map(similarity::terms)
}

/// Rare names: stems of capitalised words (past a sentence's first) used
/// by statements of three or more articles, by one statement per article at
/// most, and every two of those statements related in meaning (`cosine` at
/// least [`NEAR`]). Two articles are too few: each names its country once,
/// and two facts of one story are related. Such a place or person names one event
/// ("Artyom-Primorsky-1", "Kozlov"); the story's protagonists, named in
/// every other sentence, and its countries, named once per article but in
/// different facts ("crossed back into North Korea", "an invitation to
/// visit North Korea"), name none. Returns each unit's rare names and the
/// set of them. Only with embeddings: the same-fact rule uses names only
/// beside a cosine.
fn rare_names(
    sentences: &[Sentence],
    units: &[Unit],
    statement: &[bool],
    cosine: impl Fn(usize, usize) -> f32,
) -> (Vec<Vec<String>>, std::collections::HashSet<String>) {
    let all: Vec<Vec<String>> = units
        .iter()
        .enumerate()
        .map(|(u, unit)| {
            let sent = &sentences[unit.sentence];
            let mut v: Vec<String> = capitalised(&unit.text, u == sent.units.start).collect();
            v.sort_unstable();
            v.dedup();
            v
        })
        .collect();
    let mut uses: HashMap<&str, Vec<usize>> = HashMap::new();
    for (u, names) in all.iter().enumerate() {
        if !statement[u] {
            continue;
        }
        for n in names {
            uses.entry(n).or_default().push(u);
        }
    }
    let rare: std::collections::HashSet<String> = uses
        .iter()
        .filter(|(_, us)| {
            let mut arts: Vec<usize> = us
                .iter()
                .map(|&u| sentences[units[u].sentence].article)
                .collect();
            arts.sort_unstable();
            arts.dedup();
            arts.len() >= 3
                && arts.len() == us.len()
                && us
                    .iter()
                    .enumerate()
                    .all(|(i, &a)| us[i + 1..].iter().all(|&b| cosine(a, b) >= NEAR))
        })
        .map(|(t, _)| t.to_string())
        .collect();
    let names = all
        .into_iter()
        .map(|v| v.into_iter().filter(|t| rare.contains(t)).collect())
        .collect();
    (names, rare)
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Eight partial sums, so the compiler vectorises the loop.
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().sum::<f32>() + tail
}

impl<'e> Corpus<'e> {
    /// Split every article into sentences and clauses, and index them; with
    /// `encoder`, embed every clause too.
    pub fn new(articles: &[Article], encoder: Option<&'e SentenceEncoder>) -> Result<Self> {
        let mut sentences = Vec::new();
        let mut units = Vec::new();
        let mut counts = Vec::with_capacity(articles.len());
        for (a, art) in articles.iter().enumerate() {
            let mut n = 0;
            for para in art.text.split("\n\n") {
                let para = para.split_whitespace().collect::<Vec<_>>().join(" ");
                for s in crate::text::split_sentences(&para) {
                    let first = units.len();
                    for c in clauses(s) {
                        units.push(Unit {
                            sentence: sentences.len(),
                            text: c.to_string(),
                        });
                    }
                    sentences.push(Sentence {
                        article: a,
                        position: n,
                        text: s.to_string(),
                        units: first..units.len(),
                    });
                    n += 1;
                }
            }
            counts.push(n);
        }
        let texts: Vec<&str> = units.iter().map(|u| u.text.as_str()).collect();
        let index = SimilarityIndex::new(&texts);
        let numbers = texts.iter().map(|t| similarity::numbers(t)).collect();
        let terms = texts
            .iter()
            .map(|t| {
                let mut v = similarity::terms(t);
                v.sort_unstable();
                v.dedup();
                v
            })
            .collect();
        let any = sentences.iter().any(|s| states_fact(&s.text));
        let statement: Vec<bool> = units
            .iter()
            .map(|u| !any || states_fact(&sentences[u.sentence].text))
            .collect();
        let (embeddings, dim) = match encoder {
            Some(e) => (Some(e.embed(&texts, 64)?.concat()), e.dim()),
            None => (None, 0),
        };
        let (unit_names, rare) = match &embeddings {
            Some(e) => rare_names(&sentences, &units, &statement, |a, b| {
                dot(&e[a * dim..(a + 1) * dim], &e[b * dim..(b + 1) * dim])
            }),
            None => (vec![Vec::new(); units.len()], Default::default()),
        };
        Ok(Corpus {
            names: articles.iter().map(|a| a.name.clone()).collect(),
            sentences,
            units,
            counts,
            index,
            numbers,
            terms,
            unit_names,
            rare,
            statement,
            embeddings,
            dim,
            encoder,
        })
    }

    /// Where a sentence sits in its article: 0.0 first, 1.0 last.
    pub fn relative_position(&self, s: usize) -> f32 {
        let sent = &self.sentences[s];
        let n = self.counts[sent.article];
        if n <= 1 {
            0.0
        } else {
            sent.position as f32 / (n - 1) as f32
        }
    }

    /// Number of articles.
    pub fn articles(&self) -> usize {
        self.names.len()
    }

    /// The article of unit `u`.
    pub fn article_of(&self, u: usize) -> usize {
        self.sentences[self.units[u].sentence].article
    }

    /// Whether semantic similarity (embeddings) is in use.
    pub fn semantic(&self) -> bool {
        self.embeddings.is_some()
    }

    fn embedding(&self, u: usize) -> Option<&[f32]> {
        self.embeddings
            .as_ref()
            .map(|e| &e[u * self.dim..(u + 1) * self.dim])
    }

    /// Cosine of units `a` and `b`'s embeddings, with an encoder.
    pub fn cosine(&self, a: usize, b: usize) -> Option<f32> {
        Some(dot(self.embedding(a)?, self.embedding(b)?))
    }

    /// How alike units `a` and `b` are: the larger of the lexical similarity
    /// and the cosine (what provenance reports).
    pub fn similarity(&self, a: usize, b: usize) -> f32 {
        self.index
            .sim(a, b)
            .max(self.cosine(a, b).unwrap_or(0.0))
            .min(1.0)
    }

    /// Whether units `a` and `b` state the same fact ([`similarity::same_fact`]).
    pub fn same_fact(&self, a: usize, b: usize) -> bool {
        similarity::same_fact(
            self.index.sim(a, b),
            self.cosine(a, b),
            &self.numbers[a],
            &self.numbers[b],
            shares(&self.unit_names[a], &self.unit_names[b]),
        )
    }

    /// An outside text's vectors, embedded by the same encoder.
    pub fn query(&self, text: &str) -> Result<Query> {
        let embedding = match self.encoder {
            Some(e) => Some(e.embed(&[text], 1)?.remove(0)),
            None => None,
        };
        let mut names: Vec<String> = capitalised(text, true)
            .filter(|t| self.rare.contains(t))
            .collect();
        names.sort_unstable();
        names.dedup();
        Ok(Query {
            lexical: self.index.vector(text),
            embedding,
            numbers: similarity::numbers(text),
            names,
        })
    }

    /// How alike an outside text and unit `u` are, and whether the text is
    /// supported by it: the same-fact rule with the lexical threshold
    /// lowered to `lexical_threshold` (a generated sentence rewords and
    /// merges its sources).
    pub fn supports(&self, q: &Query, u: usize, lexical_threshold: f32) -> Option<f32> {
        let lex = self.index.sim_to(&q.lexical, u);
        let cos = q
            .embedding
            .as_deref()
            .zip(self.embedding(u))
            .map(|(a, b)| dot(a, b));
        let ok = (lex >= lexical_threshold || cos.is_some_and(|c| c >= SEMANTIC_SAME_FACT))
            && !similarity::numbers_contradict(&q.numbers, &self.numbers[u]);
        ok.then(|| lex.max(cos.unwrap_or(0.0)).min(1.0))
    }

    /// Call `f(a, cosines of unit a with every unit)` for every unit, with
    /// embeddings (else never): a block of rows at a time through candle's
    /// matmul, so a row is never computed pair by pair.
    fn cosine_rows(&self, mut f: impl FnMut(usize, &[f32])) -> Result<()> {
        let Some(e) = &self.embeddings else {
            return Ok(());
        };
        use candle_core::{Device, Tensor};
        const BLOCK: usize = 256;
        let n = self.units.len();
        let all = Tensor::from_slice(e, (n, self.dim), &Device::Cpu)?;
        let all_t = all.t()?.contiguous()?;
        for start in (0..n).step_by(BLOCK) {
            let rows = BLOCK.min(n - start);
            let sims = all.narrow(0, start, rows)?.matmul(&all_t)?;
            let sims = sims.flatten_all()?.to_vec1::<f32>()?;
            for r in 0..rows {
                f(start + r, &sims[r * n..(r + 1) * n]);
            }
        }
        Ok(())
    }

    /// For each unit, whether its sentence can state a fact ([`states_fact`]);
    /// every unit when no sentence of the corpus can (articles written as
    /// bare lines), so that such a corpus is still summarized.
    pub fn statements(&self) -> &[bool] {
        &self.statement
    }

    /// The content terms (stems) of unit `u`, sorted, once each.
    pub fn terms(&self, u: usize) -> &[String] {
        &self.terms[u]
    }

    /// Unit similarities folded to their sentences, each keeping its best
    /// clause's; best first (provenance).
    pub fn by_sentence(&self, units: impl IntoIterator<Item = (usize, f32)>) -> Vec<(usize, f32)> {
        let mut best: Vec<(usize, f32)> = Vec::new();
        for (u, sim) in units {
            let s = self.units[u].sentence;
            match best.iter_mut().find(|(x, _)| *x == s) {
                Some((_, b)) => *b = b.max(sim),
                None => best.push((s, sim)),
            }
        }
        best.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        best
    }

    /// The same-fact graph: for each unit, the other units stating the same
    /// fact, ascending; and, with embeddings, the units whose cosine reaches
    /// [`NEAR`] (with it), which average linkage sums. Lexical candidates come
    /// from the index's sparse rows, semantic ones from the embeddings'
    /// cosine rows; the rule decides. Headings and page chrome link only
    /// among themselves: a heading ("Eruption in south-west Iceland") in a
    /// fact's group would hold back the merges of the statements that report
    /// it.
    pub fn same_fact_edges(&self) -> Result<Graph> {
        let n = self.units.len();
        let statement = self.statements();
        let comparable = |a: usize, b: usize| {
            a != b
                && statement[a] == statement[b]
                && !similarity::numbers_contradict(&self.numbers[a], &self.numbers[b])
        };
        let mut edges: Vec<Vec<usize>> = (0..n)
            .map(|a| self.index.row(a).into_iter().map(|(b, _)| b).collect())
            .collect();
        let mut near: Vec<Vec<(usize, f32)>> = vec![Vec::new(); n];
        let floor = SEMANTIC_SAME_FACT.min(NEAR);
        self.cosine_rows(|a, row| {
            for (b, &c) in row.iter().enumerate() {
                if c >= floor {
                    edges[a].push(b);
                    if c >= NEAR && comparable(a, b) {
                        near[a].push((b, c));
                    }
                }
            }
        })?;
        for (a, list) in edges.iter_mut().enumerate() {
            list.sort_unstable();
            list.dedup();
            list.retain(|&b| comparable(a, b) && self.same_fact(a, b));
        }
        Ok(Graph { edges, near })
    }
}

/// Cosine from which a pair counts towards average linkage's mean.
pub const NEAR: f32 = similarity::SHARED_FIGURE_COSINE;

/// What [`Corpus::same_fact_edges`] finds.
pub struct Graph {
    /// Same-fact pairs, per unit, ascending.
    pub edges: Vec<Vec<usize>>,
    /// Pairs with cosine at or above [`NEAR`], per unit (with embeddings).
    pub near: Vec<Vec<(usize, f32)>>,
}

/// Units stating one fact, across articles.
#[derive(Debug, Clone, Serialize)]
pub struct Group {
    /// Unit indices, ascending.
    pub members: Vec<usize>,
    /// Articles reporting the fact, ascending.
    pub articles: Vec<usize>,
    /// The member most similar to the others (whole sentences first).
    pub representative: usize,
    /// Highest similarity of a member to another fact's statements in
    /// another article (cosine with embeddings, else lexical).
    pub relevance: f32,
    /// Mean relative position of the members' sentences (story order).
    pub position: f32,
    /// Whether it may appear in a summary: a fact only one article states,
    /// sharing nothing ([`RELATED`]) with the other articles, is scraped noise
    /// or off-topic when there are other articles to compare with; a group of
    /// headings only has no sentence to offer.
    pub eligible: bool,
}

impl Group {
    /// What the summary gains by stating this fact: the number of articles
    /// reporting it (the document frequency of Gillick and Favre's concepts);
    /// nothing for an ineligible group.
    pub fn weight(&self) -> f64 {
        if self.eligible {
            self.articles.len() as f64
        } else {
            0.0
        }
    }

    /// The `left_out` entry of an ineligible group (noise, off-topic, headings).
    pub fn left_out_as_unrelated(&self, corpus: &Corpus) -> LeftOut {
        let text = corpus.sentences[corpus.units[self.representative].sentence]
            .text
            .clone();
        let reason = if !is_sentence(&text) {
            "a heading, fragment or question, not a statement".to_string()
        } else if !states_fact(&text) {
            "addresses the reader (page chrome), not a fact of the story".to_string()
        } else {
            format!(
                "only {} states it and it shares nothing with the other articles (similarity {:.2} < {RELATED})",
                corpus.names[self.articles[0]], self.relevance
            )
        };
        LeftOut { text, reason }
    }
}

/// The corpus' facts: groups of units, ranked, with the same-fact graph.
pub struct Facts {
    /// Most articles first; among facts one article states, the most related
    /// to the rest of the corpus first; then the earliest in the stories.
    pub groups: Vec<Group>,
    /// The group of each unit.
    pub group_of: Vec<usize>,
    /// The same-fact graph ([`Corpus::same_fact_edges`]).
    pub edges: Vec<Vec<usize>>,
    /// Each group's signature: the content terms (stems) most of its reports
    /// use and other statements rarely do ("drone", "governor" for the gift
    /// of drones; "khasan" for the route). A sentence using them states the
    /// fact, whatever else it says.
    pub signatures: Vec<Vec<String>>,
    /// Term -> the groups whose signature holds it.
    by_term: HashMap<String, Vec<usize>>,
    /// Each sentence's details: its distinctive terms ([`distinctive_terms`])
    /// that two articles or more use, with the number of those articles.
    pub details: Vec<Vec<(String, usize)>>,
}

/// The signatures of `groups` (see [`Facts::signatures`]): for a fact that
/// two articles or more report, the terms at least half of its statement
/// clauses (and two or more) contain, and that at most half as many
/// statement clauses outside it contain.
fn signatures(corpus: &Corpus, groups: &[Group], group_of: &[usize]) -> Vec<Vec<String>> {
    let anchor = corpus.statements();
    let mut inside: Vec<HashMap<String, usize>> = vec![HashMap::new(); groups.len()];
    let mut total: HashMap<String, usize> = HashMap::new();
    let mut anchors = vec![0usize; groups.len()];
    for u in 0..corpus.units.len() {
        if !anchor[u] {
            continue;
        }
        anchors[group_of[u]] += 1;
        for t in corpus.terms(u) {
            *total.entry(t.clone()).or_default() += 1;
            *inside[group_of[u]].entry(t.clone()).or_default() += 1;
        }
    }
    groups
        .iter()
        .enumerate()
        .map(|(g, group)| {
            if group.articles.len() < 2 {
                return Vec::new();
            }
            let need = anchors[g].div_ceil(2).max(2);
            let mut sig: Vec<String> = inside[g]
                .iter()
                .filter(|&(t, &n)| n >= need && 2 * (total[t] - n) <= n)
                .map(|(t, _)| t.clone())
                .collect();
            sig.sort_unstable();
            sig
        })
        .collect()
}

impl Facts {
    /// Group the corpus' units by fact and rank the groups.
    pub fn new(corpus: &Corpus) -> Result<Self> {
        let Graph { edges, near } = corpus.same_fact_edges()?;
        let clusters = average_linkage(
            &edges,
            &near,
            corpus.semantic().then_some(SEMANTIC_SAME_FACT),
        );
        let anchor = corpus.statements();
        let distinctive = distinctive_terms(corpus);
        let clusters = adopt_strays(corpus, clusters, &near, &distinctive);
        let n = corpus.units.len();
        let mut cluster_of = vec![0; n];
        for (c, members) in clusters.iter().enumerate() {
            for &m in members {
                cluster_of[m] = c;
            }
        }
        // Relevance: how close a unit comes to another fact (another
        // cluster) of another article; it decides whether a fact only one
        // article states belongs to the story.
        // Only units that can state a fact count as anchors: noise relates
        // to other outlets' noise, never to the story.
        let elsewhere = |u: usize, v: usize| {
            anchor[v]
                && corpus.article_of(v) != corpus.article_of(u)
                && cluster_of[v] != cluster_of[u]
        };
        // With embeddings, relevance is semantic: word overlap is fooled by
        // a shared "Monday" and misses a related fact in other words.
        let mut relevance = vec![0f32; n];
        if corpus.semantic() {
            corpus.cosine_rows(|u, row| {
                relevance[u] = row
                    .iter()
                    .enumerate()
                    .filter(|&(v, _)| elsewhere(u, v))
                    .map(|(_, &c)| c)
                    .fold(0.0, f32::max);
            })?;
        } else {
            // One shared word relates nothing ("final" in the football
            // results and in "the ground finally split open"), and neither
            // does the day they share ("Monday"); two words may.
            let two_terms = |u: usize, v: usize| {
                let tv = corpus.terms(v);
                corpus
                    .terms(u)
                    .iter()
                    .filter(|t| tv.binary_search(t).is_ok() && !similarity::is_calendar(t))
                    .nth(1)
                    .is_some()
            };
            for (u, r) in relevance.iter_mut().enumerate() {
                *r = corpus
                    .index
                    .row(u)
                    .into_iter()
                    .filter(|&(v, _)| elsewhere(u, v) && two_terms(u, v))
                    .map(|(_, sim)| sim)
                    .fold(0.0, f32::max);
            }
        }
        let related = if corpus.semantic() {
            SEMANTIC_RELATED
        } else {
            RELATED
        };
        let single_article = corpus.articles() <= 1;
        let whole = |u: usize| anchor[u];
        let mut groups: Vec<Group> = clusters
            .into_iter()
            .map(|members| {
                let mut articles: Vec<usize> =
                    members.iter().map(|&m| corpus.article_of(m)).collect();
                articles.sort_unstable();
                articles.dedup();
                let centrality = |x: usize| -> f32 {
                    members
                        .iter()
                        .filter(|&&o| o != x)
                        .map(|&o| corpus.similarity(x, o))
                        .sum()
                };
                // Whole sentences before headings; then the most central;
                // ties go to the earlier unit (max_by keeps the last max).
                let representative = *members
                    .iter()
                    .max_by(|&&a, &&b| {
                        whole(a)
                            .cmp(&whole(b))
                            .then(centrality(a).total_cmp(&centrality(b)))
                            .then(b.cmp(&a))
                    })
                    .expect("a group has a member");
                let relevance = members.iter().map(|&m| relevance[m]).fold(0.0, f32::max);
                let position = members
                    .iter()
                    .map(|&m| corpus.relative_position(corpus.units[m].sentence))
                    .sum::<f32>()
                    / members.len() as f32;
                // Headings only: no sentence states the fact, unless the
                // corpus has no sentences at all (articles as bare lines).
                let stated = whole(representative);
                let eligible =
                    stated && (single_article || articles.len() >= 2 || relevance >= related);
                Group {
                    members,
                    articles,
                    representative,
                    relevance,
                    position,
                    eligible,
                }
            })
            .collect();
        groups.sort_by(|a, b| {
            b.articles
                .len()
                .cmp(&a.articles.len())
                .then_with(|| {
                    if a.articles.len() == 1 {
                        b.relevance.total_cmp(&a.relevance)
                    } else {
                        std::cmp::Ordering::Equal
                    }
                })
                .then(a.position.total_cmp(&b.position))
                .then(a.members[0].cmp(&b.members[0]))
        });
        let mut group_of = vec![0; n];
        for (g, group) in groups.iter().enumerate() {
            for &m in &group.members {
                group_of[m] = g;
            }
        }
        let signatures = signatures(corpus, &groups, &group_of);
        let mut by_term: HashMap<String, Vec<usize>> = HashMap::new();
        for (g, sig) in signatures.iter().enumerate() {
            for t in sig {
                by_term.entry(t.clone()).or_default().push(g);
            }
        }
        let mut term_articles: HashMap<&str, std::collections::BTreeSet<usize>> = HashMap::new();
        for (u, ts) in distinctive.iter().enumerate() {
            for t in ts {
                term_articles
                    .entry(t)
                    .or_default()
                    .insert(corpus.article_of(u));
            }
        }
        let details = corpus
            .sentences
            .iter()
            .map(|sent| {
                let mut d: Vec<(String, usize)> = sent
                    .units
                    .clone()
                    .flat_map(|u| distinctive[u].iter())
                    .map(|t| (t.clone(), term_articles[t.as_str()].len()))
                    .filter(|&(_, a)| a >= 2)
                    .collect();
                d.sort_unstable();
                d.dedup();
                d
            })
            .collect();
        Ok(Facts {
            groups,
            group_of,
            edges,
            signatures,
            by_term,
            details,
        })
    }

    /// The facts sentence `s` states: the groups of its clauses; any group
    /// whose signature it uses (two of its terms, or its one term); and,
    /// when `loose`, any group at least half of whose members one of its
    /// clauses restates. A clause that joins two facts belongs to one group,
    /// but states both. The loose reading guards against repeats; the strict
    /// one gives provenance.
    pub fn covered_by(&self, corpus: &Corpus, s: usize, loose: bool) -> Vec<usize> {
        let mut out: Vec<usize> = Vec::new();
        let mut terms: Vec<&String> = corpus.sentences[s]
            .units
            .clone()
            .flat_map(|u| corpus.terms(u))
            .collect();
        terms.sort_unstable();
        terms.dedup();
        let mut hits: HashMap<usize, usize> = HashMap::new();
        for t in terms {
            for &g in self.by_term.get(t).map(Vec::as_slice).unwrap_or_default() {
                *hits.entry(g).or_default() += 1;
            }
        }
        for (g, n) in hits {
            if n >= self.signatures[g].len().min(2) {
                out.push(g);
            }
        }
        for u in corpus.sentences[s].units.clone() {
            out.push(self.group_of[u]);
            if !loose {
                continue;
            }
            let mut links: HashMap<usize, usize> = HashMap::new();
            for &v in &self.edges[u] {
                *links.entry(self.group_of[v]).or_default() += 1;
            }
            for (g, c) in links {
                if 2 * c >= self.groups[g].members.len() {
                    out.push(g);
                }
            }
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// Terms that mark one fact rather than the story: a term the statements of
/// an article use about once (a fact is stated about once per article),
/// unlike the story's names, which recur in every other sentence. Returns
/// each statement unit's distinctive terms.
fn distinctive_terms(corpus: &Corpus) -> Vec<Vec<String>> {
    let statement = corpus.statements();
    let terms: Vec<&[String]> = (0..corpus.units.len())
        .map(|u| if statement[u] { corpus.terms(u) } else { &[] })
        .collect();
    let mut units: HashMap<&str, usize> = HashMap::new();
    let mut articles: HashMap<&str, std::collections::BTreeSet<usize>> = HashMap::new();
    for (u, &ts) in terms.iter().enumerate() {
        for t in ts {
            *units.entry(t).or_default() += 1;
            articles.entry(t).or_default().insert(corpus.article_of(u));
        }
    }
    terms
        .iter()
        .map(|ts| {
            ts.iter()
                .filter(|t| units[t.as_str()] <= 2 * articles[t.as_str()].len())
                .cloned()
                .collect()
        })
        .collect()
}

/// A statement that average linkage left alone, though it reports a fact
/// of several articles in other words and with other details ("Governor
/// Kozhemyako presented five explosive drones" beside "received explosive
/// drones and body armour from the governor"), joins that fact's cluster
/// when it resembles its members (mean cosine at least [`NEAR`], pairs below
/// it counting as 0) and shares two or more of the distinctive terms
/// ([`distinctive_terms`]) that at least half of them use. Only with
/// embeddings; the best such cluster wins.
fn adopt_strays(
    corpus: &Corpus,
    mut clusters: Vec<Vec<usize>>,
    near: &[Vec<(usize, f32)>],
    terms: &[Vec<String>],
) -> Vec<Vec<usize>> {
    if !corpus.semantic() {
        return clusters;
    }
    let statement = corpus.statements();
    let mut cluster_of = vec![0; corpus.units.len()];
    for (c, members) in clusters.iter().enumerate() {
        for &m in members {
            cluster_of[m] = c;
        }
    }
    // The distinctive terms half of a multi-article cluster's members use.
    let shared: Vec<Vec<&String>> = clusters
        .iter()
        .map(|members| {
            let arts: std::collections::BTreeSet<usize> =
                members.iter().map(|&m| corpus.article_of(m)).collect();
            if arts.len() < 2 {
                return Vec::new();
            }
            let mut count: HashMap<&String, usize> = HashMap::new();
            for &m in members {
                for t in &terms[m] {
                    *count.entry(t).or_default() += 1;
                }
            }
            let need = members.len().div_ceil(2).max(2);
            let mut v: Vec<&String> = count
                .into_iter()
                .filter(|&(_, c)| c >= need)
                .map(|(t, _)| t)
                .collect();
            v.sort_unstable();
            v
        })
        .collect();
    let mut moves: Vec<(usize, usize)> = Vec::new(); // (unit, cluster)
    for (c, members) in clusters.iter().enumerate() {
        let &[u] = members.as_slice() else { continue };
        if !statement[u] {
            continue;
        }
        let mut sums: HashMap<usize, f32> = HashMap::new();
        for &(v, cos) in &near[u] {
            *sums.entry(cluster_of[v]).or_default() += cos;
        }
        let best = sums
            .into_iter()
            .filter(|&(d, _)| d != c && !shared[d].is_empty())
            .map(|(d, sum)| (d, sum / clusters[d].len() as f32))
            .filter(|&(d, mean)| {
                mean >= NEAR && shared[d].iter().filter(|t| terms[u].contains(t)).count() >= 2
            })
            .max_by(|a, b| a.1.total_cmp(&b.1).then(b.0.cmp(&a.0)));
        if let Some((d, _)) = best {
            moves.push((u, d));
        }
    }
    for (u, d) in moves {
        let from = cluster_of[u];
        clusters[from].clear();
        clusters[d].push(u);
    }
    clusters.retain(|m| !m.is_empty());
    for m in &mut clusters {
        m.sort_unstable();
    }
    clusters.sort_by_key(|m| m[0]);
    clusters
}

/// A candidate merge of two clusters in [`average_linkage`].
#[derive(PartialEq)]
struct Merge {
    /// How strongly the clusters belong together (see [`Link::score`]).
    score: f64,
    a: usize,
    b: usize,
    versions: (u32, u32),
}

impl Eq for Merge {}

impl Ord for Merge {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        // Highest score first; ties to the lower cluster ids (determinism).
        let key = |m: &Merge| (m.a.min(m.b), m.a.max(m.b));
        self.score
            .total_cmp(&other.score)
            .then_with(|| key(other).cmp(&key(self)))
    }
}

impl PartialOrd for Merge {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// What two clusters share: same-fact pairs, and the sum of the cosines of
/// their near pairs.
#[derive(Clone, Copy, Default)]
struct Link {
    same: u32,
    cosine: f64,
}

impl Link {
    /// Whether clusters of `pairs` unit pairs across them merge: more than
    /// half of the pairs state the same fact, or (with embeddings) their
    /// mean cosine reaches `tau`, pairs below [`NEAR`] counting as 0. The
    /// score orders merges: the larger of the two, each against its bar.
    fn score(&self, pairs: f64, tau: Option<f32>) -> Option<f64> {
        let share = f64::from(self.same) / pairs;
        let mean = tau.map_or(0.0, |t| self.cosine / pairs / f64::from(t) * 0.5);
        let score = share.max(mean);
        (score > 0.5 || (tau.is_some() && mean >= 0.5)).then_some(score)
    }
}

/// Average-linkage clustering of units: start from singletons and
/// repeatedly merge the two clusters that belong together most (see
/// [`Link::score`]), until no two do. Pair counts and cosine sums between
/// clusters are kept in maps and candidate merges in a heap (stale entries
/// are skipped by version), so the cost follows the graph, not n².
/// Returns the clusters, each ascending, ordered by their first member.
pub fn average_linkage(
    edges: &[Vec<usize>],
    near: &[Vec<(usize, f32)>],
    tau: Option<f32>,
) -> Vec<Vec<usize>> {
    let n = edges.len();
    let mut members: Vec<Vec<usize>> = (0..n).map(|i| vec![i]).collect();
    let mut version = vec![0u32; n];
    let mut links: Vec<HashMap<usize, Link>> = vec![HashMap::new(); n];
    // Each pair once, whichever side lists it.
    for (i, e) in edges.iter().enumerate() {
        for &j in e {
            if j != i {
                links[i].entry(j).or_default().same = 1;
                links[j].entry(i).or_default().same = 1;
            }
        }
    }
    for (i, e) in near.iter().enumerate() {
        for &(j, c) in e {
            if j != i {
                links[i].entry(j).or_default().cosine = f64::from(c);
                links[j].entry(i).or_default().cosine = f64::from(c);
            }
        }
    }
    let mut heap = BinaryHeap::new();
    for (i, l) in links.iter().enumerate() {
        for (&j, link) in l {
            if i < j {
                if let Some(score) = link.score(1.0, tau) {
                    heap.push(Merge {
                        score,
                        a: i,
                        b: j,
                        versions: (0, 0),
                    });
                }
            }
        }
    }
    while let Some(m) = heap.pop() {
        let (a, b) = (m.a, m.b);
        if members[a].is_empty() || members[b].is_empty() || (version[a], version[b]) != m.versions
        {
            continue;
        }
        let (keep, gone) = if members[a].len() >= members[b].len() {
            (a, b)
        } else {
            (b, a)
        };
        let gone_links = std::mem::take(&mut links[gone]);
        links[keep].remove(&gone);
        for (x, l) in gone_links {
            if x == keep {
                continue;
            }
            let k = links[keep].entry(x).or_default();
            k.same += l.same;
            k.cosine += l.cosine;
            let lx = &mut links[x];
            let moved = lx.remove(&gone).unwrap_or_default();
            let k = lx.entry(keep).or_default();
            k.same += moved.same;
            k.cosine += moved.cosine;
        }
        let moved = std::mem::take(&mut members[gone]);
        members[keep].extend(moved);
        version[keep] += 1;
        version[gone] += 1;
        let size = members[keep].len() as f64;
        for (&x, link) in &links[keep] {
            if let Some(score) = link.score(size * members[x].len() as f64, tau) {
                heap.push(Merge {
                    score,
                    a: keep,
                    b: x,
                    versions: (version[keep], version[x]),
                });
            }
        }
    }
    let mut out: Vec<Vec<usize>> = members
        .into_iter()
        .filter(|m| !m.is_empty())
        .map(|mut m| {
            m.sort_unstable();
            m
        })
        .collect();
    out.sort_by_key(|m| m[0]);
    out
}

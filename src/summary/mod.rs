//! One merged English summary of many articles, each fact once, every
//! sentence with the articles it came from.
//!
//! Data path: English articles -> paragraphs -> sentences (`text::split_sentences`)
//! -> [`Corpus`] with a TF-IDF [`similarity::SimilarityIndex`] -> [`group_facts`]
//! (sentences stating the same fact across articles become one group, ranked by
//! how many articles report it, then by how early) -> a summarizer:
//! [`extractive`] picks one sentence per top group; [`abstractive`] feeds the
//! deduplicated, ranked sentences to a BART/Pegasus model. Either way the
//! result is a [`Summary`] whose sentences carry their sources, found by
//! matching them back to source sentences; it renders as `summary.md` and
//! `summary.json`.
//!
//! Noise and off-topic text: a fact only one article states, sharing nothing
//! ([`similarity::RELATED`]) with the other articles, ranks last and is not
//! eligible for the summary at all when there are other articles to compare
//! with. That is the guard for scraped noise that ingestion missed and for an
//! article about something else.

pub mod abstractive;
pub mod embed;
pub mod extractive;
pub mod similarity;

use std::path::Path;

use serde::Serialize;

use crate::error::Result;
use crate::outputs::{ModelRecord, Status, SummaryRecord};
use crate::Translator;
use similarity::{SimilarityIndex, RELATED, SAME_FACT};

/// The default abstractive summarization model.
pub const DEFAULT_SUMMARY_MODEL: &str = "sshleifer/distilbart-cnn-12-6";

/// A summarizer, ready to run: extractive, or abstractive with its model loaded.
pub enum Summarizer {
    Extractive,
    Abstractive {
        model: Box<Translator>,
        /// What `--summary-model` said.
        id: String,
        record: ModelRecord,
    },
}

impl Summarizer {
    /// Summarize `articles` in at most `max_words` words.
    pub fn summarize(&self, articles: &[Article], max_words: usize) -> Result<Summary> {
        match self {
            Summarizer::Extractive => Ok(extractive::summarize(articles, max_words)),
            Summarizer::Abstractive { model, id, .. } => {
                abstractive::summarize(model, id, articles, max_words)
            }
        }
    }

    /// The manifest entry for a summary (or a failure) made by this summarizer.
    pub fn record(
        &self,
        max_words: usize,
        result: &std::result::Result<Summary, String>,
        articles: usize,
        seconds: f64,
    ) -> SummaryRecord {
        let (name, model, precision, generation) = match self {
            Summarizer::Extractive => ("extractive", None, None, None),
            Summarizer::Abstractive { model, record, .. } => (
                "abstractive",
                Some(record.clone()),
                Some(model.precision()),
                Some(model.options.clone()),
            ),
        };
        SummaryRecord {
            summarizer: name.into(),
            model,
            precision,
            generation,
            max_words,
            same_fact_threshold: SAME_FACT,
            related_threshold: RELATED,
            supports_threshold: similarity::SUPPORTS,
            articles,
            sentences: result.as_ref().map_or(0, |s| s.sentences.len()),
            status: if result.is_ok() {
                Status::Ok
            } else {
                Status::Failed
            },
            error: result.as_ref().err().cloned(),
            cache_key: None,
            summary_md_sha256: None,
            summary_json_sha256: None,
            translation: None,
            seconds,
        }
    }
}

/// One English article to summarize.
#[derive(Debug, Clone)]
pub struct Article {
    /// How the summary cites it (its file name).
    pub name: String,
    pub text: String,
}

/// A sentence of the corpus.
#[derive(Debug, Clone)]
pub struct Sentence {
    /// Index of its article.
    pub article: usize,
    /// Index of the sentence within its article.
    pub position: usize,
    pub text: String,
}

/// The sentences of all articles, indexed for similarity.
pub struct Corpus {
    pub names: Vec<String>,
    pub sentences: Vec<Sentence>,
    /// Sentences per article.
    counts: Vec<usize>,
    pub index: SimilarityIndex,
}

impl Corpus {
    /// Split every article into sentences and index them.
    pub fn new(articles: &[Article]) -> Self {
        let mut sentences = Vec::new();
        let mut counts = Vec::with_capacity(articles.len());
        for (a, art) in articles.iter().enumerate() {
            let mut n = 0;
            for para in art.text.split("\n\n") {
                let para = para.split_whitespace().collect::<Vec<_>>().join(" ");
                for s in crate::text::split_sentences(&para) {
                    sentences.push(Sentence {
                        article: a,
                        position: n,
                        text: s.to_string(),
                    });
                    n += 1;
                }
            }
            counts.push(n);
        }
        let index = SimilarityIndex::new(
            &sentences
                .iter()
                .map(|s| s.text.as_str())
                .collect::<Vec<_>>(),
        );
        Corpus {
            names: articles.iter().map(|a| a.name.clone()).collect(),
            sentences,
            counts,
            index,
        }
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
}

/// Whether `text` reads as a sentence rather than a heading or a fragment:
/// three words or more ending with sentence-final punctuation (a closing quote
/// or bracket may follow), or a long line of twelve words or more.
pub fn is_sentence(text: &str) -> bool {
    let end = text
        .trim_end()
        .trim_end_matches(['»', '"', '”', '’', ')', ' ', '\u{a0}', '\u{202f}']);
    let words = word_count(text);
    (words >= 3 && end.ends_with(['.', '!', '?', '…'])) || words >= 12
}

/// Highest similarity of sentence `s` to any sentence of another article,
/// given its similarity row.
fn relevance_in(corpus: &Corpus, s: usize, row: &[(usize, f32)]) -> f32 {
    let a = corpus.sentences[s].article;
    row.iter()
        .filter(|&&(o, _)| corpus.sentences[o].article != a)
        .map(|&(_, sim)| sim)
        .fold(0.0, f32::max)
}

/// Sentences stating one fact, across articles.
#[derive(Debug, Clone, Serialize)]
pub struct Group {
    /// Sentence indices, in the order they joined.
    pub members: Vec<usize>,
    /// Articles reporting the fact, ascending.
    pub articles: Vec<usize>,
    /// The member most similar to the others.
    pub representative: usize,
    /// Highest similarity of a member to another article's sentences.
    pub relevance: f32,
    /// Mean relative position of the members (story order).
    pub position: f32,
    /// Whether it may appear in a summary: see the module doc on noise; a group
    /// of headings only is not eligible either.
    pub eligible: bool,
}

/// Group the corpus' sentences by fact and rank the groups: most articles
/// first; among facts only one article states, the most related to the rest
/// of the corpus first; then the earliest in the stories.
///
/// Sentences are taken in story order (relative position, then article) and
/// each joins the group holding its most similar sentence when that
/// similarity reaches [`SAME_FACT`], else starts a new group. Joining the best
/// group, rather than merging every linked pair, keeps a sentence that
/// combines two facts from fusing their groups into one.
pub fn group_facts(corpus: &Corpus) -> Vec<Group> {
    let n = corpus.sentences.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| {
        corpus
            .relative_position(a)
            .total_cmp(&corpus.relative_position(b))
            .then(
                corpus.sentences[a]
                    .article
                    .cmp(&corpus.sentences[b].article),
            )
            .then(a.cmp(&b))
    });
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut group_of: Vec<Option<usize>> = vec![None; n];
    let mut relevance = vec![0f32; n];
    for &s in &order {
        // Similarity to a group = to its most similar member; only sentences
        // sharing features with `s` can reach the threshold.
        let row = corpus.index.row(s);
        relevance[s] = relevance_in(corpus, s, &row);
        let mut best: Option<(usize, f32)> = None;
        for &(m, sim) in &row {
            if let Some(g) = group_of[m] {
                let better = match best {
                    None => true,
                    Some((bg, b)) => sim > b || (sim == b && g < bg),
                };
                if sim >= SAME_FACT && better {
                    best = Some((g, sim));
                }
            }
        }
        let g = match best {
            Some((g, _)) => g,
            None => {
                groups.push(Vec::new());
                groups.len() - 1
            }
        };
        groups[g].push(s);
        group_of[s] = Some(g);
    }
    let single_article = corpus.articles() <= 1;
    let any_sentence = corpus.sentences.iter().any(|s| is_sentence(&s.text));
    let mut out: Vec<Group> = groups
        .into_iter()
        .map(|members| {
            let mut articles: Vec<usize> = members
                .iter()
                .map(|&m| corpus.sentences[m].article)
                .collect();
            articles.sort_unstable();
            articles.dedup();
            let representative = *members
                .iter()
                .max_by(|&&a, &&b| {
                    let score = |x: usize| -> f32 {
                        members
                            .iter()
                            .filter(|&&o| o != x)
                            .map(|&o| corpus.index.sim(x, o))
                            .sum()
                    };
                    // Whole sentences before headings; then the most central;
                    // ties go to the earlier sentence (max_by keeps the last max).
                    let whole = |x: usize| is_sentence(&corpus.sentences[x].text);
                    whole(a)
                        .cmp(&whole(b))
                        .then(score(a).total_cmp(&score(b)))
                        .then(b.cmp(&a))
                })
                .expect("a group has a member");
            let relevance = members.iter().map(|&m| relevance[m]).fold(0.0, f32::max);
            let position = members
                .iter()
                .map(|&m| corpus.relative_position(m))
                .sum::<f32>()
                / members.len() as f32;
            // A group of headings only (no sentence states the fact) has no
            // sentence to offer a summary, unless the corpus has no sentences
            // at all (articles written as bare lines).
            let whole = !any_sentence || is_sentence(&corpus.sentences[representative].text);
            let eligible = whole && (single_article || articles.len() >= 2 || relevance >= RELATED);
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
    out.sort_by(|a, b| {
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
    out
}

impl Group {
    /// The `left_out` entry of an ineligible group (noise, off-topic, headings).
    pub fn left_out_as_unrelated(&self, corpus: &Corpus) -> LeftOut {
        let text = corpus.sentences[self.representative].text.clone();
        let reason = if !is_sentence(&text) {
            "a heading or fragment, not a sentence".to_string()
        } else {
            format!(
                "only {} states it and it shares nothing with the other articles (similarity {:.2} < {RELATED})",
                corpus.names[self.articles[0]], self.relevance
            )
        };
        LeftOut { text, reason }
    }
}

/// A source sentence supporting a summary sentence.
#[derive(Debug, Clone, Serialize)]
pub struct Support {
    pub article: String,
    pub sentence: String,
    pub similarity: f32,
}

/// One sentence of the summary with its provenance.
#[derive(Debug, Clone, Serialize)]
pub struct SummarySentence {
    pub text: String,
    /// In a translated summary: the English sentence `text` translates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub english: Option<String>,
    /// Names of the articles that state it, in corpus order.
    pub sources: Vec<String>,
    pub support: Vec<Support>,
}

/// Text that did not make it into the summary, and why.
#[derive(Debug, Clone, Serialize)]
pub struct LeftOut {
    pub text: String,
    pub reason: String,
}

/// The merged summary.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub summarizer: String,
    pub model: Option<String>,
    pub max_words: usize,
    pub same_fact_threshold: f32,
    pub related_threshold: f32,
    pub articles: Vec<String>,
    pub sentences: Vec<SummarySentence>,
    /// Model output before the redundancy and provenance checks (abstractive).
    pub raw_output: Option<String>,
    pub left_out: Vec<LeftOut>,
    /// The summary's language, when it was translated from English
    /// (`--summary-lang`), and the model that translated it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub translated_by: Option<String>,
}

/// Source sentences whose similarity to `text` reaches `threshold`, best first.
pub fn match_back(corpus: &Corpus, text: &str, threshold: f32) -> Vec<(usize, f32)> {
    let v = corpus.index.vector(text);
    let mut m: Vec<(usize, f32)> = (0..corpus.sentences.len())
        .map(|s| (s, corpus.index.sim_to(&v, s)))
        .filter(|&(_, sim)| sim >= threshold)
        .collect();
    m.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    m
}

/// A summary sentence built from supporting sentences (indices with similarity).
pub(crate) fn cite(corpus: &Corpus, text: String, support: &[(usize, f32)]) -> SummarySentence {
    let mut arts: Vec<usize> = support
        .iter()
        .map(|&(s, _)| corpus.sentences[s].article)
        .collect();
    arts.sort_unstable();
    arts.dedup();
    SummarySentence {
        text,
        english: None,
        sources: arts.iter().map(|&a| corpus.names[a].clone()).collect(),
        support: support
            .iter()
            .map(|&(s, sim)| Support {
                article: corpus.names[corpus.sentences[s].article].clone(),
                sentence: corpus.sentences[s].text.clone(),
                similarity: sim,
            })
            .collect(),
    }
}

/// Number of words of a text, as the `--max-words` budget counts them.
pub fn word_count(text: &str) -> usize {
    text.split_whitespace().count()
}

impl Summary {
    /// The Markdown digest: one paragraph per sentence, sources in brackets.
    pub fn to_markdown(&self) -> String {
        let mut md = String::from("# Summary\n\n");
        if self.sentences.is_empty() {
            md.push_str("_No fact in these articles passed the summary's checks._\n\n");
        }
        for s in &self.sentences {
            md.push_str(&format!("{} [{}]\n\n", s.text, s.sources.join(", ")));
        }
        md.push_str(&format!(
            "---\n{} summary of {} article(s): {}\n",
            self.summarizer,
            self.articles.len(),
            self.articles.join(", ")
        ));
        if let (Some(l), Some(m)) = (&self.language, &self.translated_by) {
            md.push_str(&format!("translated from English into {l} by {m}\n"));
        }
        md
    }

    /// Write `summary.md` and `summary.json` into `dir`, each atomically;
    /// returns their sha256.
    pub fn write(&self, dir: &Path) -> Result<(String, String)> {
        self.write_as(dir, "summary")
    }

    /// The file stem of this summary: `summary`, or `summary.<lang>` when translated.
    pub fn stem(&self) -> String {
        match &self.language {
            Some(l) => format!("summary.{l}"),
            None => "summary".into(),
        }
    }

    /// The same summary in `lang`, sentence by sentence through `translator`
    /// (an English-to-`lang` model): sources and supporting sentences are
    /// kept as they are, and each sentence keeps its English text. A
    /// multi-target model (opus-mt-en-mul, -en-ROMANCE) gets the `>>xxx<<`
    /// token its vocabulary has for `lang` in front of each sentence.
    pub fn translated(&self, translator: &Translator, lang: &str, model: &str) -> Result<Summary> {
        let prefix = crate::lang::target_token(lang)
            .into_iter()
            .find(|t| translator.tokenizer.has_token(t))
            .map(|t| format!("{t} "))
            .unwrap_or_default();
        let inputs: Vec<String> = self
            .sentences
            .iter()
            .map(|s| format!("{prefix}{}", s.text))
            .collect();
        let refs: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let out = translator.translate(&refs)?;
        let mut t = self.clone();
        for (s, tr) in t.sentences.iter_mut().zip(out) {
            s.english = Some(std::mem::replace(&mut s.text, tr.text));
        }
        t.language = Some(lang.to_string());
        t.translated_by = Some(model.to_string());
        Ok(t)
    }

    /// Write `{stem}.md` and `{stem}.json` into `dir`, each atomically;
    /// returns their sha256.
    pub fn write_as(&self, dir: &Path, stem: &str) -> Result<(String, String)> {
        let md = self.to_markdown();
        crate::outputs::write_atomic(&dir.join(format!("{stem}.md")), md.as_bytes())?;
        let json = serde_json::to_vec_pretty(self).expect("the summary serializes");
        crate::outputs::write_atomic(&dir.join(format!("{stem}.json")), &json)?;
        Ok((
            crate::outputs::sha256_bytes(md.as_bytes()),
            crate::outputs::sha256_bytes(&json),
        ))
    }
}

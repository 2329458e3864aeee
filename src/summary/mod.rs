//! One merged English summary of many articles, each fact once, every
//! sentence with the articles it came from.
//!
//! Data path: English articles -> paragraphs -> sentences
//! (`text::split_sentences`) -> clauses -> [`Corpus`], each clause with a
//! lexical vector and, with a sentence encoder ([`embed`], all-MiniLM-L6-v2
//! by default), an embedding -> [`Facts`]: clauses stating the same fact
//! ([`similarity::same_fact`]) grouped by average linkage, each fact weighted
//! by the articles reporting it -> [`select`]: sentences chosen to cover the
//! most fact weight per word, never a fact twice -> a summarizer:
//! [`extractive`] prints the chosen sentences in story order; [`abstractive`]
//! feeds them to a BART/Pegasus model and checks its output with the same
//! rule. Either way the result is a [`Summary`] whose sentences carry their
//! sources; it renders as `summary.md` and `summary.json`.
//!
//! Noise and off-topic text: a fact only one article states, sharing nothing
//! ([`similarity::RELATED`]) with the other articles, weighs nothing and is
//! never selected when there are other articles to compare with. That is the
//! guard for scraped noise that ingestion missed and for an article about
//! something else.

pub mod abstractive;
pub mod embed;
pub mod extractive;
pub mod facts;
pub mod select;
pub mod similarity;

use std::path::Path;

use serde::Serialize;

use crate::error::Result;
use crate::outputs::{ModelRecord, Status, SummaryRecord};
use crate::Translator;
pub use facts::{Corpus, Facts, Group, Sentence};
use similarity::{RELATED, SAME_FACT, SEMANTIC_SAME_FACT};

/// The default abstractive summarization model.
pub const DEFAULT_SUMMARY_MODEL: &str = "sshleifer/distilbart-cnn-12-6";

/// The default sentence encoder behind "same fact" (`--embed-model`).
pub const DEFAULT_EMBED_MODEL: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// A summarizer, ready to run: how it writes, and what similarity it uses.
pub struct Summarizer {
    pub writer: Writer,
    /// The sentence encoder; `None` keeps "same fact" lexical.
    pub embedder: Option<Embedder>,
}

/// How the summary is written.
pub enum Writer {
    Extractive,
    Abstractive {
        model: Box<Translator>,
        /// What `--summary-model` said.
        id: String,
        record: ModelRecord,
    },
}

/// A loaded sentence encoder and what it is.
pub struct Embedder {
    pub encoder: embed::SentenceEncoder,
    /// What `--embed-model` said.
    pub id: String,
    pub record: ModelRecord,
}

impl Summarizer {
    /// Summarize `articles` in at most `max_words` words.
    pub fn summarize(&self, articles: &[Article], max_words: usize) -> Result<Summary> {
        let encoder = self.embedder.as_ref().map(|e| &e.encoder);
        let mut summary = match &self.writer {
            Writer::Extractive => extractive::summarize(articles, max_words, encoder)?,
            Writer::Abstractive { model, id, .. } => {
                abstractive::summarize(model, id, articles, max_words, encoder)?
            }
        };
        summary.embed_model = self.embedder.as_ref().map(|e| e.id.clone());
        Ok(summary)
    }

    /// The manifest entry for a summary (or a failure) made by this summarizer.
    pub fn record(
        &self,
        max_words: usize,
        result: &std::result::Result<Summary, String>,
        articles: usize,
        seconds: f64,
    ) -> SummaryRecord {
        let (name, model, precision, generation) = match &self.writer {
            Writer::Extractive => ("extractive", None, None, None),
            Writer::Abstractive { model, record, .. } => (
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
            embed_model: self.embedder.as_ref().map(|e| e.record.clone()),
            semantic_threshold: self.embedder.as_ref().map(|_| SEMANTIC_SAME_FACT),
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

/// Whether `text` reads as a statement rather than a heading, a fragment or
/// a question: three words or more ending with a full stop, "!" or "…" (a
/// closing quote or bracket may follow), or a long line of twelve words or
/// more that is not a question. A question ("Do you have photos of the
/// eruption?") asserts no fact.
pub fn is_sentence(text: &str) -> bool {
    let end = text
        .trim_end()
        .trim_end_matches(['»', '"', '”', '’', ')', ' ', '\u{a0}', '\u{202f}']);
    let words = word_count(text);
    !end.ends_with('?') && ((words >= 3 && end.ends_with(['.', '!', '…'])) || words >= 12)
}

/// Whether `text` can state a fact of the story: a statement
/// ([`is_sentence`]) that does not address the reader. Page chrome speaks to
/// the reader or for the publisher ("your email address will not be
/// published", "sign up for our briefing", "send them to us"); news reports
/// in the third person, and a first or second person inside quotation marks
/// is a quote, which is kept.
pub fn states_fact(text: &str) -> bool {
    is_sentence(text) && !addresses_reader(text)
}

/// Whether `text`, quotations removed, uses "you", "your", "we", "our" or "us".
fn addresses_reader(text: &str) -> bool {
    let mut outside = String::with_capacity(text.len());
    let mut quoted = false;
    for c in text.chars() {
        match c {
            '"' => quoted = !quoted,
            '“' | '«' => quoted = true,
            '”' | '»' => quoted = false,
            _ if !quoted => outside.push(c),
            _ => {}
        }
    }
    outside
        .split(|c: char| !c.is_alphanumeric() && c != '\'' && c != '’')
        .any(|w| {
            matches!(
                w.to_lowercase().as_str(),
                "you" | "your" | "yours" | "we" | "our" | "ours" | "us"
            )
        })
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
    /// The sentence encoder behind "same fact", and its cosine threshold
    /// (absent: lexical similarity only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embed_model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub semantic_threshold: Option<f32>,
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

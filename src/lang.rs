//! Language identification and routing: which language an article is in
//! (whatlang, on the whole cleaned article) and which model translates it into
//! English (a built-in table of OPUS-MT checkpoints, per-language overrides,
//! a fallback for languages without a pair model, English passed through).
//!
//! Why whatlang and not lingua (measured on the five corpus articles, six
//! articles written in de/es/en/it/pt/nl, their paragraphs and their short
//! lines; see the README): both identify every whole article (12/12); on
//! single paragraphs whatlang 62/67, lingua 64/67, on fragments of up to six
//! words 5/9 against 7/9. transum detects per article, never per fragment or
//! per batch, where both are exact; whatlang is 15x faster, resident in 2 MB
//! (lingua: 75 MB for 20 languages) and builds in seconds (lingua's language
//! models take minutes on 2 cores).
//!
//! Talks to: the pipeline (routing each article) and the CLI (`--source-lang`,
//! `--model xx=...`, `download --langs`).

use std::collections::BTreeMap;

use crate::error::{Error, Result};

/// The code transum uses for English: articles in it are passed through.
pub const ENGLISH: &str = "en";

/// The fallback for languages without a pair model: OPUS-MT's
/// source-multilingual model into English (Marian, so it runs on the same
/// engine; Apache-2.0 like the other OPUS-MT models, 120 source languages,
/// no language token needed since the target is always English).
pub const FALLBACK_MODEL: &str = "Helsinki-NLP/opus-mt-mul-en";

/// Below this confidence an article's language is unclear. whatlang's
/// confidence is the best language's lead over the runner-up; its own
/// `is_reliable` asks for more than 0.9, which two-line articles miss (a
/// two-line German news item scores 0.67) while junk (dates, URLs, phone
/// numbers) scores under 0.1. An unclear article is never guessed at: it fails
/// alone, naming the best guess, unless `--source-lang` says what it is.
pub const MIN_CONFIDENCE: f64 = 0.5;

/// A detected language.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    /// ISO 639-1 code where there is one (`fr`), else ISO 639-3 (`epo`).
    pub lang: &'static str,
    /// whatlang's confidence, 0 to 1.
    pub confidence: f64,
    /// Whether the language is clear enough to route on ([`MIN_CONFIDENCE`]).
    pub reliable: bool,
}

/// ISO 639-3 (whatlang) -> ISO 639-1, for the languages whatlang knows.
const ISO1: [(&str, &str); 60] = [
    ("epo", "eo"),
    ("eng", "en"),
    ("rus", "ru"),
    ("cmn", "zh"),
    ("spa", "es"),
    ("por", "pt"),
    ("ita", "it"),
    ("ben", "bn"),
    ("fra", "fr"),
    ("deu", "de"),
    ("ukr", "uk"),
    ("kat", "ka"),
    ("ara", "ar"),
    ("hin", "hi"),
    ("jpn", "ja"),
    ("heb", "he"),
    ("yid", "yi"),
    ("pol", "pl"),
    ("amh", "am"),
    ("jav", "jv"),
    ("kor", "ko"),
    ("nob", "nb"),
    ("dan", "da"),
    ("swe", "sv"),
    ("fin", "fi"),
    ("tur", "tr"),
    ("nld", "nl"),
    ("hun", "hu"),
    ("ces", "cs"),
    ("ell", "el"),
    ("bul", "bg"),
    ("bel", "be"),
    ("mar", "mr"),
    ("kan", "kn"),
    ("ron", "ro"),
    ("slv", "sl"),
    ("hrv", "hr"),
    ("srp", "sr"),
    ("mkd", "mk"),
    ("lit", "lt"),
    ("lav", "lv"),
    ("est", "et"),
    ("tam", "ta"),
    ("vie", "vi"),
    ("urd", "ur"),
    ("tha", "th"),
    ("guj", "gu"),
    ("uzb", "uz"),
    ("pan", "pa"),
    ("aze", "az"),
    ("ind", "id"),
    ("tel", "te"),
    ("pes", "fa"),
    ("mal", "ml"),
    ("ori", "or"),
    ("mya", "my"),
    ("nep", "ne"),
    ("sin", "si"),
    ("khm", "km"),
    ("tuk", "tk"),
];

/// Characters of an article that detection reads: its opening. whatlang's
/// confidence is the lead of the best trigram score over the runner-up,
/// which shrinks on very long inputs (a 2 MB French article scored 0.16),
/// while a few paragraphs give the five corpus articles a confidence of 1.0.
pub const SAMPLE_CHARS: usize = 2000;

/// The language of `text` (a whole cleaned article, of which the first
/// [`SAMPLE_CHARS`] characters are read), or None when it holds nothing to
/// detect (digits, URLs, punctuation).
pub fn detect(text: &str) -> Option<Detection> {
    let end = text
        .char_indices()
        .nth(SAMPLE_CHARS)
        .map_or(text.len(), |(i, _)| i);
    let info = whatlang::detect(&text[..end])?;
    let code3 = info.lang().code();
    let lang = ISO1
        .iter()
        .find(|(c3, _)| *c3 == code3)
        .map_or(code3, |(_, c1)| c1);
    Some(Detection {
        lang,
        confidence: info.confidence(),
        reliable: info.confidence() >= MIN_CONFIDENCE,
    })
}

/// A language code as given on the command line (`de`, `DE`, `deu`), as
/// transum writes it (ISO 639-1 where there is one).
pub fn parse_code(code: &str) -> Result<&'static str> {
    let c = code.trim().to_ascii_lowercase();
    ISO1.iter()
        .find(|(c3, c1)| *c1 == c || *c3 == c)
        .map(|(_, c1)| *c1)
        .ok_or_else(|| {
            Error::setting(
                format!("{code:?} is not a language code transum knows"),
                "use an ISO 639-1 code such as de, es, fr, it, pt, nl, ru, zh, ja",
            )
        })
}

/// The built-in routing table: ISO 639-1 code -> the OPUS-MT checkpoint into
/// English. All are Marian models whose target is English alone, so none needs
/// a `>>xxx<<` target token. `tc-big` (d_model 1024, newer data) where one was
/// seen on the hub for the pair (it, fi), else the classic model. Seen on the
/// hub while this table was written: fr, pl, tc-big-it, tc-big-fi, mul; the
/// others are from OPUS-MT's published list of `opus-mt-xx-en` models. There
/// is no opus-mt-pt-en (nor ro, el, and most others): those go to
/// [`FALLBACK_MODEL`].
pub const TABLE: [(&str, &str); 18] = [
    ("ar", "Helsinki-NLP/opus-mt-ar-en"),
    ("cs", "Helsinki-NLP/opus-mt-cs-en"),
    ("da", "Helsinki-NLP/opus-mt-da-en"),
    ("de", "Helsinki-NLP/opus-mt-de-en"),
    ("es", "Helsinki-NLP/opus-mt-es-en"),
    ("fi", "Helsinki-NLP/opus-mt-tc-big-fi-en"),
    ("fr", "Helsinki-NLP/opus-mt-fr-en"),
    ("hu", "Helsinki-NLP/opus-mt-hu-en"),
    ("it", "Helsinki-NLP/opus-mt-tc-big-it-en"),
    ("ja", "Helsinki-NLP/opus-mt-ja-en"),
    ("ko", "Helsinki-NLP/opus-mt-ko-en"),
    ("nl", "Helsinki-NLP/opus-mt-nl-en"),
    ("pl", "Helsinki-NLP/opus-mt-pl-en"),
    ("ru", "Helsinki-NLP/opus-mt-ru-en"),
    ("sv", "Helsinki-NLP/opus-mt-sv-en"),
    ("tr", "Helsinki-NLP/opus-mt-tr-en"),
    ("uk", "Helsinki-NLP/opus-mt-uk-en"),
    ("zh", "Helsinki-NLP/opus-mt-zh-en"),
];

/// The table's model for `lang`, if it has one.
pub fn table_model(lang: &str) -> Option<&'static str> {
    TABLE.iter().find(|(l, _)| *l == lang).map(|(_, m)| *m)
}

/// The OPUS-MT model from English into `lang`, for `--summary-lang`: the
/// pair model where OPUS-MT has one, else `opus-mt-en-mul` (multi-target:
/// [`target_token`] picks the language).
pub fn from_english_model(lang: &str) -> String {
    const PAIRS: [&str; 14] = [
        "ar", "cs", "da", "de", "es", "fi", "fr", "hu", "it", "nl", "ru", "sv", "uk", "zh",
    ];
    if PAIRS.contains(&lang) {
        format!("Helsinki-NLP/opus-mt-en-{lang}")
    } else {
        "Helsinki-NLP/opus-mt-en-mul".into()
    }
}

/// The target-language tokens a multi-target Marian model may use for
/// `lang`, most specific first: `>>por<<` (Tatoeba models, ISO 639-3), then
/// `>>pt<<` (older ones). A model uses whichever its vocabulary holds.
pub fn target_token(lang: &str) -> Vec<String> {
    let mut out = Vec::new();
    if let Some((c3, _)) = ISO1.iter().find(|(_, c1)| *c1 == lang) {
        out.push(format!(">>{c3}<<"));
    }
    out.push(format!(">>{lang}<<"));
    out
}

/// Where an article goes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Route {
    /// Already English: cleaned and written as it is.
    PassThrough,
    /// Translated by this model (hub id `org/name[@rev]` or a directory).
    Model(String),
}

/// How languages map to models: what the user said, over the built-in table.
#[derive(Debug, Clone, Default)]
pub struct Routing {
    /// `--model xx=SPEC`: per language.
    pub per_language: BTreeMap<String, String>,
    /// A bare `--model SPEC`: every article that is not in English.
    pub every: Option<String>,
    /// The model for languages without a pair model (`None`: such articles fail).
    pub fallback: Option<String>,
}

impl Routing {
    /// The default routing: the table, then [`FALLBACK_MODEL`].
    pub fn auto() -> Self {
        Routing {
            fallback: Some(FALLBACK_MODEL.to_string()),
            ..Default::default()
        }
    }

    /// The route for an article in `lang`: English passes through; then a
    /// per-language override, a bare `--model`, the table, the fallback.
    /// None when nothing serves the language.
    pub fn route(&self, lang: &str) -> Option<Route> {
        if lang == ENGLISH {
            return Some(Route::PassThrough);
        }
        self.per_language
            .get(lang)
            .or(self.every.as_ref())
            .cloned()
            .or_else(|| table_model(lang).map(str::to_string))
            .or_else(|| self.fallback.clone())
            .map(Route::Model)
    }

    /// Whether the user named `spec` (so it must exist: a setup error if not),
    /// rather than transum choosing it from its table.
    pub fn named(&self, spec: &str) -> bool {
        self.every.as_deref() == Some(spec) || self.per_language.values().any(|m| m == spec)
    }

    /// Parse the values of `--model`: `xx=SPEC` per language, or a bare SPEC
    /// for every language (at most one bare value).
    pub fn with_models(mut self, values: &[String]) -> Result<Self> {
        for v in values {
            match v.split_once('=') {
                Some((lang, spec)) if !lang.contains('/') && !spec.is_empty() => {
                    self.per_language
                        .insert(parse_code(lang)?.to_string(), spec.to_string());
                }
                _ => {
                    if let Some(prev) = &self.every {
                        return Err(Error::setting(
                            format!("--model given twice without a language ({prev}, {v})"),
                            "name the language of each: --model de=Helsinki-NLP/opus-mt-de-en --model es=./my-es-model",
                        ));
                    }
                    self.every = Some(v.clone());
                }
            }
        }
        Ok(self)
    }
}

//! Tokenizers, one per checkpoint family, behind [`TextTokenizer`]:
//! Marian's two SentencePiece models + `vocab.json` (`marian.rs`) and the
//! summarizers' `tokenizers`-library tokenizers, BART's byte-level BPE and
//! Pegasus' unigram (`hf.rs`). Each reproduces transformers 5 exactly; the
//! model side only ever sees ids.

mod hf;
mod m2m100;
mod marian;
mod nllb;

use std::path::Path;

pub use hf::HfTokenizer;
pub use m2m100::{M2m100Tokenizer, M2M100_LANGUAGES};
pub use marian::{MarianTokenizer, TokenizerFiles};
pub use nllb::{flores_code, NllbTokenizer};

use crate::error::{Error, Result};

/// Read and parse a JSON file of a checkpoint.
pub(crate) fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::file(
            path,
            "cannot read",
            "check that the model directory is complete",
            Some(Box::new(e)),
        )
    })?;
    serde_json::from_str(&text).map_err(|e| {
        Error::file(
            path,
            "is not valid JSON",
            "the file is corrupt; fetch it again",
            Some(Box::new(e)),
        )
    })
}

/// transformers' `clean_up_tokenization` (English contractions and punctuation).
pub(crate) fn clean_up_tokenization(s: &str) -> String {
    s.replace(" .", ".")
        .replace(" ?", "?")
        .replace(" !", "!")
        .replace(" ,", ",")
        .replace(" ' ", "'")
        .replace(" n't", "n't")
        .replace(" 'm", "'m")
        .replace(" 's", "'s")
        .replace(" 've", "'ve")
        .replace(" 're", "'re")
}

/// Read and parse a SentencePiece model file (`.spm`, `spiece.model`).
pub(crate) fn read_spm(path: &Path) -> Result<sentencepiece_model::SentencePieceModel> {
    let bytes = std::fs::read(path).map_err(|e| {
        Error::file(
            path,
            "cannot read the SentencePiece model",
            "check that the model directory is complete (`transum download` fetches it)",
            Some(Box::new(e)),
        )
    })?;
    sentencepiece_model::SentencePieceModel::from_slice(&bytes).map_err(|e| {
        Error::file(
            path,
            "is not a valid SentencePiece model (protobuf decode failed)",
            "the file is corrupt or not a SentencePiece model; fetch it again",
            Some(Box::new(e)),
        )
    })
}

/// Whether the checkpoint in `dir` has an NLLB tokenizer (its
/// tokenizer_config.json names NllbTokenizer, or a tokenizer.json comes
/// without M2M100's sentencepiece.bpe.model + vocab.json).
fn is_nllb(dir: &Path) -> Result<bool> {
    let cfg = dir.join("tokenizer_config.json");
    if cfg.is_file() {
        if let Some(class) = read_json(&cfg)?
            .get("tokenizer_class")
            .and_then(|c| c.as_str())
        {
            return Ok(class.starts_with("Nllb"));
        }
    }
    Ok(dir.join("tokenizer.json").is_file() && !dir.join("vocab.json").is_file())
}

/// The tokenizer of a checkpoint, whichever family it belongs to.
pub enum TextTokenizer {
    Marian(Box<MarianTokenizer>),
    Hf(Box<HfTokenizer>),
    M2m100(Box<M2m100Tokenizer>),
    Nllb(Box<NllbTokenizer>),
}

impl TextTokenizer {
    /// The tokenizer for a checkpoint directory of `model_type` (config.json).
    pub fn from_dir(dir: &Path, model_type: &str) -> Result<Self> {
        Ok(match model_type {
            "marian" => TextTokenizer::Marian(Box::new(MarianTokenizer::from_dir(dir)?)),
            // NLLB-200 checkpoints are m2m_100 models with an NLLB tokenizer.
            "m2m_100" if is_nllb(dir)? => {
                TextTokenizer::Nllb(Box::new(NllbTokenizer::from_dir(dir)?))
            }
            "m2m_100" => TextTokenizer::M2m100(Box::new(M2m100Tokenizer::from_dir(dir)?)),
            _ => TextTokenizer::Hf(Box::new(HfTokenizer::from_dir(dir)?)),
        })
    }

    /// Ids of `text`, special tokens added as the checkpoint does.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        match self {
            TextTokenizer::Marian(t) => t.encode(text),
            TextTokenizer::Hf(t) => t.encode(text),
            TextTokenizer::M2m100(t) => t.encode(text),
            TextTokenizer::Nllb(t) => t.encode(text),
        }
    }

    /// Set the language of the next sources, for tokenizers that mark it
    /// (M2M100's `__xx__`); the others ignore it.
    pub fn set_source_lang(&self, code: &str) -> Result<()> {
        match self {
            TextTokenizer::M2m100(t) => t.set_source_lang(code),
            TextTokenizer::Nllb(t) => t.set_source_lang(code),
            _ => Ok(()),
        }
    }

    /// The token generation must start with, for tokenizers that force the
    /// target language (M2M100: `__en__`).
    pub fn forced_target_token(&self) -> Option<u32> {
        match self {
            TextTokenizer::M2m100(t) => t.lang_id(crate::lang::ENGLISH),
            TextTokenizer::Nllb(t) => t.lang_id(crate::lang::ENGLISH),
            _ => None,
        }
    }

    /// Whether `token` is one entry of the vocabulary (e.g. a `>>por<<` target code).
    pub fn has_token(&self, token: &str) -> bool {
        match self {
            TextTokenizer::Marian(t) => t.has_token(token),
            TextTokenizer::Hf(t) => t.has_token(token),
            TextTokenizer::M2m100(t) => t.has_token(token),
            TextTokenizer::Nllb(t) => t.has_token(token),
        }
    }

    /// Text of generated `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> String {
        match self {
            TextTokenizer::Marian(t) => t.decode(ids),
            TextTokenizer::Hf(t) => t.decode(ids),
            TextTokenizer::M2m100(t) => t.decode(ids),
            TextTokenizer::Nllb(t) => t.decode(ids),
        }
    }

    /// Id of the end-of-sequence token.
    pub fn eos_id(&self) -> u32 {
        match self {
            TextTokenizer::Marian(t) => t.eos_id(),
            TextTokenizer::Hf(t) => t.eos_id(),
            TextTokenizer::M2m100(t) => t.eos_id(),
            TextTokenizer::Nllb(t) => t.eos_id(),
        }
    }

    /// Id of the padding token.
    pub fn pad_id(&self) -> u32 {
        match self {
            TextTokenizer::Marian(t) => t.pad_id(),
            TextTokenizer::Hf(t) => t.pad_id(),
            TextTokenizer::M2m100(t) => t.pad_id(),
            TextTokenizer::Nllb(t) => t.pad_id(),
        }
    }

    /// Number of ids the tokenizer can produce.
    pub fn vocab_size(&self) -> usize {
        match self {
            TextTokenizer::Marian(t) => t.vocab_size(),
            TextTokenizer::Hf(t) => t.vocab_size(),
            TextTokenizer::M2m100(t) => t.vocab_size(),
            TextTokenizer::Nllb(t) => t.vocab_size(),
        }
    }
}

//! M2M100 tokenizer (facebook/m2m100_418M and its family), behaving as
//! transformers' `M2M100Tokenizer`: `sentencepiece.bpe.model` (a SentencePiece
//! BPE model) cuts the text into pieces, `vocab.json` (fairseq's dictionary)
//! gives their ids (a missing piece is `<unk>`), and the 100 language tokens
//! `__xx__` take the ids after the dictionary, in fairseq's order. A source
//! is `__src__ X </s>`. Decoding skips the special and language tokens and
//! joins the pieces with SentencePiece's rules.
//!
//! The source language changes from article to article while one model
//! serves them all (it is the fallback for many languages), so it is set on
//! the tokenizer ([`M2m100Tokenizer::set_source_lang`]) rather than fixed.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::RwLock;

use super::marian::{read_vocab, split_special, token_string, SpmModel, SPACE_SYMBOL};
use super::read_json;
use crate::error::{Error, Result};

/// fairseq's language codes for M2M100 (transformers' `FAIRSEQ_LANGUAGE_CODES["m2m100"]`):
/// language i is token `__code__` with id `len(vocab.json) + i`.
pub const M2M100_LANGUAGES: [&str; 100] = [
    "af", "am", "ar", "ast", "az", "ba", "be", "bg", "bn", "br", "bs", "ca", "ceb", "cs", "cy",
    "da", "de", "el", "en", "es", "et", "fa", "ff", "fi", "fr", "fy", "ga", "gd", "gl", "gu", "ha",
    "he", "hi", "hr", "ht", "hu", "hy", "id", "ig", "ilo", "is", "it", "ja", "jv", "ka", "kk",
    "km", "kn", "ko", "lb", "lg", "ln", "lo", "lt", "lv", "mg", "mk", "ml", "mn", "mr", "ms", "my",
    "ne", "nl", "no", "ns", "oc", "or", "pa", "pl", "ps", "pt", "ro", "ru", "sd", "si", "sk", "sl",
    "so", "sq", "sr", "ss", "su", "sv", "sw", "ta", "th", "tl", "tn", "tr", "uk", "ur", "uz", "vi",
    "wo", "xh", "yi", "yo", "zh", "zu",
];

/// transformers' `M2M100Tokenizer`, in Rust.
pub struct M2m100Tokenizer {
    spm: SpmModel,
    encoder: HashMap<String, u32>,
    decoder: HashMap<u32, String>,
    /// Special and language token strings, longest first, for splitting raw text.
    special_tokens: Vec<String>,
    /// Ids never shown when decoding: the specials and the language tokens.
    hidden: HashSet<u32>,
    unk_id: u32,
    eos_id: u32,
    pad_id: u32,
    /// Embedding rows the tokenizer addresses: dictionary, languages, madeup words.
    size: usize,
    source_lang: RwLock<String>,
    clean_up_tokenization_spaces: bool,
}

impl M2m100Tokenizer {
    /// Load from a checkpoint directory in the hub layout.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let config_path = dir.join("tokenizer_config.json");
        let config = if config_path.is_file() {
            read_json(&config_path)?
        } else {
            serde_json::Value::Object(Default::default())
        };
        if let Some(codes) = config.get("language_codes").and_then(|v| v.as_str()) {
            if codes != "m2m100" {
                return Err(Error::file(
                    &config_path,
                    format!("language_codes {codes:?} is not supported"),
                    "transum knows M2M100's own codes (language_codes \"m2m100\")",
                    None,
                ));
            }
        }
        let vocab_path = dir.join("vocab.json");
        let encoder = read_vocab(&vocab_path)?;
        let decoder: HashMap<u32, String> = encoder.iter().map(|(k, &v)| (v, k.clone())).collect();
        let tok = |key: &str, default: &str| {
            token_string(config.get(key)).unwrap_or_else(|| default.to_string())
        };
        let lookup = |t: &str| {
            encoder.get(t).copied().ok_or_else(|| {
                Error::file(
                    &vocab_path,
                    format!("special token {t:?} is not in the vocabulary"),
                    "the vocab.json does not belong to this tokenizer_config.json",
                    None,
                )
            })
        };
        let (unk, eos, pad, bos) = (
            tok("unk_token", "<unk>"),
            tok("eos_token", "</s>"),
            tok("pad_token", "<pad>"),
            tok("bos_token", "<s>"),
        );
        let (unk_id, eos_id, pad_id, bos_id) =
            (lookup(&unk)?, lookup(&eos)?, lookup(&pad)?, lookup(&bos)?);
        let madeup = config
            .get("num_madeup_words")
            .and_then(|v| v.as_u64())
            .unwrap_or(8) as usize;
        let first_lang = encoder.len();
        let mut special_tokens = vec![unk, eos, pad, bos];
        special_tokens.extend(M2M100_LANGUAGES.iter().map(|l| format!("__{l}__")));
        special_tokens.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
        let mut hidden: HashSet<u32> = [unk_id, eos_id, pad_id, bos_id].into();
        hidden.extend((first_lang..first_lang + M2M100_LANGUAGES.len()).map(|i| i as u32));
        Ok(M2m100Tokenizer {
            spm: SpmModel::load(&dir.join("sentencepiece.bpe.model"))?,
            size: first_lang + M2M100_LANGUAGES.len() + madeup,
            encoder,
            decoder,
            special_tokens,
            hidden,
            unk_id,
            eos_id,
            pad_id,
            source_lang: RwLock::new("en".into()),
            clean_up_tokenization_spaces: config
                .get("clean_up_tokenization_spaces")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
        })
    }

    /// The id of language `code`'s token (`__en__`), if M2M100 has one.
    pub fn lang_id(&self, code: &str) -> Option<u32> {
        M2M100_LANGUAGES
            .iter()
            .position(|l| *l == code)
            .map(|i| (self.encoder.len() + i) as u32)
    }

    /// The language the next sources are in (ISO 639-1 as M2M100 writes it).
    pub fn set_source_lang(&self, code: &str) -> Result<()> {
        if self.lang_id(code).is_none() {
            return Err(Error::setting(
                format!("M2M100 has no language token for {code:?}"),
                format!(
                    "route this language to another model (--model {code}=...); M2M100 knows: {}",
                    M2M100_LANGUAGES.join(", ")
                ),
            ));
        }
        *self.source_lang.write().expect("not poisoned") = code.to_string();
        Ok(())
    }

    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Dictionary, language tokens and madeup words: the embedding rows it addresses.
    pub fn vocab_size(&self) -> usize {
        self.size
    }

    /// Whether `token` is an entry of the dictionary or a language token.
    pub fn has_token(&self, token: &str) -> bool {
        self.encoder.contains_key(token) || self.special_tokens.iter().any(|t| t == token)
    }

    fn piece_id(&self, piece: &str) -> u32 {
        if let Some(code) = piece.strip_prefix("__").and_then(|p| p.strip_suffix("__")) {
            if let Some(id) = self.lang_id(code) {
                return id;
            }
        }
        self.encoder.get(piece).copied().unwrap_or(self.unk_id)
    }

    /// `__src__ X </s>` for the current source language.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let src = self.source_lang.read().expect("not poisoned").clone();
        let mut ids = vec![self.lang_id(&src).expect("checked when set")];
        for (chunk, special) in split_special(text, &self.special_tokens) {
            if special {
                ids.push(self.piece_id(chunk));
                continue;
            }
            for piece in self.spm.encode_pieces(chunk)? {
                ids.push(self.piece_id(&piece));
            }
        }
        ids.push(self.eos_id);
        Ok(ids)
    }

    /// Text of generated `ids`, special and language tokens skipped. An id
    /// past the dictionary and the languages (a "madeup word") reads as the
    /// `<unk>` string, copied as it is, as transformers does.
    pub fn decode(&self, ids: &[u32]) -> String {
        let unk = self
            .decoder
            .get(&self.unk_id)
            .map_or("<unk>", String::as_str);
        let mut out = String::new();
        let mut pieces: Vec<&str> = Vec::new();
        for id in ids.iter().filter(|id| !self.hidden.contains(id)) {
            let piece = self.decoder.get(id).map_or(unk, String::as_str);
            // convert_tokens_to_string: special-token strings are not spm pieces.
            if self.special_tokens.iter().any(|t| t == piece) {
                out.push_str(&self.spm.decode_pieces(&pieces));
                out.push_str(piece);
                pieces.clear();
            } else {
                pieces.push(piece);
            }
        }
        out.push_str(&self.spm.decode_pieces(&pieces));
        let out = out.replace(SPACE_SYMBOL, " ");
        let out = out.trim();
        if self.clean_up_tokenization_spaces {
            super::clean_up_tokenization(out)
        } else {
            out.to_string()
        }
    }
}

//! NLLB-200 tokenizer (facebook/nllb-200-distilled-600M), behaving as
//! transformers' `NllbTokenizer` in its current, non-legacy mode: the hub's
//! `tokenizer.json` (BPE pieces at their SentencePiece id plus fairseq's
//! offset, the 202 language codes as special added tokens) cuts and numbers
//! the text, and the source is laid out here as `[src_lang] X </s>` rather
//! than by the template stored in the file, which the fast tokenizer rebuilds
//! at load for whatever `src_lang` it was saved with.
//!
//! Languages are FLORES-200 codes (`fra_Latn`, `zho_Hans`); ISO 639-1 codes
//! from language identification are mapped by [`flores_code`].

use std::path::Path;
use std::sync::RwLock;

use super::hf::HfTokenizer;
use crate::error::{Error, Result};

/// ISO 639-1 -> FLORES-200 code, for the languages language identification
/// names. Chinese is written in Simplified script (zho_Hans) unless given as
/// a FLORES code; Norwegian as Bokmål.
const FLORES: [(&str, &str); 42] = [
    ("ar", "arb_Arab"),
    ("bg", "bul_Cyrl"),
    ("bn", "ben_Beng"),
    ("cs", "ces_Latn"),
    ("da", "dan_Latn"),
    ("de", "deu_Latn"),
    ("el", "ell_Grek"),
    ("en", "eng_Latn"),
    ("es", "spa_Latn"),
    ("et", "est_Latn"),
    ("fa", "pes_Arab"),
    ("fi", "fin_Latn"),
    ("fr", "fra_Latn"),
    ("he", "heb_Hebr"),
    ("hi", "hin_Deva"),
    ("hr", "hrv_Latn"),
    ("hu", "hun_Latn"),
    ("id", "ind_Latn"),
    ("it", "ita_Latn"),
    ("ja", "jpn_Jpan"),
    ("ko", "kor_Hang"),
    ("lt", "lit_Latn"),
    ("lv", "lvs_Latn"),
    ("mk", "mkd_Cyrl"),
    ("nb", "nob_Latn"),
    ("nl", "nld_Latn"),
    ("pl", "pol_Latn"),
    ("pt", "por_Latn"),
    ("ro", "ron_Latn"),
    ("ru", "rus_Cyrl"),
    ("sk", "slk_Latn"),
    ("sl", "slv_Latn"),
    ("sr", "srp_Cyrl"),
    ("sv", "swe_Latn"),
    ("ta", "tam_Taml"),
    ("th", "tha_Thai"),
    ("tr", "tur_Latn"),
    ("uk", "ukr_Cyrl"),
    ("ur", "urd_Arab"),
    ("vi", "vie_Latn"),
    ("zh", "zho_Hans"),
    ("ka", "kat_Geor"),
];

/// The FLORES-200 code NLLB uses for `code` (ISO 639-1, or already FLORES).
pub fn flores_code(code: &str) -> Option<String> {
    if code.contains('_') {
        return Some(code.to_string());
    }
    FLORES
        .iter()
        .find(|(iso, _)| *iso == code)
        .map(|(_, f)| f.to_string())
}

/// transformers' `NllbTokenizer` (non-legacy), in Rust.
pub struct NllbTokenizer {
    hf: HfTokenizer,
    source_lang: RwLock<u32>,
}

impl NllbTokenizer {
    /// Load `tokenizer.json` (and `tokenizer_config.json`) from `dir`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let hf = HfTokenizer::from_dir(dir)?;
        let eng = hf.token_id("eng_Latn").ok_or_else(|| {
            Error::file(
                dir.join("tokenizer.json"),
                "has no language code eng_Latn",
                "this is not an NLLB-200 tokenizer; fetch the checkpoint's tokenizer.json again",
                None,
            )
        })?;
        Ok(NllbTokenizer {
            hf,
            source_lang: RwLock::new(eng),
        })
    }

    /// The id of language `code`'s token (ISO 639-1 or FLORES-200), if any.
    pub fn lang_id(&self, code: &str) -> Option<u32> {
        self.hf.token_id(&flores_code(code)?)
    }

    /// The language the next sources are in.
    pub fn set_source_lang(&self, code: &str) -> Result<()> {
        let id = self.lang_id(code).ok_or_else(|| {
            Error::setting(
                format!("NLLB-200 has no language code for {code:?}"),
                format!("route this language to another model (--model {code}=...)"),
            )
        })?;
        *self.source_lang.write().expect("not poisoned") = id;
        Ok(())
    }

    /// `[src_lang] X </s>`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = vec![*self.source_lang.read().expect("not poisoned")];
        ids.extend(self.hf.encode_plain(text)?);
        ids.push(self.hf.eos_id());
        Ok(ids)
    }

    /// Text of `ids`, special tokens and language codes skipped.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.hf.decode(ids)
    }

    pub fn has_token(&self, token: &str) -> bool {
        self.hf.has_token(token)
    }

    pub fn eos_id(&self) -> u32 {
        self.hf.eos_id()
    }

    pub fn pad_id(&self) -> u32 {
        self.hf.pad_id()
    }

    pub fn vocab_size(&self) -> usize {
        self.hf.vocab_size()
    }
}

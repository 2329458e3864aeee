//! Marian (OPUS-MT) tokenizer, behaving exactly as transformers' `MarianTokenizer`.
//!
//! Reads the hub layout: `source.spm` and `target.spm` (SentencePiece unigram
//! models, parsed from their protobuf with `sentencepiece-model`), `vocab.json`
//! (piece -> model id; these ids are *not* the SentencePiece ids) and, when
//! present, `tokenizer_config.json` (special tokens, cleanup flag).
//!
//! Encoding follows transformers 5 (`tokenization_python.py` + `tokenization_marian.py`):
//! the text is first split on special tokens (a literal `</s>` in the text is the
//! EOS id), each remaining chunk loses a leading `>>lang<<` code, goes through the
//! SentencePiece normalizer (the model's precompiled charsmap, then SentencePiece's
//! whitespace rules) and the unigram Viterbi segmentation of the `tokenizers`
//! crate, and the pieces are mapped through `vocab.json` (unknown -> `<unk>`).
//! `</s>` is appended. Decoding maps ids back to pieces and joins them with
//! SentencePiece's `DecodePieces` rules.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use sentencepiece_model::Type as PieceType;
use tokenizers::models::unigram::Unigram;
use tokenizers::normalizers::Precompiled;
use tokenizers::{NormalizedString, Normalizer};

use super::{clean_up_tokenization, read_json, read_spm};
use crate::error::{Error, Result};

pub(crate) const SPACE_SYMBOL: char = '\u{2581}';
/// What SentencePiece prints for the `<unk>` piece when decoding.
const UNK_SURFACE: &str = " \u{2047} ";

/// How a SentencePiece model cuts normalized text into pieces.
enum Segmenter {
    /// Viterbi over piece scores (Marian's models).
    Unigram(Box<Unigram>),
    /// SentencePiece's BPE (M2M100's `sentencepiece.bpe.model`): start from
    /// characters and merge, again and again, the adjacent pair whose joined
    /// piece scores highest (the leftmost on a tie), as `bpe_model.cc` does.
    Bpe(HashMap<String, f32>),
}

/// One SentencePiece model: its normalizer and segmenter, plus the piece
/// table that decoding needs.
pub(crate) struct SpmModel {
    normalizer: Option<Precompiled>,
    add_dummy_prefix: bool,
    remove_extra_whitespaces: bool,
    escape_whitespaces: bool,
    segmenter: Segmenter,
    /// piece -> piece type, for `DecodePieces` (control pieces decode to "").
    piece_types: HashMap<String, PieceType>,
    /// Pieces by SentencePiece id (transformers falls back to these for ids
    /// missing from vocab.json).
    pieces: Vec<String>,
    unk_piece: String,
}

impl SpmModel {
    pub(crate) fn load(path: &Path) -> Result<Self> {
        let model = read_spm(path)?;
        let model_type = model
            .trainer()
            .map(|t| t.model_type())
            .unwrap_or(sentencepiece_model::ModelType::Unigram);
        if !matches!(
            model_type,
            sentencepiece_model::ModelType::Unigram | sentencepiece_model::ModelType::Bpe
        ) {
            return Err(Error::file(
                path,
                format!("SentencePiece model type {model_type:?} is not supported"),
                "transum reads unigram (Marian) and BPE (M2M100) SentencePiece models",
                None,
            ));
        }
        let spec = model.normalizer();
        let charsmap = spec.map(|s| s.precompiled_charsmap()).unwrap_or(&[]);
        let normalizer = if charsmap.is_empty() {
            None
        } else {
            Some(Precompiled::from(charsmap).map_err(|e| {
                Error::file(
                    path,
                    "has an unreadable precompiled normalization charsmap",
                    "the file is corrupt; fetch it again",
                    Some(Box::new(e)),
                )
            })?)
        };

        // SentencePiece only segments with normal and user-defined pieces: control
        // pieces (<s>, </s>) never match raw text, so they are left out of the
        // unigram vocabulary (tokenizers' Unigram would otherwise match "</s>" inside
        // text). The ids of this vocabulary are irrelevant: Marian maps the piece
        // *strings* through vocab.json.
        let mut vocab = Vec::new();
        let mut piece_types = HashMap::new();
        let mut pieces = Vec::with_capacity(model.pieces().len());
        let mut unk_id = None;
        let mut unk_piece = "<unk>".to_string();
        for p in model.pieces() {
            let piece = p.piece().to_string();
            let ty = p.r#type();
            piece_types.insert(piece.clone(), ty);
            pieces.push(piece.clone());
            match ty {
                PieceType::Normal | PieceType::UserDefined => vocab.push((piece, p.score() as f64)),
                PieceType::Unknown => {
                    unk_id = Some(vocab.len());
                    unk_piece = piece.clone();
                    vocab.push((piece, p.score() as f64));
                }
                PieceType::Control | PieceType::Unused | PieceType::Byte => {}
            }
        }
        let segmenter = if model_type == sentencepiece_model::ModelType::Bpe {
            Segmenter::Bpe(
                model
                    .pieces()
                    .iter()
                    .filter(|p| p.r#type() == PieceType::Normal)
                    .map(|p| (p.piece().to_string(), p.score()))
                    .collect(),
            )
        } else {
            Segmenter::Unigram(Box::new(Unigram::from(vocab, unk_id, false).map_err(
                |e| {
                    Error::file(
                        path,
                        "cannot build the unigram segmenter",
                        "the SentencePiece model has no <unk> piece or no pieces",
                        Some(e),
                    )
                },
            )?))
        };
        Ok(SpmModel {
            normalizer,
            add_dummy_prefix: spec.map(|s| s.add_dummy_prefix()).unwrap_or(true),
            remove_extra_whitespaces: spec.map(|s| s.remove_extra_whitespaces()).unwrap_or(true),
            escape_whitespaces: spec.map(|s| s.escape_whitespaces()).unwrap_or(true),
            segmenter,
            piece_types,
            pieces,
            unk_piece,
        })
    }

    /// SentencePiece's `Normalize`: charsmap, then whitespace rules, then `▁`.
    fn normalize(&self, text: &str) -> Result<String> {
        let mut s = if let Some(n) = &self.normalizer {
            let mut ns = NormalizedString::from(text);
            n.normalize(&mut ns).map_err(|e| {
                Error::input(
                    format!("normalization failed: {e}"),
                    "report this input as a bug",
                )
            })?;
            ns.get().to_string()
        } else {
            text.to_string()
        };
        if self.remove_extra_whitespaces {
            // SentencePiece treats only ' ' as whitespace here (the charsmap has
            // already turned tabs, newlines and exotic spaces into ' ').
            let mut out = String::with_capacity(s.len());
            let mut prev_space = true; // drops leading spaces
            for c in s.chars() {
                if c == ' ' {
                    if !prev_space {
                        out.push(' ');
                    }
                    prev_space = true;
                } else {
                    out.push(c);
                    prev_space = false;
                }
            }
            while out.ends_with(' ') {
                out.pop();
            }
            s = out;
        }
        if s.is_empty() {
            return Ok(s);
        }
        if self.add_dummy_prefix {
            s.insert(0, ' ');
        }
        if self.escape_whitespaces {
            s = s.replace(' ', &SPACE_SYMBOL.to_string());
        }
        Ok(s)
    }

    /// SentencePiece `encode(text, out_type=str)`.
    pub(crate) fn encode_pieces(&self, text: &str) -> Result<Vec<String>> {
        let normalized = self.normalize(text)?;
        if normalized.is_empty() {
            return Ok(Vec::new());
        }
        match &self.segmenter {
            Segmenter::Unigram(u) => u.encode(&normalized).map_err(|e| {
                Error::input(
                    format!("segmentation failed: {e}"),
                    "report this input as a bug",
                )
            }),
            Segmenter::Bpe(scores) => Ok(bpe_merge(scores, &normalized)),
        }
    }

    /// SentencePiece `decode_pieces`.
    pub(crate) fn decode_pieces(&self, pieces: &[&str]) -> String {
        let mut out = String::new();
        let mut is_bos_ws = true;
        for &piece in pieces {
            let decoded: String = match self.piece_types.get(piece) {
                Some(PieceType::Control) => String::new(),
                // An unknown piece: "<unk>" itself prints as " ⁇ ", any other
                // string SentencePiece does not know is copied through as-is.
                None | Some(PieceType::Unknown) => {
                    if piece == self.unk_piece {
                        UNK_SURFACE.to_string()
                    } else {
                        piece.to_string()
                    }
                }
                Some(_) => {
                    let mut p = piece;
                    if is_bos_ws && (self.add_dummy_prefix || self.remove_extra_whitespaces) {
                        p = p.strip_prefix(SPACE_SYMBOL).unwrap_or(p);
                    }
                    p.replace(SPACE_SYMBOL, " ")
                }
            };
            if is_bos_ws && !decoded.is_empty() {
                is_bos_ws = false;
            }
            out.push_str(&decoded);
        }
        out
    }
}

/// Split raw text on special-token strings (longest first in `specials`), as
/// transformers' added-token trie does: leftmost match, longest at that
/// position. Each chunk says whether it is a special token.
pub(crate) fn split_special<'a>(text: &'a str, specials: &[String]) -> Vec<(&'a str, bool)> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < text.len() {
        if let Some(tok) = specials.iter().find(|t| text[i..].starts_with(t.as_str())) {
            if start < i {
                out.push((&text[start..i], false));
            }
            out.push((&text[i..i + tok.len()], true));
            i += tok.len();
            start = i;
        } else {
            i += text[i..].chars().next().map_or(1, char::len_utf8);
        }
    }
    if start < text.len() {
        out.push((&text[start..], false));
    }
    out
}

/// SentencePiece BPE on one normalized string: characters, then repeated
/// merges of the best-scoring adjacent pair (leftmost on a tie) while the
/// joined string is a piece, then runs of unknown symbols fused. Quadratic in
/// the length of a segment, which is a sentence here.
fn bpe_merge(scores: &HashMap<String, f32>, text: &str) -> Vec<String> {
    let mut syms: Vec<String> = text.chars().map(String::from).collect();
    let mut joined = String::new();
    loop {
        let mut best: Option<(f32, usize)> = None;
        for i in 0..syms.len().saturating_sub(1) {
            joined.clear();
            joined.push_str(&syms[i]);
            joined.push_str(&syms[i + 1]);
            if let Some(&score) = scores.get(joined.as_str()) {
                if best.is_none_or(|(b, _)| score > b) {
                    best = Some((score, i));
                }
            }
        }
        let Some((_, i)) = best else {
            break;
        };
        let right = syms.remove(i + 1);
        syms[i].push_str(&right);
    }
    // SentencePiece merges each run of unknown symbols into one (still
    // unknown) piece, so that it maps to a single <unk>.
    let mut out: Vec<String> = Vec::with_capacity(syms.len());
    for s in syms {
        match out.last_mut() {
            Some(prev)
                if !scores.contains_key(prev.as_str()) && !scores.contains_key(s.as_str()) =>
            {
                prev.push_str(&s)
            }
            _ => out.push(s),
        }
    }
    out
}

/// Paths of the tokenizer files in a Marian checkpoint directory.
pub struct TokenizerFiles {
    pub source_spm: PathBuf,
    pub target_spm: PathBuf,
    pub vocab: PathBuf,
    pub target_vocab: Option<PathBuf>,
    pub tokenizer_config: Option<PathBuf>,
}

impl TokenizerFiles {
    /// The standard hub layout inside `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        let opt = |name: &str| Some(dir.join(name)).filter(|p| p.exists());
        TokenizerFiles {
            source_spm: dir.join("source.spm"),
            target_spm: dir.join("target.spm"),
            vocab: dir.join("vocab.json"),
            target_vocab: opt("target_vocab.json"),
            tokenizer_config: opt("tokenizer_config.json"),
        }
    }
}

/// transformers' `MarianTokenizer`, in Rust.
pub struct MarianTokenizer {
    source: SpmModel,
    target: SpmModel,
    encoder: HashMap<String, u32>,
    decoder: HashMap<u32, String>,
    /// Special token strings, longest first, for splitting raw text.
    special_tokens: Vec<String>,
    special_ids: HashSet<u32>,
    unk_id: u32,
    eos_id: u32,
    pad_id: u32,
    /// transformers 5 decodes with the *source* spm unless vocabularies are separate.
    decode_with_source: bool,
    clean_up_tokenization_spaces: bool,
}

/// Read and parse a JSON file, naming the file on failure.
pub(crate) fn read_vocab(path: &Path) -> Result<HashMap<String, u32>> {
    let value = read_json(path)?;
    let map = value.as_object().ok_or_else(|| {
        Error::file(
            path,
            "is not a JSON object of piece -> id",
            "fetch the file again",
            None,
        )
    })?;
    map.iter()
        .map(|(k, v)| {
            v.as_u64()
                .and_then(|id| u32::try_from(id).ok())
                .map(|id| (k.clone(), id))
                .ok_or_else(|| {
                    Error::file(
                        path,
                        format!("piece {k:?} has a non-integer id"),
                        "fetch the file again",
                        None,
                    )
                })
        })
        .collect()
}

/// A token in tokenizer_config.json is either a string or an AddedToken object.
pub(crate) fn token_string(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

impl MarianTokenizer {
    /// Load from a checkpoint directory in the hub layout.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        Self::from_files(&TokenizerFiles::in_dir(dir))
    }

    /// Load from explicit file paths.
    pub fn from_files(files: &TokenizerFiles) -> Result<Self> {
        let config = match &files.tokenizer_config {
            Some(p) => read_json(p)?,
            None => serde_json::Value::Object(Default::default()),
        };
        let unk = token_string(config.get("unk_token")).unwrap_or_else(|| "<unk>".into());
        let eos = token_string(config.get("eos_token")).unwrap_or_else(|| "</s>".into());
        let pad = token_string(config.get("pad_token")).unwrap_or_else(|| "<pad>".into());
        let separate = config
            .get("separate_vocabs")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);
        // transformers 5 defaults this to False for Python tokenizers.
        let clean_up = config
            .get("clean_up_tokenization_spaces")
            .and_then(|v| v.as_bool())
            .unwrap_or(false);

        let encoder = read_vocab(&files.vocab)?;
        let decoder_vocab = if separate {
            let p = files.target_vocab.as_ref().ok_or_else(|| {
                Error::file(
                    &files.vocab,
                    "tokenizer_config.json says separate_vocabs but target_vocab.json is missing",
                    "fetch target_vocab.json into the model directory",
                    None,
                )
            })?;
            read_vocab(p)?
        } else {
            encoder.clone()
        };
        let decoder: HashMap<u32, String> =
            decoder_vocab.into_iter().map(|(k, v)| (v, k)).collect();

        let lookup = |tok: &str| {
            encoder.get(tok).copied().ok_or_else(|| {
                Error::file(
                    &files.vocab,
                    format!("special token {tok:?} is not in the vocabulary"),
                    "the vocab.json does not belong to this tokenizer_config.json",
                    None,
                )
            })
        };
        let unk_id = lookup(&unk)?;
        let eos_id = lookup(&eos)?;
        let pad_id = lookup(&pad)?;

        let mut special_tokens = vec![unk.clone(), eos.clone(), pad.clone()];
        if let Some(extra) = config
            .get("additional_special_tokens")
            .and_then(|v| v.as_array())
        {
            special_tokens.extend(extra.iter().filter_map(|v| token_string(Some(v))));
        }
        if let Some(added) = config
            .get("added_tokens_decoder")
            .and_then(|v| v.as_object())
        {
            special_tokens.extend(added.values().filter_map(|v| token_string(Some(v))));
        }
        special_tokens.sort_by(|a, b| b.len().cmp(&a.len()).then(a.cmp(b)));
        special_tokens.dedup();
        let special_ids = special_tokens
            .iter()
            .filter_map(|t| encoder.get(t).copied())
            .collect();

        Ok(MarianTokenizer {
            source: SpmModel::load(&files.source_spm)?,
            target: SpmModel::load(&files.target_spm)?,
            encoder,
            decoder,
            special_tokens,
            special_ids,
            unk_id,
            eos_id,
            pad_id,
            decode_with_source: !separate,
            clean_up_tokenization_spaces: clean_up,
        })
    }

    /// Id of `</s>`.
    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// Id of `<pad>`.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Id of `<unk>`.
    pub fn unk_id(&self) -> u32 {
        self.unk_id
    }

    /// Whether `token` is an entry of vocab.json.
    pub fn has_token(&self, token: &str) -> bool {
        self.encoder.contains_key(token)
    }

    /// Number of entries in vocab.json.
    pub fn vocab_size(&self) -> usize {
        self.encoder.len()
    }

    fn split_special<'a>(&self, text: &'a str) -> Vec<(&'a str, bool)> {
        split_special(text, &self.special_tokens)
    }

    fn piece_id(&self, piece: &str) -> u32 {
        self.encoder.get(piece).copied().unwrap_or(self.unk_id)
    }

    /// Source-side ids for `text`, with `</s>` appended (`tokenizer(text)["input_ids"]`).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut ids = Vec::new();
        for (chunk, special) in self.split_special(text) {
            if special {
                ids.push(self.piece_id(chunk));
                continue;
            }
            let mut rest = chunk;
            // MarianTokenizer.remove_language_code: a leading ">>xx<<" is one token.
            if rest.starts_with(">>") {
                if let Some(end) = rest.find("<<") {
                    ids.push(self.piece_id(&rest[..end + 2]));
                    rest = &rest[end + 2..];
                }
            }
            for piece in self.source.encode_pieces(rest)? {
                ids.push(self.piece_id(&piece));
            }
        }
        ids.push(self.eos_id);
        Ok(ids)
    }

    /// Target-side text for `ids`, special tokens skipped
    /// (`tokenizer.decode(ids, skip_special_tokens=True)`).
    pub fn decode(&self, ids: &[u32]) -> String {
        let spm = if self.decode_with_source {
            &self.source
        } else {
            &self.target
        };
        let unk = self
            .decoder
            .get(&self.unk_id)
            .map_or("<unk>", String::as_str);
        let mut out = String::new();
        let mut current: Vec<&str> = Vec::new();
        for id in ids {
            if self.special_ids.contains(id) {
                continue;
            }
            // MarianTokenizer._convert_id_to_token: vocab.json first, then the
            // SentencePiece piece with that id, then the unk token.
            let piece = match self.decoder.get(id) {
                Some(p) => p.as_str(),
                None => spm
                    .pieces
                    .get(*id as usize)
                    .map(String::as_str)
                    .filter(|p| !p.is_empty())
                    .unwrap_or(unk),
            };
            // convert_tokens_to_string: special-token strings are not decoded by spm.
            if self.special_tokens.iter().any(|t| t == piece) {
                out.push_str(&spm.decode_pieces(&current));
                out.push_str(piece);
                out.push(' ');
                current.clear();
            } else {
                current.push(piece);
            }
        }
        out.push_str(&spm.decode_pieces(&current));
        let out = out.replace(SPACE_SYMBOL, " ");
        let out = out.trim();
        if self.clean_up_tokenization_spaces {
            clean_up_tokenization(out)
        } else {
            out.to_string()
        }
    }
}

//! Tokenizers of the summarization checkpoints (BART's byte-level BPE,
//! Pegasus' SentencePiece unigram), behaving as transformers 5 does.
//!
//! transformers 5 backs both with the `tokenizers` library, so the exact
//! behaviour is a `tokenizers::Tokenizer` built the way transformers builds it:
//! - `tokenizer.json` when the checkpoint has one (facebook/bart-large-cnn):
//!   loaded as is.
//! - `vocab.json` + `merges.txt` (sshleifer/distilbart-cnn-12-6): byte-level
//!   BPE with RoBERTa's post-processor (`<s> … </s>`), as `RobertaTokenizer`
//!   (which `BartTokenizer` is in transformers 5) builds it.
//! - `spiece.model` (Pegasus): a unigram model over Pegasus' id layout (pad,
//!   eos, two mask tokens, `<unk_2>`…`<unk_{offset-1}>`, then the pieces), the
//!   model's precompiled charsmap, Metaspace, `$A </s>`, as transformers'
//!   `PegasusConverter.convert_from_spm` + `PegasusTokenizer` build it.
//!
//! Decoding skips special tokens and applies transformers'
//! `clean_up_tokenization` when `tokenizer_config.json` asks for it (never for
//! BPE, which transformers 5 also exempts).

use std::path::{Path, PathBuf};

use tokenizers::decoders::byte_level::ByteLevel;
use tokenizers::decoders::metaspace::{Metaspace, PrependScheme};
use tokenizers::models::bpe::BPE;
use tokenizers::models::unigram::Unigram;
use tokenizers::normalizers::replace::{Replace, ReplacePattern};
use tokenizers::normalizers::{Precompiled, Sequence as NormSequence};
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, NormalizerWrapper, Tokenizer};

use super::{clean_up_tokenization, read_json, read_spm};
use crate::error::{Error, Result};

/// A BART or Pegasus tokenizer.
pub struct HfTokenizer {
    inner: Tokenizer,
    eos_id: u32,
    pad_id: u32,
    clean_up: bool,
    /// Which files it was built from (for errors).
    source: PathBuf,
}

fn tok_err(path: &Path, what: &str, e: tokenizers::Error) -> Error {
    Error::file(
        path,
        what.to_string(),
        "the tokenizer files are corrupt or not from this kind of checkpoint; fetch them again",
        Some(e),
    )
}

fn config_str(config: &serde_json::Value, key: &str, default: &str) -> String {
    match config.get(key) {
        Some(serde_json::Value::String(s)) => s.clone(),
        // Older files write special tokens as {"content": "<s>", ...}.
        Some(serde_json::Value::Object(o)) => o
            .get("content")
            .and_then(|c| c.as_str())
            .unwrap_or(default)
            .to_string(),
        _ => default.to_string(),
    }
}

impl HfTokenizer {
    /// Load from a checkpoint directory: `tokenizer.json`, else `vocab.json` +
    /// `merges.txt`, else `spiece.model`.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let cfg_path = dir.join("tokenizer_config.json");
        let config = if cfg_path.is_file() {
            read_json(&cfg_path)?
        } else {
            serde_json::Value::Null
        };
        let json = dir.join("tokenizer.json");
        let (inner, source) = if json.is_file() {
            let t = Tokenizer::from_file(&json)
                .map_err(|e| tok_err(&json, "is not a usable tokenizer.json", e))?;
            (t, json)
        } else if dir.join("vocab.json").is_file() && dir.join("merges.txt").is_file() {
            (byte_level_bpe(dir, &config)?, dir.join("vocab.json"))
        } else if dir.join("spiece.model").is_file() {
            (
                pegasus_unigram(&dir.join("spiece.model"), &config)?,
                dir.join("spiece.model"),
            )
        } else {
            return Err(Error::file(
                dir,
                "has no tokenizer: expected tokenizer.json, vocab.json + merges.txt, or spiece.model",
                "fetch the complete checkpoint (`transum download MODEL`)",
                None,
            ));
        };
        let id = |name: &str, default: &str| -> Result<u32> {
            let tok = config_str(&config, name, default);
            inner.token_to_id(&tok).ok_or_else(|| {
                Error::file(
                    &source,
                    format!("has no id for its {name} {tok:?}"),
                    "the tokenizer files do not belong together; fetch them again",
                    None,
                )
            })
        };
        let eos_id = id("eos_token", "</s>")?;
        let pad_id = id("pad_token", "<pad>")?;
        let is_bpe = matches!(inner.get_model(), tokenizers::ModelWrapper::BPE(_));
        let clean_up = !is_bpe
            && config
                .get("clean_up_tokenization_spaces")
                .and_then(|v| v.as_bool())
                .unwrap_or(false);
        Ok(HfTokenizer {
            inner,
            eos_id,
            pad_id,
            clean_up,
            source,
        })
    }

    /// Ids of `text` with the checkpoint's special tokens (`<s> … </s>` or `… </s>`).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_with(text, true)
    }

    /// Ids of `text` alone, without the special tokens the checkpoint's
    /// template would add (a caller that lays them out itself).
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        self.encode_with(text, false)
    }

    fn encode_with(&self, text: &str, special: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, special)
            .map_err(|e| tok_err(&self.source, "failed to encode a text", e))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The id of `token`, if the vocabulary (added tokens included) has it.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// Text of `ids`, special tokens skipped.
    pub fn decode(&self, ids: &[u32]) -> String {
        let text = self.inner.decode(ids, true).unwrap_or_default();
        if self.clean_up {
            clean_up_tokenization(&text)
        } else {
            text
        }
    }

    /// Id of the end-of-sequence token.
    /// Whether `token` is an entry of the vocabulary.
    pub fn has_token(&self, token: &str) -> bool {
        self.inner.token_to_id(token).is_some()
    }

    pub fn eos_id(&self) -> u32 {
        self.eos_id
    }

    /// Id of the padding token.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// `RobertaTokenizer(vocab, merges)` of transformers 5.
fn byte_level_bpe(dir: &Path, config: &serde_json::Value) -> Result<Tokenizer> {
    let vocab = dir.join("vocab.json");
    let merges = dir.join("merges.txt");
    let bpe = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix(String::new())
        .build()
        .map_err(|e| tok_err(&vocab, "and merges.txt do not form a BPE model", e))?;
    let add_prefix_space = config
        .get("add_prefix_space")
        .and_then(|v| v.as_bool())
        .unwrap_or(false);
    let trim_offsets = config
        .get("trim_offsets")
        .and_then(|v| v.as_bool())
        .unwrap_or(true);
    let mut t = Tokenizer::new(bpe);
    t.with_pre_tokenizer(Some(ByteLevel::new(add_prefix_space, trim_offsets, true)));
    t.with_decoder(Some(ByteLevel::default()));
    let special = |k: &str, d: &str| config_str(config, k, d);
    let (bos, eos, unk, pad, mask) = (
        special("bos_token", "<s>"),
        special("eos_token", "</s>"),
        special("unk_token", "<unk>"),
        special("pad_token", "<pad>"),
        special("mask_token", "<mask>"),
    );
    let sep = special("sep_token", &eos);
    let cls = special("cls_token", &bos);
    let added: Vec<AddedToken> = [&bos, &pad, &eos, &unk, &mask]
        .iter()
        .map(|s| AddedToken::from(s.to_string(), true))
        .collect();
    t.add_special_tokens(added)
        .map_err(|e| tok_err(&vocab, "special tokens cannot be added", e))?;
    let id = |s: &str| -> Result<u32> {
        t.token_to_id(s).ok_or_else(|| {
            Error::file(
                &vocab,
                format!("has no id for the special token {s:?}"),
                "the tokenizer files do not belong together; fetch them again",
                None,
            )
        })
    };
    let processor = RobertaProcessing::new((sep.clone(), id(&sep)?), (cls.clone(), id(&cls)?))
        .trim_offsets(trim_offsets)
        .add_prefix_space(add_prefix_space);
    t.with_post_processor(Some(processor));
    Ok(t)
}

/// `PegasusTokenizer` built from `spiece.model` by transformers 5.
fn pegasus_unigram(path: &Path, config: &serde_json::Value) -> Result<Tokenizer> {
    let model = read_spm(path)?;
    let pad = config_str(config, "pad_token", "<pad>");
    let eos = config_str(config, "eos_token", "</s>");
    // convert_from_spm's defaults (note: mask_token <mask_1>, the reverse of
    // PegasusTokenizer's own defaults; transformers really does this).
    let mask = config_str(config, "mask_token", "<mask_1>");
    let mask_sent = config_str(config, "mask_token_sent", "<mask_2>");
    let offset = config.get("offset").and_then(|v| v.as_u64()).unwrap_or(103) as usize;
    let mut vocab: Vec<(String, f64)> = vec![(pad.clone(), 0.0), (eos.clone(), 0.0)];
    vocab.push((mask.clone(), 0.0));
    if mask_sent != mask {
        vocab.push((mask_sent.clone(), 0.0));
    }
    let unk_tokens: Vec<String> = (2..offset).map(|i| format!("<unk_{i}>")).collect();
    vocab.extend(unk_tokens.iter().map(|u| (u.clone(), -100.0)));
    vocab.extend(
        model
            .pieces()
            .iter()
            .skip(2)
            .map(|p| (p.piece().to_string(), p.score() as f64)),
    );
    let unk = config_str(config, "unk_token", "<unk>");
    // PegasusTokenizer: the first ("<unk>", 0.0) entry after position 0.
    let unk_id = vocab
        .iter()
        .skip(1)
        .position(|(p, s)| *p == unk && *s == 0.0)
        .map(|i| i + 1)
        .ok_or_else(|| {
            Error::file(
                path,
                format!("has no {unk:?} piece with score 0"),
                "this is not a Pegasus SentencePiece model",
                None,
            )
        })?;
    let unigram = Unigram::from(vocab, Some(unk_id), false)
        .map_err(|e| tok_err(path, "does not form a unigram model", e))?;
    let mut t = Tokenizer::new(unigram);
    let charsmap = model
        .normalizer()
        .map(|n| n.precompiled_charsmap())
        .unwrap_or(&[]);
    let collapse = Replace::new(ReplacePattern::Regex(" {2,}".into()), " ")
        .map_err(|e| tok_err(path, "normalizer", e))?;
    let normalizer: Vec<NormalizerWrapper> = if charsmap.is_empty() {
        vec![
            Replace::new(ReplacePattern::Regex("\n".into()), " ")
                .map_err(|e| tok_err(path, "normalizer", e))?
                .into(),
            collapse.into(),
        ]
    } else {
        vec![
            Precompiled::from(charsmap)
                .map_err(|e| tok_err(path, "has an unreadable precompiled charsmap", Box::new(e)))?
                .into(),
            collapse.into(),
        ]
    };
    t.with_normalizer(Some(NormSequence::new(normalizer)))
        .map_err(|e| tok_err(path, "normalizer", e))?;
    let metaspace = Metaspace::new('\u{2581}', PrependScheme::Always, true);
    t.with_pre_tokenizer(Some(metaspace.clone()));
    t.with_decoder(Some(metaspace));
    // Special tokens: pad, eos, unk, mask, then the additional ones
    // (mask_token_sent and <unk_2>...).
    let mut specials = vec![pad, eos.clone(), unk, mask, mask_sent];
    specials.extend(unk_tokens);
    let added: Vec<AddedToken> = specials
        .into_iter()
        .map(|s| AddedToken::from(s, true))
        .collect();
    t.add_special_tokens(added)
        .map_err(|e| tok_err(path, "special tokens cannot be added", e))?;
    let eos_id = t.token_to_id(&eos).ok_or_else(|| {
        Error::file(
            path,
            format!("has no id for {eos:?}"),
            "this is not a Pegasus SentencePiece model",
            None,
        )
    })?;
    let template_err = |e: &dyn std::fmt::Display| {
        Error::file(
            path,
            format!("cannot build the `$A {eos}` template: {e}"),
            "its eos_token in tokenizer_config.json is unusable; fetch the checkpoint again",
            None,
        )
    };
    let post = TemplateProcessing::builder()
        .try_single(format!("$A {eos}"))
        .and_then(|b| b.try_pair(format!("$A $B {eos}")))
        .map_err(|e| template_err(&e))?
        .special_tokens(vec![(eos.clone(), eos_id)])
        .build()
        .map_err(|e| template_err(&e))?;
    t.with_post_processor(Some(post));
    Ok(t)
}

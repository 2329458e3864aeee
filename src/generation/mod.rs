//! Text generation, written once against the [`crate::models::Seq2Seq`] trait:
//! the resolved generation settings ([`GenerationOptions`]), the logits
//! processors (`logits.rs`) and greedy and beam search (`search.rs`), with
//! transformers' `generate` semantics (transformers 5.x `GenerationMixin`).
//!
//! Settings come from the checkpoint's `generation_config.json`, else the legacy
//! fields of `config.json`, else transformers' defaults; user flags override.
//!
//! Output length is bounded per input by the smallest of three limits
//! ([`GenerationOptions::row_limit`]): the length setting (the user's, else the
//! checkpoint's), the decoder's position table, and a cap relative to the source
//! length (`--max-length-factor`). Whichever binds, generation stops there as if
//! that had been `max_length` (forced EOS included): a cut, never an error. When
//! neither of the last two binds, the search is exactly transformers'.

pub mod logits;
pub mod search;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

pub use search::{generate, Hypothesis};

/// transformers' `early_stopping`: `False`, `True` or `"never"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EarlyStopping {
    /// `False`: stop when the best running beam cannot beat the worst finished one
    /// at the current length (transformers' default heuristic).
    Heuristic,
    /// `True`: stop as soon as `num_beams` hypotheses are finished.
    Always,
    /// `"never"`: the canonical beam search stopping rule.
    Never,
}

impl std::str::FromStr for EarlyStopping {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "false" | "heuristic" => Ok(EarlyStopping::Heuristic),
            "true" | "always" => Ok(EarlyStopping::Always),
            "never" => Ok(EarlyStopping::Never),
            other => Err(Error::setting(
                format!("early_stopping {other:?} is not valid"),
                "use one of: false, true, never",
            )),
        }
    }
}

/// The bound that stopped an output at its length limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LengthLimit {
    /// `--max-new-tokens` (or a library caller's `max_length`): asked for explicitly.
    Requested,
    /// The checkpoint's `max_length` / `max_new_tokens` (or transformers' default of 20).
    Checkpoint,
    /// The decoder's position table (`max_position_embeddings`): it cannot go further.
    Positions,
    /// `--max-length-factor` times the source length.
    SourceFactor,
}

impl LengthLimit {
    /// The name the manifest and the logs use.
    pub fn name(self) -> &'static str {
        match self {
            LengthLimit::Requested => "requested",
            LengthLimit::Checkpoint => "checkpoint",
            LengthLimit::Positions => "positions",
            LengthLimit::SourceFactor => "source_factor",
        }
    }
}

/// Tokens allowed beyond `factor x source tokens`, so that a one-word source
/// (a byline, a name the target vocabulary splits into more pieces than the
/// source one) is never cut. marian-decoder gets such slack implicitly from
/// measuring its batch's longest source; a per-input cap needs it explicitly.
pub const LENGTH_FACTOR_SLACK: usize = 5;

/// Default `--max-length-factor`: marian-decoder's `--max-length-factor 3`.
/// CTranslate2 has no relative cap (only `max_decoding_length`, 256 by default).
pub const DEFAULT_LENGTH_FACTOR: f64 = 3.0;

/// Fully resolved generation settings: what decides the output.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GenerationOptions {
    /// 1 = greedy search.
    pub num_beams: usize,
    /// Maximum decoder length, the decoder start token included (transformers' `max_length`).
    pub max_length: usize,
    /// Who set `max_length`: [`LengthLimit::Requested`] or [`LengthLimit::Checkpoint`].
    pub max_length_from: LengthLimit,
    /// New tokens are capped at `ceil(factor x source tokens) + LENGTH_FACTOR_SLACK`
    /// (source tokens as fed to the encoder, `</s>` included); 0 = no cap.
    pub max_length_factor: f64,
    /// Minimum decoder length, start token included (`min_length`).
    pub min_length: usize,
    /// Minimum number of generated tokens (`min_new_tokens`).
    pub min_new_tokens: usize,
    /// Token sequences that may never be generated (`bad_words_ids`).
    pub bad_words_ids: Vec<Vec<u32>>,
    /// Every n-gram of this size may occur only once (`no_repeat_ngram_size`, 0 = off).
    pub no_repeat_ngram_size: usize,
    /// Forced as the first generated token (`forced_bos_token_id`, BART).
    pub forced_bos_token_id: Option<u32>,
    /// Forced at the last position (`forced_eos_token_id`).
    pub forced_eos_token_ids: Vec<u32>,
    pub length_penalty: f32,
    pub early_stopping: EarlyStopping,
    pub decoder_start_token_id: u32,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: u32,
    /// Re-apply log-softmax after the processors (`renormalize_logits`).
    pub renormalize_logits: bool,
}

/// User overrides on top of the checkpoint's settings (CLI flags).
#[derive(Debug, Clone, Default)]
pub struct GenerationOverrides {
    pub num_beams: Option<usize>,
    pub max_length: Option<usize>,
    pub max_new_tokens: Option<usize>,
    pub min_new_tokens: Option<usize>,
    pub min_length: Option<usize>,
    pub no_repeat_ngram_size: Option<usize>,
    pub length_penalty: Option<f32>,
    pub early_stopping: Option<EarlyStopping>,
    /// Cap relative to the source length (0 = off, `None` = off). Ignored when
    /// `max_new_tokens` or `max_length` is given: an explicit bound wins.
    pub max_length_factor: Option<f64>,
}

fn ids(v: Option<&Value>) -> Option<Vec<u32>> {
    match v? {
        Value::Number(n) => n.as_u64().map(|x| vec![x as u32]),
        Value::Array(a) => a.iter().map(|x| x.as_u64().map(|x| x as u32)).collect(),
        _ => None,
    }
}

fn usize_field(v: Option<&Value>) -> Option<usize> {
    v?.as_u64().map(|x| x as usize)
}

impl GenerationOptions {
    /// Resolve from `generation_config.json` (if any), then `config.json`, then
    /// transformers' defaults, then `overrides`.
    pub fn resolve(
        generation_config: Option<&Value>,
        config: &Value,
        overrides: &GenerationOverrides,
    ) -> Result<Self> {
        // transformers 5 takes generation settings only from generation_config.json
        // when it exists; old checkpoints without one carry them in config.json.
        let src = generation_config.unwrap_or(config);
        let get = |k: &str| src.get(k).filter(|v| !v.is_null());
        let cfg = |k: &str| get(k).or_else(|| config.get(k).filter(|v| !v.is_null()));

        let eos_token_ids = ids(cfg("eos_token_id")).unwrap_or_default();
        let pad_token_id = ids(cfg("pad_token_id"))
            .and_then(|v| v.first().copied())
            .or_else(|| eos_token_ids.first().copied())
            .ok_or_else(|| {
                Error::setting(
                    "the checkpoint defines neither pad_token_id nor eos_token_id",
                    "add pad_token_id to the model's config.json",
                )
            })?;
        let decoder_start_token_id = ids(cfg("decoder_start_token_id"))
            .and_then(|v| v.first().copied())
            .or_else(|| ids(cfg("bos_token_id")).and_then(|v| v.first().copied()))
            .ok_or_else(|| {
                Error::setting(
                    "the checkpoint defines no decoder_start_token_id",
                    "add decoder_start_token_id to the model's generation_config.json",
                )
            })?;
        let bad_words_ids = match get("bad_words_ids") {
            Some(Value::Array(seqs)) => seqs
                .iter()
                .map(|s| ids(Some(s)).filter(|v| !v.is_empty()))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    Error::setting(
                        "generation_config.json: bad_words_ids must be a list of lists of token ids",
                        "fix or remove the field",
                    )
                })?,
            _ => Vec::new(),
        };
        let max_new_tokens = overrides
            .max_new_tokens
            .or(usize_field(get("max_new_tokens")));
        let requested = overrides.max_new_tokens.is_some() || overrides.max_length.is_some();
        let max_length = match (max_new_tokens, overrides.max_length) {
            (Some(n), _) => n + 1, // the decoder start token counts towards max_length
            (None, Some(l)) => l,
            (None, None) => usize_field(get("max_length")).unwrap_or(20),
        };
        let max_length_from = if requested {
            LengthLimit::Requested
        } else {
            LengthLimit::Checkpoint
        };
        // An explicit bound is what the user asked for: the factor steps aside.
        let max_length_factor = if requested {
            0.0
        } else {
            overrides.max_length_factor.unwrap_or(0.0)
        };
        let early_stopping = match overrides.early_stopping {
            Some(e) => e,
            None => match get("early_stopping") {
                Some(Value::Bool(true)) => EarlyStopping::Always,
                Some(Value::String(s)) => s.parse()?,
                _ => EarlyStopping::Heuristic,
            },
        };
        let opts = GenerationOptions {
            num_beams: overrides
                .num_beams
                .or(usize_field(get("num_beams")))
                .unwrap_or(1),
            max_length,
            max_length_from,
            max_length_factor,
            min_length: overrides
                .min_length
                .or(usize_field(get("min_length")))
                .unwrap_or(0),
            min_new_tokens: overrides
                .min_new_tokens
                .or(usize_field(get("min_new_tokens")))
                .unwrap_or(0),
            bad_words_ids,
            no_repeat_ngram_size: overrides
                .no_repeat_ngram_size
                .or(usize_field(get("no_repeat_ngram_size")))
                .unwrap_or(0),
            forced_bos_token_id: ids(get("forced_bos_token_id"))
                .and_then(|v| v.first().copied())
                .or_else(|| {
                    // Legacy BART configs (distilbart-cnn-*) say
                    // force_bos_token_to_be_generated: true, which transformers 4
                    // turned into forced_bos_token_id = bos_token_id.
                    let legacy = get("force_bos_token_to_be_generated")
                        .and_then(|v| v.as_bool())
                        .unwrap_or(false);
                    legacy
                        .then(|| ids(cfg("bos_token_id")).and_then(|v| v.first().copied()))
                        .flatten()
                }),
            forced_eos_token_ids: ids(get("forced_eos_token_id")).unwrap_or_default(),
            length_penalty: overrides
                .length_penalty
                .or(get("length_penalty")
                    .and_then(|v| v.as_f64())
                    .map(|x| x as f32))
                .unwrap_or(1.0),
            early_stopping,
            decoder_start_token_id,
            eos_token_ids,
            pad_token_id,
            renormalize_logits: get("renormalize_logits")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
        };
        opts.validate()?;
        Ok(opts)
    }

    /// Reject settings that cannot generate anything sensible.
    pub fn validate(&self) -> Result<()> {
        if self.num_beams == 0 {
            return Err(Error::setting(
                "--beams must be at least 1",
                "use 1 for greedy search, 4 for Marian's default",
            ));
        }
        if self.max_length < 2 {
            return Err(Error::setting(
                "max_length leaves no room for a generated token",
                "use --max-new-tokens 1 or more",
            ));
        }
        if !(self.max_length_factor.is_finite() && self.max_length_factor >= 0.0) {
            return Err(Error::setting(
                format!(
                    "--max-length-factor {} is not a usable factor",
                    self.max_length_factor
                ),
                "use a number >= 0, e.g. 3 (marian-decoder's default); 0 turns the cap off",
            ));
        }
        if !self.length_penalty.is_finite() {
            return Err(Error::setting(
                "length_penalty must be a finite number",
                "use e.g. 1.0",
            ));
        }
        Ok(())
    }

    /// Maximum number of generated tokens.
    pub fn max_new_tokens(&self) -> usize {
        self.max_length - 1
    }

    /// The length limit of one input of `source_len` tokens (`</s>` included)
    /// for a decoder of `positions` positions: the decoder length (start token
    /// included, as `max_length`) and the bound that sets it. The smallest
    /// bound wins; on a tie the length setting is named first, then positions.
    pub fn row_limit(&self, source_len: usize, positions: usize) -> (usize, LengthLimit) {
        // The start token sits at position 0 and the last token is never fed
        // back, so `positions` positions generate `positions` tokens.
        let mut limit = (self.max_length, self.max_length_from);
        if positions + 1 < limit.0 {
            limit = (positions + 1, LengthLimit::Positions);
        }
        if self.max_length_factor > 0.0 {
            let cap = factor_cap(self.max_length_factor, source_len) + 1;
            if cap < limit.0 {
                limit = (cap, LengthLimit::SourceFactor);
            }
        }
        limit
    }
}

/// New tokens allowed by `factor` for `source_len` source tokens:
/// `ceil(factor x source_len) + LENGTH_FACTOR_SLACK`. A product within 1e-9 of
/// an integer counts as that integer, so 1.1 x 10 is 11, not 12 (binary floats
/// hold 1.1 as 1.1000000000000000888).
pub fn factor_cap(factor: f64, source_len: usize) -> usize {
    (factor * source_len as f64 - 1e-9).ceil().max(0.0) as usize + LENGTH_FACTOR_SLACK
}

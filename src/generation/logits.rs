//! Logits processors with transformers' semantics and order
//! (`GenerationMixin._get_logits_processor`): no-repeat n-grams, bad words,
//! min length, min new tokens, forced BOS at the first step, forced EOS at the
//! length limit, then optional renormalization.
//!
//! They work on one row's scores on the host, given that row's token history
//! (decoder start token included), and only ever mask scores, force EOS or
//! renormalize, so greedy and beam search share them unchanged.

use super::GenerationOptions;

/// The processor chain built once from validated options.
#[derive(Debug, Clone)]
pub struct LogitsProcessor {
    /// `no_repeat_ngram_size` (0 = off).
    no_repeat_ngram: usize,
    /// Single-token bad words, banned at every step.
    banned: Vec<u32>,
    /// Multi-token bad words: banned last token when the history ends with the prefix.
    banned_sequences: Vec<Vec<u32>>,
    min_length: usize,
    min_new_tokens: usize,
    forced_bos: Option<u32>,
    forced_eos: Vec<u32>,
    eos: Vec<u32>,
    renormalize: bool,
}

impl LogitsProcessor {
    /// Build the chain for `opts`.
    pub fn new(opts: &GenerationOptions) -> Self {
        // transformers drops bad-word entries that are exactly one EOS id.
        let words: Vec<&Vec<u32>> = opts
            .bad_words_ids
            .iter()
            .filter(|w| !(w.len() == 1 && opts.eos_token_ids.contains(&w[0])))
            .collect();
        LogitsProcessor {
            no_repeat_ngram: opts.no_repeat_ngram_size,
            forced_bos: opts.forced_bos_token_id,
            banned: words
                .iter()
                .filter(|w| w.len() == 1)
                .map(|w| w[0])
                .collect(),
            banned_sequences: words
                .iter()
                .filter(|w| w.len() > 1)
                .map(|w| (*w).clone())
                .collect(),
            min_length: opts.min_length,
            min_new_tokens: opts.min_new_tokens,
            forced_eos: opts.forced_eos_token_ids.clone(),
            eos: opts.eos_token_ids.clone(),
            renormalize: opts.renormalize_logits,
        }
    }

    /// Apply every processor to `scores` of a row whose tokens so far are
    /// `history` and whose decoder length is limited to `max_length` (the
    /// row's own limit: see [`super::GenerationOptions::row_limit`]).
    pub fn apply(&self, history: &[u32], max_length: usize, scores: &mut [f32]) {
        self.apply_constraint(&self.constraint(history, max_length), scores);
    }

    /// [`LogitsProcessor::apply`] with the row's constraint already known.
    pub fn apply_constraint(&self, c: &RowConstraint, scores: &mut [f32]) {
        for &id in &c.banned {
            if let Some(s) = scores.get_mut(id as usize) {
                *s = f32::NEG_INFINITY;
            }
        }
        if let Some(forced) = &c.forced {
            scores.fill(f32::NEG_INFINITY);
            for &id in forced {
                if let Some(s) = scores.get_mut(id as usize) {
                    *s = 0.0;
                }
            }
        }
        if self.renormalize {
            log_softmax_in_place(scores);
        }
    }

    /// Whether the chain ends with `renormalize_logits` (a log-softmax).
    pub fn renormalizes(&self) -> bool {
        self.renormalize
    }

    /// What the processors do to a row, without its scores: the ids they
    /// set to -inf, or the ids they force (all others -inf, these 0). The
    /// device search applies this on the device; [`LogitsProcessor::apply`]
    /// on the host.
    pub fn constraint(&self, history: &[u32], max_length: usize) -> RowConstraint {
        let cur_len = history.len();
        let mut banned = Vec::new();
        let mut ban = |id: u32| banned.push(id);
        let n = self.no_repeat_ngram;
        if n > 0 && cur_len >= n {
            // Every earlier window whose first n-1 tokens equal the last n-1
            // tokens bans its own last token (the n-gram may occur only once).
            let prefix = &history[cur_len + 1 - n..];
            for w in history.windows(n) {
                if &w[..n - 1] == prefix {
                    ban(w[n - 1]);
                }
            }
        }
        for &id in &self.banned {
            ban(id);
        }
        for seq in &self.banned_sequences {
            let prefix = &seq[..seq.len() - 1];
            if history.ends_with(prefix) {
                ban(seq[seq.len() - 1]);
            }
        }
        if cur_len < self.min_length || cur_len - 1 < self.min_new_tokens {
            for &e in &self.eos {
                ban(e);
            }
        }
        // Forced EOS comes after forced BOS in the chain, so it wins.
        let mut forced = None;
        if let (Some(bos), 1) = (self.forced_bos, cur_len) {
            forced = Some(vec![bos]);
        }
        if !self.forced_eos.is_empty() && cur_len + 1 == max_length {
            forced = Some(self.forced_eos.clone());
        }
        RowConstraint { banned, forced }
    }
}

/// What the processors do to one row (see [`LogitsProcessor::constraint`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RowConstraint {
    /// Ids set to -inf.
    pub banned: Vec<u32>,
    /// When set: every id but these is -inf, and these are 0.
    pub forced: Option<Vec<u32>>,
}

/// `log_softmax` over one row, in f32 like torch (vectorized kernel).
pub fn log_softmax_in_place(scores: &mut [f32]) {
    crate::cpu::elementwise::log_softmax(scores);
}

/// Index of the first maximum (torch.argmax tie rule) and the top-1 minus top-2 margin.
pub fn argmax_with_margin(scores: &[f32]) -> (u32, f32) {
    let mut best = 0usize;
    let mut top = f32::NEG_INFINITY;
    let mut second = f32::NEG_INFINITY;
    for (i, &s) in scores.iter().enumerate() {
        if s > top {
            second = top;
            top = s;
            best = i;
        } else if s > second {
            second = s;
        }
    }
    (best as u32, top - second)
}

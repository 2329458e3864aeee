//! Greedy and beam search over any [`Seq2Seq`] model, matching transformers 5's
//! `_sample` (greedy) and vectorized `_beam_search` step for step: the same
//! candidate count (2 x beams), the same finished-hypothesis bookkeeping with
//! length penalty, and the same early-stopping heuristics.
//!
//! Each input is independent of the others in its batch. An input whose result
//! can no longer change is dropped from the model state at once, so finished
//! rows stop costing work.

use candle_core::Tensor;
use rayon::prelude::*;

use super::logits::{argmax_with_margin, LogitsProcessor, RowConstraint};
use super::{EarlyStopping, GenerationOptions, LengthLimit};
use crate::error::Result;
use crate::models::Seq2Seq;

/// transformers' stand-in for "minus infinity" in beam bookkeeping.
const NEG: f32 = -1.0e9;

/// The generated result for one input.
#[derive(Debug, Clone, PartialEq)]
pub struct Hypothesis {
    /// Generated ids, without the decoder start token; ends with EOS when one was generated.
    pub tokens: Vec<u32>,
    /// Beam search: the length-penalized log-probability (`sequences_scores`).
    pub score: Option<f32>,
    /// Smallest decision margin met on the way (greedy: top-1 minus top-2 of the
    /// processed scores; beam: smallest gap between adjacent ranked candidates).
    /// A reference implementation may legitimately differ where this is tiny.
    pub min_margin: f32,
    /// The bound this output reached, if it reached its length limit (its EOS,
    /// if any, was then forced or came at the last allowed position).
    pub cut: Option<LengthLimit>,
}

/// Each row's length limit (see [`GenerationOptions::row_limit`]), from the
/// source lengths the attention mask holds.
fn row_limits<M: Seq2Seq>(
    model: &M,
    attention_mask: &Tensor,
    opts: &GenerationOptions,
) -> Result<Vec<(usize, LengthLimit)>> {
    let lens = attention_mask
        .to_dtype(candle_core::DType::F32)?
        .sum(1)?
        .to_vec1::<f32>()?;
    let positions = model.max_target_positions();
    Ok(lens
        .iter()
        .map(|&n| opts.row_limit(n as usize, positions))
        .collect())
}

/// The most decoder tokens any row is fed: a row stops once its history
/// (start token included) reaches its limit, and the token that reaches it is
/// never fed.
fn fed_positions(limits: &[(usize, LengthLimit)]) -> usize {
    limits
        .iter()
        .map(|l| l.0.saturating_sub(1))
        .max()
        .unwrap_or(0)
        .max(1)
}

/// The bound `history` (start token included) reached, if it is at its limit.
fn reached(history: &[u32], limit: (usize, LengthLimit)) -> Option<LengthLimit> {
    (history.len() >= limit.0).then_some(limit.1)
}

/// Generate for a padded batch; results come back in input order.
pub fn generate<M: Seq2Seq>(
    model: &M,
    input_ids: &Tensor,
    attention_mask: &Tensor,
    opts: &GenerationOptions,
) -> Result<Vec<Hypothesis>> {
    if opts.num_beams <= 1 {
        greedy(model, input_ids, attention_mask, opts)
    } else {
        beam(model, input_ids, attention_mask, opts)
    }
}

fn greedy<M: Seq2Seq>(
    model: &M,
    input_ids: &Tensor,
    attention_mask: &Tensor,
    opts: &GenerationOptions,
) -> Result<Vec<Hypothesis>> {
    let processor = LogitsProcessor::new(opts);
    let batch = input_ids.dim(0)?;
    let limits = row_limits(model, attention_mask, opts)?;
    let mut state = model.start(input_ids, attention_mask)?;
    model.bound_positions(&mut state, fed_positions(&limits));
    let mut histories: Vec<Vec<u32>> = vec![vec![opts.decoder_start_token_id]; batch];
    let mut margins = vec![f32::INFINITY; batch];
    let mut active: Vec<usize> = (0..batch).collect();
    let vocab = model.vocab_size();
    while !active.is_empty() {
        let last: Vec<u32> = active
            .iter()
            .map(|&i| *histories[i].last().unwrap())
            .collect();
        let mut keep = Vec::with_capacity(active.len());
        let picked: Vec<(u32, f32)> = if model.searches_on_device() {
            // The processors applied and the argmax taken where the logits
            // are: only each row's id and margin cross to the host.
            let logits = model.step_tensor(&mut state, &last)?;
            let rows: Vec<RowConstraint> = active
                .iter()
                .map(|&i| processor.constraint(&histories[i], limits[i].0))
                .collect();
            pick_on_device(&logits, &rows, processor.renormalizes())?
        } else {
            let mut logits = model.step(&mut state, &last)?;
            // Rows are independent: process and pick in parallel, record in order.
            logits
                .par_chunks_mut(vocab)
                .zip(active.par_iter())
                .map(|(scores, &i)| {
                    processor.apply(&histories[i], limits[i].0, scores);
                    argmax_with_margin(scores)
                })
                .collect()
        };
        for (row, (&i, (token, margin))) in active.iter().zip(picked).enumerate() {
            histories[i].push(token);
            margins[i] = margins[i].min(margin);
            let done = opts.eos_token_ids.contains(&token) || histories[i].len() >= limits[i].0;
            if !done {
                keep.push(row as u32);
            }
        }
        if keep.len() != active.len() {
            active = keep.iter().map(|&r| active[r as usize]).collect();
            if !active.is_empty() {
                model.select_rows(&mut state, &keep)?;
            }
        }
    }
    Ok(histories
        .into_iter()
        .zip(margins)
        .zip(limits)
        .map(|((h, m), limit)| Hypothesis {
            cut: reached(&h, limit),
            tokens: h[1..].to_vec(),
            score: None,
            min_margin: m,
        })
        .collect())
}

/// Greedy's pick on the logits' device: each row's constraint applied
/// (bans as one scatter-add of -inf; forced rows decided from their forced
/// ids alone, as the host's argmax over all -inf but those would), the
/// optional log-softmax, then the first maximum and the top-1 minus top-2
/// margin. Only `rows` ids and margins come back.
fn pick_on_device(
    logits: &Tensor,
    rows: &[RowConstraint],
    renormalize: bool,
) -> Result<Vec<(u32, f32)>> {
    let (n, vocab) = logits.dims2()?;
    let dev = logits.device();
    let in_range = |ids: &[u32]| in_vocab(ids, vocab);
    let mut logits = ban_on_device(logits, rows)?;
    if renormalize {
        logits = candle_nn::ops::log_softmax(&logits, 1)?;
    }
    let best = logits.argmax_keepdim(1)?;
    let top = logits.max_keepdim(1)?;
    let without_best =
        logits.scatter_add(&best, &Tensor::full(f32::NEG_INFINITY, (n, 1), dev)?, 1)?;
    let margin = (top - without_best.max_keepdim(1)?)?;
    let best = best.flatten_all()?.to_vec1::<u32>()?;
    let margin = margin.flatten_all()?.to_vec1::<f32>()?;
    Ok(rows
        .iter()
        .zip(best.into_iter().zip(margin))
        .map(|(c, picked)| match &c.forced {
            // All -inf but the forced ids at 0: the first of them, by a
            // margin of 0 when two tie, else of +inf (none in range: id 0
            // and NaN, as the host's argmax over an all -inf row).
            Some(f) => {
                let mut f = in_range(f);
                f.sort_unstable();
                f.dedup();
                match f.iter().min() {
                    Some(&id) => (id, if f.len() > 1 { 0.0 } else { f32::INFINITY }),
                    None => (0, f32::NAN),
                }
            }
            None => picked,
        })
        .collect())
}

/// The ids of `ids` inside a `vocab`-wide row.
fn in_vocab(ids: &[u32], vocab: usize) -> Vec<u32> {
    ids.iter()
        .copied()
        .filter(|&id| (id as usize) < vocab)
        .collect()
}

/// Each row's banned ids set to -inf, as one scatter-add (rows with fewer
/// bans padded with +0 at id 0, which adds nothing).
fn ban_on_device(logits: &Tensor, rows: &[RowConstraint]) -> Result<Tensor> {
    let (n, vocab) = logits.dims2()?;
    let banned: Vec<Vec<u32>> = rows.iter().map(|c| in_vocab(&c.banned, vocab)).collect();
    let width = banned.iter().map(Vec::len).max().unwrap_or(0);
    if width == 0 {
        return Ok(logits.clone());
    }
    let mut idx = Vec::with_capacity(n * width);
    let mut val = Vec::with_capacity(n * width);
    for b in &banned {
        for j in 0..width {
            idx.push(b.get(j).copied().unwrap_or(0));
            val.push(if j < b.len() { f32::NEG_INFINITY } else { 0.0 });
        }
    }
    let dev = logits.device();
    Ok(logits.scatter_add(
        &Tensor::from_vec(idx, (n, width), dev)?,
        &Tensor::from_vec(val, (n, width), dev)?,
        1,
    )?)
}

/// Rows with forced ids become -inf but those ids, which become 0 (the
/// host's `apply` does the same after its bans, which forcing overrides).
fn force_on_device(logits: &Tensor, rows: &[RowConstraint]) -> Result<Tensor> {
    let (n, vocab) = logits.dims2()?;
    let forced: Vec<Option<Vec<u32>>> = rows
        .iter()
        .map(|c| c.forced.as_ref().map(|f| in_vocab(f, vocab)))
        .collect();
    if forced.iter().all(Option::is_none) {
        return Ok(logits.clone());
    }
    let width = forced
        .iter()
        .flatten()
        .map(Vec::len)
        .max()
        .unwrap_or(0)
        .max(1);
    let dev = logits.device();
    // 1 at each forced id of a forced row (padded with its first id), +0 at
    // id 0 elsewhere.
    let mut idx = Vec::with_capacity(n * width);
    let mut val = Vec::with_capacity(n * width);
    for f in &forced {
        for j in 0..width {
            match f.as_deref() {
                Some(ids) if !ids.is_empty() => {
                    idx.push(ids.get(j).copied().unwrap_or(ids[0]));
                    val.push(1f32);
                }
                _ => {
                    idx.push(0);
                    val.push(0f32);
                }
            }
        }
    }
    let zeros = Tensor::zeros((n, vocab), candle_core::DType::F32, dev)?;
    let hits = zeros.scatter_add(
        &Tensor::from_vec(idx, (n, width), dev)?,
        &Tensor::from_vec(val, (n, width), dev)?,
        1,
    )?;
    let neg = Tensor::full(f32::NEG_INFINITY, (n, vocab), dev)?;
    let forced_rows = hits.ne(0f32)?.where_cond(&zeros, &neg)?;
    let is_forced: Vec<u8> = forced.iter().map(|f| f.is_some() as u8).collect();
    let is_forced = Tensor::from_vec(is_forced, (n, 1), dev)?.broadcast_as((n, vocab))?;
    Ok(is_forced.where_cond(&forced_rows, logits)?)
}

/// Beam search's candidates on the logits' device: each row's
/// log-softmax, its constraint (bans, forced ids), the optional
/// renormalization and its beam's running score, as the host does; then per
/// item (its `nb` rows side by side) the `k` best (score, beam * vocab +
/// token), best first, ties to the lower index (as [`top_k`]), by `k`
/// rounds of argmax. Only those cross to the host.
fn beam_candidates_on_device(
    logits: &Tensor,
    rows: &[RowConstraint],
    scores: &[f32],
    renormalize: bool,
    nb: usize,
    k: usize,
) -> Result<Vec<Vec<(f32, usize)>>> {
    let (n, vocab) = logits.dims2()?;
    let dev = logits.device();
    let mut x = candle_nn::ops::log_softmax(logits, 1)?;
    x = force_on_device(&ban_on_device(&x, rows)?, rows)?;
    if renormalize {
        x = candle_nn::ops::log_softmax(&x, 1)?;
    }
    x = x.broadcast_add(&Tensor::from_vec(scores.to_vec(), (n, 1), dev)?)?;
    let items = n / nb;
    // -inf held as the lowest finite value, so that a taken entry (set to
    // -inf) is never the maximum again: ties among the -inf ones then go to
    // the lower index, as on the host.
    let mut x = x.reshape((items, nb * vocab))?.maximum(f32::MIN)?;
    let taken = Tensor::full(f32::NEG_INFINITY, (items, 1), dev)?;
    let (mut idx, mut val) = (Vec::new(), Vec::new());
    for _ in 0..k.min(nb * vocab) {
        let best = x.argmax_keepdim(1)?;
        val.push(x.gather(&best, 1)?);
        x = x.scatter_add(&best, &taken, 1)?;
        idx.push(best);
    }
    let idx = Tensor::cat(&idx, 1)?.to_vec2::<u32>()?;
    let val = Tensor::cat(&val, 1)?.to_vec2::<f32>()?;
    Ok(idx
        .into_iter()
        .zip(val)
        .map(|(i, v)| {
            i.into_iter()
                .zip(v)
                .map(|(i, v)| {
                    let v = if v == f32::MIN { f32::NEG_INFINITY } else { v };
                    (v, i as usize)
                })
                .collect()
        })
        .collect())
}

/// Beam bookkeeping for one input.
struct BeamItem {
    /// Running hypotheses (history incl. start token, accumulated log-prob), best first.
    running: Vec<(Vec<u32>, f32)>,
    /// `num_beams` finished slots: (history, penalized score, is finished), best first.
    finished: Vec<(Vec<u32>, f32, bool)>,
    /// transformers' `is_early_stop_heuristic_unsatisfied`.
    improvable: bool,
    done: bool,
    min_margin: f32,
    /// This input's decoder length limit and the bound that sets it.
    limit: (usize, LengthLimit),
}

/// The `k` best (score, index) pairs offered so far, best first; ties keep
/// the lower index first (offered in index order, a value enters only when
/// it beats the k-th).
struct TopK {
    k: usize,
    best: Vec<(f32, usize)>,
}

/// Values are offered in chunks this long: a chunk none of whose values can
/// enter (almost all of a vocabulary-sized row) is skipped after one max.
const CHUNK: usize = 16;

impl TopK {
    fn new(k: usize) -> Self {
        TopK {
            k,
            best: Vec::with_capacity(k + 1),
        }
    }

    /// Whether `v` would enter: the list is not full, or `v` beats its last.
    #[inline(always)]
    fn admits(&self, v: f32) -> bool {
        self.best.len() < self.k || self.best.last().is_some_and(|&(last, _)| v > last)
    }

    #[inline(always)]
    fn offer(&mut self, v: f32, i: usize) {
        if self.admits(v) {
            let pos = self.best.partition_point(|&(b, _)| b >= v);
            self.best.insert(pos, (v, i));
            self.best.truncate(self.k);
        }
    }

    /// Offer `value(x)` for each `x` of `row`, as indices from `i0`, and
    /// `banned_value` at the `banned` positions (sorted). Beam search's
    /// `value` is the log-softmax plus the running score: the values that
    /// writing the row's log-softmax, masking it and adding the score would
    /// offer, in the same order, without writing the row. `value` must be
    /// non-decreasing (as rounding keeps `x - max - log_sum + score`): a
    /// chunk whose largest `x` cannot enter is then skipped whole.
    fn offer_row(
        &mut self,
        row: &[f32],
        i0: usize,
        value: impl Fn(f32) -> f32,
        banned: &[u32],
        banned_value: f32,
    ) {
        let mut bans = banned.iter().map(|&b| b as usize).peekable();
        for (c, chunk) in row.chunks(CHUNK).enumerate() {
            if self.best.len() >= self.k {
                // A select rather than f32::max, so that it vectorizes (NaN
                // never enters, so skipping it changes nothing).
                let m = chunk
                    .iter()
                    .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m });
                if !self.admits(value(m)) {
                    continue;
                }
            }
            let s = c * CHUNK;
            while bans.next_if(|&b| b < s).is_some() {}
            for (j, &x) in chunk.iter().enumerate() {
                let v = if bans.next_if_eq(&(s + j)).is_some() {
                    banned_value
                } else {
                    value(x)
                };
                self.offer(v, i0 + s + j);
            }
        }
    }
}

/// The `k` best (score, index) pairs of `values`, best first; ties keep the
/// lower index first.
fn top_k(values: &[f32], k: usize) -> Vec<(f32, usize)> {
    let mut best = TopK::new(k);
    best.offer_row(values, 0, |x| x, &[], f32::NEG_INFINITY);
    best.best
}

/// One item's `k` best (score, beam * vocab + token) on the host: each beam's
/// log-softmax (from its logits row's `stats`), processed by the chain, plus
/// its running score (transformers' order), ranked without writing the rows.
/// `logits` and `stats` hold one row per beam, or one for all of them (the
/// first step). Rows a processor rewrites whole (forced ids, renormalizing)
/// are written out to a scratch row first (from the same statistics).
fn host_beam_candidates(
    processor: &LogitsProcessor,
    logits: &[f32],
    stats: &[Option<(f32, f32)>],
    rows: &[(&[u32], f32, usize)],
    k: usize,
) -> Vec<(f32, usize)> {
    let vocab = logits.len() / stats.len();
    let mut best = TopK::new(k);
    for (j, &(history, score, max_length)) in rows.iter().enumerate() {
        let r = if stats.len() == 1 { 0 } else { j };
        let row = &logits[r * vocab..(r + 1) * vocab];
        let c = processor.constraint(history, max_length);
        if c.forced.is_some() || processor.renormalizes() {
            let mut scratch = row.to_vec();
            crate::cpu::elementwise::log_softmax_from_stats(&mut scratch, stats[r]);
            processor.apply_constraint(&c, &mut scratch);
            best.offer_row(&scratch, j * vocab, |x| x + score, &[], 0.0);
            continue;
        }
        let mut banned = c.banned;
        banned.retain(|&b| (b as usize) < vocab);
        banned.sort_unstable();
        banned.dedup();
        // A banned log-probability is -inf before the score is added.
        let neg = f32::NEG_INFINITY + score;
        match stats[r] {
            Some((max, log_sum)) => {
                best.offer_row(row, j * vocab, |x| x - max - log_sum + score, &banned, neg)
            }
            // log-softmax leaves a row whose maximum is -inf as it is.
            None => best.offer_row(row, j * vocab, |x| x + score, &banned, neg),
        }
    }
    best.best
}

fn beam<M: Seq2Seq>(
    model: &M,
    input_ids: &Tensor,
    attention_mask: &Tensor,
    opts: &GenerationOptions,
) -> Result<Vec<Hypothesis>> {
    let processor = LogitsProcessor::new(opts);
    let nb = opts.num_beams;
    let n_eos = opts.eos_token_ids.len();
    let n_cand = (2.max(1 + n_eos)) * nb;
    let batch = input_ids.dim(0)?;
    let vocab = model.vocab_size();
    let lp = opts.length_penalty as f64;
    let limits = row_limits(model, attention_mask, opts)?;

    let mut state = model.start(input_ids, attention_mask)?;
    model.bound_positions(&mut state, fed_positions(&limits));
    // The first step runs one row per item: every beam holds the same start
    // token and state, so its scores are the same row repeated (computed
    // row by row, identically). The rows are repeated per beam after it.
    let mut repeated = false;
    let start = vec![opts.decoder_start_token_id];
    let mut items: Vec<BeamItem> = limits
        .into_iter()
        .map(|limit| BeamItem {
            running: (0..nb)
                .map(|j| (start.clone(), if j == 0 { 0.0 } else { NEG }))
                .collect(),
            finished: (0..nb).map(|_| (start.clone(), NEG, false)).collect(),
            improvable: true,
            done: false,
            min_margin: f32::INFINITY,
            limit,
        })
        .collect();
    let mut active: Vec<usize> = (0..batch).collect();
    let mut cur_len = 1usize;

    while !active.is_empty() {
        let last: Vec<u32> = active
            .iter()
            .flat_map(|&i| items[i].running.iter().map(|(h, _)| *h.last().unwrap()))
            .collect();
        // Each row's history, running score and length limit.
        let rows: Vec<(&[u32], f32, usize)> = active
            .iter()
            .flat_map(|&i| {
                let max_length = items[i].limit.0;
                items[i]
                    .running
                    .iter()
                    .map(move |(h, s)| (h.as_slice(), *s, max_length))
            })
            .collect();
        // Per item, the n_cand + 1 best (score, beam * vocab + token) of its
        // log-probabilities, processed and offset by each beam's score
        // (transformers: log_softmax, processors, + running score).
        // The first step runs one row per item (see `repeated`).
        let first_step = !repeated;
        let first: Vec<u32>;
        let tokens: &[u32] = if first_step {
            first = last.iter().step_by(nb).copied().collect();
            &first
        } else {
            &last
        };
        let all_cands: Vec<Vec<(f32, usize)>> = if model.searches_on_device() {
            // On the logits' device: only the candidates cross to the host.
            let mut logits = model.step_tensor(&mut state, tokens)?;
            if first_step {
                let idx: Vec<u32> = (0..tokens.len() as u32)
                    .flat_map(|r| std::iter::repeat_n(r, nb))
                    .collect();
                let idx = Tensor::from_vec(idx, last.len(), logits.device())?;
                logits = logits.index_select(&idx, 0)?;
            }
            let constraints: Vec<RowConstraint> = rows
                .iter()
                .map(|(h, _, max_length)| processor.constraint(h, *max_length))
                .collect();
            let scores: Vec<f32> = rows.iter().map(|r| r.1).collect();
            beam_candidates_on_device(
                &logits,
                &constraints,
                &scores,
                processor.renormalizes(),
                nb,
                n_cand + 1,
            )?
        } else {
            let logits = model.step(&mut state, tokens)?;
            // Each logits row's log-softmax statistics, rows in parallel.
            let stats: Vec<Option<(f32, f32)>> = logits
                .par_chunks(vocab)
                .map(crate::cpu::elementwise::log_softmax_stats)
                .collect();
            let per_item = if first_step { 1 } else { nb };
            logits
                .par_chunks(per_item * vocab)
                .zip(stats.par_chunks(per_item))
                .zip(rows.par_chunks(nb))
                .map(|((logits, stats), rows)| {
                    host_beam_candidates(&processor, logits, stats, rows, n_cand + 1)
                })
                .collect()
        };
        if first_step {
            model.repeat_rows(&mut state, nb)?;
            repeated = true;
        }
        drop(rows);
        // Rows of the next state: (position in `active` of the item, source beam).
        let mut next_rows: Vec<u32> = Vec::with_capacity(last.len());
        let mut next_active = Vec::with_capacity(active.len());

        // Items are independent: their bookkeeping (a scan of beams x vocab
        // scores each) runs in parallel; rows are assembled in item order.
        let mut refs: Vec<&mut BeamItem> = Vec::with_capacity(active.len());
        {
            let mut it = items.iter_mut().enumerate();
            for &i in &active {
                for (j, item) in it.by_ref() {
                    if j == i {
                        refs.push(item);
                        break;
                    }
                }
            }
        }
        let advanced: Vec<Option<Vec<u32>>> = refs
            .par_iter_mut()
            .zip(all_cands.into_par_iter())
            .enumerate()
            .map(|(pos, (item, cands))| {
                let item: &mut BeamItem = item;
                let hits_len = cur_len + 1 >= item.limit.0;
                for w in cands.windows(2) {
                    if w[1].0 > NEG / 2.0 {
                        item.min_margin = item.min_margin.min(w[0].0 - w[1].0);
                    }
                }
                let cands: Vec<(f32, usize, u32, bool)> = cands
                    .into_iter()
                    .take(n_cand)
                    .map(|(s, flat)| {
                        let token = (flat % vocab) as u32;
                        let hit = hits_len || opts.eos_token_ids.contains(&token);
                        (s, flat / vocab, token, hit)
                    })
                    .collect();

                // Next running beams: the best candidates that did not just finish.
                let adjusted: Vec<f32> = cands
                    .iter()
                    .map(|&(s, _, _, hit)| if hit { s + NEG } else { s })
                    .collect();
                let chosen = top_k(&adjusted, nb);
                let new_running: Vec<(Vec<u32>, f32)> = chosen
                    .iter()
                    .map(|&(s, c)| {
                        let (_, src, token, _) = cands[c];
                        let mut h = item.running[src].0.clone();
                        h.push(token);
                        (h, s)
                    })
                    .collect();

                // Finished slots: merge the old ones with the candidates that just finished.
                let denom = ((cur_len + 1 - 1) as f64).powf(lp) as f32;
                let all_finished = item.finished.iter().all(|f| f.2);
                let mut merged: Vec<(Vec<u32>, f32, bool)> = item.finished.drain(..).collect();
                for (c, &(s, src, token, hit)) in cands.iter().enumerate() {
                    let did_finish = hit && c < nb;
                    let mut score = s / denom;
                    if all_finished && opts.early_stopping == EarlyStopping::Always {
                        score += NEG;
                    }
                    if !item.improvable {
                        score += NEG;
                    }
                    if !did_finish {
                        score += NEG;
                    }
                    let mut h = item.running[src].0.clone();
                    h.push(token);
                    merged.push((h, score, did_finish));
                }
                let scores: Vec<f32> = merged.iter().map(|m| m.1).collect();
                let keep = top_k(&scores, nb);
                let mut slots: Vec<Option<(Vec<u32>, f32, bool)>> =
                    merged.into_iter().map(Some).collect();
                item.finished = keep
                    .iter()
                    .map(|&(_, k)| slots[k].take().unwrap())
                    .collect();
                item.running = new_running;

                // transformers' _check_early_stop_heuristic, at the new length.
                let new_len = cur_len + 1;
                let best_len = if opts.early_stopping == EarlyStopping::Never && lp > 0.0 {
                    item.limit.0 - 1
                } else {
                    new_len - 1
                };
                let best_possible = item.running[0].1 / (best_len as f64).powf(lp) as f32;
                let worst = item
                    .finished
                    .iter()
                    .map(|f| f.1)
                    .fold(f32::INFINITY, f32::min);
                item.improvable &= item
                    .finished
                    .iter()
                    .any(|f| best_possible > if f.2 { worst } else { NEG });

                let all_hit = cands.iter().all(|c| c.3);
                let full = opts.early_stopping == EarlyStopping::Always
                    && item.finished.iter().all(|f| f.2);
                item.done = !item.improvable || full || all_hit || hits_len;
                (!item.done).then(|| {
                    chosen
                        .iter()
                        .map(|&(_, c)| (pos * nb + cands[c].1) as u32)
                        .collect::<Vec<u32>>()
                })
            })
            .collect();
        for (&i, rows) in active.iter().zip(advanced) {
            if let Some(rows) = rows {
                next_active.push(i);
                next_rows.extend(rows);
            }
        }
        cur_len += 1;
        active = next_active;
        if !active.is_empty() {
            model.select_rows(&mut state, &next_rows)?;
        }
    }

    Ok(items
        .into_iter()
        .map(|item| {
            let (h, score, _) = &item.finished[0];
            Hypothesis {
                cut: reached(h, item.limit),
                tokens: h[1..].to_vec(),
                score: Some(*score),
                min_margin: item.min_margin,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generation::logits::log_softmax_in_place;
    use crate::generation::{EarlyStopping, GenerationOptions, LengthLimit};

    fn options(renormalize: bool) -> GenerationOptions {
        GenerationOptions {
            num_beams: 3,
            max_length: 6,
            max_length_from: LengthLimit::Requested,
            max_length_factor: 0.0,
            min_length: 3,
            min_new_tokens: 0,
            bad_words_ids: vec![vec![5], vec![7, 9], vec![40]],
            no_repeat_ngram_size: 2,
            forced_bos_token_id: None,
            forced_eos_token_ids: vec![2, 11],
            length_penalty: 1.0,
            early_stopping: EarlyStopping::Heuristic,
            decoder_start_token_id: 0,
            eos_token_ids: vec![2],
            pad_token_id: 1,
            renormalize_logits: renormalize,
        }
    }

    /// What the fused ranking replaces: each beam's row written out
    /// (log-softmax, processors, + score), then one top-k over the item.
    fn written_out(
        processor: &LogitsProcessor,
        logits: &[f32],
        shared: bool,
        rows: &[(&[u32], f32, usize)],
        vocab: usize,
        k: usize,
    ) -> Vec<(f32, usize)> {
        let mut all = Vec::new();
        for (j, &(history, score, max_length)) in rows.iter().enumerate() {
            let r = if shared { 0 } else { j };
            let mut row = logits[r * vocab..(r + 1) * vocab].to_vec();
            log_softmax_in_place(&mut row);
            processor.apply(history, max_length, &mut row);
            all.extend(row.iter().map(|v| v + score));
        }
        top_k(&all, k)
    }

    #[test]
    fn fused_beam_ranking_equals_the_written_out_rows() {
        // 37 ids: rows end in a partial chunk. Values on a coarse grid, so
        // ties (which must go to the lower index) are common.
        let vocab = 37;
        let mut seed = 0x2545_f491u32;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 17;
            seed ^= seed << 5;
            (seed % 24) as f32 * 0.5 - 6.0
        };
        let histories: [&[u32]; 4] = [&[0], &[0, 7], &[0, 4, 8, 4], &[0, 3, 3, 6, 8]];
        for renormalize in [false, true] {
            let processor = LogitsProcessor::new(&options(renormalize));
            for case in 0..40 {
                let shared = case % 4 == 0;
                let n_rows = if shared { 1 } else { 3 };
                let mut logits: Vec<f32> = (0..n_rows * vocab).map(|_| next()).collect();
                if case % 5 == 1 {
                    // A row that is -inf throughout, and one -inf entry.
                    logits[..vocab].fill(f32::NEG_INFINITY);
                    logits[vocab * n_rows - 3] = f32::NEG_INFINITY;
                }
                let rows: Vec<(&[u32], f32, usize)> = (0..3)
                    .map(|j| {
                        let h = histories[(case + j) % histories.len()];
                        let score = if j == 0 { 0.0 } else { -1.5 * j as f32 - 0.25 };
                        (h, score, 6)
                    })
                    .collect();
                let stats: Vec<Option<(f32, f32)>> = logits
                    .chunks(vocab)
                    .map(crate::cpu::elementwise::log_softmax_stats)
                    .collect();
                for k in [1, 7, 2 * vocab + 5] {
                    let got = host_beam_candidates(&processor, &logits, &stats, &rows, k);
                    let want = written_out(&processor, &logits, shared, &rows, vocab, k);
                    let bits = |v: &[(f32, usize)]| -> Vec<(u32, usize)> {
                        v.iter().map(|&(s, i)| (s.to_bits(), i)).collect()
                    };
                    assert_eq!(bits(&got), bits(&want), "case {case}, k {k}, {renormalize}");
                }
            }
        }
    }
}

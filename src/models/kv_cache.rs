//! The decoder's key/value caches: cross-attention K/V computed once per
//! batch, and the self-attention cache that grows by one position per step and
//! follows beam search's row reorders.

use candle_core::Tensor;

use crate::cpu::CpuView;
use crate::error::Result;

/// Cached keys and values, [rows, heads, len, head_dim].
#[derive(Debug, Clone)]
pub struct KeyValue {
    pub k: Tensor,
    pub v: Tensor,
}

impl KeyValue {
    /// Keep the given rows (dim 0) in order.
    pub fn select(&self, idx: &Tensor) -> Result<Self> {
        Ok(KeyValue {
            k: self.k.index_select(idx, 0)?,
            v: self.v.index_select(idx, 0)?,
        })
    }
}

/// One decoder layer's self-attention cache.
#[derive(Debug, Clone)]
pub enum Cache {
    /// Candle tensors [rows, heads, len, hd]: any device, any query count.
    Tensors(KeyValue),
    /// Host buffers with spare capacity, updated in place (CPU f32 decoding).
    Host(HostCache),
}

/// Keys and values on the host, [rows, heads, cap, hd] filled to `len`.
///
/// Appending a step writes one position per row in place, and a beam reorder
/// moves only the rows whose source changed (about a fifth of them in beam
/// search): the tensor cache copied every row at every step, 40 MB per step
/// at opus-mt's size late in a beam-4 batch.
#[derive(Debug, Clone)]
pub struct HostCache {
    pub(super) k: Vec<f32>,
    pub(super) v: Vec<f32>,
    rows: usize,
    heads: usize,
    pub(super) cap: usize,
    pub(super) len: usize,
    hd: usize,
    /// Positions this cache will never exceed (the generation's length
    /// limit), or `usize::MAX`: growth stops there instead of doubling past it.
    bound: usize,
}

impl HostCache {
    pub(super) fn empty(heads: usize, hd: usize) -> Self {
        Self::bounded(heads, hd, usize::MAX)
    }

    /// An empty cache that will hold at most `bound` positions per row.
    pub(super) fn bounded(heads: usize, hd: usize, bound: usize) -> Self {
        HostCache {
            k: Vec::new(),
            v: Vec::new(),
            rows: 0,
            heads,
            cap: 0,
            len: 0,
            hd,
            bound,
        }
    }

    /// Floats per row (all heads, full capacity).
    pub(super) fn row_len(&self) -> usize {
        self.heads * self.cap * self.hd
    }

    /// Make row i hold old row `reorder[i]` (`rows` rows when there is no
    /// reorder), then append `t` positions from `k_new`/`v_new` [rows, heads, t, hd].
    pub(super) fn append(
        &mut self,
        reorder: Option<&[u32]>,
        rows: usize,
        t: usize,
        k_new: &[f32],
        v_new: &[f32],
    ) {
        use rayon::prelude::*;
        let (heads, hd) = (self.heads, self.hd);
        let rows_alloc = if self.row_len() == 0 {
            0
        } else {
            self.k.len() / self.row_len()
        };
        if rows > rows_alloc || self.len + t > self.cap {
            // Grow: a fresh buffer with doubled capacity (never past the
            // bound: at 49 positions, doubling to 64 held 30% more memory
            // than any row would use), rows gathered into it.
            let cap = (self.len + t)
                .max(2 * self.cap)
                .max(16)
                .min(self.bound)
                .max(self.len + t);
            let row_len = heads * cap * hd;
            let (old_cap, len) = (self.cap, self.len);
            let gather = |old: &[f32]| {
                let mut buf = vec![0f32; rows * row_len];
                buf.par_chunks_mut(row_len)
                    .enumerate()
                    .for_each(|(r, dst)| {
                        if len == 0 {
                            return;
                        }
                        let src = reorder.map_or(r, |idx| idx[r] as usize);
                        for h in 0..heads {
                            let o = (src * heads + h) * old_cap * hd;
                            dst[h * cap * hd..h * cap * hd + len * hd]
                                .copy_from_slice(&old[o..o + len * hd]);
                        }
                    });
                buf
            };
            self.k = gather(&self.k);
            self.v = gather(&self.v);
            self.cap = cap;
        } else if let Some(idx) = reorder.filter(|_| self.len > 0) {
            // In place: only rows whose source differs move.
            let (row_len, filled) = (self.row_len(), self.cap * hd);
            let spans = self.len * hd;
            for buf in [&mut self.k, &mut self.v] {
                move_rows(buf, row_len, heads, filled, spans, idx);
            }
        }
        let (cap, len) = (self.cap, self.len);
        let row_len = heads * cap * hd;
        for (buf, new) in [(&mut self.k, k_new), (&mut self.v, v_new)] {
            buf[..rows * row_len]
                .par_chunks_mut(row_len)
                .enumerate()
                .for_each(|(r, dst)| {
                    for h in 0..heads {
                        let n0 = (r * heads + h) * t * hd;
                        let d0 = h * cap * hd + len * hd;
                        dst[d0..d0 + t * hd].copy_from_slice(&new[n0..n0 + t * hd]);
                    }
                });
        }
        self.rows = rows;
        self.len += t;
    }

    /// The cache as tensors [rows, heads, len, hd], with `reorder` applied.
    pub(super) fn to_tensors(
        &self,
        reorder: Option<&[u32]>,
        device: &candle_core::Device,
    ) -> Result<KeyValue> {
        let (heads, hd, cap, len) = (self.heads, self.hd, self.cap, self.len);
        let rows = reorder.map_or(self.rows, <[u32]>::len);
        let take = |buf: &[f32]| -> Result<Tensor> {
            let mut out = Vec::with_capacity(rows * heads * len * hd);
            for r in 0..rows {
                let src = reorder.map_or(r, |idx| idx[r] as usize);
                for h in 0..heads {
                    let o = (src * heads + h) * cap * hd;
                    out.extend_from_slice(&buf[o..o + len * hd]);
                }
            }
            Ok(Tensor::from_vec(out, (rows, heads, len, hd), device)?)
        };
        Ok(KeyValue {
            k: take(&self.k)?,
            v: take(&self.v)?,
        })
    }
}

/// Make row `r < idx.len()` of `buf` (rows of `row_len` floats) hold what
/// row `idx[r]` holds, copying only the first `span` floats of each of its
/// `heads` blocks of `stride` (the filled part of each head). Rows move in
/// parallel, each once:
/// a source that is itself overwritten is copied out first, any other is
/// read in place (a beam reorder moves about a fifth of the rows, and these
/// copies ran on one thread, twice each).
fn move_rows(
    buf: &mut [f32],
    row_len: usize,
    heads: usize,
    stride: usize,
    span: usize,
    idx: &[u32],
) {
    use rayon::prelude::*;
    let rows = buf.len() / row_len;
    assert!(
        idx.len() <= rows && idx.iter().all(|&s| (s as usize) < rows),
        "a reorder within the cache's rows"
    );
    let moved: Vec<(usize, usize)> = idx
        .iter()
        .enumerate()
        .filter(|&(r, &src)| r != src as usize)
        .map(|(r, &src)| (r, src as usize))
        .collect();
    if moved.is_empty() {
        return;
    }
    let overwritten = |s: usize| s < idx.len() && idx[s] as usize != s;
    // The sources that are overwritten, copied out (their filled parts).
    let mut saved_of = vec![usize::MAX; rows];
    let mut to_save = Vec::new();
    for &(_, src) in &moved {
        if overwritten(src) && saved_of[src] == usize::MAX {
            saved_of[src] = to_save.len();
            to_save.push(src);
        }
    }
    let saved: Vec<Vec<f32>> = to_save
        .par_iter()
        .map(|&s| {
            let row = &buf[s * row_len..(s + 1) * row_len];
            let mut out = Vec::with_capacity(heads * span);
            for h in 0..heads {
                out.extend_from_slice(&row[h * stride..h * stride + span]);
            }
            out
        })
        .collect();
    // Each row once: the destinations mutably, the sources read in place
    // (never destinations) shared.
    let mut slots: Vec<Option<&mut [f32]>> = buf.chunks_mut(row_len).map(Some).collect();
    let mut direct: Vec<Option<&[f32]>> = vec![None; rows];
    for &(_, src) in &moved {
        if !overwritten(src) && direct[src].is_none() {
            direct[src] = slots[src].take().map(|r| &*r);
        }
    }
    let jobs: Vec<(&mut [f32], &[f32], usize)> = moved
        .iter()
        .map(|&(r, src)| {
            let dst = slots[r].take().expect("each row is one destination");
            match direct[src] {
                // Read in place: heads `stride` apart.
                Some(row) => (dst, row, stride),
                // Copied out: heads `span` apart.
                None => (dst, saved[saved_of[src]].as_slice(), span),
            }
        })
        .collect();
    jobs.into_par_iter().for_each(|(dst, src, src_stride)| {
        for h in 0..heads {
            dst[h * stride..h * stride + span]
                .copy_from_slice(&src[h * src_stride..h * src_stride + span]);
        }
    });
}

/// `cat([old[reorder], new], dim 2)` for caches [rows, heads, len, hd], in one
/// copy on the CPU (candle would copy twice: index_select, then cat).
pub(super) fn append_rows(old: &Tensor, reorder: Option<&[u32]>, new: &Tensor) -> Result<Tensor> {
    let (_, h, len, hd) = old.dims4()?;
    // The new rows: after a reorder the cache may have more (or fewer) old rows.
    let (rows, _, t, _) = new.dims4()?;
    if let (Some(o), Some(n)) = (CpuView::new(old), CpuView::new(new)) {
        use rayon::prelude::*;
        let (od, nd) = (o.slice(), n.slice());
        let total = len + t;
        let row_len = h * total * hd;
        // Rows in parallel, written once: no zeroing of a buffer that is
        // overwritten whole (the caches are tens of MB per step in beam search).
        let mut out = Vec::<f32>::with_capacity(rows * row_len);
        out.spare_capacity_mut()
            .par_chunks_mut(row_len)
            .enumerate()
            .for_each(|(r, dst)| {
                let src_row = reorder.map_or(r, |idx| idx[r] as usize);
                for head in 0..h {
                    let d = &mut dst[head * total * hd..(head + 1) * total * hd];
                    let o0 = (src_row * h + head) * len * hd;
                    let n0 = (r * h + head) * t * hd;
                    // SAFETY: d holds (len + t) * hd slots; both sources are in bounds.
                    unsafe {
                        let p = d.as_mut_ptr() as *mut f32;
                        std::ptr::copy_nonoverlapping(od[o0..o0 + len * hd].as_ptr(), p, len * hd);
                        std::ptr::copy_nonoverlapping(
                            nd[n0..n0 + t * hd].as_ptr(),
                            p.add(len * hd),
                            t * hd,
                        );
                    }
                }
            });
        // SAFETY: every row chunk was written whole above.
        unsafe { out.set_len(rows * row_len) };
        return Ok(Tensor::from_vec(out, (rows, h, total, hd), old.device())?);
    }
    let old = match reorder {
        Some(idx) => old.index_select(&Tensor::from_slice(idx, idx.len(), old.device())?, 0)?,
        None => old.clone(),
    };
    Ok(Tensor::cat(&[&old, new], 2)?)
}

#[cfg(test)]
mod tests {
    /// `move_rows` against a plain gather, on reorders with chains, swaps,
    /// shared sources and dropped rows.
    #[test]
    fn moved_rows_equal_a_gather() {
        let (heads, stride, span) = (3, 5, 4);
        let row_len = heads * stride;
        let reorders: [&[u32]; 6] = [
            &[0, 0, 1, 2],
            &[1, 0, 3, 2],
            &[2, 2, 2, 0, 4, 5],
            &[5, 4, 3],
            &[0, 1, 2, 3],
            &[3, 3, 0, 1, 1, 2],
        ];
        for idx in reorders {
            let old: Vec<f32> = (0..6 * row_len).map(|i| i as f32).collect();
            let mut buf = old.clone();
            super::move_rows(&mut buf, row_len, heads, stride, span, idx);
            for (r, &src) in idx.iter().enumerate() {
                for h in 0..heads {
                    let d = r * row_len + h * stride;
                    let s = src as usize * row_len + h * stride;
                    assert_eq!(buf[d..d + span], old[s..s + span], "{idx:?} row {r}");
                }
            }
            // Rows past the reorder are left as they were.
            assert_eq!(buf[idx.len() * row_len..], old[idx.len() * row_len..]);
        }
    }

    /// A bounded cache grows to its bound and no further, keeps every
    /// position through the growths and a reorder, and still takes a position
    /// past the bound (growing exactly) rather than failing.
    #[test]
    fn bounded_growth_stops_at_the_bound() {
        let (heads, hd, rows) = (2, 3, 2);
        let mut c = super::HostCache::bounded(heads, hd, 21);
        // Position p of row r, head h holds 100r + 10h + p (the same in k and v).
        let step = |r_of: &dyn Fn(usize) -> usize, p: usize| -> Vec<f32> {
            (0..rows * heads * hd)
                .map(|i| (100 * r_of(i / (heads * hd)) + 10 * (i / hd % heads) + p) as f32)
                .collect()
        };
        let mut caps = Vec::new();
        for p in 0..22 {
            // At position 5 the rows swap: row r then continues old row 1 - r.
            let reorder: Option<&[u32]> = (p == 5).then_some(&[1, 0]);
            let new = step(&|r| if p >= 5 { 1 - r } else { r }, p);
            c.append(reorder, rows, 1, &new, &new);
            caps.push(c.cap);
        }
        assert_eq!(caps[..16], [16; 16]);
        assert_eq!(caps[16..21], [21; 5], "doubling stops at the bound");
        assert_eq!(caps[21], 22, "past the bound, exactly what is needed");
        for r in 0..rows {
            for h in 0..heads {
                let o = (r * heads + h) * c.cap * hd;
                // Row r took old row 1 - r's first five positions at the swap,
                // and every later position was written for 1 - r too.
                let want: Vec<f32> = (0..22)
                    .flat_map(|p| std::iter::repeat_n((100 * (1 - r) + 10 * h + p) as f32, hd))
                    .collect();
                assert_eq!(c.k[o..o + 22 * hd], want[..], "row {r} head {h}");
                assert_eq!(c.v[o..o + 22 * hd], want[..], "row {r} head {h}");
            }
        }
    }
}

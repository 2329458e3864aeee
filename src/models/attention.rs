//! Multi-head attention with a padding mask: encoder self-attention,
//! decoder self-attention over a KV cache (`kv_cache.rs`), and
//! cross-attention over encoder K/V computed once per batch and shared by an
//! item's beams; plus the masks.
//!
//! Follows transformers' `BartAttention`/`MarianAttention` (Vaswani et al.
//! 2017): q scaled by head_dim^-0.5, additive mask, softmax, out projection.
//! Decoding (a few queries per row) on CPU f32 runs `cpu::attention`; every
//! other case runs candle's ops on the tensors' device.

use candle_core::{DType, Tensor};

use super::kv_cache::{append_rows, Cache, HostCache, KeyValue};
use super::linear::Linear;
use crate::cpu::CpuView;
use crate::error::{Error, Result};
use crate::weights::Weights;

/// Up to this many queries per row, attention runs the CPU decode kernel.
const FEW_QUERIES: usize = 4;

/// The q, k, v projections of one attention layer.
#[derive(Debug, Clone)]
enum Projections {
    /// Float weights: fused ([3d, d], one GEMM for self-attention); `q` and `kv`
    /// are views into the same buffer for cross-attention, so nothing is copied.
    Fused { qkv: Linear, q: Linear, kv: Linear },
    /// Quantized weights, apart: a quantized matrix cannot be sliced into views.
    Separate { q: Linear, k: Linear, v: Linear },
}

impl Projections {
    /// The fused matrix of a d-wide layer with its q and kv views.
    fn fused(qkv: Linear, d: usize) -> Result<Self> {
        Ok(Projections::Fused {
            q: qkv.rows(0, d)?,
            kv: qkv.rows(d, 2 * d)?,
            qkv,
        })
    }
}

/// Multi-head attention projections for one layer.
#[derive(Debug, Clone)]
pub struct Attention {
    proj: Projections,
    o: Linear,
    heads: usize,
    head_dim: usize,
    scaling: f64,
}

impl Attention {
    /// Load `{prefix}.{q,k,v,out}_proj`. Dense q, k and v are fused into one
    /// matrix (one GEMM for self-attention; views of it for cross-attention).
    pub fn load(w: &Weights, dim: usize, heads: usize) -> Result<Self> {
        if heads == 0 || !dim.is_multiple_of(heads) {
            return Err(Error::setting(
                format!("config.json: d_model {dim} is not divisible by {heads} attention heads"),
                "the config does not match any valid checkpoint; fetch it again",
            ));
        }
        let head_dim = dim / heads;
        let parts = [
            Linear::load(&w.pp("q_proj"), dim, dim, true)?,
            Linear::load(&w.pp("k_proj"), dim, dim, true)?,
            Linear::load(&w.pp("v_proj"), dim, dim, true)?,
        ];
        let proj = match Linear::fuse(&parts)? {
            Some(qkv) => Projections::fused(qkv, dim)?,
            // Quantized as read: kept apart.
            None => {
                let [q, k, v] = parts;
                Projections::Separate { q, k, v }
            }
        };
        Ok(Attention {
            proj,
            o: Linear::load(&w.pp("out_proj"), dim, dim, true)?,
            heads,
            head_dim,
            scaling: (head_dim as f64).powf(-0.5),
        })
    }

    /// The same layer with every projection passed through `f`, which is told
    /// how many of the checkpoint's projections each one holds (3 for a fused
    /// q/k/v). A fused matrix stays fused when its new form has cheap row
    /// views; GGML blocks do not, and are split into q, k and v (a copy each).
    pub fn map_linears(self, f: &mut dyn FnMut(Linear, usize) -> Result<Linear>) -> Result<Self> {
        let d = self.heads * self.head_dim;
        let proj = match self.proj {
            Projections::Fused { qkv, .. } => {
                let qkv = f(qkv, 3)?;
                if qkv.rows_are_views() {
                    Projections::fused(qkv, d)?
                } else {
                    Projections::Separate {
                        q: qkv.rows(0, d)?,
                        k: qkv.rows(d, d)?,
                        v: qkv.rows(2 * d, d)?,
                    }
                }
            }
            Projections::Separate { q, k, v } => Projections::Separate {
                q: f(q, 1)?,
                k: f(k, 1)?,
                v: f(v, 1)?,
            },
        };
        Ok(Attention {
            proj,
            o: f(self.o, 1)?,
            ..self
        })
    }

    /// [b, t, d] -> [b, heads, t, head_dim]
    fn split_heads(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        Ok(x.reshape((b, t, self.heads, self.head_dim))?
            .transpose(1, 2)?
            .contiguous()?)
    }

    /// Keys and values of `x` ([b, s, d]), for cross-attention.
    pub fn key_value(&self, x: &Tensor) -> Result<KeyValue> {
        let d = self.heads * self.head_dim;
        let (k, v) = match &self.proj {
            Projections::Fused { kv, .. } => {
                let kv = kv.forward(x)?;
                (kv.narrow(2, 0, d)?, kv.narrow(2, d, d)?)
            }
            Projections::Separate { k, v, .. } => (k.forward(x)?, v.forward(x)?),
        };
        Ok(KeyValue {
            k: self.split_heads(&k)?,
            v: self.split_heads(&v)?,
        })
    }

    /// softmax(q k^T * scale + mask) v, then the out projection.
    /// q: [b, heads, t, hd]; kv: [b, heads, s, hd]; mask broadcastable to [b, heads, t, s].
    fn attend(&self, q: &Tensor, kv: &KeyValue, mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, _, t, _) = q.dims4()?;
        if t <= FEW_QUERIES {
            if let Some(out) = self.attend_few_cpu(q, kv, mask)? {
                return self.o.forward(&out);
            }
        }
        let scores = (q.matmul(&kv.k.t()?)? * self.scaling)?;
        let scores = match mask {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        let ctx = probs.matmul(&kv.v)?; // [b, heads, t, hd]
        let ctx = ctx
            .transpose(1, 2)?
            .reshape((b, t, self.heads * self.head_dim))?;
        self.o.forward(&ctx)
    }

    /// Decoding attention (a few queries per row) on CPU f32 through
    /// `kernels::attend_rows`, in parallel over rows: candle would run one gemm
    /// call per row and head, whose fixed cost dominates these tiny products.
    /// Returns the context [b, t, d] before the out projection, or None when the
    /// tensors are not contiguous f32 on the CPU (then the matmul path runs).
    fn attend_few_cpu(
        &self,
        q: &Tensor,
        kv: &KeyValue,
        mask: Option<&Tensor>,
    ) -> Result<Option<Tensor>> {
        if !q.device().is_cpu() || q.dtype() != DType::F32 || !crate::cpu::host_kernels() {
            return Ok(None);
        }
        let (b, h, t, hd) = q.dims4()?;
        let s = kv.k.dim(2)?;
        let scale = self.scaling as f32;
        let mask = match mask {
            Some(m) if m.dims() == [b, 1, 1, s] => Some(m.contiguous()?),
            Some(_) => return Ok(None),
            None => None,
        };
        let (Some(qv), Some(kv_), Some(vv)) =
            (CpuView::new(q), CpuView::new(&kv.k), CpuView::new(&kv.v))
        else {
            return Ok(None);
        };
        let mv = match &mask {
            Some(m) => match CpuView::new(m) {
                Some(v) => Some(v),
                None => return Ok(None),
            },
            None => None,
        };
        let md = mv.as_ref().map(CpuView::slice);
        let kv_row = h * s * hd;
        Ok(Some(attend_rows_parallel(
            qv.slice(),
            (kv_.slice(), vv.slice(), kv_row, s * hd),
            md,
            (b, h, t, s, hd),
            scale,
            q.device(),
        )?))
    }

    /// Self-attention over `x` ([b, t, d]); with `cache`, new K/V are appended to it
    /// and the queries attend to everything cached. `reorder` (row i of the cache
    /// becomes old row `reorder[i]`) is a beam reorder still owed to the cache: it
    /// is applied in the same copy as the append.
    pub fn self_attention(
        &self,
        x: &Tensor,
        mask: Option<&Tensor>,
        cache: Option<&mut Option<Cache>>,
        reorder: Option<&[u32]>,
    ) -> Result<Tensor> {
        let d = self.heads * self.head_dim;
        let (q, k, v) = match &self.proj {
            Projections::Fused { qkv, .. } => {
                let qkv = qkv.forward(x)?;
                (
                    qkv.narrow(2, 0, d)?,
                    qkv.narrow(2, d, d)?,
                    qkv.narrow(2, 2 * d, d)?,
                )
            }
            Projections::Separate { q, k, v } => (q.forward(x)?, k.forward(x)?, v.forward(x)?),
        };
        let q = self.split_heads(&q)?;
        let new = KeyValue {
            k: self.split_heads(&k)?,
            v: self.split_heads(&v)?,
        };
        let Some(slot) = cache else {
            return self.attend(&q, &new, mask);
        };
        // Decoding one position at a time on the CPU: the in-place host cache.
        let (rows, _, t, _) = q.dims4()?;
        // (A teacher-forced prefix leaves tensors: decoding continues with them.)
        let host_ok = !matches!(slot, Some(Cache::Tensors(_)))
            && mask.is_none()
            && t <= FEW_QUERIES
            && q.device().is_cpu()
            && q.dtype() == DType::F32
            && crate::cpu::host_kernels();
        if host_ok {
            if let (Some(kn), Some(vn)) = (CpuView::new(&new.k), CpuView::new(&new.v)) {
                let mut host = match slot.take() {
                    Some(Cache::Host(h)) => h,
                    _ => HostCache::empty(self.heads, self.head_dim),
                };
                host.append(reorder, rows, t, kn.slice(), vn.slice());
                let out = self.attend_host(&q, &host)?;
                *slot = Some(Cache::Host(host));
                return self.o.forward(&out);
            }
        }
        self.attend_tensor_cache(&q, new, mask, slot, reorder)
    }

    /// An empty self-attention cache that will hold at most `positions`
    /// positions per row (the host cache then never grows past them; the
    /// tensor cache, which grows exactly, starts from it as from none).
    pub fn empty_cache(&self, positions: usize) -> Cache {
        Cache::Host(HostCache::bounded(self.heads, self.head_dim, positions))
    }

    /// Self-attention through the tensor cache (appending `new` to it).
    fn attend_tensor_cache(
        &self,
        q: &Tensor,
        new: KeyValue,
        mask: Option<&Tensor>,
        slot: &mut Option<Cache>,
        reorder: Option<&[u32]>,
    ) -> Result<Tensor> {
        let kv = match slot.take() {
            Some(Cache::Tensors(old)) => KeyValue {
                k: append_rows(&old.k, reorder, &new.k)?,
                v: append_rows(&old.v, reorder, &new.v)?,
            },
            // An empty host cache (one sized ahead, see `empty_cache`) holds nothing yet.
            Some(Cache::Host(host)) if host.len == 0 => new,
            Some(Cache::Host(host)) => {
                let old = host.to_tensors(reorder, q.device())?;
                KeyValue {
                    k: Tensor::cat(&[&old.k, &new.k], 2)?,
                    v: Tensor::cat(&[&old.v, &new.v], 2)?,
                }
            }
            None => new,
        };
        *slot = Some(Cache::Tensors(kv.clone()));
        self.attend(q, &kv, mask)
    }

    /// Queries [rows, heads, t, hd] over a host cache, as the context [rows, t, d]
    /// before the out projection.
    fn attend_host(&self, q: &Tensor, cache: &HostCache) -> Result<Tensor> {
        let (b, h, t, hd) = q.dims4()?;
        let q = q.contiguous()?;
        let qv = CpuView::new(&q).expect("checked: contiguous f32 on the CPU");
        let qd = qv.slice();
        attend_rows_parallel(
            qd,
            (&cache.k, &cache.v, cache.row_len(), cache.cap * hd),
            None,
            (b, h, t, cache.len, hd),
            self.scaling as f32,
            q.device(),
        )
    }

    /// Cross-attention of `x` ([rows, t, d]) over encoder K/V held once per item
    /// ([items, heads, s, hd]), where rows = items * group. The `group` rows of an
    /// item (its beams) are folded into the query length, so beams share one copy
    /// of the encoder K/V instead of each carrying its own.
    pub fn cross_attention(
        &self,
        x: &Tensor,
        kv: &KeyValue,
        mask: &Tensor,
        group: usize,
    ) -> Result<Tensor> {
        let (rows, t, d) = x.dims3()?;
        let items = rows / group;
        let q = match &self.proj {
            Projections::Fused { q, .. } | Projections::Separate { q, .. } => q.forward(x)?,
        };
        let q = q.reshape((items, group * t, d))?;
        let q = self.split_heads(&q)?;
        let out = self.attend(&q, kv, Some(mask))?;
        Ok(out.reshape((rows, t, d))?)
    }
}

/// Decode attention (`kernels::attend_rows`) for `b` rows in parallel, as the
/// context [b, t, heads * hd]. Row i's queries are `q[i*h*t*hd..]`; its keys
/// and values start at `kv.0/kv.1[i * kv.2..]` with heads `kv.3` floats apart;
/// its additive mask, if any, is `mask[i*s..]`.
fn attend_rows_parallel(
    q: &[f32],
    kv: (&[f32], &[f32], usize, usize),
    mask: Option<&[f32]>,
    (b, h, t, s, hd): (usize, usize, usize, usize, usize),
    scale: f32,
    device: &candle_core::Device,
) -> Result<Tensor> {
    use rayon::prelude::*;
    let (k, v, row, stride) = kv;
    let mut out = vec![0f32; b * t * h * hd];
    out.par_chunks_mut(t * h * hd)
        .enumerate()
        .for_each(|(bi, o)| {
            let mut scores = vec![0f32; t * s];
            crate::cpu::attention::attend_rows(
                &q[bi * h * t * hd..(bi + 1) * h * t * hd],
                &k[bi * row..(bi + 1) * row],
                &v[bi * row..(bi + 1) * row],
                mask.map(|m| &m[bi * s..(bi + 1) * s]),
                h,
                t,
                s,
                hd,
                stride,
                scale,
                &mut scores,
                o,
            );
        });
    Ok(Tensor::from_vec(out, (b, t, h * hd), device)?)
}

/// The additive padding mask [b, 1, 1, s]: 0 for tokens, dtype-min for padding
/// (as transformers does, so a fully padded row never yields NaN).
pub fn padding_mask(attention_mask: &Tensor, dtype: DType) -> Result<Tensor> {
    let (b, s) = attention_mask.dims2()?;
    let keep = attention_mask.to_dtype(DType::F32)?;
    let min = match dtype {
        DType::F16 => f32::from(half::f16::MIN),
        DType::BF16 => f32::from(half::bf16::MIN),
        _ => f32::MIN,
    };
    // (1 - keep) * min, written without multiplying min by 1 (which is exact anyway).
    let mask = ((keep.ones_like()? - keep)? * min as f64)?;
    Ok(mask.to_dtype(dtype)?.reshape((b, 1, 1, s))?)
}

/// Causal mask [t, past + t] for a decoder fed `t` tokens after `past` cached ones.
pub fn causal_mask(
    t: usize,
    past: usize,
    dtype: DType,
    device: &candle_core::Device,
) -> Result<Tensor> {
    let total = past + t;
    let data: Vec<f32> = (0..t)
        .flat_map(|i| (0..total).map(move |j| if j > past + i { f32::MIN } else { 0.0 }))
        .collect();
    Ok(Tensor::from_vec(data, (t, total), device)?.to_dtype(dtype)?)
}

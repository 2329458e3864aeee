//! Building blocks shared by the encoder-decoder models: a linear layer over
//! candle's `QMatMul` (plain or quantized weights behind one type), layer norm,
//! activations, sinusoidal positions, and multi-head attention with a padding
//! mask, a self-attention KV cache and cross-attention K/V computed once.
//!
//! Attention follows transformers' `BartAttention`/`MarianAttention` (Vaswani et
//! al. 2017): q scaled by head_dim^-0.5, additive mask, softmax, out projection.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Module, Tensor};

use crate::cpu::matmul::PackedMatrix;
use crate::cpu::{with_f32, CpuView};
use crate::error::{Error, Result};
use crate::weights::Weights;

/// Up to this many queries per row, attention runs the CPU decode kernel.
const FEW_QUERIES: usize = 4;

/// `cat([old[reorder], new], dim 2)` for caches [rows, heads, len, hd], in one
/// copy on the CPU (candle would copy twice: index_select, then cat).
fn append_rows(old: &Tensor, reorder: Option<&[u32]>, new: &Tensor) -> Result<Tensor> {
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

/// Up to this many rows, `Linear` computes `(W·xᵀ)ᵀ` (see `Linear::forward`).
const SMALL_BATCH_ROWS: usize = 32;

/// `y = x W^T + b`, with W held by `QMatMul` so that f32/f16 and quantized
/// weights share every model file; on the CPU in f32 the weight is repacked
/// once for `crate::matmul` (see [`Linear::pack`]).
#[derive(Debug, Clone)]
pub struct Linear {
    weight: QMatMul,
    bias: Option<Tensor>,
    /// The weight packed for the CPU kernel, with the bias on the host. When
    /// set, `weight` is an empty placeholder: the packed copy is the only one.
    packed: Option<(PackedMatrix, Option<std::sync::Arc<Vec<f32>>>)>,
}

impl Linear {
    /// Load `{prefix}.weight` [out, in] and `{prefix}.bias` [out].
    pub fn load(w: &Weights, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let weight = w.matmul_weight("weight", out_dim, in_dim)?;
        let bias = if bias {
            Some(w.get("bias", &[out_dim])?)
        } else {
            None
        };
        Ok(Linear {
            weight,
            bias,
            packed: None,
        })
    }

    /// From an already loaded weight (e.g. the tied lm_head).
    pub fn from_parts(weight: QMatMul, bias: Option<Tensor>) -> Self {
        Linear {
            weight,
            bias,
            packed: None,
        }
    }

    /// A projection over an already packed weight (e.g. a tied table quantized
    /// as it was read).
    pub fn from_packed(packed: PackedMatrix, bias: Option<Tensor>) -> Result<Self> {
        let device = candle_core::Device::Cpu;
        Linear {
            weight: QMatMul::Tensor(Tensor::zeros((0, packed.in_dim()), DType::F32, &device)?),
            bias,
            packed: None,
        }
        .with_packed(packed, &device)
    }

    /// The same projection with an f32 CPU weight repacked for `crate::matmul`
    /// (measured on the decoder's shapes: 1.1-1.3x candle's gemm, the output
    /// already in [rows, out] with the bias added, and no gemm thread pool
    /// competing with rayon). Other weights are returned unchanged.
    pub fn pack(&self) -> Result<Self> {
        if self.packed.is_some() {
            return Ok(self.clone());
        }
        let (packed, device) = match &self.weight {
            QMatMul::Tensor(w) if w.device().is_cpu() && w.dtype() == DType::F32 => {
                let (out, k) = w.dims2()?;
                // Read in place when contiguous: the LM head is 122 MB.
                let packed = with_f32(w, |v| PackedMatrix::pack(v, out, k))?;
                (packed, w.device().clone())
            }
            // q8_0 keeps its exact int8 values and scales; candle 0.11 multiplies
            // q8_0 without tiling on AVX2 (130-140 tok/s against 400+ in f32).
            QMatMul::QTensor(q) if q.dtype() == GgmlDType::Q8_0 && q.device().is_cpu() => {
                let (out, k) = q.shape().dims2()?;
                match PackedMatrix::pack_q8_0(&q.data()?, out, k) {
                    Some(p) => (p, q.device()),
                    None => return Ok(self.clone()),
                }
            }
            _ => return Ok(self.clone()),
        };
        self.with_packed(packed, &device)
    }

    /// This projection's bias with `packed` as its weight; the `QMatMul` slot
    /// keeps an empty placeholder so the packed copy is the only one.
    fn with_packed(&self, packed: PackedMatrix, device: &candle_core::Device) -> Result<Self> {
        let k = packed.in_dim();
        let bias = match &self.bias {
            Some(b) => Some(std::sync::Arc::new(
                b.to_dtype(DType::F32)?.to_vec1::<f32>()?,
            )),
            None => None,
        };
        Ok(Linear {
            weight: QMatMul::Tensor(Tensor::zeros((0, k), DType::F32, device)?),
            bias: self.bias.clone(),
            packed: Some((packed, bias)),
        })
    }

    /// The weight as a dense [out, in] tensor (unpacking a packed one).
    fn dense_weight(&self) -> Result<Option<Tensor>> {
        Ok(match (&self.packed, &self.weight) {
            (Some((p, _)), QMatMul::Tensor(w)) if !p.is_q8_0() => Some(Tensor::from_vec(
                p.unpack(),
                (p.out_dim(), p.in_dim()),
                w.device(),
            )?),
            (None, QMatMul::Tensor(w)) => Some(w.clone()),
            _ => None,
        })
    }

    /// `x W^T (+ b)` for x [rows, in] through the packed kernel, as host data.
    fn packed_forward(&self, x: &Tensor, with_bias: bool) -> Result<Option<Vec<f32>>> {
        let Some((p, bias)) = &self.packed else {
            return Ok(None);
        };
        let (rows, _) = x.dims2()?;
        let x = x.contiguous()?;
        let Some(v) = CpuView::new(&x) else {
            return Ok(None);
        };
        let bias = if with_bias {
            bias.as_deref().map(|b| b.as_slice())
        } else {
            None
        };
        Ok(Some(p.matmul_vec(v.slice(), rows, bias)))
    }

    /// Logits-style output: `x W^T + b` for x [rows, in] as host f32 [rows, out],
    /// whatever the weight's form.
    pub fn forward_host(&self, x: &Tensor) -> Result<Vec<f32>> {
        if let Some(y) = self.packed_forward(x, true)? {
            return Ok(y);
        }
        Ok(to_f32(&self.forward(x)?)?.flatten_all()?.to_vec1::<f32>()?)
    }

    /// Several projections of the same input fused into one GEMM (rows stacked),
    /// e.g. q, k and v. `split` gives each part's output width.
    pub fn fused(parts: &[Linear]) -> Result<Self> {
        let ws = parts
            .iter()
            .map(|p| {
                p.dense_weight()?.ok_or_else(|| {
                    Error::setting(
                        "cannot fuse quantized projections",
                        "load in full precision",
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let bs = parts
            .iter()
            .map(|p| p.bias.clone())
            .collect::<Option<Vec<_>>>();
        Ok(Linear {
            weight: QMatMul::Tensor(Tensor::cat(&ws, 0)?),
            bias: bs.map(|b| Tensor::cat(&b, 0)).transpose()?,
            packed: None,
        })
    }

    /// Output rows `start..start+len` as a projection of their own (a view, no copy).
    pub fn rows(&self, start: usize, len: usize) -> Result<Self> {
        let bias = self
            .bias
            .as_ref()
            .map(|b| b.narrow(0, start, len))
            .transpose()?;
        if let Some((p, host_bias)) = &self.packed {
            let host_bias = host_bias
                .as_ref()
                .map(|b| std::sync::Arc::new(b[start..start + len].to_vec()));
            return Ok(match p.rows(start, len) {
                Some(view) => Linear {
                    weight: self.weight.clone(),
                    bias,
                    packed: Some((view, host_bias)),
                },
                // Not on a panel boundary: a packed copy of its own.
                None => Linear {
                    weight: QMatMul::Tensor(
                        self.dense_weight()?
                            .ok_or_else(|| {
                                Error::setting(
                                    "cannot slice quantized projections",
                                    "load in full precision",
                                )
                            })?
                            .narrow(0, start, len)?,
                    ),
                    bias,
                    packed: None,
                }
                .pack()?,
            });
        }
        match &self.weight {
            QMatMul::Tensor(w) => Ok(Linear {
                weight: QMatMul::Tensor(w.narrow(0, start, len)?),
                bias,
                packed: None,
            }),
            _ => Err(Error::setting(
                "cannot slice quantized projections",
                "load in full precision",
            )),
        }
    }

    /// `W·xᵀ` as [out, rows], without the bias: the layout candle's gemm computes
    /// fastest for a huge `out` (1.6x at 16 rows); the LM head adds its bias on
    /// the host while transposing.
    pub fn forward_transposed_no_bias(&self, x: &Tensor) -> Result<Tensor> {
        Ok(match &self.weight {
            QMatMul::Tensor(w) if x.device().is_cpu() => w.matmul(&x.t()?)?,
            _ => self.weight.forward(x)?.t()?.contiguous()?,
        })
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// The packed weight, if any.
    pub fn packed(&self) -> Option<&PackedMatrix> {
        self.packed.as_ref().map(|(p, _)| p)
    }

    /// Whether the weight is packed for the CPU kernel.
    pub fn is_packed(&self) -> bool {
        self.packed.is_some()
    }

    /// Whether the weight is quantized.
    pub fn is_quantized(&self) -> bool {
        matches!(self.weight, QMatMul::QTensor(_))
            || self.packed.as_ref().is_some_and(|(p, _)| p.is_q8_0())
    }

    /// The same projection with its weight quantized to `dtype`. A weight whose
    /// input width is not a multiple of the format's block size (32 for q8_0,
    /// 256 for k-quants) cannot be quantized and stays as it is; `None` says so.
    pub fn quantize(&self, dtype: GgmlDType) -> Result<Option<Self>> {
        let Some(w) = self.dense_weight()? else {
            return Ok(Some(self.clone()));
        };
        let w = &w;
        // q8_0 on the CPU goes straight into the packed kernel's panels, read in
        // place (candle's quantize would copy the f32 matrix twice first).
        if dtype == GgmlDType::Q8_0 && w.device().is_cpu() && w.dtype() == DType::F32 {
            let (out, k) = w.dims2()?;
            return match with_f32(w, |v| PackedMatrix::quantize_q8_0(v, out, k))? {
                Some(p) => Ok(Some(self.with_packed(p, w.device())?)),
                None => Ok(None),
            };
        }
        if !w.dim(1)?.is_multiple_of(dtype.block_size()) {
            return Ok(None);
        }
        // A fresh buffer: `w` may be a view into the fused qkv matrix, and
        // QTensor::quantize reads the storage from its start, ignoring the offset.
        let dense = Tensor::from_vec(
            w.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
            w.dims(),
            w.device(),
        )?;
        let q = QTensor::quantize(&dense, dtype)?;
        Ok(Some(Linear {
            weight: QMatMul::from_qtensor(q)?,
            bias: self.bias.clone(),
            packed: None,
        }))
    }

    /// `x·Wᵀ` as [rows, out] for x [rows, in], without the bias.
    pub fn forward_no_bias(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(y) = self.packed_forward(x, false)? {
            let out = self.packed.as_ref().map_or(0, |(p, _)| p.out_dim());
            return Ok(Tensor::from_vec(y, (x.dim(0)?, out), x.device())?);
        }
        Ok(self.weight.forward(x)?)
    }

    /// Apply to `[.., in]`; leading dimensions are flattened so that one GEMM runs.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_dim = *dims.last().expect("linear input has a last dimension");
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let x2 = x.reshape((rows, in_dim))?;
        if let Some((p, _)) = &self.packed {
            if let Some(y) = self.packed_forward(&x2, true)? {
                let mut out_dims = dims;
                *out_dims.last_mut().unwrap() = p.out_dim();
                return Ok(Tensor::from_vec(y, out_dims, x.device())?);
            }
        }
        let y = match &self.weight {
            // Measured with candle 0.11's CPU gemm (2 threads, AVX2): for few rows,
            // W·xᵀ then a transpose back is 1.3-3x faster than x·Wᵀ; at 64 rows the
            // transpose copy eats the gain except for wide inputs (fc2: 2048 -> 512,
            // 1.6x). Same numbers either way.
            QMatMul::Tensor(w)
                if (rows <= SMALL_BATCH_ROWS || in_dim > w.dim(0)?) && x.device().is_cpu() =>
            {
                w.matmul(&x2.t()?)?.t()?.contiguous()?
            }
            _ => self.weight.forward(&x2)?,
        };
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out_dims = dims;
        *out_dims.last_mut().unwrap() = y.dim(1)?;
        Ok(y.reshape(out_dims)?)
    }
}

/// Layer norm with transformers' default eps (1e-5).
#[derive(Debug, Clone)]
pub struct LayerNorm(candle_nn::LayerNorm);

impl LayerNorm {
    /// Load `{prefix}.weight` and `{prefix}.bias`, both [dim].
    pub fn load(w: &Weights, dim: usize) -> Result<Self> {
        Ok(LayerNorm(candle_nn::LayerNorm::new(
            w.get("weight", &[dim])?,
            w.get("bias", &[dim])?,
            1e-5,
        )))
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(self.0.forward(x)?)
    }
}

/// Activation functions named by `activation_function` in config.json.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Activation {
    /// `swish` / `silu`.
    Silu,
    /// `gelu`: the exact erf form (torch's default).
    Gelu,
    /// `gelu_new` / `gelu_pytorch_tanh`: the tanh approximation.
    GeluTanh,
    Relu,
}

impl Activation {
    /// Parse transformers' ACT2FN names.
    pub fn from_name(name: &str) -> Result<Self> {
        Ok(match name {
            "swish" | "silu" => Activation::Silu,
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            other => {
                return Err(Error::setting(
                    format!("config.json: activation_function {other:?} is not supported"),
                    "supported: swish, silu, gelu, gelu_new, gelu_pytorch_tanh, relu",
                ))
            }
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if *self == Activation::Silu {
            // candle's silu calls scalar expf per element; the vectorized kernel is
            // several times faster on the decoder's FFN (rows x 2048 per layer).
            if let Some(v) = CpuView::new(x) {
                use rayon::prelude::*;
                let src = v.slice();
                let mut out = vec![0f32; src.len()];
                out.par_chunks_mut(16 * 1024)
                    .zip(src.par_chunks(16 * 1024))
                    .for_each(|(o, s)| crate::cpu::elementwise::silu(s, o));
                return Ok(Tensor::from_vec(out, x.dims(), x.device())?);
            }
        }
        Ok(match self {
            Activation::Silu => x.silu()?,
            Activation::Gelu => x.gelu_erf()?,
            Activation::GeluTanh => x.gelu()?,
            Activation::Relu => x.relu()?,
        })
    }
}

/// transformers' static sinusoidal table (Marian, Pegasus): sin in the first
/// half of the columns, cos in the second, computed in f64 like numpy does.
pub fn sinusoidal_table(n_pos: usize, dim: usize) -> Vec<f32> {
    let half = dim.div_ceil(2);
    let mut out = vec![0f32; n_pos * dim];
    for pos in 0..n_pos {
        for j in 0..dim {
            // Column j of numpy's position_enc uses exponent 2*(j//2)/dim.
            let angle = |j: usize| pos as f64 / 10000f64.powf(2.0 * (j / 2) as f64 / dim as f64);
            let v = if j < half {
                angle(2 * j).sin()
            } else {
                angle(2 * (j - half) + 1).cos()
            };
            out[pos * dim + j] = v as f32;
        }
    }
    out
}

/// The q, k, v projections of one attention layer.
#[derive(Debug, Clone)]
enum Projections {
    /// Float weights: fused ([3d, d], one GEMM for self-attention); `q` and `kv`
    /// are views into the same buffer for cross-attention, so nothing is copied.
    Fused { qkv: Linear, q: Linear, kv: Linear },
    /// Quantized weights, apart: a quantized matrix cannot be sliced into views.
    Separate { q: Linear, k: Linear, v: Linear },
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
    k: Vec<f32>,
    v: Vec<f32>,
    rows: usize,
    heads: usize,
    cap: usize,
    len: usize,
    hd: usize,
}

impl HostCache {
    fn empty(heads: usize, hd: usize) -> Self {
        HostCache {
            k: Vec::new(),
            v: Vec::new(),
            rows: 0,
            heads,
            cap: 0,
            len: 0,
            hd,
        }
    }

    /// Floats per row (all heads, full capacity).
    fn row_len(&self) -> usize {
        self.heads * self.cap * self.hd
    }

    /// Make row i hold old row `reorder[i]` (`rows` rows when there is no
    /// reorder), then append `t` positions from `k_new`/`v_new` [rows, heads, t, hd].
    fn append(
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
            // Grow: a fresh buffer with doubled capacity, rows gathered into it.
            let cap = (self.len + t).max(2 * self.cap).max(16);
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
            // In place: only rows whose source differs move. Their sources are
            // copied out first, since a source may itself be overwritten.
            let (cap, len) = (self.cap, self.len);
            let moved: Vec<(usize, usize)> = idx
                .iter()
                .enumerate()
                .filter(|&(r, &src)| r != src as usize)
                .map(|(r, &src)| (r, src as usize))
                .collect();
            // The filled part of head h of row r.
            let span = |r: usize, h: usize| {
                let o = (r * heads + h) * cap * hd;
                o..o + len * hd
            };
            for buf in [&mut self.k, &mut self.v] {
                let mut saved = Vec::with_capacity(moved.len() * heads * len * hd);
                for &(_, src) in &moved {
                    for h in 0..heads {
                        saved.extend_from_slice(&buf[span(src, h)]);
                    }
                }
                for (&(r, _), data) in moved.iter().zip(saved.chunks(heads * len * hd)) {
                    for h in 0..heads {
                        buf[span(r, h)].copy_from_slice(&data[h * len * hd..(h + 1) * len * hd]);
                    }
                }
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
    fn to_tensors(
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

impl Attention {
    /// Load `{prefix}.{q,k,v,out}_proj`.
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
        let proj = if parts.iter().any(Linear::is_quantized) {
            let [q, k, v] = parts;
            Projections::Separate { q, k, v }
        } else {
            let qkv = Linear::fused(&parts)?;
            Projections::Fused {
                q: qkv.rows(0, dim)?,
                kv: qkv.rows(dim, 2 * dim)?,
                qkv,
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

    /// The same layer with its float projections packed for the CPU kernel
    /// ([`Linear::pack`]); q and kv stay views into the fused qkv panels.
    pub fn pack(&self) -> Result<Self> {
        let d = self.heads * self.head_dim;
        let proj = match &self.proj {
            Projections::Fused { qkv, .. } => {
                let qkv = qkv.pack()?;
                Projections::Fused {
                    q: qkv.rows(0, d)?,
                    kv: qkv.rows(d, 2 * d)?,
                    qkv,
                }
            }
            Projections::Separate { q, k, v } => Projections::Separate {
                q: q.pack()?,
                k: k.pack()?,
                v: v.pack()?,
            },
        };
        Ok(Attention {
            proj,
            o: self.o.pack()?,
            ..self.clone()
        })
    }

    /// The same layer with every projection quantized to `dtype`; unchanged
    /// (and `false`) when the width is not a multiple of the block size.
    pub fn quantize(&self, dtype: GgmlDType) -> Result<(Self, bool)> {
        let d = self.heads * self.head_dim;
        let (q, k, v) = match &self.proj {
            Projections::Fused { qkv, .. } => {
                (qkv.rows(0, d)?, qkv.rows(d, d)?, qkv.rows(2 * d, d)?)
            }
            Projections::Separate { q, k, v } => (q.clone(), k.clone(), v.clone()),
        };
        match (
            q.quantize(dtype)?,
            k.quantize(dtype)?,
            v.quantize(dtype)?,
            self.o.quantize(dtype)?,
        ) {
            (Some(q), Some(k), Some(v), Some(o)) => Ok((
                Attention {
                    proj: Projections::Separate { q, k, v },
                    o,
                    ..self.clone()
                },
                true,
            )),
            _ => Ok((self.clone(), false)),
        }
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
        if !q.device().is_cpu() || q.dtype() != DType::F32 {
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
            && q.dtype() == DType::F32;
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

/// Logits leave the model as f32 whatever the weights' dtype, as transformers does.
pub fn to_f32(x: &Tensor) -> Result<Tensor> {
    Ok(if x.dtype() == DType::F32 {
        x.clone()
    } else {
        x.to_dtype(DType::F32)?
    })
}

/// Last position of [b, t, d] as [b, d].
pub fn last_position(x: &Tensor) -> Result<Tensor> {
    let t = x.dim(1)?;
    Ok(x.narrow(1, t - 1, 1)?.squeeze(1)?)
}

//! One projection type for every weight format: `y = x Wᵀ + b`, where `W` is a
//! dense tensor (any device, any dtype), a GGML-quantized matrix (candle's
//! `QMatMul`: q4k, q6k, ..., also what a `model.gguf` holds), or a matrix
//! packed for the CPU kernel (`cpu::matmul`: f32 or q8_0). The bias is held
//! once, as a tensor. Every model file calls the same `forward`.
//!
//! Which form a projection takes is decided in one place, [`Linear::prepare`],
//! from the [`Placement`] (its two questions, [`Placement::quantization_for`]
//! and [`Placement::packs`], are also what the weight loader asks when it
//! quantizes as it reads). After mistral.rs' `QuantMethod`: one interface, one
//! implementation per format.

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Module, Tensor};

use crate::cpu::matmul::PackedMatrix;
use crate::cpu::{with_f32, CpuView};
use crate::device::Placement;
use crate::error::{Error, Result};
pub use crate::weights::Weight;
use crate::weights::Weights;

/// Up to this many rows, a dense CPU weight computes `(W·xᵀ)ᵀ` (see [`Linear::forward`]).
const SMALL_BATCH_ROWS: usize = 32;

/// What [`Linear::prepare`] did to one projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prepared {
    /// Quantized now (to the placement's format).
    Quantized,
    /// The placement asks for quantization, but the input width is not a
    /// multiple of the format's block: kept float.
    KeptFloat,
    /// Nothing to quantize (no quantization asked, or already quantized).
    Unchanged,
}

/// `y = x Wᵀ + b`.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
}

impl Linear {
    /// A projection over `weight` with an optional bias [out].
    pub fn new(weight: Weight, bias: Option<Tensor>) -> Self {
        Linear { weight, bias }
    }

    /// Load `{prefix}.weight` [out, in] and `{prefix}.bias` [out], in whatever
    /// form the loader holds them (quantized or packed as read, else dense).
    pub fn load(w: &Weights, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let weight = w.weight("weight", out_dim, in_dim)?;
        let bias = if bias {
            Some(w.get("bias", &[out_dim])?)
        } else {
            None
        };
        Ok(Linear { weight, bias })
    }

    /// The weight.
    pub fn weight(&self) -> &Weight {
        &self.weight
    }

    /// The bias, if any.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// The packed weight, if the weight is packed.
    pub fn packed(&self) -> Option<&PackedMatrix> {
        match &self.weight {
            Weight::Packed(p) => Some(p),
            _ => None,
        }
    }

    /// Whether the weight is quantized (GGML, or q8_0 panels).
    pub fn is_quantized(&self) -> bool {
        match &self.weight {
            Weight::Quantized(QMatMul::QTensor(_)) => true,
            Weight::Packed(p) => p.is_q8_0(),
            _ => false,
        }
    }

    /// The one decision of which form this projection takes on `placement`:
    /// quantized to the placement's format when its input width fits the
    /// format's blocks (q8_0 on the CPU straight into the packed kernel's
    /// panels, the rest as GGML blocks), then, on the CPU in f32, packed for
    /// `cpu::matmul` (measured on the decoder's shapes: 1.1-1.3x candle's
    /// gemm, the output already in [rows, out] with the bias added, no gemm
    /// thread pool competing with rayon); a q8_0 matrix read from a file is
    /// packed too (candle 0.11 multiplies q8_0 without tiling on AVX2).
    /// Other forms stay as they are, so preparing twice changes nothing.
    pub fn prepare(self, placement: &Placement) -> Result<(Self, Prepared)> {
        let Linear { weight, bias } = self;
        let (weight, done) = match weight {
            Weight::Dense(w) => {
                let (out, k) = w.dims2()?;
                match placement.quantization_for(k) {
                    Some(GgmlDType::Q8_0) if placement.packs() => {
                        // Read in place: the LM head is 122 MB.
                        let p = with_f32(&w, |v| PackedMatrix::quantize_q8_0(v, out, k))?
                            .expect("the width fits q8_0's blocks");
                        (Weight::Packed(p), Prepared::Quantized)
                    }
                    Some(q) => (Weight::Quantized(quantize(&w, q)?), Prepared::Quantized),
                    None => {
                        let kept = if placement.quantize.is_some() {
                            Prepared::KeptFloat
                        } else {
                            Prepared::Unchanged
                        };
                        if placement.packs() && w.dtype() == DType::F32 && w.device().is_cpu() {
                            let p = with_f32(&w, |v| PackedMatrix::pack(v, out, k))?;
                            (Weight::Packed(p), kept)
                        } else {
                            (Weight::Dense(w), kept)
                        }
                    }
                }
            }
            Weight::Quantized(QMatMul::QTensor(q))
                if q.dtype() == GgmlDType::Q8_0 && placement.packs() =>
            {
                let (out, k) = q.shape().dims2()?;
                match PackedMatrix::pack_q8_0(&q.data()?, out, k) {
                    Some(p) => (Weight::Packed(p), Prepared::Unchanged),
                    None => (Weight::Quantized(QMatMul::QTensor(q)), Prepared::Unchanged),
                }
            }
            other => (other, Prepared::Unchanged),
        };
        Ok((Linear { weight, bias }, done))
    }

    /// Output rows `start..start+len` as a projection of their own: a view
    /// sharing the data where the form allows it (dense; packed on a panel
    /// boundary), else a copy of exactly those weights (GGML blocks are
    /// row-major, so a row range is a byte range).
    pub fn rows(&self, start: usize, len: usize) -> Result<Self> {
        let bias = self
            .bias
            .as_ref()
            .map(|b| b.narrow(0, start, len))
            .transpose()?;
        let weight = match &self.weight {
            Weight::Dense(w) => Weight::Dense(w.narrow(0, start, len)?),
            Weight::Packed(p) => Weight::Packed(p.take_rows(start, len)),
            Weight::Quantized(QMatMul::QTensor(q)) => {
                let (_, k) = q.shape().dims2()?;
                let dtype = q.dtype();
                let row_bytes = k / dtype.block_size() * dtype.type_size();
                let data = q.data()?;
                let bytes = &data[start * row_bytes..(start + len) * row_bytes];
                let part = candle_core::quantized::ggml_file::qtensor_from_ggml(
                    dtype,
                    bytes,
                    vec![len, k],
                    &q.device(),
                )?;
                Weight::Quantized(QMatMul::from_arc(Arc::new(part))?)
            }
            Weight::Quantized(QMatMul::Tensor(w)) => {
                Weight::Quantized(QMatMul::Tensor(w.narrow(0, start, len)?))
            }
            Weight::Quantized(QMatMul::TensorF16(w)) => {
                Weight::Quantized(QMatMul::TensorF16(w.narrow(0, start, len)?))
            }
        };
        Ok(Linear { weight, bias })
    }

    /// Whether [`Linear::rows`] gives views (no copy) of this weight: for
    /// every form but GGML blocks.
    pub fn rows_are_views(&self) -> bool {
        !matches!(self.weight, Weight::Quantized(QMatMul::QTensor(_)))
    }

    /// Several dense projections of the same input fused into one (output rows
    /// stacked), e.g. q, k and v; None when any part is not dense.
    pub fn fuse(parts: &[Linear]) -> Result<Option<Self>> {
        let mut ws = Vec::with_capacity(parts.len());
        for p in parts {
            match &p.weight {
                Weight::Dense(w) => ws.push(w.clone()),
                _ => return Ok(None),
            }
        }
        let bs = parts
            .iter()
            .map(|p| p.bias.clone())
            .collect::<Option<Vec<_>>>();
        Ok(Some(Linear {
            weight: Weight::Dense(Tensor::cat(&ws, 0)?),
            bias: bs.map(|b| Tensor::cat(&b, 0)).transpose()?,
        }))
    }

    /// Apply to `[.., in]`; leading dimensions are flattened so that one GEMM runs.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_dim = *dims.last().expect("linear input has a last dimension");
        let rows: usize = dims[..dims.len() - 1].iter().product();
        let x2 = x.reshape((rows, in_dim))?;
        let y = match &self.weight {
            Weight::Packed(p) => {
                let y = self.packed_forward(p, &x2)?;
                Tensor::from_vec(y, (rows, p.out_dim()), x.device())?
            }
            Weight::Dense(w) => {
                // Measured with candle 0.11's CPU gemm (2 threads, AVX2): for
                // few rows, W·xᵀ then a transpose back is 1.3-3x faster than
                // x·Wᵀ; at 64 rows the transpose copy eats the gain except for
                // wide inputs (fc2: 2048 -> 512, 1.6x). Same numbers either way.
                let y = if x.device().is_cpu()
                    && crate::cpu::host_kernels()
                    && (rows <= SMALL_BATCH_ROWS || in_dim > w.dim(0)?)
                {
                    w.matmul(&x2.t()?)?.t()?.contiguous()?
                } else {
                    x2.matmul(&w.t()?)?
                };
                self.add_bias(y)?
            }
            Weight::Quantized(q) => self.add_bias(q.forward(&x2)?)?,
        };
        let mut out_dims = dims;
        *out_dims.last_mut().expect("checked above") = y.dim(1)?;
        Ok(y.reshape(out_dims)?)
    }

    /// [`Linear::forward`] for x [rows, in], as host f32 [rows, out] (logits):
    /// straight from the packed kernel, else the forward's result read back.
    pub fn forward_host(&self, x: &Tensor) -> Result<Vec<f32>> {
        if let Weight::Packed(p) = &self.weight {
            return self.packed_forward(p, x);
        }
        Ok(to_f32(&self.forward(x)?)?.flatten_all()?.to_vec1::<f32>()?)
    }

    fn add_bias(&self, y: Tensor) -> Result<Tensor> {
        Ok(match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        })
    }

    /// `x Wᵀ + b` through the packed kernel for x [rows, in] (f32, CPU).
    fn packed_forward(&self, p: &PackedMatrix, x: &Tensor) -> Result<Vec<f32>> {
        let (rows, _) = x.dims2()?;
        let x = x.contiguous()?;
        let not_f32 = || {
            Error::setting(
                "a packed projection was given input that is not f32 on the CPU",
                "packed weights serve only a CPU f32 placement; load the model with that placement",
            )
        };
        let xv = CpuView::new(&x).ok_or_else(not_f32)?;
        let bias = match &self.bias {
            Some(b) => Some(CpuView::new(b).ok_or_else(not_f32)?),
            None => None,
        };
        Ok(p.matmul_vec(xv.slice(), rows, bias.as_ref().map(CpuView::slice)))
    }
}

/// `w` quantized to `q` as GGML blocks.
fn quantize(w: &Tensor, q: GgmlDType) -> Result<QMatMul> {
    // A fresh buffer: `w` may be a view into a fused matrix, and
    // QTensor::quantize reads the storage from its start, ignoring the offset.
    let dense = Tensor::from_vec(
        w.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
        w.dims(),
        w.device(),
    )?;
    Ok(QMatMul::from_arc(Arc::new(QTensor::quantize(&dense, q)?))?)
}

/// Logits leave the model as f32 whatever the weights' dtype, as transformers does.
pub fn to_f32(x: &Tensor) -> Result<Tensor> {
    Ok(if x.dtype() == DType::F32 {
        x.clone()
    } else {
        x.to_dtype(DType::F32)?
    })
}

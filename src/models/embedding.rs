//! Token embeddings and positions: the embedding table (a tensor, or the rows
//! of a packed LM head it is tied to) and transformers' static sinusoidal
//! position table (Marian, Pegasus).

use candle_core::Tensor;

use crate::cpu::matmul::PackedMatrix;
use crate::error::{Error, Result};

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

/// fairseq's sinusoidal table (M2M100, NLLB), as transformers'
/// `M2M100SinusoidalPositionalEmbedding.get_embedding` computes it in float32:
/// frequencies `exp(-i ln(10000) / (d/2 - 1))`, `[sin | cos]` halves, a zero
/// column when `dim` is odd, and the `padding_idx` row zeroed.
pub fn fairseq_sinusoidal_table(n_pos: usize, dim: usize, padding_idx: usize) -> Vec<f32> {
    let half = dim / 2;
    let step = (10000f64.ln() / (half as f64 - 1.0)) as f32;
    let freqs: Vec<f32> = (0..half).map(|i| (i as f32 * -step).exp()).collect();
    let mut out = vec![0f32; n_pos * dim];
    for pos in 0..n_pos {
        if pos == padding_idx {
            continue;
        }
        let row = &mut out[pos * dim..(pos + 1) * dim];
        for (i, &f) in freqs.iter().enumerate() {
            let a = pos as f32 * f;
            row[i] = a.sin();
            row[half + i] = a.cos();
        }
    }
    out
}

/// A token embedding table.
#[derive(Clone)]
pub enum Table {
    Dense(Tensor),
    /// Tied to the LM head after packing it: rows are read from the packed
    /// matrix, so the 122 MB table is not held twice.
    Packed(PackedMatrix),
}

impl Table {
    /// Embeddings [b, t, d] of `ids` [b, t].
    pub fn lookup(&self, ids: &Tensor) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let flat = ids.flatten_all()?;
        match self {
            Table::Dense(table) => {
                Ok(table
                    .index_select(&flat, 0)?
                    .reshape((b, t, table.dim(1)?))?)
            }
            Table::Packed(p) => {
                let d = p.in_dim();
                let ids = flat.to_vec1::<u32>()?;
                let mut out = vec![0f32; ids.len() * d];
                for (&id, row) in ids.iter().zip(out.chunks_mut(d)) {
                    if id as usize >= p.out_dim() {
                        return Err(Error::input(
                            format!("token id {id} is outside the {}-row embedding", p.out_dim()),
                            "the tokenizer and the model come from different checkpoints",
                        ));
                    }
                    p.row_into(id as usize, row);
                }
                Ok(Tensor::from_vec(out, (b, t, d), flat.device())?)
            }
        }
    }
}

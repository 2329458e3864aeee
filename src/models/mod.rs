//! Model maths: the encoder-decoder architectures transum runs, the layers
//! they are built of, and the small [`Seq2Seq`] trait that generation is
//! written against.
//!
//! Nothing here reads files, tokenizes or knows about the CLI: weights arrive
//! by name through [`crate::weights::Weights`] (the Hugging Face tensor names),
//! which also carries the device and dtype; `config.json` is deserialized into
//! [`bart::BartConfig`]. One file per idea: `linear.rs` (every weight format
//! behind one projection), `attention.rs` (with its masks), `kv_cache.rs`,
//! `norm.rs` (layer norm, activations), `embedding.rs` (token tables and
//! positions), and `bart.rs`, the one file of the BART family.

pub mod attention;
pub mod bart;
pub mod embedding;
pub mod kv_cache;
pub mod linear;
pub mod norm;

use candle_core::Tensor;

use crate::error::Result;

/// What generation needs from a sequence-to-sequence model.
///
/// The decoder state (encoder output, cross-attention K/V, self-attention KV
/// cache, padding mask) lives in `State`, so the model itself stays immutable and
/// one loaded model can serve many batches. Rows of the state are the hypotheses
/// being decoded (batch x beams); `select_rows` reorders or drops them, which is
/// how beam search reorders its cache and how finished rows stop costing work.
pub trait Seq2Seq {
    /// Per-batch decoding state.
    type State;

    /// Run the encoder once for a padded batch (`input_ids`, `attention_mask`: [batch, src_len],
    /// mask 1 for tokens and 0 for padding) and prepare decoding.
    fn start(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<Self::State>;

    /// Feed one new decoder token per row and return the next-token logits on
    /// the host: f32, row-major [rows, vocab]. Search runs on the host, so the
    /// model hands over the layout it computes fastest into this one.
    fn step(&self, state: &mut Self::State, tokens: &[u32]) -> Result<Vec<f32>>;

    /// [`Seq2Seq::step`] leaving the logits where the model computed them:
    /// f32 [rows, vocab] on the model's device (the device search reads back
    /// only the chosen ids).
    fn step_tensor(&self, state: &mut Self::State, tokens: &[u32]) -> Result<Tensor> {
        let rows = tokens.len();
        let logits = self.step(state, tokens)?;
        Ok(Tensor::from_vec(
            logits,
            (rows, self.vocab_size()),
            &candle_core::Device::Cpu,
        )?)
    }

    /// Whether search should run on the model's device ([`Seq2Seq::step_tensor`])
    /// rather than on host logits: off the CPU, and on the CPU's
    /// device-generic path (`TRANSUM_DEVICE_PATH=candle`), which proves it.
    fn searches_on_device(&self) -> bool {
        false
    }

    /// Tell the state that at most `positions` decoder tokens will be fed to
    /// it (generation knows this from its length limits), so caches can be
    /// sized to it rather than grown past it. Optional: the default ignores it.
    fn bound_positions(&self, _state: &mut Self::State, _positions: usize) {}

    /// Keep only the given rows of the state, in the given order (rows may repeat).
    fn select_rows(&self, state: &mut Self::State, rows: &[u32]) -> Result<()>;

    /// Expand each row `n` times, consecutively (row r becomes rows r*n .. r*n+n).
    fn repeat_rows(&self, state: &mut Self::State, n: usize) -> Result<()> {
        let rows = self.rows(state);
        let idx: Vec<u32> = (0..rows as u32)
            .flat_map(|r| std::iter::repeat_n(r, n))
            .collect();
        self.select_rows(state, &idx)
    }

    /// Number of rows currently in the state.
    fn rows(&self, state: &Self::State) -> usize;

    /// Size of the output vocabulary (the logits' last dimension).
    fn vocab_size(&self) -> usize;

    /// Positions of the decoder: the start token plus this many tokens minus
    /// one can be fed, so at most this many can be generated. Generation caps
    /// its length here rather than failing.
    fn max_target_positions(&self) -> usize;
}

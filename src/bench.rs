//! Benchmark support: an opus-mt-fr-en-shaped model with seeded random weights
//! (no download), built in memory with the checkpoint's real tensor names, and
//! the peak-RSS probe and the matmul benches' shapes and operands. Used by
//! `benches/throughput.rs` and `benches/int8_scales.rs`.

use std::collections::HashMap;

use candle_core::{Device, Tensor};

use crate::error::Result;
use crate::models::bart::BartConfig;

/// `config.json` of Helsinki-NLP/opus-mt-fr-en (the fields the model reads).
pub const OPUS_MT_FR_EN_CONFIG: &str = r#"{
  "model_type": "marian", "activation_function": "swish", "d_model": 512,
  "encoder_layers": 6, "decoder_layers": 6, "encoder_attention_heads": 8, "decoder_attention_heads": 8,
  "encoder_ffn_dim": 2048, "decoder_ffn_dim": 2048, "max_position_embeddings": 512,
  "vocab_size": 59514, "decoder_vocab_size": 59514, "scale_embedding": true,
  "pad_token_id": 59513, "decoder_start_token_id": 59513, "eos_token_id": 0, "bos_token_id": 0,
  "forced_eos_token_id": 0, "share_encoder_decoder_embeddings": true, "tie_word_embeddings": true
}"#;

/// The parsed opus-mt-fr-en config.
pub fn opus_mt_fr_en_config() -> BartConfig {
    BartConfig::from_json(OPUS_MT_FR_EN_CONFIG).expect("the built-in config parses")
}

/// xorshift64*: a tiny seeded generator, so benchmark weights are identical on every machine.
struct Rng(u64);

impl Rng {
    fn next_f32(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_F491_4F6C_DD1D);
        // Uniform in [-1, 1).
        ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    fn tensor(&mut self, shape: &[usize], scale: f32, offset: f32) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|_| offset + scale * self.next_f32()).collect();
        Ok(Tensor::from_vec(data, shape, &Device::Cpu)?)
    }
}

/// Seeded random f32 weights for `config`, named as in a transformers 5 checkpoint.
pub fn random_weights(config: &BartConfig, seed: u64) -> Result<HashMap<String, Tensor>> {
    let mut rng = Rng(seed.max(1));
    let d = config.d_model;
    let mut t = HashMap::new();
    t.insert(
        "model.shared.weight".to_string(),
        rng.tensor(&[config.vocab_size, d], 0.05, 0.0)?,
    );
    t.insert(
        "final_logits_bias".to_string(),
        rng.tensor(&[1, config.target_vocab_size()], 0.1, 0.0)?,
    );
    let mut layer = |prefix: String, ffn: usize, cross: bool, rng: &mut Rng| -> Result<()> {
        let mut attn = |name: &str, rng: &mut Rng| -> Result<()> {
            for p in ["q_proj", "k_proj", "v_proj", "out_proj"] {
                t.insert(
                    format!("{prefix}.{name}.{p}.weight"),
                    rng.tensor(&[d, d], 0.04, 0.0)?,
                );
                t.insert(
                    format!("{prefix}.{name}.{p}.bias"),
                    rng.tensor(&[d], 0.02, 0.0)?,
                );
            }
            t.insert(
                format!("{prefix}.{name}_layer_norm.weight"),
                rng.tensor(&[d], 0.1, 1.0)?,
            );
            t.insert(
                format!("{prefix}.{name}_layer_norm.bias"),
                rng.tensor(&[d], 0.02, 0.0)?,
            );
            Ok(())
        };
        attn("self_attn", rng)?;
        if cross {
            attn("encoder_attn", rng)?;
        }
        t.insert(
            format!("{prefix}.fc1.weight"),
            rng.tensor(&[ffn, d], 0.04, 0.0)?,
        );
        t.insert(format!("{prefix}.fc1.bias"), rng.tensor(&[ffn], 0.02, 0.0)?);
        t.insert(
            format!("{prefix}.fc2.weight"),
            rng.tensor(&[d, ffn], 0.02, 0.0)?,
        );
        t.insert(format!("{prefix}.fc2.bias"), rng.tensor(&[d], 0.02, 0.0)?);
        t.insert(
            format!("{prefix}.final_layer_norm.weight"),
            rng.tensor(&[d], 0.1, 1.0)?,
        );
        t.insert(
            format!("{prefix}.final_layer_norm.bias"),
            rng.tensor(&[d], 0.02, 0.0)?,
        );
        Ok(())
    };
    for i in 0..config.encoder_layers {
        layer(
            format!("model.encoder.layers.{i}"),
            config.encoder_ffn_dim,
            false,
            &mut rng,
        )?;
    }
    for i in 0..config.decoder_layers {
        layer(
            format!("model.decoder.layers.{i}"),
            config.decoder_ffn_dim,
            true,
            &mut rng,
        )?;
    }
    Ok(t)
}

/// Peak resident set size of this process in bytes (Linux `VmHWM`), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// opus-mt-fr-en's matrix products as (rows, out, k): decode steps of 16
/// sentences greedy and at beam 4 (64 rows), the LM head of each, and an
/// encoder batch (16 x ~32 tokens). The matmul benches time these.
pub const MATMUL_SHAPES: [(usize, usize, usize); 9] = [
    (16, 512, 512),
    (64, 512, 512),
    (64, 2048, 512),
    (64, 512, 2048),
    (64, 59514, 512),
    (16, 59514, 512),
    (512, 512, 512),
    (512, 2048, 512),
    (512, 512, 2048),
];

/// Deterministic operands for `x Wᵀ + b` with x [rows, k], W [n, k], b [n]:
/// activations in [-1, 1], weights at a tenth of that.
pub fn matmul_operands(rows: usize, n: usize, k: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let x = (0..rows * k)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
        .collect();
    let w = (0..n * k)
        .map(|i| ((i * 53 % 97) as f32 - 48.0) / 480.0)
        .collect();
    let b = (0..n).map(|i| i as f32 / n as f32).collect();
    (x, w, b)
}

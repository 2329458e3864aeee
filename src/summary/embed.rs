//! Sentence embeddings: a sentence-transformers checkpoint (default
//! `sentence-transformers/all-MiniLM-L6-v2`) run through candle-transformers'
//! `BertModel`, pooled as sentence-transformers pools.
//!
//! What the checkpoint's own files say decides the output, never a default:
//! `modules.json` (a Normalize module means L2 normalization),
//! `1_Pooling/config.json` (mean pooling over non-pad tokens is the one mode
//! supported; others are refused by name), and `sentence_bert_config.json`'s
//! `max_seq_length`, which replaces the truncation stored in `tokenizer.json`
//! (all-MiniLM-L6-v2's says 128, its model 256). Batches are right-padded,
//! since candle's BERT counts positions from 0, and the padding is masked.
//!
//! Talks to: the files of a checkpoint directory (from `hub.rs`); used by the
//! summary's similarity.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use candle_transformers::models::bert::{BertModel, Config};
use tokenizers::{PaddingParams, Tokenizer, TruncationParams};

use crate::error::{Error, Result};
use crate::tokenizer::read_json;

/// A loaded sentence encoder.
pub struct SentenceEncoder {
    model: BertModel,
    tokenizer: Tokenizer,
    normalize: bool,
    max_seq_length: usize,
    dim: usize,
    device: Device,
    dir: PathBuf,
}

fn bad(path: &Path, what: impl Into<String>, source: Option<crate::error::BoxError>) -> Error {
    Error::file(
        path,
        what,
        "fetch the sentence-transformers checkpoint again (config.json, model.safetensors, tokenizer.json, modules.json, 1_Pooling/config.json)",
        source,
    )
}

impl SentenceEncoder {
    /// Load a sentence-transformers checkpoint directory onto the CPU.
    pub fn load(dir: &Path) -> Result<Self> {
        let device = Device::Cpu;
        let config_path = dir.join("config.json");
        let config: Config = serde_json::from_value(read_json(&config_path)?)
            .map_err(|e| bad(&config_path, "is not a BERT config", Some(Box::new(e))))?;
        // Pooling: mean over tokens is what all-MiniLM-L6-v2 and its kin use.
        let pooling_path = dir.join("1_Pooling/config.json");
        let pooling = read_json(&pooling_path)?;
        let flag = |k: &str| pooling.get(k).and_then(|v| v.as_bool()).unwrap_or(false);
        let others = [
            "pooling_mode_cls_token",
            "pooling_mode_max_tokens",
            "pooling_mode_mean_sqrt_len_tokens",
        ];
        if !flag("pooling_mode_mean_tokens") || others.iter().any(|k| flag(k)) {
            return Err(Error::file(
                &pooling_path,
                "asks for a pooling other than the mean over tokens",
                "use a sentence-transformers checkpoint with mean pooling (e.g. all-MiniLM-L6-v2)",
                None,
            ));
        }
        let modules_path = dir.join("modules.json");
        let normalize = read_json(&modules_path)?.as_array().is_some_and(|m| {
            m.iter().any(|x| {
                x.get("type")
                    .and_then(|t| t.as_str())
                    .is_some_and(|t| t.ends_with("Normalize"))
            })
        });
        let st_path = dir.join("sentence_bert_config.json");
        let max_seq_length = if st_path.is_file() {
            read_json(&st_path)?
                .get("max_seq_length")
                .and_then(|v| v.as_u64())
                .map(|v| v as usize)
        } else {
            None
        }
        .unwrap_or(config.max_position_embeddings)
        .min(config.max_position_embeddings);
        let tok_path = dir.join("tokenizer.json");
        let mut tokenizer = Tokenizer::from_file(&tok_path)
            .map_err(|e| bad(&tok_path, "is not a usable tokenizer.json", Some(e)))?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: max_seq_length,
                ..Default::default()
            }))
            .map_err(|e| bad(&tok_path, "refuses the truncation", Some(e)))?;
        tokenizer.with_padding(None::<PaddingParams>);
        let weights = dir.join("model.safetensors");
        let tensors = candle_core::safetensors::load(&weights, &device)
            .map_err(|e| bad(&weights, "cannot be read", Some(Box::new(e))))?;
        let vb = candle_nn::VarBuilder::from_tensors(tensors, DType::F32, &device);
        let model = BertModel::load(vb, &config).map_err(|e| {
            bad(
                &weights,
                "does not hold this BERT config's tensors",
                Some(Box::new(e)),
            )
        })?;
        Ok(SentenceEncoder {
            model,
            tokenizer,
            normalize,
            max_seq_length,
            dim: config.hidden_size,
            device,
            dir: dir.to_path_buf(),
        })
    }

    /// Width of an embedding.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Tokens a sentence is cut to (`max_seq_length`).
    pub fn max_seq_length(&self) -> usize {
        self.max_seq_length
    }

    /// Token ids of `text` as the encoder sees them ([CLS] X [SEP], truncated).
    pub fn ids(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.tokenizer.encode(text, true).map_err(|e| {
            bad(
                &self.dir.join("tokenizer.json"),
                "failed to encode a sentence",
                Some(e),
            )
        })?;
        Ok(enc.get_ids().to_vec())
    }

    /// Embeddings of `texts`, in input order: the mean of the last hidden
    /// states over real tokens, L2-normalized when the checkpoint has a
    /// Normalize module. Sentences are sorted by length and batched (at most
    /// `batch` of them, 8,192 padded tokens), so padding stays small.
    pub fn embed(&self, texts: &[&str], batch: usize) -> Result<Vec<Vec<f32>>> {
        let ids = texts
            .iter()
            .map(|t| self.ids(t))
            .collect::<Result<Vec<_>>>()?;
        let lengths: Vec<usize> = ids.iter().map(Vec::len).collect();
        let plan = crate::batch::plan(&lengths, 8192, batch.max(1));
        let results = plan
            .iter()
            .map(|b| {
                let seqs: Vec<&[u32]> = b.iter().map(|&i| ids[i].as_slice()).collect();
                self.embed_batch(&seqs)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(crate::batch::restore(texts.len(), &plan, results))
    }

    /// One right-padded batch through the model, pooled.
    fn embed_batch(&self, ids: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        let longest = ids.iter().map(|s| s.len()).max().unwrap_or(0).max(1);
        let (mut flat, mut mask) = (Vec::new(), Vec::new());
        for seq in ids {
            flat.extend(
                seq.iter()
                    .copied()
                    .chain(std::iter::repeat_n(0, longest - seq.len())),
            );
            mask.extend(
                std::iter::repeat_n(1u32, seq.len())
                    .chain(std::iter::repeat_n(0, longest - seq.len())),
            );
        }
        let n = ids.len();
        let input = Tensor::from_vec(flat, (n, longest), &self.device)?;
        let mask = Tensor::from_vec(mask, (n, longest), &self.device)?;
        let types = input.zeros_like()?;
        let hidden = self.model.forward(&input, &types, Some(&mask))?;
        let hidden = hidden.flatten_all()?.to_vec1::<f32>()?;
        let mut out = Vec::with_capacity(n);
        for (r, seq) in ids.iter().enumerate() {
            let mut v = vec![0f32; self.dim];
            for t in 0..seq.len() {
                let h = &hidden[(r * longest + t) * self.dim..(r * longest + t + 1) * self.dim];
                for (a, &b) in v.iter_mut().zip(h) {
                    *a += b;
                }
            }
            // sentence-transformers: sum / clamp(count, 1e-9).
            let count = (seq.len() as f32).max(1e-9);
            v.iter_mut().for_each(|x| *x /= count);
            if self.normalize {
                // torch.nn.functional.normalize: x / max(||x||, 1e-12).
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
                v.iter_mut().for_each(|x| *x /= norm);
            }
            out.push(v);
        }
        Ok(out)
    }
}

//! `Translator` = tokenizer + BART-family model + generation settings: the
//! text-to-text runner. Translation uses it with a Marian checkpoint; the
//! abstractive summarizer (`summary/abstractive.rs`) with a BART or Pegasus one.
//!
//! Takes source texts, tokenizes them, batches them by a token budget (longest
//! first), runs greedy or beam search per batch and returns detokenized English
//! in input order. Empty inputs translate to empty outputs without touching the
//! model.

use candle_core::Tensor;

use crate::device::Placement;
use crate::error::{Error, Result};
use crate::generation::{generate, GenerationOptions, GenerationOverrides, Hypothesis};
use crate::hub::ModelFiles;
use crate::models::bart::{BartConfig, BartModel};
use crate::tokenizer::{read_json, TextTokenizer};
use crate::weights::Weights;

/// One translated unit.
#[derive(Debug, Clone, PartialEq)]
pub struct Translation {
    /// Detokenized English text.
    pub text: String,
    /// Source ids fed to the encoder (with `</s>`).
    pub source_ids: Vec<u32>,
    /// The search result (generated ids, score, margin).
    pub hypothesis: Hypothesis,
}

/// `config.json` (already read from `path`) as a BART-family config, or an
/// error naming the file.
pub(crate) fn parse_config(json: &serde_json::Value, path: &std::path::Path) -> Result<BartConfig> {
    serde_json::from_value(json.clone()).map_err(|e| {
        Error::file(
            path,
            "is not a usable BART-family config",
            "point --model at a Marian (opus-mt), BART or Pegasus checkpoint",
            Some(Box::new(e)),
        )
    })
}

/// A loaded translation model, ready for batches.
pub struct Translator {
    pub tokenizer: TextTokenizer,
    pub model: BartModel,
    pub options: GenerationOptions,
    /// Budget of padded source tokens per batch.
    pub batch_tokens: usize,
    /// Upper bound on sentences per batch.
    pub max_batch: usize,
    dtype: candle_core::DType,
    quantization: Option<candle_core::quantized::GgmlDType>,
}

impl Translator {
    /// Load tokenizer, config, generation settings and weights from `files`.
    pub fn load(
        files: &ModelFiles,
        placement: &Placement,
        overrides: &GenerationOverrides,
    ) -> Result<Self> {
        let config_path = files.dir.join("config.json");
        let config_json = read_json(&config_path)?;
        let config = parse_config(&config_json, &config_path)?;
        // The architecture first: an unsupported model_type is named as such,
        // not as whatever tokenizer file that architecture would lack.
        crate::models::bart::Arch::for_model_type(&config.model_type)
            .map_err(|e| e.in_file(&config_path))?;
        let gen_path = files.dir.join("generation_config.json");
        let gen_json = if gen_path.is_file() {
            Some(read_json(&gen_path)?)
        } else {
            None
        };
        let mut options = GenerationOptions::resolve(gen_json.as_ref(), &config_json, overrides)?;
        // NLLB-200 checkpoints may carry no max_length, and transformers'
        // default of 20 tokens would cut most sentences: let the decoder's
        // positions (and the relative cap) bound them instead.
        let says_max = |v: Option<&serde_json::Value>| {
            v.is_some_and(|v| v.get("max_length").is_some() || v.get("max_new_tokens").is_some())
        };
        if config.model_type == "m2m_100"
            && options.max_length_from == crate::generation::LengthLimit::Checkpoint
            && !says_max(gen_json.as_ref())
            && !says_max(Some(&config_json))
        {
            options.max_length = config.max_position_embeddings + 1;
            tracing::info!(
                "{}: no max_length in the checkpoint; outputs are bounded by the decoder's {} positions",
                files.dir.display(),
                config.max_position_embeddings
            );
        }
        if options.max_length > config.max_position_embeddings + 1 {
            // Valid (transformers loads it) and common: generation settings
            // written for a larger model. Logged once here; every output that
            // reaches the table's end is cut there and counted as such.
            tracing::warn!(
                "{}: the generation settings allow {} new tokens but the decoder has {} positions; outputs are cut at {} tokens",
                files.dir.display(),
                options.max_new_tokens(),
                config.max_position_embeddings,
                config.max_position_embeddings
            );
        }
        let tokenizer = TextTokenizer::from_dir(&files.dir, &config.model_type)?;
        // Many-to-many models (M2M100) are told their target language by the
        // first generated token: English, forced as transformers'
        // `forced_bos_token_id` would be.
        if options.forced_bos_token_id.is_none() {
            options.forced_bos_token_id = tokenizer.forced_target_token();
        }
        let marian = matches!(tokenizer, TextTokenizer::Marian(_));
        if tokenizer.vocab_size() > config.vocab_size && !marian {
            // facebook/bart-large-cnn: 50,265 tokens (<mask> last) for 50,264
            // embedding rows; transformers loads it, and only <mask> is unusable.
            // encode_unit rejects ids beyond the embedding instead.
            tracing::warn!(
                "{}: the tokenizer has {} tokens, the model {} embedding rows; ids beyond them cannot be used",
                files.dir.display(),
                tokenizer.vocab_size(),
                config.vocab_size
            );
        } else if tokenizer.vocab_size() > config.vocab_size {
            return Err(Error::file(
                files.dir.clone(),
                format!(
                    "tokenizer has {} entries but config.json says vocab_size {}",
                    tokenizer.vocab_size(),
                    config.vocab_size
                ),
                "the tokenizer files and the model come from different checkpoints",
                None,
            ));
        }
        let start = std::time::Instant::now();
        // A table that is both embeddings and LM head can be quantized as read.
        let weights = Weights::load(&files.weights, placement, config.tied_table())?;
        let file_quantization = weights.quantization();
        let model = BartModel::load(config, &weights).map_err(|e| e.in_file(&config_path))?;
        // The loader holds every tensor it read; the model holds what it uses.
        // Let the rest go before preparing makes second copies.
        drop(weights);
        let (model, quantized, kept) = model.prepare(placement)?;
        if let Some(q) = placement.quantize {
            if file_quantization.is_some() {
                tracing::warn!(
                    "{}: already quantized; --quantize {} converts only what is still float",
                    files.weights.display(),
                    crate::device::quant_name(q)
                );
            }
            if kept > 0 {
                tracing::warn!(
                    "--quantize {}: {kept} of {} projections keep float weights (input width not a multiple of the {}-wide block)",
                    crate::device::quant_name(q),
                    quantized + kept,
                    q.block_size()
                );
            }
        }
        let quantization = placement.quantize.or(file_quantization);
        tracing::info!(
            "loaded {} on {} in {:.2}s",
            files.weights.display(),
            placement.describe(),
            start.elapsed().as_secs_f64()
        );
        Ok(Translator {
            tokenizer,
            model,
            options,
            // A GPU wants wide batches: its step costs about the same for 16
            // rows as for 256, while the CPU's grows with the rows.
            batch_tokens: if placement.device.is_cpu() {
                2048
            } else {
                16384
            },
            max_batch: if placement.device.is_cpu() { 64 } else { 256 },
            dtype: placement.dtype,
            quantization,
        })
    }

    /// The dtype the weights were loaded in.
    pub fn model_dtype(&self) -> candle_core::DType {
        self.dtype
    }

    /// The device it runs on: `cpu` or `cuda:N`.
    pub fn device_name(&self) -> String {
        crate::device::device_name(self.model.device())
    }

    /// What the manifest calls the weights' precision: `f32`, `f16`,
    /// `bf16`, or the quantization of the projections (`q8_0`, `q4k`, `q6k`).
    pub fn precision(&self) -> String {
        match self.quantization {
            Some(q) => crate::device::quant_name(q),
            None => format!("{:?}", self.dtype).to_lowercase(),
        }
    }

    /// Generate for one padded batch of source id sequences.
    pub fn generate_ids(&self, batch: &[Vec<u32>]) -> Result<Vec<Hypothesis>> {
        let longest = batch.iter().map(Vec::len).max().unwrap_or(0);
        let pad = self.tokenizer.pad_id();
        let mut ids = Vec::with_capacity(batch.len() * longest);
        let mut mask = Vec::with_capacity(batch.len() * longest);
        for seq in batch {
            // Right padding, as MarianTokenizer does: positions of real tokens are unchanged.
            ids.extend(
                seq.iter()
                    .copied()
                    .chain(std::iter::repeat_n(pad, longest - seq.len())),
            );
            mask.extend(
                std::iter::repeat_n(1u32, seq.len())
                    .chain(std::iter::repeat_n(0, longest - seq.len())),
            );
        }
        let device = self.model.device();
        let ids = Tensor::from_vec(ids, (batch.len(), longest), device)?;
        let mask = Tensor::from_vec(mask, (batch.len(), longest), device)?;
        generate(&self.model, &ids, &mask, &self.options)
    }

    /// Translate `texts`; result i is the translation of text i.
    pub fn translate(&self, texts: &[&str]) -> Result<Vec<Translation>> {
        self.translate_with_progress(texts, |_| {})
    }

    /// As [`Translator::translate`], calling `progress(n)` after each batch of n units.
    pub fn translate_with_progress(
        &self,
        texts: &[&str],
        progress: impl FnMut(usize),
    ) -> Result<Vec<Translation>> {
        let encoded = texts
            .iter()
            .map(|t| self.encode_unit(t))
            .collect::<Result<Vec<_>>>()?;
        self.translate_encoded(encoded, progress)
    }

    /// Source ids of one unit; empty (nothing to translate) for blank text.
    pub fn encode_unit(&self, text: &str) -> Result<Vec<u32>> {
        if text.trim().is_empty() {
            return Ok(Vec::new());
        }
        let ids = self.tokenizer.encode(text)?;
        let rows = self.model.config().vocab_size;
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= rows) {
            return Err(Error::input(
                format!("token id {bad} is beyond the model's {rows} embedding rows"),
                "the text holds a special token this checkpoint cannot embed (e.g. a literal <mask>); remove it",
            ));
        }
        Ok(ids)
    }

    /// `text` as segments that fit the encoder's window, each with its ids: one
    /// segment when it fits, else pieces cut at the best boundaries
    /// ([`crate::text::ingest::split_to_fit`]). Nothing is truncated.
    pub fn encode_to_fit(&self, text: &str) -> Result<Vec<(String, Vec<u32>)>> {
        let window = self.model.config().max_position_embeddings;
        let whole = self.encode_unit(text)?;
        if whole.len() <= window {
            return Ok(vec![(text.to_string(), whole)]);
        }
        // Each candidate piece is encoded once (the whole text included): the
        // encodings made to measure are the ones returned.
        let mut seed = std::collections::HashMap::new();
        if text.trim() == text {
            // split_to_fit measures the trimmed text first.
            seed.insert(text.to_string(), whole);
        }
        let memo = std::cell::RefCell::new(seed);
        let count = |s: &str| {
            if let Some(ids) = memo.borrow().get(s) {
                return ids.len();
            }
            match self.encode_unit(s) {
                Ok(ids) => {
                    let n = ids.len();
                    memo.borrow_mut().insert(s.to_string(), ids);
                    n
                }
                // Unencodable: reported by the final encode below.
                Err(_) => usize::MAX,
            }
        };
        let pieces = crate::text::ingest::split_to_fit(text, window, &count);
        let mut memo = memo.into_inner();
        pieces
            .into_iter()
            .map(|p| {
                let ids = match memo.remove(&p) {
                    Some(ids) => ids,
                    None => self.encode_unit(&p)?,
                };
                Ok((p, ids))
            })
            .collect()
    }

    /// As [`Translator::translate_with_progress`], for units already encoded
    /// with [`Translator::encode_unit`] (empty ids translate to empty text).
    pub fn translate_encoded(
        &self,
        encoded: Vec<Vec<u32>>,
        mut progress: impl FnMut(usize),
    ) -> Result<Vec<Translation>> {
        let max_pos = self.model.config().max_position_embeddings;
        if let Some((i, ids)) = encoded
            .iter()
            .enumerate()
            .find(|(_, ids)| ids.len() > max_pos)
        {
            return Err(Error::input(
                format!(
                    "segment {} has {} source tokens, more than the encoder's {} positions",
                    i + 1,
                    ids.len(),
                    max_pos
                ),
                "cut it into pieces that fit first (Translator::encode_to_fit does, as `transum run` and `transum translate` do)",
            ));
        }
        let work: Vec<usize> = (0..encoded.len())
            .filter(|&i| !encoded[i].is_empty())
            .collect();
        let lengths: Vec<usize> = work.iter().map(|&i| encoded[i].len()).collect();
        let plan = crate::batch::plan(&lengths, self.batch_tokens, self.max_batch);
        let mut results = Vec::with_capacity(plan.len());
        for batch in &plan {
            let ids: Vec<Vec<u32>> = batch.iter().map(|&k| encoded[work[k]].clone()).collect();
            let hyps = on_pool(|| self.generate_ids(&ids))?;
            progress(batch.len());
            results.push(hyps);
        }
        let hyps = crate::batch::restore(work.len(), &plan, results);
        let mut out: Vec<Translation> = encoded
            .iter()
            .map(|ids| Translation {
                text: String::new(),
                source_ids: ids.clone(),
                hypothesis: Hypothesis {
                    tokens: Vec::new(),
                    score: None,
                    min_margin: f32::INFINITY,
                    cut: None,
                },
            })
            .collect();
        for (&i, h) in work.iter().zip(hyps) {
            out[i].text = self.tokenizer.decode(&h.tokens);
            out[i].hypothesis = h;
        }
        Ok(out)
    }
}

/// Run `f` on a worker of rayon's global pool (the calling thread waits).
///
/// Decoding alternates short serial stretches with some seventy parallel
/// regions per step. Called from outside the pool, each region hands its work
/// to the workers and puts the caller to sleep, and the kernel scheduler
/// showed up as a fifth of a small GEMM's time; from a worker, a region runs
/// part of its work in place and only the other workers are woken.
fn on_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return f();
    }
    // join from outside the pool runs both closures on a worker.
    rayon::join(f, || ()).0
}

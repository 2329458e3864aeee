//! The BART family of encoder-decoders, one file for all of it. The members
//! differ only in switches of [`Arch`], chosen by `config.json`'s `model_type`:
//! - Marian/OPUS-MT (`modeling_marian.py`): static sinusoidal positions,
//!   embeddings scaled by sqrt(d_model), post-norm layers.
//! - BART (`modeling_bart.py`): learned positions with offset 2, a
//!   `layernorm_embedding` after embeddings + positions, post-norm layers.
//! - Pegasus (`modeling_pegasus.py`): sinusoidal positions, pre-norm layers and
//!   a final layer norm after the encoder and after the decoder.
//!
//! All share embeddings tied to the lm_head plus `final_logits_bias`.
//!
//! Batching: padding is masked in encoder self-attention and cross-attention;
//! the encoder runs once per batch; cross-attention K/V are computed once per
//! batch and held once per input (beams share them); the decoder keeps a KV cache.

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use super::attention::{causal_mask, padding_mask, Attention};
use super::embedding::{fairseq_sinusoidal_table, sinusoidal_table, Table};
use super::kv_cache::{Cache, KeyValue};
use super::linear::{to_f32, Linear, Prepared, Weight};
use super::norm::{Activation, LayerNorm};
use super::Seq2Seq;
use crate::device::Placement;
use crate::error::{Error, Result};
use crate::weights::Weights;

fn default_true() -> bool {
    true
}
fn default_act() -> String {
    "gelu".into()
}

/// `config.json` of a BART-family checkpoint, with Hugging Face field names.
/// Fields absent from the file take transformers' defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct BartConfig {
    #[serde(default)]
    pub model_type: String,
    pub vocab_size: usize,
    #[serde(default)]
    pub decoder_vocab_size: Option<usize>,
    pub d_model: usize,
    pub encoder_layers: usize,
    pub decoder_layers: usize,
    pub encoder_attention_heads: usize,
    pub decoder_attention_heads: usize,
    pub encoder_ffn_dim: usize,
    pub decoder_ffn_dim: usize,
    #[serde(default = "default_act")]
    pub activation_function: String,
    pub max_position_embeddings: usize,
    #[serde(default)]
    pub scale_embedding: bool,
    pub pad_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub bos_token_id: Option<u32>,
    pub decoder_start_token_id: Option<u32>,
    pub forced_eos_token_id: Option<u32>,
    #[serde(default = "default_true")]
    pub share_encoder_decoder_embeddings: bool,
    #[serde(default = "default_true")]
    pub tie_word_embeddings: bool,
    /// Legacy generation fields some checkpoints still carry in config.json.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl BartConfig {
    /// Parse and check a config.json text.
    pub fn from_json(text: &str) -> std::result::Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Vocabulary of the decoder side (the logits' width).
    pub fn target_vocab_size(&self) -> usize {
        self.decoder_vocab_size.unwrap_or(self.vocab_size)
    }

    /// Whether one table is both embeddings and the LM head (tied, shared
    /// by encoder and decoder, one vocabulary): then it can be quantized as
    /// read, and a q8_0 `model.gguf` stores it once, quantized.
    pub fn tied_table(&self) -> bool {
        self.tie_word_embeddings
            && self.share_encoder_decoder_embeddings
            && self.vocab_size == self.target_vocab_size()
    }
}

/// How one member of the family differs from the others.
#[derive(Debug, Clone, Copy)]
pub struct Arch {
    /// Static sinusoidal positions (Marian, Pegasus) rather than learned ones.
    pub sinusoidal_positions: bool,
    /// Learned position tables start this many rows in (BART: 2).
    pub position_offset: usize,
    /// A layer norm right after embeddings + positions (BART's `layernorm_embedding`).
    pub layernorm_embedding: bool,
    /// Pre-norm layers with a final layer norm per stack (Pegasus, M2M100); else post-norm.
    pub pre_norm: bool,
    /// Sinusoids in fairseq's layout (M2M100): frequencies
    /// `exp(-i ln(10000) / (d/2 - 1))`, rows counted from `padding_idx + 1`;
    /// else transformers' Marian/Pegasus table (`10000^(2i/d)`, from 0).
    pub fairseq_positions: bool,
    /// Whether the checkpoint has a `final_logits_bias` (M2M100 has none).
    pub logits_bias: bool,
}

impl Arch {
    /// The architecture for `model_type`, or an error listing the supported ones.
    pub fn for_model_type(model_type: &str) -> Result<Self> {
        match model_type {
            "marian" => Ok(Arch {
                sinusoidal_positions: true,
                position_offset: 0,
                layernorm_embedding: false,
                pre_norm: false,
                fairseq_positions: false,
                logits_bias: true,
            }),
            "bart" => Ok(Arch {
                sinusoidal_positions: false,
                position_offset: 2,
                layernorm_embedding: true,
                pre_norm: false,
                fairseq_positions: false,
                logits_bias: true,
            }),
            "pegasus" => Ok(Arch {
                sinusoidal_positions: true,
                position_offset: 0,
                layernorm_embedding: false,
                pre_norm: true,
                fairseq_positions: false,
                logits_bias: true,
            }),
            // M2M100 and NLLB-200 (`modeling_m2m_100.py`): pre-norm with final
            // layer norms, scaled embeddings, no final_logits_bias, and fairseq
            // positions offset by padding_idx + 1 (= 2).
            "m2m_100" => Ok(Arch {
                sinusoidal_positions: true,
                position_offset: 2,
                layernorm_embedding: false,
                pre_norm: true,
                fairseq_positions: true,
                logits_bias: false,
            }),
            other => Err(Error::setting(
                format!("model_type {other:?} is not supported"),
                "supported model types: marian (Helsinki-NLP/opus-mt-*), bart (facebook/bart-large-cnn, \
                 sshleifer/distilbart-cnn-12-6), pegasus (google/pegasus-multi_news), m2m_100 \
                 (facebook/m2m100_418M)",
            )),
        }
    }
}

struct EncoderLayer {
    self_attn: Attention,
    self_attn_layer_norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    final_layer_norm: LayerNorm,
}

struct DecoderLayer {
    self_attn: Attention,
    self_attn_layer_norm: LayerNorm,
    encoder_attn: Attention,
    encoder_attn_layer_norm: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    final_layer_norm: LayerNorm,
}

/// Layer norms around one stack (encoder or decoder) that only some members have.
struct StackNorms {
    /// After embeddings + positions (BART).
    embedding: Option<LayerNorm>,
    /// After the last layer (Pegasus).
    last: Option<LayerNorm>,
}

impl StackNorms {
    fn load(w: &Weights, arch: &Arch, side: &str, d: usize) -> Result<Self> {
        let m = w.pp(format!("model.{side}"));
        Ok(StackNorms {
            embedding: if arch.layernorm_embedding {
                Some(LayerNorm::load(&m.pp("layernorm_embedding"), d)?)
            } else {
                None
            },
            last: if arch.pre_norm {
                Some(LayerNorm::load(&m.pp("layer_norm"), d)?)
            } else {
                None
            },
        })
    }
}

fn norm(ln: &Option<LayerNorm>, x: Tensor) -> Result<Tensor> {
    match ln {
        Some(ln) => ln.forward(&x),
        None => Ok(x),
    }
}

/// A BART-family encoder-decoder with its LM head.
pub struct BartModel {
    config: BartConfig,
    arch: Arch,
    encoder_norms: StackNorms,
    decoder_norms: StackNorms,
    encoder_embed: Table,
    decoder_embed: Table,
    encoder_positions: Tensor,
    decoder_positions: Tensor,
    embed_scale: f64,
    encoder_layers: Vec<EncoderLayer>,
    decoder_layers: Vec<DecoderLayer>,
    lm_head: Linear,
    /// Whether the (encoder, decoder) embedding tables are the LM head's matrix.
    lm_tied: (bool, bool),
    activation: Activation,
    dtype: DType,
    device: Device,
}

/// Decoding state of one batch: see [`Seq2Seq`].
pub struct BartState {
    /// Encoder K/V per decoder layer, one entry per input item.
    cross: Vec<KeyValue>,
    /// Additive padding mask per item, [items, 1, 1, src_len].
    mask: Tensor,
    /// Self-attention cache per decoder layer, one entry per row.
    cache: Vec<Option<Cache>>,
    /// Row selection owed to `cache` (applied while appending at the next step).
    pending: Option<Vec<u32>>,
    /// Rows per item (beams); rows of one item are consecutive.
    group: usize,
    rows: usize,
    /// Decoder tokens fed so far (the next position).
    past: usize,
}

impl BartState {
    /// Record that the cache's rows become `rows` (composed with any earlier debt).
    fn owe_rows(&mut self, rows: &[u32]) {
        self.pending = Some(match &self.pending {
            Some(prev) => rows.iter().map(|&r| prev[r as usize]).collect(),
            None => rows.to_vec(),
        });
    }
}

impl BartModel {
    /// Build the model from `config` and weights named as in the Hugging Face checkpoint.
    pub fn load(config: BartConfig, w: &Weights) -> Result<Self> {
        let arch = Arch::for_model_type(&config.model_type)?;
        let d = config.d_model;
        let m = w.pp("model");
        let src_vocab = config.vocab_size;
        let tgt_vocab = config.target_vocab_size();

        // Tied embeddings: transformers 5 writes only `model.shared.weight`; older
        // pytorch_model.bin files carry the tied copies too. Take what exists.
        let first = |names: &[String], vocab: usize| -> Result<Tensor> {
            for n in names {
                if w.contains(n) {
                    return w.get(n, &[vocab, d]);
                }
            }
            w.get(&names[0], &[vocab, d])
        };
        let shared = ["model.shared.weight".to_string()];
        let final_logits_bias = || -> Result<Tensor> {
            Ok(if w.contains("final_logits_bias") {
                w.get("final_logits_bias", &[1, tgt_vocab])?
                    .reshape(tgt_vocab)?
            } else {
                if arch.logits_bias {
                    tracing::warn!(
                        "{}: no final_logits_bias; using zeros as transformers does",
                        w.path().display()
                    );
                }
                Tensor::zeros(tgt_vocab, w.dtype(), w.device())?
            })
        };
        // With q8_0 on the CPU a tied table may have been packed as it was read
        // (`Weights::load` with `tied_table`): it is then the LM head and both
        // tables. Unpacked, it is held quantized (the head, below) and read
        // dequantized (the embeddings).
        let (encoder_embed, decoder_embed, lm_head, lm_tied) = match w.packed(&shared[0]) {
            Some(p) => {
                if p.out_dim() != src_vocab || p.out_dim() != tgt_vocab || p.in_dim() != d {
                    return Err(Error::file(
                        w.path(),
                        format!(
                            "tensor `{}` is [{}, {}], expected [{src_vocab}, {d}]",
                            shared[0],
                            p.out_dim(),
                            p.in_dim()
                        ),
                        "config.json and the weights come from different checkpoints; fetch them again",
                        None,
                    ));
                }
                let head = Linear::new(Weight::Packed(p.clone()), Some(final_logits_bias()?));
                (
                    Table::Packed(p.clone()),
                    Table::Packed(p),
                    head,
                    (true, true),
                )
            }
            None => {
                let encoder_embed = if config.share_encoder_decoder_embeddings {
                    first(
                        &[
                            shared[0].clone(),
                            "model.encoder.embed_tokens.weight".into(),
                        ],
                        src_vocab,
                    )?
                } else {
                    first(
                        &[
                            "model.encoder.embed_tokens.weight".into(),
                            shared[0].clone(),
                        ],
                        src_vocab,
                    )?
                };
                let decoder_embed = if config.share_encoder_decoder_embeddings {
                    encoder_embed.clone()
                } else {
                    // A `.bin` export whose decoder table is the shared one
                    // is read once, under the shared name (`weights::read_pth`).
                    first(
                        &[
                            "model.decoder.embed_tokens.weight".into(),
                            shared[0].clone(),
                        ],
                        tgt_vocab,
                    )?
                };
                let lm_weight = if w.contains("lm_head.weight") && !config.tie_word_embeddings {
                    w.get("lm_head.weight", &[tgt_vocab, d])?
                } else {
                    decoder_embed.clone()
                };
                // A quantized file (transum quantize) stores the tied lm_head quantized
                // under its Hugging Face name; otherwise it is the (tied) float matrix.
                // Which embedding tables are the LM head's matrix (then, once the head
                // is packed, they read its rows instead of holding a copy). A quantized
                // head from a file is the tied table when the config ties them.
                let head_is_decoder_table = if w.is_quantized("lm_head.weight") {
                    config.tie_word_embeddings
                } else {
                    lm_weight.id() == decoder_embed.id()
                };
                let lm_tied = (
                    head_is_decoder_table && encoder_embed.id() == decoder_embed.id(),
                    head_is_decoder_table,
                );
                let lm_matrix = if w.is_quantized("lm_head.weight") {
                    w.weight("lm_head.weight", tgt_vocab, d)?
                } else if head_is_decoder_table && w.is_quantized(&shared[0]) {
                    // A q8_0 table held quantized (not packed): the head
                    // multiplies by it as it is; the embeddings above read
                    // its dequantized values.
                    w.weight(&shared[0], tgt_vocab, d)?
                } else {
                    Weight::Dense(lm_weight)
                };
                let lm_head = Linear::new(lm_matrix, Some(final_logits_bias()?));
                (
                    Table::Dense(encoder_embed),
                    Table::Dense(decoder_embed),
                    lm_head,
                    lm_tied,
                )
            }
        };

        // transformers 5 does not save the static table and recomputes it; files that
        // carry one (pytorch_model.bin from torch.save) are loaded as transformers
        // loads them, so the file's values win.
        let n_pos = config.max_position_embeddings;
        let rows = n_pos + arch.position_offset;
        let values = if arch.fairseq_positions {
            let padding_idx = config.pad_token_id.unwrap_or(1) as usize;
            fairseq_sinusoidal_table(rows, d, padding_idx)
        } else {
            sinusoidal_table(rows, d)
        };
        let table = Tensor::from_vec(values, (rows, d), w.device())?.to_dtype(w.dtype())?;
        let positions = |side: &str| -> Result<Tensor> {
            let name = format!("model.{side}.embed_positions.weight");
            if !arch.sinusoidal_positions {
                // Learned: the table is a weight, offset rows included.
                w.get(&name, &[n_pos + arch.position_offset, d])
            } else if w.contains(&name) {
                w.get(&name, &[n_pos, d])
            } else {
                Ok(table.clone())
            }
        };
        let encoder_positions = positions("encoder")?;
        let decoder_positions = positions("decoder")?;

        let mut encoder_layers = Vec::with_capacity(config.encoder_layers);
        for i in 0..config.encoder_layers {
            let l = m.pp(format!("encoder.layers.{i}"));
            encoder_layers.push(EncoderLayer {
                self_attn: Attention::load(&l.pp("self_attn"), d, config.encoder_attention_heads)?,
                self_attn_layer_norm: LayerNorm::load(&l.pp("self_attn_layer_norm"), d)?,
                fc1: Linear::load(&l.pp("fc1"), d, config.encoder_ffn_dim, true)?,
                fc2: Linear::load(&l.pp("fc2"), config.encoder_ffn_dim, d, true)?,
                final_layer_norm: LayerNorm::load(&l.pp("final_layer_norm"), d)?,
            });
        }
        let mut decoder_layers = Vec::with_capacity(config.decoder_layers);
        for i in 0..config.decoder_layers {
            let l = m.pp(format!("decoder.layers.{i}"));
            decoder_layers.push(DecoderLayer {
                self_attn: Attention::load(&l.pp("self_attn"), d, config.decoder_attention_heads)?,
                self_attn_layer_norm: LayerNorm::load(&l.pp("self_attn_layer_norm"), d)?,
                encoder_attn: Attention::load(
                    &l.pp("encoder_attn"),
                    d,
                    config.decoder_attention_heads,
                )?,
                encoder_attn_layer_norm: LayerNorm::load(&l.pp("encoder_attn_layer_norm"), d)?,
                fc1: Linear::load(&l.pp("fc1"), d, config.decoder_ffn_dim, true)?,
                fc2: Linear::load(&l.pp("fc2"), config.decoder_ffn_dim, d, true)?,
                final_layer_norm: LayerNorm::load(&l.pp("final_layer_norm"), d)?,
            });
        }
        Ok(BartModel {
            encoder_norms: StackNorms::load(w, &arch, "encoder", d)?,
            decoder_norms: StackNorms::load(w, &arch, "decoder", d)?,
            arch,
            embed_scale: if config.scale_embedding {
                (d as f64).sqrt()
            } else {
                1.0
            },
            activation: Activation::from_name(&config.activation_function)?,
            dtype: w.dtype(),
            device: w.device().clone(),
            config,
            encoder_embed,
            decoder_embed,
            encoder_positions,
            decoder_positions,
            encoder_layers,
            decoder_layers,
            lm_head,
            lm_tied,
        })
    }

    /// Half-precision logits that hold inf or NaN: the error and its fix.
    fn overflowed(&self) -> Error {
        Error::setting(
            format!(
                "the logits hold inf or NaN in {}: the model overflowed its precision",
                format!("{:?}", self.dtype).to_lowercase()
            ),
            "use --dtype bf16 (f32's range at f16's speed on GPUs) or --dtype f32",
        )
    }

    /// The parsed config.json.
    pub fn config(&self) -> &BartConfig {
        &self.config
    }

    /// The same model with every projection (attention, FFN, lm_head) passed
    /// through `f`, which is told how many of the checkpoint's projections
    /// each one holds (a fused q/k/v holds 3). The one walk over the layers:
    /// quantizing and packing go through it.
    pub fn map_linears(self, f: &mut dyn FnMut(Linear, usize) -> Result<Linear>) -> Result<Self> {
        let mut m = self;
        m.encoder_layers = m
            .encoder_layers
            .into_iter()
            .map(|l| {
                Ok(EncoderLayer {
                    self_attn: l.self_attn.map_linears(f)?,
                    fc1: f(l.fc1, 1)?,
                    fc2: f(l.fc2, 1)?,
                    ..l
                })
            })
            .collect::<Result<_>>()?;
        m.decoder_layers = m
            .decoder_layers
            .into_iter()
            .map(|l| {
                Ok(DecoderLayer {
                    self_attn: l.self_attn.map_linears(f)?,
                    encoder_attn: l.encoder_attn.map_linears(f)?,
                    fc1: f(l.fc1, 1)?,
                    fc2: f(l.fc2, 1)?,
                    ..l
                })
            })
            .collect::<Result<_>>()?;
        m.lm_head = f(m.lm_head, 1)?;
        Ok(m)
    }

    /// The model in the form `placement` runs it ([`Linear::prepare`] for every
    /// projection), and how many of the checkpoint's projections are
    /// quantized (now or as they were read) and how many kept float for their
    /// width. Embedding
    /// tables tied to a packed LM head then read its rows instead of keeping
    /// their own copy (opus-mt: 122 MB less); with a q8_0 head they read its
    /// dequantized rows, as CTranslate2's int8 models share theirs.
    pub fn prepare(self, placement: &Placement) -> Result<(Self, usize, usize)> {
        let (mut quantized, mut kept) = (0, 0);
        let mut m = self.map_linears(&mut |l, n| {
            let (l, done) = l.prepare(placement)?;
            if l.is_quantized() {
                quantized += n;
            } else if done == Prepared::KeptFloat {
                kept += n;
            }
            Ok(l)
        })?;
        if let Some(p) = m.lm_head.packed() {
            if m.lm_tied.0 {
                m.encoder_embed = Table::Packed(p.clone());
            }
            if m.lm_tied.1 {
                m.decoder_embed = Table::Packed(p.clone());
            }
        }
        Ok((m, quantized, kept))
    }

    /// Whether any projection is quantized.
    pub fn is_quantized(&self) -> bool {
        self.lm_head.is_quantized() || self.decoder_layers.iter().any(|l| l.fc1.is_quantized())
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    fn embed(
        &self,
        table: &Table,
        positions: &Tensor,
        ids: &Tensor,
        past: usize,
    ) -> Result<Tensor> {
        let (_, t) = ids.dims2()?;
        // Callers keep within the table (the translator splits long sources,
        // generation caps its length at the decoder's positions); this guards
        // the narrow below against a caller that does not.
        if past + t > self.config.max_position_embeddings {
            return Err(Error::input(
                format!(
                    "{} tokens do not fit the model's {} positions",
                    past + t,
                    self.config.max_position_embeddings
                ),
                "split the source into shorter segments, or generate fewer tokens (--max-new-tokens)",
            ));
        }
        let x = (table.lookup(ids)? * self.embed_scale)?;
        let pos = positions.narrow(0, past + self.arch.position_offset, t)?;
        Ok(x.broadcast_add(&pos)?)
    }

    /// Feed-forward block: fc2(act(fc1(x))).
    fn ffn(&self, fc1: &Linear, fc2: &Linear, x: &Tensor) -> Result<Tensor> {
        fc2.forward(&self.activation.forward(&fc1.forward(x)?)?)
    }

    /// One residual sub-layer, post-norm (`ln(h + f(h))`) or pre-norm
    /// (`h + f(ln(h))`) as the architecture says.
    fn sublayer(
        &self,
        h: Tensor,
        ln: &LayerNorm,
        f: impl FnOnce(&Tensor) -> Result<Tensor>,
    ) -> Result<Tensor> {
        if self.arch.pre_norm {
            let y = f(&ln.forward(&h)?)?;
            Ok((h + y)?)
        } else {
            let y = f(&h)?;
            ln.forward(&(h + y)?)
        }
    }

    /// Encoder hidden states [b, s, d] for a padded batch.
    pub fn encode(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<(Tensor, Tensor)> {
        let mask = padding_mask(attention_mask, self.dtype)?;
        let h = self.embed(&self.encoder_embed, &self.encoder_positions, input_ids, 0)?;
        let mut h = norm(&self.encoder_norms.embedding, h)?;
        for l in &self.encoder_layers {
            h = self.sublayer(h, &l.self_attn_layer_norm, |x| {
                l.self_attn.self_attention(x, Some(&mask), None, None)
            })?;
            h = self.sublayer(h, &l.final_layer_norm, |x| self.ffn(&l.fc1, &l.fc2, x))?;
        }
        Ok((norm(&self.encoder_norms.last, h)?, mask))
    }

    /// Decoder over `tokens` [rows, t] after `state.past` cached positions;
    /// returns the final hidden states [rows, t, d].
    fn decode(&self, state: &mut BartState, tokens: &Tensor) -> Result<Tensor> {
        let (_, t) = tokens.dims2()?;
        let h = self.embed(
            &self.decoder_embed,
            &self.decoder_positions,
            tokens,
            state.past,
        )?;
        let mut h = norm(&self.decoder_norms.embedding, h)?;
        let causal = if t > 1 {
            Some(causal_mask(t, state.past, self.dtype, &self.device)?)
        } else {
            None
        };
        for (i, l) in self.decoder_layers.iter().enumerate() {
            let cache = &mut state.cache[i];
            let pending = state.pending.as_deref();
            h = self.sublayer(h, &l.self_attn_layer_norm, |x| {
                l.self_attn
                    .self_attention(x, causal.as_ref(), Some(cache), pending)
            })?;
            h = self.sublayer(h, &l.encoder_attn_layer_norm, |x| {
                l.encoder_attn
                    .cross_attention(x, &state.cross[i], &state.mask, state.group)
            })?;
            h = self.sublayer(h, &l.final_layer_norm, |x| self.ffn(&l.fc1, &l.fc2, x))?;
        }
        state.past += t;
        state.pending = None;
        norm(&self.decoder_norms.last, h)
    }

    /// Logits [rows, t, vocab] (f32) for a whole decoder prefix: teacher forcing,
    /// used by tests and accuracy checks. The state's cache advances by t.
    pub fn forward_prefix(&self, state: &mut BartState, tokens: &Tensor) -> Result<Tensor> {
        let h = self.decode(state, tokens)?;
        to_f32(&self.lm_head.forward(&h)?)
    }
}

impl Seq2Seq for BartModel {
    type State = BartState;

    fn start(&self, input_ids: &Tensor, attention_mask: &Tensor) -> Result<BartState> {
        let (h, mask) = self.encode(input_ids, attention_mask)?;
        let cross = self
            .decoder_layers
            .iter()
            .map(|l| l.encoder_attn.key_value(&h))
            .collect::<Result<Vec<_>>>()?;
        let rows = input_ids.dim(0)?;
        Ok(BartState {
            cross,
            mask,
            cache: vec![None; self.decoder_layers.len()],
            pending: None,
            group: 1,
            rows,
            past: 0,
        })
    }

    fn step(&self, state: &mut BartState, tokens: &[u32]) -> Result<Vec<f32>> {
        let ids = Tensor::from_slice(tokens, (tokens.len(), 1), &self.device)?;
        let h = self.decode(state, &ids)?;
        // [rows, vocab] with final_logits_bias, on the host.
        let logits = self.lm_head.forward_host(&last_position(&h)?)?;
        // Half precision can overflow (f16 tops out at 65504): a row of inf
        // or NaN would decode as garbage, so it stops here, loudly.
        if self.dtype != DType::F32 && logits.iter().any(|v| !v.is_finite()) {
            return Err(self.overflowed());
        }
        Ok(logits)
    }

    fn step_tensor(&self, state: &mut BartState, tokens: &[u32]) -> Result<Tensor> {
        let ids = Tensor::from_slice(tokens, (tokens.len(), 1), &self.device)?;
        let h = self.decode(state, &ids)?;
        let logits = to_f32(&self.lm_head.forward(&last_position(&h)?)?)?;
        // As in `step`: half precision that overflowed stops here (one scalar
        // crosses to the host: inf or NaN anywhere makes the sum non-finite).
        if self.dtype != DType::F32 && !logits.sum_all()?.to_scalar::<f32>()?.is_finite() {
            return Err(self.overflowed());
        }
        Ok(logits)
    }

    fn bound_positions(&self, state: &mut BartState, positions: usize) {
        for (slot, l) in state.cache.iter_mut().zip(&self.decoder_layers) {
            if slot.is_none() {
                *slot = Some(l.self_attn.empty_cache(positions));
            }
        }
    }

    fn searches_on_device(&self) -> bool {
        !self.device.is_cpu() || !crate::cpu::host_kernels()
    }

    fn select_rows(&self, state: &mut BartState, rows: &[u32]) -> Result<()> {
        let g = state.group;
        if !rows.len().is_multiple_of(g) {
            return Err(Error::setting(
                format!(
                    "select_rows: {} rows is not a multiple of the group size {g}",
                    rows.len()
                ),
                "this is a bug in the search code",
            ));
        }
        state.owe_rows(rows);
        // Items kept, in order: the item of each group's first row.
        let items: Vec<u32> = rows.chunks(g).map(|c| c[0] / g as u32).collect();
        let unchanged = items.len() * g == state.rows
            && items.iter().enumerate().all(|(i, &it)| it == i as u32);
        if !unchanged {
            let item_idx = Tensor::from_slice(&items, items.len(), &self.device)?;
            state.cross = state
                .cross
                .iter()
                .map(|kv| kv.select(&item_idx))
                .collect::<Result<_>>()?;
            state.mask = state.mask.index_select(&item_idx, 0)?;
        }
        state.rows = rows.len();
        Ok(())
    }

    fn repeat_rows(&self, state: &mut BartState, n: usize) -> Result<()> {
        // Beams share their item's encoder K/V: only the per-row cache is repeated.
        let rows: Vec<u32> = (0..state.rows as u32)
            .flat_map(|r| std::iter::repeat_n(r, n))
            .collect();
        state.owe_rows(&rows);
        state.group *= n;
        state.rows = rows.len();
        Ok(())
    }

    fn rows(&self, state: &BartState) -> usize {
        state.rows
    }

    fn vocab_size(&self) -> usize {
        self.config.target_vocab_size()
    }

    fn max_target_positions(&self) -> usize {
        self.config.max_position_embeddings
    }
}

/// Last position of [b, t, d] as [b, d].
fn last_position(x: &Tensor) -> Result<Tensor> {
    let t = x.dim(1)?;
    Ok(x.narrow(1, t - 1, 1)?.squeeze(1)?)
}

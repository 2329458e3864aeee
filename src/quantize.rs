//! `transum quantize`: a checkpoint -> a directory with `model.gguf` (every
//! tensor, projections quantized) beside the checkpoint's config, generation
//! and tokenizer files, which then loads with `--model DIR` like any other.
//!
//! Projections (q/k/v/out_proj, fc1, fc2, and the lm_head) are stored in the
//! chosen format; positions, layer norms and biases stay f32, as they cost
//! little and matter for accuracy. A projection whose input width is not a
//! multiple of the format's block size stays f32 too (reported). An LM head
//! tied to the embeddings is stored under its Hugging Face name,
//! `lm_head.weight`, beside the f32 table; except in q8_0 when one table is
//! both embeddings and LM head (`BartConfig::tied_table`): that table is
//! stored once, q8_0, as `model.shared.weight` (its tied copies dropped), the
//! form `--quantize q8_0` gives it at load, so that loading the file never
//! reads a float table (122 MB for opus-mt). Tensor names stay the
//! checkpoint's.

use std::path::{Path, PathBuf};

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Tensor};

use crate::device::Placement;
use crate::error::{Error, Result};
use crate::hub::ModelFiles;
use crate::weights::{is_projection, Weights};

/// What `transum quantize` wrote.
#[derive(Debug, Clone)]
pub struct QuantizeReport {
    pub out: PathBuf,
    pub quantized: usize,
    pub kept_float: Vec<String>,
    pub bytes: u64,
}

/// The storage format names `transum quantize --dtype` takes.
pub const DTYPE_NAMES: [&str; 4] = ["q8_0", "q4k", "q6k", "f16"];

/// Parse a `--dtype` of `transum quantize`.
pub fn parse_dtype(name: &str) -> Result<GgmlDType> {
    if name.eq_ignore_ascii_case("f16") {
        return Ok(GgmlDType::F16);
    }
    crate::device::parse_quant(name).map_err(|_| {
        Error::setting(
            format!("unknown --dtype {name:?}"),
            format!("use one of: {}", DTYPE_NAMES.join(", ")),
        )
    })
}

/// Files copied next to `model.gguf`.
const COMPANIONS: [&str; 11] = [
    "config.json",
    "generation_config.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "source.spm",
    "target.spm",
    "vocab.json",
    "target_vocab.json",
    "merges.txt",
    "tokenizer.json",
    "spiece.model",
];

/// Quantize the checkpoint in `files` to `dtype` into directory `out`.
pub fn quantize_checkpoint(
    files: &ModelFiles,
    dtype: GgmlDType,
    out: &Path,
) -> Result<QuantizeReport> {
    let config_path = files.dir.join("config.json");
    let config = crate::tokenizer::read_json(&config_path)?;
    let model_type = config["model_type"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    crate::models::bart::Arch::for_model_type(&model_type).map_err(|e| e.in_file(&config_path))?;
    let parsed = crate::translate::parse_config(&config, &config_path)?;
    let one_table = dtype == GgmlDType::Q8_0 && parsed.tied_table();
    let w = Weights::load(&files.weights, &Placement::cpu(), false)?;
    // The same decision as quantizing at load: a projection is stored in
    // `dtype` when its input width fits the format's blocks.
    let target = Placement::cpu_quantized(dtype);
    let (floats, already) = w.all();
    if !already.is_empty() {
        return Err(Error::file(
            &files.weights,
            "is already quantized",
            "quantize the original (float) checkpoint instead",
            None,
        ));
    }
    let mut tensors: Vec<(String, QTensor)> = Vec::with_capacity(floats.len() + 1);
    let mut quantized = 0;
    let mut kept_float = Vec::new();
    let store = |name: &str,
                 t: &Tensor,
                 tensors: &mut Vec<(String, QTensor)>,
                 quantized: &mut usize,
                 kept: &mut Vec<String>|
     -> Result<()> {
        // A fresh buffer (QTensor::quantize ignores a view's offset).
        let t = Tensor::from_vec(
            t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?,
            t.dims(),
            t.device(),
        )?;
        let table = one_table && name == "model.shared.weight";
        let format = if (is_projection(name) || table) && t.rank() == 2 {
            match target.quantization_for(t.dim(1)?) {
                Some(q) => {
                    *quantized += 1;
                    q
                }
                None => {
                    // The table's head is reported as the lm_head below.
                    if !table {
                        kept.push(name.to_string());
                    }
                    GgmlDType::F32
                }
            }
        } else {
            GgmlDType::F32
        };
        tensors.push((name.to_string(), QTensor::quantize(&t, format)?));
        Ok(())
    };
    for (name, t) in &floats {
        // The one table serves both sides and the head (see the module doc).
        let tied_copy = one_table
            && matches!(
                *name,
                "model.encoder.embed_tokens.weight"
                    | "model.decoder.embed_tokens.weight"
                    | "lm_head.weight"
            )
            && floats.iter().any(|(n, _)| *n == "model.shared.weight");
        if !tied_copy {
            store(name, t, &mut tensors, &mut quantized, &mut kept_float)?;
        }
    }
    // The tied lm_head, quantized on its own (the embedding it is tied to stays f32).
    let tied = config
        .get("tie_word_embeddings")
        .and_then(|v| v.as_bool())
        .unwrap_or(true);
    let table_stored = one_table
        && tensors
            .iter()
            .any(|(n, t)| n == "model.shared.weight" && t.dtype() == GgmlDType::Q8_0);
    if dtype != GgmlDType::F16 && !table_stored && (tied || !w.contains("lm_head.weight")) {
        let embed = ["model.decoder.embed_tokens.weight", "model.shared.weight"]
            .iter()
            .find(|n| w.contains(n))
            .ok_or_else(|| Error::file(
                &files.weights,
                "has no model.shared.weight or model.decoder.embed_tokens.weight to tie the lm_head to",
                "this does not look like a BART-family checkpoint",
                None,
            ))?;
        let t = floats
            .iter()
            .find(|(n, _)| n == embed)
            .expect("present")
            .1
            .clone();
        tensors.retain(|(n, _)| n != "lm_head.weight");
        store(
            "lm_head.weight",
            &t,
            &mut tensors,
            &mut quantized,
            &mut kept_float,
        )?;
    }

    std::fs::create_dir_all(out).map_err(|e| {
        Error::file(
            out,
            "cannot be created",
            "check permissions or pass another --out",
            Some(Box::new(e)),
        )
    })?;
    let name = crate::device::quant_name(dtype);
    let metadata = [
        ("general.architecture", gguf_file::Value::String(model_type)),
        (
            "transum.quantization",
            gguf_file::Value::String(if dtype == GgmlDType::F16 {
                "f16".into()
            } else {
                name
            }),
        ),
        (
            "transum.source",
            gguf_file::Value::String(files.dir.display().to_string()),
        ),
    ];
    let meta: Vec<(&str, &gguf_file::Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let target = out.join("model.gguf");
    let tmp = out.join(format!(".model.gguf.tmp-{}", std::process::id()));
    let io = |e: std::io::Error| {
        Error::file(
            &target,
            "cannot be written",
            "check free space and permissions",
            Some(Box::new(e)),
        )
    };
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io)?);
        gguf_file::write(&mut f, &meta, &refs)?;
        let f = f.into_inner().map_err(|e| io(e.into_error()))?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, &target).map_err(io)?;
    for c in COMPANIONS {
        let src = files.dir.join(c);
        if src.is_file() {
            let bytes = std::fs::read(&src).map_err(|e| {
                Error::file(
                    &src,
                    "cannot be read",
                    "check the model directory",
                    Some(Box::new(e)),
                )
            })?;
            crate::outputs::write_atomic(&out.join(c), &bytes)?;
        }
    }
    let bytes = std::fs::metadata(&target).map(|m| m.len()).unwrap_or(0);
    Ok(QuantizeReport {
        out: out.to_path_buf(),
        quantized,
        kept_float,
        bytes,
    })
}

//! Weight loading: safetensors (memory-mapped) or PyTorch `pytorch_model.bin`
//! (candle's pickle reader, which executes no code) into one name -> tensor map,
//! carrying the device and dtype chosen once in `device.rs`.
//!
//! Tensor names stay the Hugging Face checkpoint's; the only renames happen here
//! (checkpoints saved without the `model.` prefix). Every lookup error names the
//! tensor, the file and the expected shape.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::QMatMul;
use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

/// Weight file names we know, in order of preference.
pub const WEIGHT_FILES: [&str; 2] = ["model.safetensors", "pytorch_model.bin"];

/// The first weight file present in `dir`, safetensors preferred.
pub fn find_weight_file(dir: &Path) -> Result<PathBuf> {
    WEIGHT_FILES
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::file(
                dir,
                "has no model.safetensors or pytorch_model.bin",
                "download the model (`transum download <model>`) or point --model at a complete checkpoint directory",
                None,
            )
        })
}

struct Inner {
    tensors: HashMap<String, Tensor>,
    path: PathBuf,
    device: Device,
    dtype: DType,
}

/// A loaded checkpoint plus a name prefix, like candle's `VarBuilder::pp`.
#[derive(Clone)]
pub struct Weights {
    inner: Arc<Inner>,
    prefix: String,
}

impl Weights {
    /// Load every tensor of `path` onto `device`, converting floats to `dtype`.
    pub fn load(path: &Path, device: &Device, dtype: DType) -> Result<Self> {
        let corrupt = |e: candle_core::Error| {
            Error::file(
                path,
                "cannot be read as a weight file (truncated or corrupt?)",
                "fetch it again with `transum download --force <model>`",
                Some(Box::new(e)),
            )
        };
        let is_safetensors = path.extension().is_some_and(|e| e == "safetensors");
        let raw: Vec<(String, Tensor)> = if is_safetensors {
            // SAFETY: the file is mapped read-only; transum never writes to model files
            // while they are loaded.
            let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(path) }
                .map_err(corrupt)?;
            st.tensors()
                .into_iter()
                .map(|(name, _)| st.load(&name, &Device::Cpu).map(|t| (name, t)))
                .collect::<std::result::Result<_, _>>()
                .map_err(corrupt)?
        } else {
            candle_core::pickle::read_all_with_key(path, None).map_err(corrupt)?
        };
        let mut tensors = HashMap::with_capacity(raw.len());
        for (name, t) in raw {
            let t = if t.dtype().is_float() && t.dtype() != dtype {
                t.to_dtype(dtype)?
            } else {
                t
            };
            let t = t.to_device(device)?;
            tensors.insert(name, t);
        }
        // Some exports drop the `model.` prefix of BartModel-style checkpoints.
        if !tensors.keys().any(|k| k.starts_with("model.")) {
            tensors = tensors
                .into_iter()
                .map(|(k, v)| {
                    if k == "final_logits_bias" || k.starts_with("lm_head.") {
                        (k, v)
                    } else {
                        (format!("model.{k}"), v)
                    }
                })
                .collect();
        }
        Ok(Weights {
            inner: Arc::new(Inner {
                tensors,
                path: path.to_path_buf(),
                device: device.clone(),
                dtype,
            }),
            prefix: String::new(),
        })
    }

    /// From tensors already in memory (tests, benchmarks).
    pub fn from_tensors(tensors: HashMap<String, Tensor>, device: &Device, dtype: DType) -> Self {
        Weights {
            inner: Arc::new(Inner {
                tensors,
                path: PathBuf::from("<memory>"),
                device: device.clone(),
                dtype,
            }),
            prefix: String::new(),
        }
    }

    /// A view with `name` appended to the prefix.
    pub fn pp(&self, name: impl AsRef<str>) -> Self {
        let prefix = if self.prefix.is_empty() {
            name.as_ref().to_string()
        } else {
            format!("{}.{}", self.prefix, name.as_ref())
        };
        Weights {
            inner: self.inner.clone(),
            prefix,
        }
    }

    fn full_name(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.prefix, name)
        }
    }

    /// The device every tensor lives on.
    pub fn device(&self) -> &Device {
        &self.inner.device
    }

    /// The floating-point dtype of the weights.
    pub fn dtype(&self) -> DType {
        self.inner.dtype
    }

    /// The file the weights came from.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Whether `name` (under the prefix) exists.
    pub fn contains(&self, name: &str) -> bool {
        self.inner.tensors.contains_key(&self.full_name(name))
    }

    /// All tensor names, for diagnostics.
    pub fn names(&self) -> Vec<&str> {
        self.inner.tensors.keys().map(String::as_str).collect()
    }

    /// Tensor `name` with exactly `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let full = self.full_name(name);
        let t = self.inner.tensors.get(&full).ok_or_else(|| Error::Tensor {
            path: self.inner.path.clone(),
            name: full.clone(),
            what: format!("is missing (expected shape {shape:?})"),
            hint: "the weight file does not belong to this config.json, or it is incomplete; fetch the checkpoint again".into(),
        })?;
        if t.dims() != shape {
            return Err(Error::Tensor {
                path: self.inner.path.clone(),
                name: full,
                what: format!("has shape {:?}, expected {shape:?} from config.json", t.dims()),
                hint: "config.json and the weight file come from different checkpoints; fetch them together".into(),
            });
        }
        Ok(t.clone())
    }

    /// A [out, in] projection weight wrapped for `Linear`.
    pub fn matmul_weight(&self, name: &str, out_dim: usize, in_dim: usize) -> Result<QMatMul> {
        Ok(QMatMul::Tensor(self.get(name, &[out_dim, in_dim])?))
    }
}

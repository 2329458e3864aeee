//! Device and dtype, decided once per run and then carried by the weight loader.
//!
//! Only the CPU backend is built today; the `cuda` feature will add CUDA devices
//! here (and only here), with logged fallbacks, never silent ones.

use candle_core::{DType, Device};

use crate::error::{Error, Result};

/// Where the model runs and in which precision.
#[derive(Debug, Clone)]
pub struct Placement {
    pub device: Device,
    pub dtype: DType,
}

impl Placement {
    /// f32 on the CPU: the exact reference path.
    pub fn cpu() -> Self {
        Placement {
            device: Device::Cpu,
            dtype: DType::F32,
        }
    }

    /// A short human-readable name for logs and manifests.
    pub fn describe(&self) -> String {
        let dev = match &self.device {
            Device::Cpu => "cpu".to_string(),
            other => format!("{other:?}").to_lowercase(),
        };
        format!("{dev}/{:?}", self.dtype).to_lowercase()
    }
}

/// Parse a `--dtype` value for the CPU backend.
pub fn parse_dtype(s: &str) -> Result<DType> {
    match s {
        "f32" => Ok(DType::F32),
        "f16" => Ok(DType::F16),
        "bf16" => Ok(DType::BF16),
        other => Err(Error::setting(format!("--dtype {other:?} is not known"), "use one of: f32, f16, bf16")),
    }
}

//! Device, dtype and quantization, decided once per run and then carried by
//! the weight loader and the model loader.
//!
//! Only the CPU backend is built today; the `cuda` feature will add CUDA devices
//! here (and only here), with logged fallbacks, never silent ones.

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device};

use crate::error::{Error, Result};

/// Where the model runs and in which precision.
#[derive(Debug, Clone)]
pub struct Placement {
    pub device: Device,
    /// Activations and unquantized weights.
    pub dtype: DType,
    /// Quantize every projection (attention, FFN, lm_head) at load time.
    pub quantize: Option<GgmlDType>,
}

/// The quantization formats transum offers, by their command-line names.
pub const QUANT_NAMES: [&str; 3] = ["q8_0", "q4k", "q6k"];

/// Parse a quantization name (`q8_0`, `q4k`, `q6k`).
pub fn parse_quant(name: &str) -> Result<GgmlDType> {
    match name.to_ascii_lowercase().as_str() {
        "q8_0" => Ok(GgmlDType::Q8_0),
        "q4k" | "q4_k" => Ok(GgmlDType::Q4K),
        "q6k" | "q6_k" => Ok(GgmlDType::Q6K),
        other => Err(Error::setting(
            format!("unknown quantization {other:?}"),
            format!("use one of: {}", QUANT_NAMES.join(", ")),
        )),
    }
}

/// The command-line name of a quantization format.
pub fn quant_name(q: GgmlDType) -> String {
    match q {
        GgmlDType::Q8_0 => "q8_0".into(),
        GgmlDType::Q4K => "q4k".into(),
        GgmlDType::Q6K => "q6k".into(),
        other => format!("{other:?}").to_lowercase(),
    }
}

impl Placement {
    /// f32 on the CPU: the exact reference path.
    pub fn cpu() -> Self {
        Placement {
            device: Device::Cpu,
            dtype: DType::F32,
            quantize: None,
        }
    }

    /// f32 on the CPU with projections quantized to `q` at load.
    pub fn cpu_quantized(q: GgmlDType) -> Self {
        Placement {
            quantize: Some(q),
            ..Placement::cpu()
        }
    }

    /// The format a projection of input width `in_dim` is quantized to: the
    /// placement's, when the width is a multiple of its block (32 for q8_0,
    /// 256 for k-quants); else none, and it stays float.
    pub fn quantization_for(&self, in_dim: usize) -> Option<GgmlDType> {
        self.quantize
            .filter(|q| in_dim.is_multiple_of(q.block_size()))
    }

    /// Whether projections are packed for the CPU kernel (`cpu::matmul`):
    /// on the CPU in f32, where it beats candle's gemm.
    pub fn packs(&self) -> bool {
        self.device.is_cpu() && self.dtype == DType::F32
    }

    /// A short human-readable name for logs and manifests.
    pub fn describe(&self) -> String {
        let dev = match &self.device {
            Device::Cpu => "cpu".to_string(),
            other => format!("{other:?}").to_lowercase(),
        };
        match self.quantize {
            Some(q) => format!("{dev}/{}", quant_name(q)),
            None => format!("{dev}/{:?}", self.dtype).to_lowercase(),
        }
    }
}

/// Keep large buffers on the heap instead of fresh `mmap`s.
///
/// Every decode step allocates and frees buffers of tens of MB (logits for
/// 59,514 tokens x rows). glibc serves those with mmap/munmap, so each step
/// page-faults and zeroes them again; in a profile of beam search that was ~7%
/// of the time. Raising the mmap and trim thresholds makes glibc reuse them.
/// One arena: decoding runs on a rayon worker (see `translate`), and with an
/// arena per thread the memory the loader freed on the main thread was not
/// reused there (peak RSS +85-110 MB).
/// Called once by the binary (and the benchmark) at startup.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts glibc's allocator parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

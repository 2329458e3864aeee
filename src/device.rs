//! Device, dtype and quantization, decided once per run ([`Placement::resolve`]
//! from `--device`, `--dtype` and `--quantize`) and then carried by the weight
//! loader and the model loader.
//!
//! CUDA devices exist only in a build with the `cuda` feature; asking for one
//! elsewhere is a setup error that says how to build it, and `auto` logs what
//! it picked, never falling back silently.

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

/// `--device`: where the models run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceChoice {
    Cpu,
    /// CUDA device N.
    Cuda(usize),
    /// The first CUDA device when this build has CUDA and the machine a GPU,
    /// else the CPU; the choice is logged.
    Auto,
}

impl DeviceChoice {
    /// Parse `cpu`, `cuda`, `cuda:N` or `auto`.
    pub fn parse(s: &str) -> Result<DeviceChoice> {
        let l = s.trim().to_ascii_lowercase();
        let bad = || {
            Error::setting(
                format!("--device {s:?} is not a device"),
                "use cpu, cuda, cuda:N (N = 0, 1, ...) or auto",
            )
        };
        Ok(match l.as_str() {
            "cpu" => DeviceChoice::Cpu,
            "auto" => DeviceChoice::Auto,
            "cuda" | "gpu" => DeviceChoice::Cuda(0),
            _ => match l.strip_prefix("cuda:") {
                Some(n) => DeviceChoice::Cuda(n.parse().map_err(|_| bad())?),
                None => return Err(bad()),
            },
        })
    }

    /// The candle device: CUDA only in a build with the `cuda` feature.
    pub fn device(self) -> Result<Device> {
        match self {
            DeviceChoice::Cpu => Ok(Device::Cpu),
            DeviceChoice::Cuda(n) => cuda(n),
            DeviceChoice::Auto => {
                let picked = if cfg!(feature = "cuda") && candle_core::utils::cuda_is_available() {
                    cuda(0).ok()
                } else {
                    None
                };
                match picked {
                    Some(d) => {
                        tracing::info!("--device auto: cuda:0");
                        Ok(d)
                    }
                    None => {
                        tracing::info!(
                            "--device auto: cpu ({})",
                            if cfg!(feature = "cuda") {
                                "no usable CUDA device"
                            } else {
                                "this build has no CUDA"
                            }
                        );
                        Ok(Device::Cpu)
                    }
                }
            }
        }
    }
}

/// CUDA device `n`.
#[cfg(feature = "cuda")]
fn cuda(n: usize) -> Result<Device> {
    Device::new_cuda(n).map_err(|e| {
        Error::setting(
            format!("--device cuda:{n} cannot be opened: {e}"),
            "check the driver (nvidia-smi), the device number and that the CUDA 13 libraries are on LD_LIBRARY_PATH, or use --device cpu",
        )
    })
}

/// CUDA device `n`: not in this build.
#[cfg(not(feature = "cuda"))]
fn cuda(n: usize) -> Result<Device> {
    Err(Error::setting(
        format!("--device cuda:{n}: this transum was built without CUDA"),
        "build it with `cargo build --release --features cuda` (scripts/build-cuda.sh does that on a machine without CUDA installed), or use --device cpu",
    ))
}

/// `cpu` or `cuda:N`, for logs and manifests.
pub fn device_name(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

/// Parse `--dtype`: f32, f16 or bf16.
pub fn parse_dtype(s: &str) -> Result<DType> {
    match s.trim().to_ascii_lowercase().as_str() {
        "f32" | "float32" => Ok(DType::F32),
        "f16" | "float16" | "half" => Ok(DType::F16),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        _ => Err(Error::setting(
            format!("--dtype {s:?} is not a dtype"),
            "use f32, f16 or bf16",
        )),
    }
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

    /// The placement on `device` (`--device`, resolved once per command by
    /// [`DeviceChoice::device`]) that `--dtype` and `--quantize` ask for: bf16 by
    /// default on CUDA, f32 on the CPU. Quantization is the CPU's (f32
    /// activations); on CUDA, half precision takes its place.
    pub fn resolve(
        device: &Device,
        dtype: Option<DType>,
        quantize: Option<GgmlDType>,
    ) -> Result<Placement> {
        let device = device.clone();
        let dtype = dtype.unwrap_or(if device.is_cpu() {
            DType::F32
        } else {
            DType::BF16
        });
        if let Some(q) = quantize {
            if !device.is_cpu() {
                return Err(Error::setting(
                    format!("--quantize {} on a GPU", quant_name(q)),
                    "quantization is for the CPU; on CUDA use --dtype bf16 (the default) or f16",
                ));
            }
            if dtype != DType::F32 {
                return Err(Error::setting(
                    format!(
                        "--quantize {} with --dtype {}",
                        quant_name(q),
                        format!("{dtype:?}").to_lowercase()
                    ),
                    "quantized projections take f32 activations: drop --dtype (or --quantize)",
                ));
            }
        }
        Ok(Placement {
            device,
            dtype,
            quantize,
        })
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
        self.device.is_cpu() && self.dtype == DType::F32 && crate::cpu::host_kernels()
    }

    /// A short human-readable name for logs and manifests.
    pub fn describe(&self) -> String {
        let dev = device_name(&self.device);
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

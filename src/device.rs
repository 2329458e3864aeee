//! Device and dtype, decided once per run and then carried by the weight loader.
//!
//! Only the CPU backend is built today; the `cuda` feature will add CUDA devices
//! here (and only here), with logged fallbacks, never silent ones.

use candle_core::{DType, Device};

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

/// Keep large buffers on the heap instead of fresh `mmap`s.
///
/// Every decode step allocates and frees buffers of tens of MB (logits for
/// 59,514 tokens x rows). glibc serves those with mmap/munmap, so each step
/// page-faults and zeroes them again; in a profile of beam search that was ~7%
/// of the time. Raising the mmap and trim thresholds makes glibc reuse them.
/// Called once by the binary (and the benchmark) at startup.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only adjusts glibc's allocator parameters.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

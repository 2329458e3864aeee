//! Every hand-written CPU kernel, and the one choice of instruction set they
//! run with.
//!
//! The crate is built for baseline x86-64, so each kernel exists as a portable
//! version (plain Rust whose loops LLVM vectorizes for whatever ISA it is
//! compiled with) plus SIMD versions: the same source compiled with AVX2+FMA or
//! AVX-512 enabled, and hand-written intrinsics where the compiler's code was
//! slower (the packed matmul's register tile, attention's four-at-a-time dots).
//! The instruction set is chosen once, at start-up ([`init`]): the best the CPU
//! has, or the one `TRANSUM_CPU_ISA=generic|avx2|avx512` forces (CTranslate2's
//! `CT2_FORCE_CPU_ISA`), so that tests can run the portable path on any machine.
//! Every `*_with(isa, ..)` entry point takes the ISA explicitly, which is how
//! the tests compare each SIMD version with its portable twin.
//!
//! Talks to: candle's CPU storage (through [`CpuView`]); used by the model
//! layers (`models/`), the weight loader and generation's log-softmax.

pub mod attention;
pub mod elementwise;
pub mod int8;
pub mod matmul;
mod view;

pub use view::{with_f32, CpuView};

use std::sync::OnceLock;

use crate::error::{Error, Result};

/// The environment variable that forces an instruction set.
pub const ISA_ENV: &str = "TRANSUM_CPU_ISA";

/// An instruction set the kernels are compiled for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Baseline x86-64 (SSE2) or any other architecture: the portable kernels.
    Generic,
    /// AVX2 with FMA: the hand-written tiles and dots.
    Avx2,
    /// AVX-512 (F, BW, VL) with AVX2 and FMA: the compiler-vectorized kernels
    /// built for 512-bit registers; the hand-written ones use their AVX2 form.
    Avx512,
}

impl Isa {
    /// Every instruction set, weakest first.
    pub const ALL: [Isa; 3] = [Isa::Generic, Isa::Avx2, Isa::Avx512];

    /// The name `TRANSUM_CPU_ISA` takes.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Generic => "generic",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    /// Whether this CPU can run kernels built for `self`.
    pub fn supported(self) -> bool {
        match self {
            Isa::Generic => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                Isa::Avx2.supported()
                    && std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vl")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The best instruction set this CPU supports.
    pub fn best() -> Isa {
        *Isa::ALL
            .iter()
            .rev()
            .find(|i| i.supported())
            .unwrap_or(&Isa::Generic)
    }

    /// Parse a `TRANSUM_CPU_ISA` value and check that this CPU supports it.
    pub fn parse(value: &str) -> Result<Isa> {
        let isa = Isa::ALL
            .into_iter()
            .find(|i| i.name().eq_ignore_ascii_case(value.trim()))
            .ok_or_else(|| {
                Error::setting(
                    format!("{ISA_ENV}={value:?} is not an instruction set transum knows"),
                    "use one of: generic, avx2, avx512 (or unset it to use the best the CPU has)",
                )
            })?;
        if !isa.supported() {
            return Err(Error::setting(
                format!(
                    "{ISA_ENV}={value}: this CPU does not support {}",
                    isa.name()
                ),
                format!(
                    "unset it, or use one the CPU has (best here: {})",
                    Isa::best().name()
                ),
            ));
        }
        Ok(isa)
    }
}

/// The environment variable that sends the CPU through the device-generic
/// path: `TRANSUM_DEVICE_PATH=candle` makes every layer run on candle's ops
/// (no packed weights, no host attention, cache or norm kernels), the code
/// CUDA runs, so that the parity goldens prove it on a machine without a GPU.
/// Unset, or `host`: the CPU kernels.
pub const DEVICE_PATH_ENV: &str = "TRANSUM_DEVICE_PATH";

/// Whether the hand-written CPU kernels serve the CPU (see [`DEVICE_PATH_ENV`]);
/// read once. An unknown value is an error at start-up ([`init`]).
pub fn host_kernels() -> bool {
    static HOST: OnceLock<bool> = OnceLock::new();
    *HOST.get_or_init(|| {
        !std::env::var(DEVICE_PATH_ENV).is_ok_and(|v| v.trim().eq_ignore_ascii_case("candle"))
    })
}

static ISA: OnceLock<Isa> = OnceLock::new();

/// Choose the instruction set once: `TRANSUM_CPU_ISA` if set (an unknown or
/// unsupported value is an error), else the best the CPU supports. Later
/// calls return the first choice. The binary calls this at start-up.
pub fn init() -> Result<Isa> {
    if let Some(&isa) = ISA.get() {
        return Ok(isa);
    }
    if let Ok(v) = std::env::var(DEVICE_PATH_ENV) {
        if !["", "host", "candle"].contains(&v.trim().to_ascii_lowercase().as_str()) {
            return Err(Error::setting(
                format!("{DEVICE_PATH_ENV}={v:?} is not a device path"),
                "use `candle` (the device-generic path) or `host` (the CPU kernels), or unset it",
            ));
        }
    }
    let isa = match std::env::var(ISA_ENV) {
        Ok(v) if !v.trim().is_empty() => Isa::parse(&v)?,
        _ => Isa::best(),
    };
    let isa = *ISA.get_or_init(|| isa);
    tracing::debug!("CPU kernels: {}", isa.name());
    Ok(isa)
}

/// The instruction set chosen by [`init`] (chosen now if nobody asked yet).
///
/// # Panics
/// When `TRANSUM_CPU_ISA` is invalid and [`init`] was not called first to
/// report it as an error.
pub fn isa() -> Isa {
    match ISA.get() {
        Some(&isa) => isa,
        None => init().unwrap_or_else(|e| panic!("{e}")),
    }
}

/// Defines `$name_with(isa, ..)`, running `$imp` compiled for that
/// instruction set, and `$name(..)`, the same with [`isa()`]. `$imp` must be
/// `#[inline(always)]` so that each copy is vectorized for its ISA.
macro_rules! compiled_per_isa {
    ($(#[$meta:meta])* $vis:vis fn $name:ident / $with:ident ($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? => $imp:path) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            $with($crate::cpu::isa(), $($arg),*)
        }

        /// As the function without `_with`, compiled for `isa`.
        ///
        /// # Panics
        /// When this CPU does not support `isa`.
        #[allow(clippy::too_many_arguments)]
        $vis fn $with(isa: $crate::cpu::Isa, $($arg: $ty),*) $(-> $ret)? {
            assert!(isa.supported(), "this CPU does not support {}", isa.name());
            #[cfg(target_arch = "x86_64")]
            {
                /// # Safety
                /// The CPU supports AVX2 and FMA.
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $imp($($arg),*)
                }
                /// # Safety
                /// The CPU supports AVX-512 F/BW/VL, AVX2 and FMA.
                #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    $imp($($arg),*)
                }
                match isa {
                    // SAFETY: supported() was checked above.
                    $crate::cpu::Isa::Avx2 => return unsafe { avx2($($arg),*) },
                    // SAFETY: supported() was checked above.
                    $crate::cpu::Isa::Avx512 => return unsafe { avx512($($arg),*) },
                    $crate::cpu::Isa::Generic => {}
                }
            }
            $imp($($arg),*)
        }
    };
}
pub(crate) use compiled_per_isa;

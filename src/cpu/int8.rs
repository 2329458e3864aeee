//! Int8 x int8 products for q8_0 weights: activations are quantized on the
//! fly and multiplied by the int8 weights in integer arithmetic, as
//! CTranslate2 (oneDNN/fbgemm) and llama.cpp do, instead of widening the
//! weights to f32.
//!
//! Numbers: weights are GGML's q8_0 (one scale per 32 values of a row); each
//! activation row is quantized the same way, per block of 32 along k
//! (scale = amax / 127, values rounded to nearest, ties to even), so that a
//! block's product is an exact i32 sum scaled by two floats: `y[r][j] =
//! Σ_b dx[r][b] dw[b][j] Σ_{k∈b} x[r][k] w[k][j] + bias[j]` (llama.cpp's
//! q8_0 x q8_0). Per-block activation scales follow the weights' blocks, and
//! keep one outlier from flattening a whole row. Per-row scales (one i32 sum
//! per output over all of k, CTranslate2's layout) were measured against
//! them and not adopted: their kernel (`benches/int8_scales.rs`) ran the LM
//! head 1.1-1.8x as fast and the 512-wide products 0.7-1.7x (one thread,
//! Zen 4, both ISAs), but on a trained model (all-MiniLM-L6-v2,
//! `benches/compare/int8_scales.py`) their error against f32 was 2.7x
//! per-block's (7.8% against 2.9% relative L2 of the hidden states, 8-bit
//! activations), and no per-row variant reaches per-block's accuracy.
//! `tests/it/quant.rs` reports the error against f32.
//!
//! Layout: the packed weight panel holds [`NR`] output features with the k
//! axis in groups of four bytes ([k/4][NR][4]), the operand layout of
//! `vpdpbusd` (4 u8 x 4 s8 summed into each i32 lane) and of
//! `vpmaddubsw` + `vpmaddwd`. Each block also carries `128 Σ_k w`, the
//! compensation for activations shifted to u8 (x + 128; half of it for
//! 7-bit activations shifted by 64), because `vpdpbusd` and `vpmaddubsw`
//! multiply unsigned by signed bytes (fbgemm's and oneDNN's scheme).
//!
//! Kernels, one chosen once through [`I8Kernel::for_isa`]:
//! - AVX-512 VNNI: `vpdpbusd` on zmm, 16 features per instruction;
//! - AVX-VNNI: `vpdpbusd` on ymm (VEX), 8 features per instruction. On
//!   AVX-512 VNNI CPUs without AVX-VNNI it runs with the instruction's
//!   AVX-512 VL encoding, so its code is tested there; only
//!   `TRANSUM_INT8_KERNEL=avx_vnni` picks it on those CPUs;
//! - AVX2: `vpmaddubsw` + `vpmaddwd`, on activations quantized to 7 bits
//!   (amax / 63, shifted by 64 to u8 in 1..=127, compensated with
//!   `64 Σ_k w`). `vpmaddubsw` saturates its i16 pair sums: 2 x 127 x 128
//!   fits in i16, where 8-bit shifted activations (up to 255) would not.
//!   That is oneDNN's advice for int8 without VNNI (7 bits on one side),
//!   put on the activations because q8_0 weights are given. The 8-bit
//!   alternative, |x| times w with x's sign moved onto w (`vpsignb`,
//!   llama.cpp's trick), costs one more instruction per product and was
//!   measured slower (see the README's figures);
//! - portable: plain Rust, the twin the tests compare the others with.
//!
//! Integer sums are exact, so a kernel and the portable kernel fed the same
//! activation bits differ only in how the f32 block sums are rounded (fused
//! or not): the portable kernel with 7 bits is the AVX2 kernel's twin.
//!
//! Talks to: `cpu::matmul` (the packed q8_0 panels call [`panel_product`]).

use super::Isa;

/// Output features per panel (the packed matmul's panel width).
pub const NR: usize = super::matmul::NR;
/// Values per q8_0 block along k.
pub const BLOCK: usize = super::matmul::Q8_BLOCK;

/// An int8 kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum I8Kernel {
    /// Plain Rust.
    Generic,
    /// AVX2: `vpmaddubsw` + `vpmaddwd`.
    Avx2,
    /// AVX-VNNI: `vpdpbusd` on ymm.
    AvxVnni,
    /// AVX-512 VNNI: `vpdpbusd` on zmm.
    Avx512Vnni,
}

impl I8Kernel {
    /// Every kernel.
    pub const ALL: [I8Kernel; 4] = [
        I8Kernel::Generic,
        I8Kernel::Avx2,
        I8Kernel::AvxVnni,
        I8Kernel::Avx512Vnni,
    ];

    /// Its name, and the CPU flag it needs (as /proc/cpuinfo spells it).
    pub fn name(self) -> &'static str {
        match self {
            I8Kernel::Generic => "generic",
            I8Kernel::Avx2 => "avx2",
            I8Kernel::AvxVnni => "avx_vnni",
            I8Kernel::Avx512Vnni => "avx512_vnni",
        }
    }

    /// Whether this CPU can run it.
    pub fn supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            match self {
                I8Kernel::Generic => true,
                I8Kernel::Avx2 => has!("avx2") && has!("fma"),
                // The VEX encoding, or the AVX-512 VL one (see `avx_vnni_evex`).
                I8Kernel::AvxVnni => {
                    has!("avx2")
                        && has!("fma")
                        && (has!("avxvnni") || (has!("avx512vnni") && has!("avx512vl")))
                }
                I8Kernel::Avx512Vnni => {
                    has!("avx512f") && has!("avx512bw") && has!("avx512vnni") && has!("fma")
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            self == I8Kernel::Generic
        }
    }

    /// The kernel for the chosen instruction set: `generic` forces the
    /// portable kernel; AVX2 takes AVX-VNNI when the CPU has it (its VEX
    /// encoding: AVX2 rules out AVX-512 instructions); AVX-512 takes AVX-512
    /// VNNI when the CPU has it, else the best of the ymm ones.
    pub fn for_isa(isa: Isa) -> I8Kernel {
        let pick = |k: I8Kernel| k.supported().then_some(k);
        match isa {
            Isa::Generic => I8Kernel::Generic,
            Isa::Avx2 => pick(I8Kernel::AvxVnni)
                .filter(|_| avx_vnni_vex())
                .or(pick(I8Kernel::Avx2))
                .unwrap_or(I8Kernel::Generic),
            Isa::Avx512 => pick(I8Kernel::Avx512Vnni)
                .or(pick(I8Kernel::AvxVnni))
                .or(pick(I8Kernel::Avx2))
                .unwrap_or(I8Kernel::Generic),
        }
    }

    /// How `vpdpbusd` is encoded where this kernel runs here: the AVX-VNNI
    /// kernel takes the AVX-512 VL encoding on CPUs without AVX-VNNI.
    pub fn encoding(self) -> &'static str {
        match self {
            I8Kernel::AvxVnni if !avx_vnni_vex() => "vpdpbusd ymm, AVX-512 VL encoding",
            I8Kernel::AvxVnni => "vpdpbusd ymm, VEX encoding",
            I8Kernel::Avx512Vnni => "vpdpbusd zmm",
            I8Kernel::Avx2 => "vpmaddubsw + vpmaddwd",
            I8Kernel::Generic => "portable",
        }
    }

    /// Whether the kernel takes activations shifted to u8 (`vpdpbusd`,
    /// `vpmaddubsw`).
    fn unsigned(self) -> bool {
        self != I8Kernel::Generic
    }

    /// The activation bits the kernel runs with: 7 for AVX2, whose i16
    /// pair sums would saturate on 8-bit u8 activations, else 8.
    pub fn activation_bits(self) -> u32 {
        match self {
            I8Kernel::Avx2 => 7,
            _ => 8,
        }
    }

    /// Rows per register tile.
    pub fn tile_rows(self) -> usize {
        match self {
            // 8 i32 + 8 f32 accumulators of the 32 zmm registers.
            I8Kernel::Avx512Vnni => 8,
            // 2 i32 ymm per row; f32 sums wait in L1.
            I8Kernel::Avx2 | I8Kernel::AvxVnni | I8Kernel::Generic => 4,
        }
    }
}

/// Whether the CPU has AVX-VNNI's own (VEX) `vpdpbusd` on ymm.
fn avx_vnni_vex() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avxvnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The environment variable that forces an int8 kernel (for measuring the
/// AVX2 kernel on a VNNI machine); `TRANSUM_CPU_ISA` bounds it.
pub const KERNEL_ENV: &str = "TRANSUM_INT8_KERNEL";

/// The int8 kernel, chosen once: `TRANSUM_INT8_KERNEL` when set to a kernel
/// the CPU has, else the best for the chosen instruction set
/// ([`I8Kernel::for_isa`]). An unknown or unsupported value is an error.
pub fn kernel() -> crate::error::Result<I8Kernel> {
    use std::sync::OnceLock;
    static KERNEL: OnceLock<I8Kernel> = OnceLock::new();
    if let Some(&k) = KERNEL.get() {
        return Ok(k);
    }
    let k = match std::env::var(KERNEL_ENV) {
        Ok(v) if !v.trim().is_empty() => {
            let k = I8Kernel::ALL
                .into_iter()
                .find(|k| k.name().eq_ignore_ascii_case(v.trim()))
                .filter(|k| k.supported())
                .ok_or_else(|| {
                    crate::error::Error::setting(
                        format!("{KERNEL_ENV}={v:?} is not an int8 kernel this CPU has"),
                        "use one of generic, avx2, avx_vnni, avx512_vnni that the CPU supports, \
                         or unset it",
                    )
                })?;
            if k != I8Kernel::Generic && super::isa() == Isa::Generic {
                return Err(crate::error::Error::setting(
                    format!("{KERNEL_ENV}={v} with TRANSUM_CPU_ISA=generic"),
                    "unset one of them",
                ));
            }
            k
        }
        _ => I8Kernel::for_isa(super::isa()),
    };
    let k = *KERNEL.get_or_init(|| k);
    tracing::debug!("int8 kernel: {}", k.name());
    Ok(k)
}

/// Activations quantized per row and block of 32 along k.
pub struct QuantizedRows {
    /// [rows][k] bytes: s8, or s8 + 2^(bits-1) as u8 for the SIMD kernels.
    pub q: Vec<u8>,
    /// [rows][k/32] scales.
    pub d: Vec<f32>,
    pub k: usize,
    /// Bits per value: 8 (-127..=127) or 7 (-63..=63).
    pub bits: u32,
}

/// Quantize `x` [rows, k] for `kernel` with `bits` (8 or 7) per value (k a
/// multiple of 32): scale = amax / 127 (or 63) per block, values rounded to
/// nearest, ties to even (one vector instruction; GGML's weights round ties
/// away from zero).
pub fn quantize_rows(
    kernel: I8Kernel,
    bits: u32,
    x: &[f32],
    rows: usize,
    k: usize,
) -> QuantizedRows {
    assert!(k.is_multiple_of(BLOCK) && x.len() == rows * k);
    assert!(bits == 7 || bits == 8, "activations take 7 or 8 bits");
    let nb = k / BLOCK;
    let half = 1u8 << (bits - 1);
    let shift = if kernel.unsigned() { half } else { 0 };
    let levels = (half - 1) as f32;
    let mut q = vec![0u8; rows * k];
    let mut d = vec![0f32; rows * nb];
    let quantize = |(xs, (qs, ds)): (&[f32], (&mut [u8], &mut [f32]))| {
        quantize_row(kernel, xs, qs, ds, levels, shift);
    };
    if rows * k >= 1 << 16 {
        use rayon::prelude::*;
        x.par_chunks(k)
            .zip(q.par_chunks_mut(k).zip(d.par_chunks_mut(nb)))
            .for_each(quantize);
    } else {
        x.chunks(k)
            .zip(q.chunks_mut(k).zip(d.chunks_mut(nb)))
            .for_each(quantize);
    }
    QuantizedRows { q, d, k, bits }
}

/// One row quantized per block (see [`quantize_rows`]).
#[inline(always)]
fn quantize_row_impl(xs: &[f32], qs: &mut [u8], ds: &mut [f32], levels: f32, shift: u8) {
    for ((xb, qb), db) in xs
        .chunks_exact(BLOCK)
        .zip(qs.chunks_exact_mut(BLOCK))
        .zip(ds.iter_mut())
    {
        let xb: &[f32; BLOCK] = xb.try_into().expect("a block");
        let qb: &mut [u8; BLOCK] = qb.try_into().expect("a block");
        *db = quantize_block(xb, qb, levels, shift);
    }
}

/// One block of 32 to -levels..=levels plus `shift` (wrapping), its scale
/// returned (the portable quantizer).
#[inline(always)]
fn quantize_block(xb: &[f32; BLOCK], qb: &mut [u8; BLOCK], levels: f32, shift: u8) -> f32 {
    let amax = xb.iter().fold(0f32, |a, &v| a.max(v.abs()));
    let scale = amax / levels;
    let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
    // Ties to even, as `vcvtps2dq` rounds.
    let mut v = [0i32; BLOCK];
    for (v, &x) in v.iter_mut().zip(xb) {
        *v = (x * inv).round_ties_even() as i32;
    }
    for (q, &v) in qb.iter_mut().zip(&v) {
        *q = (v as i8 as u8).wrapping_add(shift);
    }
    scale
}

/// One row quantized per block with the kernel's instruction set.
fn quantize_row(
    kernel: I8Kernel,
    xs: &[f32],
    qs: &mut [u8],
    ds: &mut [f32],
    levels: f32,
    shift: u8,
) {
    #[cfg(target_arch = "x86_64")]
    if kernel != I8Kernel::Generic {
        // SAFETY: every non-portable kernel implies AVX2 (`supported`).
        unsafe { x86::quantize_row(xs, qs, ds, levels, shift) };
        return;
    }
    let _ = kernel;
    quantize_row_impl(xs, qs, ds, levels, shift);
}

/// One packed q8_0 panel: `q` [k/4][NR][4], `d` and `comp` [k/32][NR].
#[derive(Clone, Copy)]
pub struct Panel<'a> {
    pub q: &'a [i8],
    pub d: &'a [f32],
    pub comp: &'a [i32],
    /// Where the weight stream goes on (the next panel's `q`), prefetched
    /// to L2 one line per four k by the panel's first row tile (null: no
    /// prefetch). The LM head's panels come from memory; beam 4 on the
    /// opus-mt-shaped model went from 386-426 to 477 tok/s with it (q8_0,
    /// AVX-512 VNNI, 2 threads), and prefetching from every row tile made it
    /// 250 (the repeats cost more than the misses). It may point past the
    /// matrix: prefetches never fault.
    pub ahead: *const i8,
}

/// Where a panel's sums go: row r's NR features at `ptr + r * ld`, plus
/// the NR biases at `bias`. Written straight into the product's output
/// (copying from a tile buffer was 7% of a beam-4 run).
#[derive(Clone, Copy)]
pub struct Dst {
    pub ptr: *mut f32,
    pub ld: usize,
    pub bias: Option<*const f32>,
}

impl Dst {
    /// Row `r`'s NR outputs.
    ///
    /// # Safety
    /// Row r lies inside the destination.
    unsafe fn row(&self, r: usize) -> *mut f32 {
        // SAFETY: the caller's promise.
        unsafe { self.ptr.add(r * self.ld) }
    }

    /// Bias `j`, or 0.
    ///
    /// # Safety
    /// `bias` holds NR floats.
    unsafe fn bias(&self, j: usize) -> f32 {
        // SAFETY: the caller's promise.
        self.bias.map_or(0.0, |b| unsafe { *b.add(j) })
    }
}

/// Rows `r0..r0+rows` of `x` times `panel`, scaled per block, plus the
/// bias: all NR features (padding included) of each row to `dst`.
///
/// # Safety
/// `dst` has `rows` rows of NR writable floats `ld` apart, and NR readable
/// biases when it has a bias.
pub unsafe fn panel_product(
    kernel: I8Kernel,
    x: &QuantizedRows,
    r0: usize,
    rows: usize,
    panel: Panel,
    dst: Dst,
) {
    let k = x.k;
    let nb = k / BLOCK;
    assert!(
        kernel.supported(),
        "this CPU does not support {}",
        kernel.name()
    );
    assert!(panel.q.len() == k * NR && panel.d.len() == nb * NR && panel.comp.len() == nb * NR);
    assert!(x.q.len() >= (r0 + rows) * k && x.d.len() >= (r0 + rows) * nb);
    // 8-bit u8 activations would saturate `vpmaddubsw`'s pair sums.
    assert!(
        x.bits == 7 || kernel != I8Kernel::Avx2,
        "the AVX2 int8 kernel takes 7-bit activations"
    );
    // The compensation for u8 activations: 2^(bits-1) Σ w = comp >> (8 - bits).
    let comp_shift = 8 - x.bits as i32;
    let xq = &x.q[r0 * k..(r0 + rows) * k];
    let xd = &x.d[r0 * nb..(r0 + rows) * nb];
    let mut t = 0;
    while t < rows {
        let r = kernel.tile_rows().min(rows - t);
        let (xq, xd) = (&xq[t * k..(t + r) * k], &xd[t * nb..(t + r) * nb]);
        // SAFETY: rows t.. of `dst` are inside it (the caller's promise).
        let o = Dst {
            ptr: unsafe { dst.row(t) },
            ..dst
        };
        // Only the first row tile prefetches (see `Panel::ahead`).
        let panel = Panel {
            ahead: if t == 0 {
                panel.ahead
            } else {
                std::ptr::null()
            },
            ..panel
        };
        // SAFETY: supported() was asserted; the slices' sizes were checked;
        // `o` has r rows (the caller's promise).
        unsafe {
            match kernel {
                #[cfg(target_arch = "x86_64")]
                I8Kernel::Avx512Vnni => {
                    seq!(r, 8, [x86::avx512vnni], k, xq, xd, panel, o, comp_shift)
                }
                #[cfg(target_arch = "x86_64")]
                I8Kernel::AvxVnni if avx_vnni_vex() => {
                    seq!(r, 4, [x86::avxvnni], k, xq, xd, panel, o, comp_shift)
                }
                #[cfg(target_arch = "x86_64")]
                I8Kernel::AvxVnni => {
                    seq!(r, 4, [x86::avx_vnni_evex], k, xq, xd, panel, o, comp_shift)
                }
                #[cfg(target_arch = "x86_64")]
                I8Kernel::Avx2 => seq!(r, 4, [x86::avx2], k, xq, xd, panel, o, comp_shift),
                _ => generic(k, xq, xd, panel, o),
            }
        }
        t += r;
    }
}

/// Calls `$f::<R>` for the tile's row count `$r` (1..=$max).
macro_rules! seq {
    ($r:expr, 8, [$($f:tt)*], $($a:expr),*) => {
        match $r {
            8 => $($f)*::<8>($($a),*),
            7 => $($f)*::<7>($($a),*),
            6 => $($f)*::<6>($($a),*),
            5 => $($f)*::<5>($($a),*),
            r => seq!(r, 4, [$($f)*], $($a),*),
        }
    };
    ($r:expr, 4, [$($f:tt)*], $($a:expr),*) => {
        match $r {
            4 => $($f)*::<4>($($a),*),
            3 => $($f)*::<3>($($a),*),
            2 => $($f)*::<2>($($a),*),
            _ => $($f)*::<1>($($a),*),
        }
    };
}
use seq;

/// The portable kernel: signed activations, i32 block sums.
///
/// # Safety
/// As [`panel_product`], for the rows of `xq`.
unsafe fn generic(k: usize, xq: &[u8], xd: &[f32], p: Panel, dst: Dst) {
    let nb = k / BLOCK;
    for r in 0..xq.len() / k {
        let mut o = [0f32; NR];
        for b in 0..nb {
            let mut s = [0i32; NR];
            for g in 0..BLOCK / 4 {
                let kk = b * BLOCK + g * 4;
                let w = &p.q[(kk / 4) * NR * 4..(kk / 4 + 1) * NR * 4];
                for (j, s) in s.iter_mut().enumerate() {
                    for i in 0..4 {
                        *s += xq[r * k + kk + i] as i8 as i32 * w[j * 4 + i] as i32;
                    }
                }
            }
            let dx = xd[r * nb + b];
            for j in 0..NR {
                o[j] += s[j] as f32 * (p.d[b * NR + j] * dx);
            }
        }
        for (j, &v) in o.iter().enumerate() {
            // SAFETY: the caller's promise on `dst`.
            unsafe { *dst.row(r).add(j) = v + dst.bias(j) };
        }
    }
}

#[cfg(target_arch = "x86_64")]
// The register tiles index several arrays by row and half.
#[allow(clippy::needless_range_loop)]
mod x86 {
    use super::{Dst, Panel, BLOCK, NR};
    use std::arch::x86_64::*;

    /// One row quantized per block of 32 (see `quantize_rows`): |x| max by
    /// a tree, `vcvtps2dq` rounding to nearest even, packed to bytes. The
    /// compiler's version of the portable loop gathered across blocks and
    /// cost 10% of a beam-4 run.
    ///
    /// # Safety
    /// The CPU has AVX2; `xs`, `qs` hold whole blocks, `ds` one per block.
    #[target_feature(enable = "avx2")]
    pub unsafe fn quantize_row(xs: &[f32], qs: &mut [u8], ds: &mut [f32], levels: f32, shift: u8) {
        // SAFETY: the caller's promises cover every load and store below.
        unsafe {
            let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fff_ffff));
            let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
            let offset = _mm256_set1_epi8(shift as i8);
            for (b, d) in ds.iter_mut().enumerate() {
                let x = xs.as_ptr().add(b * BLOCK);
                let v = [0, 8, 16, 24].map(|o| _mm256_loadu_ps(x.add(o)));
                let a = v.map(|v| _mm256_and_ps(v, abs));
                let m = _mm256_max_ps(_mm256_max_ps(a[0], a[1]), _mm256_max_ps(a[2], a[3]));
                let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
                let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
                let m = _mm_max_ss(m, _mm_shuffle_ps(m, m, 1));
                let scale = _mm_cvtss_f32(m) / levels;
                let inv = _mm256_set1_ps(if scale != 0.0 { 1.0 / scale } else { 0.0 });
                let i = v.map(|v| _mm256_cvtps_epi32(_mm256_mul_ps(v, inv)));
                let w = _mm256_packs_epi16(
                    _mm256_packs_epi32(i[0], i[1]),
                    _mm256_packs_epi32(i[2], i[3]),
                );
                let w = _mm256_permutevar8x32_epi32(w, order);
                let w = _mm256_add_epi8(w, offset);
                _mm256_storeu_si256(qs.as_mut_ptr().add(b * BLOCK) as *mut _, w);
                *d = scale;
            }
        }
    }

    /// Four activation bytes (k .. k+4 of one row) as one i32.
    #[inline(always)]
    unsafe fn four(x: *const u8) -> i32 {
        // SAFETY: the caller keeps x..x+4 inside the row.
        unsafe { (x as *const i32).read_unaligned() }
    }

    /// AVX-512 VNNI: one zmm of 16 i32 sums per row, `vpdpbusd` on u8
    /// activations (x + 128), each block's sums started at minus its compensation.
    ///
    /// # Safety
    /// The CPU has AVX-512 F/BW/VNNI and FMA; `xq` holds R rows of k bytes,
    /// `xd` R rows of k/32 scales, `out` R rows.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma")]
    pub unsafe fn avx512vnni<const R: usize>(
        k: usize,
        xq: &[u8],
        xd: &[f32],
        p: Panel,
        dst: Dst,
        comp_shift: i32,
    ) {
        let nb = k / BLOCK;
        // SAFETY: the caller's promises cover every load and store below.
        unsafe {
            let mut f = [_mm512_setzero_ps(); R];
            let (x, w) = (xq.as_ptr(), p.q.as_ptr());
            for b in 0..nb {
                // The sums start at minus the compensation, so no subtraction
                // per row and block is left for after them.
                let c = _mm512_loadu_si512(p.comp.as_ptr().add(b * NR) as *const _);
                let c = _mm512_sra_epi32(c, _mm_cvtsi32_si128(comp_shift));
                let mut s = [_mm512_sub_epi32(_mm512_setzero_si512(), c); R];
                for g in 0..BLOCK / 4 {
                    let kk = b * BLOCK + g * 4;
                    if !p.ahead.is_null() {
                        _mm_prefetch::<_MM_HINT_T1>(p.ahead.wrapping_add(kk * NR));
                    }
                    let wv = _mm512_loadu_si512(w.add(kk * NR) as *const _);
                    for r in 0..R {
                        let xv = _mm512_set1_epi32(four(x.add(r * k + kk)));
                        s[r] = _mm512_dpbusd_epi32(s[r], xv, wv);
                    }
                }
                let d = _mm512_loadu_ps(p.d.as_ptr().add(b * NR));
                for r in 0..R {
                    let sum = _mm512_cvtepi32_ps(s[r]);
                    let scale = _mm512_mul_ps(d, _mm512_set1_ps(xd[r * nb + b]));
                    f[r] = _mm512_fmadd_ps(sum, scale, f[r]);
                }
            }
            let bias = match dst.bias {
                Some(b) => _mm512_loadu_ps(b),
                None => _mm512_setzero_ps(),
            };
            for r in 0..R {
                _mm512_storeu_ps(dst.row(r), _mm512_add_ps(f[r], bias));
            }
        }
    }

    /// The ymm kernels' shared frame: two ymm of 8 i32 sums per row, `dot`
    /// adding four k of one row to them, f32 sums in `out` (L1).
    #[inline(always)]
    unsafe fn ymm<const R: usize>(
        k: usize,
        xq: &[u8],
        xd: &[f32],
        p: Panel,
        dst: Dst,
        comp_shift: i32,
        dot: impl Fn(__m256i, __m256i, __m256i) -> __m256i,
    ) {
        let nb = k / BLOCK;
        // SAFETY: the caller's promises cover every load and store below.
        unsafe {
            // The f32 sums wait in the destination rows (L1), bias first.
            for r in 0..R {
                for h in 0..2 {
                    let b = match dst.bias {
                        Some(b) => _mm256_loadu_ps(b.add(8 * h)),
                        None => _mm256_setzero_ps(),
                    };
                    _mm256_storeu_ps(dst.row(r).add(8 * h), b);
                }
            }
            let (x, w) = (xq.as_ptr(), p.q.as_ptr());
            for b in 0..nb {
                // The sums start at minus the compensation (see avx512vnni).
                // Plain statements, not a closure: a closure's body is not
                // compiled with the function's target features, and calling
                // it per block made q8_0 greedy on AVX2 28% slower.
                let shift = _mm_cvtsi32_si128(comp_shift);
                let c0 = _mm256_loadu_si256(p.comp.as_ptr().add(b * NR) as *const _);
                let c1 = _mm256_loadu_si256(p.comp.as_ptr().add(b * NR + 8) as *const _);
                let zero = _mm256_setzero_si256();
                let c0 = _mm256_sub_epi32(zero, _mm256_sra_epi32(c0, shift));
                let c1 = _mm256_sub_epi32(zero, _mm256_sra_epi32(c1, shift));
                let mut s = [[c0, c1]; R];
                for g in 0..BLOCK / 4 {
                    let kk = b * BLOCK + g * 4;
                    if !p.ahead.is_null() {
                        _mm_prefetch::<_MM_HINT_T1>(p.ahead.wrapping_add(kk * NR));
                    }
                    let w0 = _mm256_loadu_si256(w.add(kk * NR) as *const _);
                    let w1 = _mm256_loadu_si256(w.add(kk * NR + 32) as *const _);
                    for r in 0..R {
                        let xv = _mm256_set1_epi32(four(x.add(r * k + kk)));
                        s[r][0] = dot(s[r][0], xv, w0);
                        s[r][1] = dot(s[r][1], xv, w1);
                    }
                }
                for h in 0..2 {
                    let d = _mm256_loadu_ps(p.d.as_ptr().add(b * NR + 8 * h));
                    for r in 0..R {
                        let sum = _mm256_cvtepi32_ps(s[r][h]);
                        let scale = _mm256_mul_ps(d, _mm256_set1_ps(xd[r * nb + b]));
                        let o = dst.row(r).add(8 * h);
                        _mm256_storeu_ps(o, _mm256_fmadd_ps(sum, scale, _mm256_loadu_ps(o)));
                    }
                }
            }
        }
    }

    /// AVX-VNNI: `vpdpbusd` on ymm, u8 activations, compensated.
    ///
    /// # Safety
    /// As [`avx512vnni`], for AVX2, FMA and AVX-VNNI.
    #[target_feature(enable = "avx2,fma,avxvnni")]
    pub unsafe fn avxvnni<const R: usize>(
        k: usize,
        xq: &[u8],
        xd: &[f32],
        p: Panel,
        dst: Dst,
        comp_shift: i32,
    ) {
        // SAFETY: the caller's promises.
        unsafe {
            ymm::<R>(k, xq, xd, p, dst, comp_shift, |s, x, w| {
                _mm256_dpbusd_avx_epi32(s, x, w)
            })
        }
    }

    /// The AVX-VNNI kernel with `vpdpbusd` in its AVX-512 VL (EVEX)
    /// encoding, which computes the same sums: for AVX-512 VNNI CPUs without
    /// AVX-VNNI (Ice Lake, Sapphire Rapids, Zen 4), where it runs the ymm
    /// kernel's code, so that code is tested and measured there too. Only the
    /// instruction's encoding differs from [`avxvnni`].
    ///
    /// # Safety
    /// As [`avx512vnni`], for AVX2, FMA, AVX-512 VNNI and AVX-512 VL.
    #[target_feature(enable = "avx2,fma,avx512vnni,avx512vl")]
    pub unsafe fn avx_vnni_evex<const R: usize>(
        k: usize,
        xq: &[u8],
        xd: &[f32],
        p: Panel,
        dst: Dst,
        comp_shift: i32,
    ) {
        // SAFETY: the caller's promises.
        unsafe {
            ymm::<R>(k, xq, xd, p, dst, comp_shift, |s, x, w| {
                _mm256_dpbusd_epi32(s, x, w)
            })
        }
    }

    /// AVX2: 7-bit u8 activations times w in i16 pairs (`vpmaddubsw`, no
    /// saturation: 2 x 127 x 128 < 32767), then pairs of pairs to i32
    /// (`vpmaddwd` by ones), compensated.
    ///
    /// # Safety
    /// As [`avx512vnni`], for AVX2 and FMA; activations 7-bit, shifted by 64.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn avx2<const R: usize>(
        k: usize,
        xq: &[u8],
        xd: &[f32],
        p: Panel,
        dst: Dst,
        comp_shift: i32,
    ) {
        // SAFETY: the caller's promises.
        unsafe {
            let ones = _mm256_set1_epi16(1);
            ymm::<R>(k, xq, xd, p, dst, comp_shift, |s, x, w| {
                _mm256_add_epi32(s, _mm256_madd_epi16(_mm256_maddubs_epi16(x, w), ones))
            })
        }
    }
}

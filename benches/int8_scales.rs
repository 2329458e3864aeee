//! Per-row against per-block int8 weight scales: the speed half of issue 16's
//! question (`benches/compare/int8_scales.py` measures the accuracy half).
//!
//! transum's int8 kernels (`src/cpu/int8.rs`) take GGML's q8_0 weights, one
//! scale per 32 values of a row, so each block's i32 sum is converted and
//! scaled on its own. A per-row layout (CTranslate2's, fbgemm's) keeps one i32
//! sum per output over the whole k and scales it once. This bench builds that
//! per-row kernel here, with the same panel layout, instruction choice and
//! prefetch as the library's, and times both on opus-mt-fr-en's products on
//! one thread: GOP/s of `x Wᵀ + b`, activations quantized inside the timing
//! in both, best of 7, interleaved.
//!
//! Run: `cargo bench --bench int8_scales` (the kernel follows
//! `TRANSUM_CPU_ISA` / `TRANSUM_INT8_KERNEL` as the library's does: AVX-512
//! VNNI, or AVX2 with 7-bit activations; the per-row twin of AVX-VNNI is not
//! built here).

/// The per-row weights and kernels, and their check (x86-64's instructions).
#[cfg(target_arch = "x86_64")]
mod imp {
    pub use std::time::Instant;
    pub use transum::cpu::int8::I8Kernel;
    pub use transum::cpu::matmul::PackedMatrix;

    pub const NR: usize = 16;

    /// Per-row int8 weights in the library's panel layout ([k/4][NR][4] per
    /// panel of NR rows), one f32 scale per row, and `128 Σ_k w` per row.
    pub struct PerRow {
        q: Vec<i8>,
        d: Vec<f32>,
        comp: Vec<i32>,
        n: usize,
        k: usize,
    }

    impl PerRow {
        pub fn quantize(w: &[f32], n: usize, k: usize) -> Self {
            let panels = n.div_ceil(NR);
            let mut q = vec![0i8; panels * NR * k];
            let mut d = vec![0f32; panels * NR];
            let mut comp = vec![0i32; panels * NR];
            for j in 0..n {
                let row = &w[j * k..(j + 1) * k];
                let amax = row.iter().fold(0f32, |a, &v| a.max(v.abs()));
                let s = amax / 127.0;
                let inv = if s != 0.0 { 1.0 / s } else { 0.0 };
                d[j] = s;
                let (p, jj) = (j / NR, j % NR);
                for (kk, &v) in row.iter().enumerate() {
                    let v = (v * inv).round().clamp(-127.0, 127.0) as i8;
                    q[p * NR * k + ((kk / 4) * NR + jj) * 4 + kk % 4] = v;
                    comp[j] += 128 * v as i32;
                }
            }
            PerRow { q, d, comp, n, k }
        }

        /// `x Wᵀ + b` with activations quantized per row to `bits` (8 for
        /// VNNI, 7 for AVX2), on the current thread: [rows, ld] with the last
        /// panel's padding columns (ld = n rounded up to NR) left in, as the
        /// library's product writes straight into its output.
        pub fn matmul(
            &self,
            kernel: I8Kernel,
            x: &[f32],
            rows: usize,
            bias: &[f32],
        ) -> (Vec<f32>, usize) {
            let (n, k) = (self.n, self.k);
            let bits = kernel.activation_bits();
            let levels = ((1 << (bits - 1)) - 1) as f32;
            let shift = 1u8 << (bits - 1);
            let mut xq = vec![0u8; rows * k];
            let mut xd = vec![0f32; rows];
            for r in 0..rows {
                let row = &x[r * k..(r + 1) * k];
                let amax = row.iter().fold(0f32, |a, &v| a.max(v.abs()));
                let s = amax / levels;
                let inv = if s != 0.0 { 1.0 / s } else { 0.0 };
                xd[r] = s;
                for (q, &v) in xq[r * k..(r + 1) * k].iter_mut().zip(row) {
                    *q = ((v * inv).round_ties_even() as i32 as i8 as u8).wrapping_add(shift);
                }
            }
            let panels = n.div_ceil(NR);
            let ld = panels * NR;
            let mut out = Vec::<f32>::with_capacity(rows * ld);
            let base = out.as_mut_ptr();
            let mut bias_p = bias.to_vec();
            bias_p.resize(ld, 0.0);
            let comp_shift = 8 - bits as i32;
            for p in 0..panels {
                let w = &self.q[p * NR * k..(p + 1) * NR * k];
                let ahead = self.q.as_ptr().wrapping_add((p + 1) * NR * k);
                let tile = if kernel == I8Kernel::Avx512Vnni { 8 } else { 4 };
                let mut t = 0;
                while t < rows {
                    let r = tile.min(rows - t);
                    let args = Args {
                        k,
                        x: &xq[t * k..(t + r) * k],
                        xd: &xd[t..t + r],
                        w,
                        ahead,
                        d: &self.d[p * NR..(p + 1) * NR],
                        comp: &self.comp[p * NR..(p + 1) * NR],
                        bias: &bias_p[p * NR..(p + 1) * NR],
                        out: base.wrapping_add(t * ld + p * NR),
                        ld,
                        comp_shift,
                    };
                    // SAFETY: the kernel was checked supported; `out` has r rows
                    // of NR floats from this panel's column on, `ld` apart.
                    unsafe { x86::tile(kernel, r, args) };
                    t += r;
                }
            }
            // SAFETY: every panel, padding included, wrote all its rows.
            unsafe { out.set_len(rows * ld) };
            (out, ld)
        }
    }

    /// One register tile's operands.
    struct Args<'a> {
        k: usize,
        x: &'a [u8],
        xd: &'a [f32],
        w: &'a [i8],
        ahead: *const i8,
        d: &'a [f32],
        comp: &'a [i32],
        bias: &'a [f32],
        out: *mut f32,
        ld: usize,
        comp_shift: i32,
    }

    #[allow(clippy::needless_range_loop)]
    mod x86 {
        use super::{Args, NR};
        use std::arch::x86_64::*;
        use transum::cpu::int8::I8Kernel;

        /// Rows of the tile, dispatched to a const row count.
        pub unsafe fn tile(kernel: I8Kernel, r: usize, a: Args) {
            macro_rules! rows {
                ($f:ident, $($n:literal)*) => {
                    match r { $($n => $f::<$n>(a),)* _ => unreachable!() }
                };
            }
            // SAFETY: the caller's promises.
            unsafe {
                match kernel {
                    I8Kernel::Avx512Vnni => rows!(vnni, 1 2 3 4 5 6 7 8),
                    I8Kernel::Avx2 => rows!(avx2, 1 2 3 4),
                    k => panic!("no per-row twin of the {} kernel here", k.name()),
                }
            }
        }

        #[inline(always)]
        unsafe fn four(x: *const u8) -> i32 {
            // SAFETY: x..x+4 lies inside a row.
            unsafe { (x as *const i32).read_unaligned() }
        }

        /// One i32 zmm per row over all of k, scaled once.
        #[target_feature(enable = "avx512f,avx512bw,avx512vnni,fma")]
        unsafe fn vnni<const R: usize>(a: Args) {
            // SAFETY: the slices hold R rows of k bytes and NR of everything else.
            unsafe {
                let mut s = [_mm512_setzero_si512(); R];
                let (x, w) = (a.x.as_ptr(), a.w.as_ptr());
                for kk in (0..a.k).step_by(4) {
                    _mm_prefetch::<_MM_HINT_T1>(a.ahead.wrapping_add(kk * NR));
                    let wv = _mm512_loadu_si512(w.add(kk * NR) as *const _);
                    for r in 0..R {
                        let xv = _mm512_set1_epi32(four(x.add(r * a.k + kk)));
                        s[r] = _mm512_dpbusd_epi32(s[r], xv, wv);
                    }
                }
                let c = _mm512_loadu_si512(a.comp.as_ptr() as *const _);
                let c = _mm512_sra_epi32(c, _mm_cvtsi32_si128(a.comp_shift));
                let d = _mm512_loadu_ps(a.d.as_ptr());
                let b = _mm512_loadu_ps(a.bias.as_ptr());
                for r in 0..R {
                    let sum = _mm512_cvtepi32_ps(_mm512_sub_epi32(s[r], c));
                    let scale = _mm512_mul_ps(d, _mm512_set1_ps(a.xd[r]));
                    _mm512_storeu_ps(a.out.add(r * a.ld), _mm512_fmadd_ps(sum, scale, b));
                }
            }
        }

        /// Two i32 ymm per row over all of k (`vpmaddubsw` + `vpmaddwd` on
        /// 7-bit activations), scaled once.
        #[target_feature(enable = "avx2,fma")]
        unsafe fn avx2<const R: usize>(a: Args) {
            // SAFETY: as `vnni`.
            unsafe {
                let ones = _mm256_set1_epi16(1);
                let mut s = [[_mm256_setzero_si256(); 2]; R];
                let (x, w) = (a.x.as_ptr(), a.w.as_ptr());
                for kk in (0..a.k).step_by(4) {
                    _mm_prefetch::<_MM_HINT_T1>(a.ahead.wrapping_add(kk * NR));
                    let w0 = _mm256_loadu_si256(w.add(kk * NR) as *const _);
                    let w1 = _mm256_loadu_si256(w.add(kk * NR + 32) as *const _);
                    for r in 0..R {
                        let xv = _mm256_set1_epi32(four(x.add(r * a.k + kk)));
                        let p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(xv, w0), ones);
                        let p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(xv, w1), ones);
                        s[r][0] = _mm256_add_epi32(s[r][0], p0);
                        s[r][1] = _mm256_add_epi32(s[r][1], p1);
                    }
                }
                for h in 0..2 {
                    let c = _mm256_loadu_si256(a.comp.as_ptr().add(8 * h) as *const _);
                    let c = _mm256_sra_epi32(c, _mm_cvtsi32_si128(a.comp_shift));
                    let d = _mm256_loadu_ps(a.d.as_ptr().add(8 * h));
                    let b = _mm256_loadu_ps(a.bias.as_ptr().add(8 * h));
                    for r in 0..R {
                        let sum = _mm256_cvtepi32_ps(_mm256_sub_epi32(s[r][h], c));
                        let scale = _mm256_mul_ps(d, _mm256_set1_ps(a.xd[r]));
                        _mm256_storeu_ps(
                            a.out.add(r * a.ld + 8 * h),
                            _mm256_fmadd_ps(sum, scale, b),
                        );
                    }
                }
            }
        }
    }

    /// The per-row kernel against its definition (integer sums are exact, so
    /// only the final f32 scaling differs), so the timing is of a correct kernel.
    pub fn check(kernel: I8Kernel) {
        // Tails of the 8-row tile and the 16-wide panel.
        let (rows, n, k) = (11, 37, 96);
        let (x, w, b) = transum::bench::matmul_operands(rows, n, k);
        let pr = PerRow::quantize(&w, n, k);
        let (y, ld) = pr.matmul(kernel, &x, rows, &b);
        let bits = kernel.activation_bits();
        let levels = ((1 << (bits - 1)) - 1) as f32;
        for r in 0..rows {
            let row = &x[r * k..(r + 1) * k];
            let s = row.iter().fold(0f32, |a, &v| a.max(v.abs())) / levels;
            for j in 0..n {
                let dot: i64 = (0..k)
                    .map(|kk| {
                        let xq = (row[kk] / s).round_ties_even() as i64;
                        let p = j / NR;
                        let wq = pr.q[p * NR * k + ((kk / 4) * NR + j % NR) * 4 + kk % 4] as i64;
                        xq * wq
                    })
                    .sum();
                let want = dot as f64 * s as f64 * pr.d[j] as f64 + b[j] as f64;
                let got = y[r * ld + j] as f64;
                assert!(
                    (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                    "per-row kernel at ({r}, {j}): {got} != {want}"
                );
            }
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    println!("skipped: the int8 kernels are x86-64's");
}

#[cfg(target_arch = "x86_64")]
fn main() {
    use imp::*;
    let kernel = transum::cpu::int8::kernel().unwrap();
    if !matches!(kernel, I8Kernel::Avx512Vnni | I8Kernel::Avx2) {
        println!(
            "skipped: the {} int8 kernel has no per-row twin here (AVX-512 VNNI and AVX2 do)",
            kernel.name()
        );
        return;
    }
    check(kernel);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    println!(
        "int8 {} kernel, {}-bit activations, one thread: per-block q8_0 (transum) vs per-row, GOP/s",
        kernel.name(),
        kernel.activation_bits()
    );
    for (rows, n, k) in transum::bench::MATMUL_SHAPES {
        let (x, w, b) = transum::bench::matmul_operands(rows, n, k);
        let block = PackedMatrix::quantize_q8_0(&w, n, k).expect("k is a multiple of 32");
        let row = PerRow::quantize(&w, n, k);
        let (mut tb, mut tr) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..7 {
            let t = Instant::now();
            pool.install(|| std::hint::black_box(block.matmul_vec(&x, rows, Some(&b))));
            tb = tb.min(t.elapsed().as_secs_f64());
            let t = Instant::now();
            std::hint::black_box(row.matmul(kernel, &x, rows, &b));
            tr = tr.min(t.elapsed().as_secs_f64());
        }
        let ops = 2.0 * (rows * n * k) as f64;
        println!(
            "{rows:>4} x {n:>5} x {k:>4}  per-block {:>6.1}  per-row {:>6.1}  ({:.2}x)",
            ops / tb / 1e9,
            ops / tr / 1e9,
            tb / tr
        );
    }
}

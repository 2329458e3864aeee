//! Small CPU kernels for the decode hot path (plus `CpuView`, the borrowed f32
//! data of a CPU tensor that they and the packed matmul read), where candle's general ops cost
//! more in dispatch than in arithmetic: single-query attention (one gemm call
//! per row and head in candle) and row-wise log-softmax over the vocabulary.
//!
//! The crate is built for baseline x86-64, so each kernel is compiled twice:
//! plain, and with AVX2+FMA enabled, picked at run time. The loops are written
//! with independent accumulators so that LLVM vectorizes them; results agree
//! with torch to float32 rounding (summation order differs).

/// Read access to the f32 data of a contiguous CPU tensor.
pub(crate) struct CpuView<'a> {
    guard: Box<dyn std::ops::Deref<Target = candle_core::Storage> + 'a>,
    start: usize,
    end: usize,
}

impl<'a> CpuView<'a> {
    /// None unless `t` is a contiguous f32 tensor on the CPU.
    pub(crate) fn new(t: &'a candle_core::Tensor) -> Option<Self> {
        let (guard, layout) = t.storage_and_layout();
        let (start, end) = layout.contiguous_offsets()?;
        match &*guard {
            candle_core::Storage::Cpu(cpu) if cpu.as_slice::<f32>().is_ok() => Some(CpuView {
                guard: Box::new(guard),
                start,
                end,
            }),
            _ => None,
        }
    }

    pub(crate) fn slice(&self) -> &[f32] {
        match &**self.guard {
            candle_core::Storage::Cpu(cpu) => {
                &cpu.as_slice::<f32>().expect("checked in new")[self.start..self.end]
            }
            _ => unreachable!("checked in new"),
        }
    }
}

/// `f` over the f32 data of a CPU tensor: in place when contiguous, else a copy.
pub(crate) fn with_f32<R>(
    t: &candle_core::Tensor,
    f: impl FnOnce(&[f32]) -> R,
) -> crate::error::Result<R> {
    if let Some(v) = CpuView::new(t) {
        return Ok(f(v.slice()));
    }
    Ok(f(&t
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?))
}

#[inline(always)]
fn dot_impl(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for j in 0..8 {
            acc[j] += x[j] * y[j];
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for (x, y) in ra.iter().zip(rb) {
        s += x * y;
    }
    s
}

/// Exact-enough `exp` that vectorizes: Cephes' expf (2^k * poly(r)), ~1 ulp.
#[inline(always)]
fn exp_approx(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C1: f32 = 0.693_359_4;
    const C2: f32 = -2.121_944_4e-4;
    // max/min rather than clamp: same result here and no panic path.
    #[allow(clippy::manual_clamp)]
    let x = x.max(-87.336_55).min(88.376_26);
    let k = (x * LOG2E + 0.5).floor();
    let r = x - k * C1 - k * C2;
    let r2 = r * r;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let y = p * r2 + r + 1.0;
    // k is integral and within [-126, 128] after the clamp: the cast is exact.
    y * f32::from_bits(((unsafe { k.to_int_unchecked::<i32>() } + 127) as u32) << 23)
}

#[inline(always)]
fn log_softmax_impl(row: &mut [f32]) {
    // chunks_exact keeps the loops free of bounds checks, so they vectorize.
    let mut m = [f32::NEG_INFINITY; 8];
    let mut it = row.chunks_exact(8);
    for c in &mut it {
        for j in 0..8 {
            m[j] = m[j].max(c[j]);
        }
    }
    let mut max = m.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for &x in it.remainder() {
        max = max.max(x);
    }
    if max == f32::NEG_INFINITY {
        return;
    }
    let mut acc = [0f32; 8];
    let mut it = row.chunks_exact(8);
    for c in &mut it {
        for j in 0..8 {
            acc[j] += exp_approx(c[j] - max);
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for &x in it.remainder() {
        sum += exp_approx(x - max);
    }
    // torch computes x - max - log(sum); keep that order for the last ulp.
    let log_sum = sum.ln();
    for x in row.iter_mut() {
        *x = *x - max - log_sum;
    }
}

#[inline(always)]
fn silu_impl(src: &[f32], dst: &mut [f32]) {
    for (d, &x) in dst.iter_mut().zip(src) {
        *d = x / (1.0 + exp_approx(-x));
    }
}

/// Single-query multi-head attention for one row block:
/// `q` [heads, t, hd], `k`/`v` [heads, s, hd] with heads `stride` floats apart
/// (s * hd when packed, more in a cache with spare capacity), additive `mask` [s] or none;
/// writes `out` [t, heads, hd] (already in the [t, d] layout the out-projection wants).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn attend_impl(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: Option<&[f32]>,
    heads: usize,
    t: usize,
    s: usize,
    hd: usize,
    stride: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    for h in 0..heads {
        let kh = &k[h * stride..h * stride + s * hd];
        let vh = &v[h * stride..h * stride + s * hd];
        for ti in 0..t {
            let qv = &q[(h * t + ti) * hd..(h * t + ti + 1) * hd];
            let mut max = f32::NEG_INFINITY;
            for si in 0..s {
                let mut x = dot_impl(qv, &kh[si * hd..(si + 1) * hd]) * scale;
                if let Some(m) = mask {
                    x += m[si];
                }
                scores[si] = x;
                max = max.max(x);
            }
            let mut sum = 0f32;
            for x in scores[..s].iter_mut() {
                *x = exp_approx(*x - max);
                sum += *x;
            }
            let o = &mut out[(ti * heads + h) * hd..(ti * heads + h + 1) * hd];
            o.fill(0.0);
            for si in 0..s {
                let p = scores[si] / sum;
                let vr = &vh[si * hd..(si + 1) * hd];
                for d in 0..hd {
                    o[d] += p * vr[d];
                }
            }
        }
    }
}

/// Defines `$name` calling `$imp`, compiled a second time with AVX2+FMA and
/// picked at run time.
macro_rules! dispatch {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident : $ty:ty),* $(,)?) $(-> $ret:ty)? => $imp:ident) => {
        $(#[$meta])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $imp($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
                    // SAFETY: the CPU supports the features the function was compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $imp($($arg),*)
        }
    };
}

dispatch!(
    /// `log_softmax` of one row in place (x - max - ln(sum(exp(x - max)))).
    pub fn log_softmax(row: &mut [f32]) => log_softmax_impl
);

dispatch!(
    /// `x * sigmoid(x)` computed as torch does, `x / (1 + exp(-x))`.
    pub fn silu(src: &[f32], dst: &mut [f32]) => silu_impl
);

/// Single-query multi-head attention for one row block: see `attend_impl`
/// (`scores` holds t * s floats). On AVX2 the query-key dots run four at a
/// time (four queries against one key in cross-attention, where an item's
/// beams share the keys; one query against four keys otherwise), reduced
/// together with one horizontal-add tree instead of four.
#[allow(clippy::too_many_arguments)]
pub fn attend_rows(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: Option<&[f32]>,
    heads: usize,
    t: usize,
    s: usize,
    hd: usize,
    stride: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    let kv_len = (heads.max(1) - 1) * stride + s * hd;
    assert!(
        q.len() >= heads * t * hd
            && stride >= s * hd
            && k.len() >= kv_len
            && v.len() >= kv_len
            && mask.is_none_or(|m| m.len() >= s)
            && scores.len() >= t * s
            && out.len() >= t * heads * hd,
        "attend_rows: buffer sizes do not match the shapes"
    );
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
        // SAFETY: the CPU has AVX2 and FMA; the assert above bounds every access.
        unsafe { attend_avx2(q, k, v, mask, heads, t, s, hd, stride, scale, scores, out) };
        return;
    }
    attend_impl(q, k, v, mask, heads, t, s, hd, stride, scale, scores, out)
}

/// `[a[i] · b[i] for i in 0..4]` over `n` floats (n a multiple of 8).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot4(a: [*const f32; 4], b: [*const f32; 4], n: usize) -> [f32; 4] {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_setzero_ps(); 4];
    for c in (0..n).step_by(8) {
        for i in 0..4 {
            acc[i] = _mm256_fmadd_ps(
                _mm256_loadu_ps(a[i].add(c)),
                _mm256_loadu_ps(b[i].add(c)),
                acc[i],
            );
        }
    }
    // [s0 s1 s2 s3] from four 8-lane sums: two rounds of pairwise adds, then
    // the two 128-bit halves.
    let h = _mm256_hadd_ps(
        _mm256_hadd_ps(acc[0], acc[1]),
        _mm256_hadd_ps(acc[2], acc[3]),
    );
    let sum = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h));
    let mut out = [0f32; 4];
    _mm_storeu_ps(out.as_mut_ptr(), sum);
    out
}

/// `attend_impl` with the dots four at a time (see `attend_rows`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn attend_avx2(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: Option<&[f32]>,
    heads: usize,
    t: usize,
    s: usize,
    hd: usize,
    stride: usize,
    scale: f32,
    scores: &mut [f32],
    out: &mut [f32],
) {
    if !hd.is_multiple_of(8) {
        return attend_impl(q, k, v, mask, heads, t, s, hd, stride, scale, scores, out);
    }
    for h in 0..heads {
        let kh = k[h * stride..h * stride + s * hd].as_ptr();
        let vh = &v[h * stride..h * stride + s * hd];
        let qh = q[h * t * hd..(h + 1) * t * hd].as_ptr();
        // Raw scores [t][s].
        let mut ti = 0;
        while ti + 4 <= t {
            let qs = [0, 1, 2, 3].map(|i| qh.add((ti + i) * hd));
            for si in 0..s {
                let kp = kh.add(si * hd);
                let d = dot4(qs, [kp; 4], hd);
                for i in 0..4 {
                    scores[(ti + i) * s + si] = d[i];
                }
            }
            ti += 4;
        }
        for ti in ti..t {
            let qp = qh.add(ti * hd);
            let mut si = 0;
            while si + 4 <= s {
                let d = dot4([qp; 4], [0, 1, 2, 3].map(|i| kh.add((si + i) * hd)), hd);
                scores[ti * s + si..ti * s + si + 4].copy_from_slice(&d);
                si += 4;
            }
            for si in si..s {
                scores[ti * s + si] = dot4([qp; 4], [kh.add(si * hd); 4], hd)[0];
            }
        }
        for ti in 0..t {
            let row = &mut scores[ti * s..(ti + 1) * s];
            let mut max = f32::NEG_INFINITY;
            for (si, x) in row.iter_mut().enumerate() {
                *x *= scale;
                if let Some(m) = mask {
                    *x += m[si];
                }
                max = max.max(*x);
            }
            let sum = exp_sum(row, max);
            let o = &mut out[(ti * heads + h) * hd..(ti * heads + h + 1) * hd];
            o.fill(0.0);
            for (si, &e) in row.iter().enumerate() {
                let p = e / sum;
                let vr = &vh[si * hd..(si + 1) * hd];
                for d in 0..hd {
                    o[d] += p * vr[d];
                }
            }
        }
    }
}

/// `row[i] = exp(row[i] - max)` in place; returns the sum, accumulated in
/// eight lanes so that the loop vectorizes.
#[inline(always)]
fn exp_sum(row: &mut [f32], max: f32) -> f32 {
    let mut acc = [0f32; 8];
    let mut it = row.chunks_exact_mut(8);
    for c in &mut it {
        for j in 0..8 {
            c[j] = exp_approx(c[j] - max);
            acc[j] += c[j];
        }
    }
    let mut sum = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    for x in it.into_remainder() {
        *x = exp_approx(*x - max);
        sum += *x;
    }
    sum
}

#[cfg(test)]
mod tests {
    #[test]
    fn exp_matches_std_to_float_rounding() {
        for i in -8700..=0 {
            let x = i as f32 * 0.01;
            let (a, b) = (super::exp_approx(x), x.exp());
            assert!(
                (a - b).abs() <= 2.0 * f32::EPSILON * b.max(f32::MIN_POSITIVE),
                "exp({x}): {a} vs {b}"
            );
        }
    }
}

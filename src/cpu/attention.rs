//! Decoding attention on the host: a few queries per row over a KV cache,
//! for many rows in parallel. candle would run one gemm call per row and head,
//! whose fixed cost dominates these tiny products.
//!
//! Follows transformers' attention (Vaswani et al. 2017): q·kᵀ scaled by
//! head_dim^-0.5, additive mask, softmax, weighted sum of v. The portable
//! version is `attend_impl`; on AVX2 the query-key dots run four at a time.

use super::elementwise::{exp_approx, exp_sum};
use super::Isa;

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
    attend_rows_with(
        super::isa(),
        q,
        k,
        v,
        mask,
        heads,
        t,
        s,
        hd,
        stride,
        scale,
        scores,
        out,
    )
}

/// [`attend_rows`] with the kernels of `isa`.
///
/// # Panics
/// When this CPU does not support `isa`, or the buffers do not fit the shapes.
#[allow(clippy::too_many_arguments)]
pub fn attend_rows_with(
    isa: Isa,
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
    assert!(isa.supported(), "this CPU does not support {}", isa.name());
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
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 | Isa::Avx512 => {
            // SAFETY: the CPU has AVX2 and FMA (checked above); the assert
            // above bounds every access.
            unsafe { attend_avx2(q, k, v, mask, heads, t, s, hd, stride, scale, scores, out) }
        }
        _ => attend_impl(q, k, v, mask, heads, t, s, hd, stride, scale, scores, out),
    }
}

/// `[a[i] · b[i] for i in 0..4]` over `n` floats (n a multiple of 8).
///
/// # Safety
/// The CPU supports AVX2 and FMA; each `a[i]` and `b[i]` points to `n` readable floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot4(a: [*const f32; 4], b: [*const f32; 4], n: usize) -> [f32; 4] {
    use std::arch::x86_64::*;
    // SAFETY: the caller's promise: every load below is within the n floats.
    unsafe {
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
}

/// `attend_impl` with the dots four at a time (see `attend_rows`).
///
/// # Safety
/// The CPU supports AVX2 and FMA, and the buffers hold what `attend_rows` asserts.
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
    // SAFETY: every pointer below is offset within the asserted buffer sizes.
    unsafe {
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
                let o = out[(ti * heads + h) * hd..(ti * heads + h + 1) * hd].as_mut_ptr();
                // Σ_s p_s v_s in registers, up to 64 floats of the head at a
                // time: summed in memory, one load and store per key, this
                // was a third of the attention's time.
                let mut c = 0;
                while c < hd {
                    let w = (hd - c).min(64);
                    let (vp, op) = (vh.as_ptr().add(c), o.add(c));
                    match w / 8 {
                        8 => weighted_sum::<8>(row, sum, vp, hd, op),
                        7 => weighted_sum::<7>(row, sum, vp, hd, op),
                        6 => weighted_sum::<6>(row, sum, vp, hd, op),
                        5 => weighted_sum::<5>(row, sum, vp, hd, op),
                        4 => weighted_sum::<4>(row, sum, vp, hd, op),
                        3 => weighted_sum::<3>(row, sum, vp, hd, op),
                        2 => weighted_sum::<2>(row, sum, vp, hd, op),
                        _ => weighted_sum::<1>(row, sum, vp, hd, op),
                    }
                    c += w;
                }
            }
        }
    }
}

/// `out[..8N] = Σ_s (e[s] / sum) v[s][..8N]`, the rows of `v` `hd` floats
/// apart, in N ymm accumulators.
///
/// # Safety
/// The CPU supports AVX2 and FMA; `v` holds `e.len()` rows of `hd` floats
/// with 8N readable from each row's start, and `out` 8N writable floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn weighted_sum<const N: usize>(
    e: &[f32],
    sum: f32,
    v: *const f32,
    hd: usize,
    out: *mut f32,
) {
    use std::arch::x86_64::*;
    // SAFETY: the caller's promises bound every access.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); N];
        for (si, &e) in e.iter().enumerate() {
            let p = _mm256_set1_ps(e / sum);
            let row = v.add(si * hd);
            for (j, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(p, _mm256_loadu_ps(row.add(8 * j)), *a);
            }
        }
        for (j, a) in acc.iter().enumerate() {
            _mm256_storeu_ps(out.add(8 * j), *a);
        }
    }
}

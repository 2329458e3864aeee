//! Element-wise and row-wise kernels of the decode hot path, where candle's
//! general ops cost more in dispatch than in arithmetic: the vocabulary-wide
//! log-softmax of every generation step (or only its statistics, which beam
//! search applies while it ranks), SiLU over the FFN activations, and the
//! `exp` they (and attention) share.
//!
//! The loops are written with independent accumulators so that LLVM vectorizes
//! them for the instruction set each copy is compiled for (see [`super`]); Rust
//! never fuses a multiply and an add on its own, so every copy gives the same
//! bits. Results agree with torch to float32 rounding (summation order differs).

use super::compiled_per_isa;

/// Exact-enough `exp` that vectorizes: Cephes' expf (2^k * poly(r)), ~1 ulp.
#[inline(always)]
pub(crate) fn exp_approx(x: f32) -> f32 {
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
    // SAFETY: k is integral and within [-126, 128] after the clamp: the cast is exact.
    y * f32::from_bits(((unsafe { k.to_int_unchecked::<i32>() } + 127) as u32) << 23)
}

/// A row's log-softmax statistics: its maximum and `ln(sum(exp(x - max)))`;
/// `None` when the maximum is -inf (log-softmax then leaves the row as it is).
#[inline(always)]
fn log_softmax_stats_impl(row: &[f32]) -> Option<(f32, f32)> {
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
        return None;
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
    Some((max, sum.ln()))
}

/// The rest of `log_softmax` once its `stats` are known: `x - max - log_sum`
/// in place (torch's order, for the last ulp); `None` leaves the row as it is.
#[inline(always)]
pub fn log_softmax_from_stats(row: &mut [f32], stats: Option<(f32, f32)>) {
    if let Some((max, log_sum)) = stats {
        for x in row.iter_mut() {
            *x = *x - max - log_sum;
        }
    }
}

#[inline(always)]
fn log_softmax_impl(row: &mut [f32]) {
    log_softmax_from_stats(row, log_softmax_stats_impl(row));
}

#[inline(always)]
fn silu_impl(src: &[f32], dst: &mut [f32]) {
    for (d, &x) in dst.iter_mut().zip(src) {
        *d = x / (1.0 + exp_approx(-x));
    }
}

compiled_per_isa!(
    /// `log_softmax` of one row in place (x - max - ln(sum(exp(x - max)))).
    pub fn log_softmax / log_softmax_with(row: &mut [f32]) => log_softmax_impl
);

compiled_per_isa!(
    /// The maximum and log-sum that `log_softmax` subtracts from every value
    /// (`x - max - log_sum`, in that order); `None` for a row whose maximum is
    /// -inf, which `log_softmax` leaves unchanged. Beam search uses them to
    /// score a row without writing it.
    pub fn log_softmax_stats / log_softmax_stats_with(row: &[f32]) -> Option<(f32, f32)> => log_softmax_stats_impl
);

compiled_per_isa!(
    /// `x * sigmoid(x)` computed as torch does, `x / (1 + exp(-x))`.
    pub fn silu / silu_with(src: &[f32], dst: &mut [f32]) => silu_impl
);

/// `row[i] = exp(row[i] - max)` in place; returns the sum, accumulated in
/// eight lanes so that the loop vectorizes.
#[inline(always)]
pub(crate) fn exp_sum(row: &mut [f32], max: f32) -> f32 {
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

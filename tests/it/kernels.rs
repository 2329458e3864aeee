//! The CPU kernel layer: every SIMD version against its portable twin on
//! awkward shapes (odd lengths, tails, one row, head sizes off the vector
//! width), for each instruction set this CPU has. An instruction set the CPU
//! lacks is reported as skipped, never counted as compared.

use transum::cpu::attention::attend_rows_with;
use transum::cpu::elementwise::{log_softmax_with, silu_with};
use transum::cpu::int8::I8Kernel;
use transum::cpu::matmul::PackedMatrix;
use transum::cpu::Isa;

/// Deterministic values in [-scale, scale).
fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0) * scale
        })
        .collect()
}

/// The SIMD instruction sets this CPU has; the others are reported skipped.
fn simd_isas() -> Vec<Isa> {
    let mut out = Vec::new();
    for isa in [Isa::Avx2, Isa::Avx512] {
        if isa.supported() {
            out.push(isa);
        } else {
            eprintln!("skipped: CPU lacks {}", isa.name());
        }
    }
    out
}

fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * w.abs().max(1.0),
            "{what}: element {i}: {g} vs portable {w}"
        );
    }
}

#[test]
fn elementwise_kernels_equal_their_portable_twins() {
    for isa in simd_isas() {
        for n in [1usize, 7, 8, 9, 31, 1000, 59514] {
            let row = values(n, n as u64, 30.0);
            let (mut a, mut b) = (row.clone(), row.clone());
            log_softmax_with(Isa::Generic, &mut a);
            log_softmax_with(isa, &mut b);
            // Same loops, no fused multiply-add: the same bits.
            assert_eq!(a, b, "log_softmax {} n={n}", isa.name());
            let (mut a, mut b) = (vec![0f32; n], vec![0f32; n]);
            silu_with(Isa::Generic, &row, &mut a);
            silu_with(isa, &row, &mut b);
            assert_eq!(a, b, "silu {} n={n}", isa.name());
        }
        // A row of -inf (every token banned) stays as it is.
        let mut r = vec![f32::NEG_INFINITY; 13];
        log_softmax_with(isa, &mut r);
        assert!(r.iter().all(|x| *x == f32::NEG_INFINITY));
    }
    // The portable twins themselves, against std.
    let row = values(1001, 3, 20.0);
    let mut got = row.clone();
    log_softmax_with(Isa::Generic, &mut got);
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let lse = row
        .iter()
        .map(|&x| (x as f64 - max).exp())
        .sum::<f64>()
        .ln()
        + max;
    let want: Vec<f32> = row.iter().map(|&x| (x as f64 - lse) as f32).collect();
    assert_close("log_softmax vs f64", &got, &want, 1e-5);
    let mut got = vec![0f32; row.len()];
    silu_with(Isa::Generic, &row, &mut got);
    let want: Vec<f32> = row
        .iter()
        .map(|&x| (x as f64 / (1.0 + (-x as f64).exp())) as f32)
        .collect();
    assert_close("silu vs f64", &got, &want, 1e-6);
}

#[test]
fn attention_kernels_equal_their_portable_twin() {
    // (heads, queries, keys, head_dim, spare capacity per head)
    let shapes = [
        (1, 1, 1, 8, 0),
        (2, 1, 7, 12, 3),
        (8, 1, 33, 64, 16),
        (4, 4, 17, 16, 0),
        (3, 5, 9, 24, 5),
        (5, 6, 40, 8, 1),
        (1, 2, 1, 40, 0),
    ];
    for isa in simd_isas() {
        for (i, &(h, t, s, hd, spare)) in shapes.iter().enumerate() {
            let stride = (s + spare) * hd;
            let q = values(h * t * hd, 10 + i as u64, 1.0);
            let k = values(h * stride, 20 + i as u64, 1.0);
            let v = values(h * stride, 30 + i as u64, 1.0);
            let mut mask = vec![0f32; s];
            if s > 2 {
                mask[s - 1] = f32::MIN; // padding
            }
            for mask in [None, Some(mask.as_slice())] {
                let run = |isa: Isa| {
                    let mut scores = vec![0f32; t * s];
                    let mut out = vec![0f32; t * h * hd];
                    attend_rows_with(
                        isa,
                        &q,
                        &k,
                        &v,
                        mask,
                        h,
                        t,
                        s,
                        hd,
                        stride,
                        (hd as f32).powf(-0.5),
                        &mut scores,
                        &mut out,
                    );
                    out
                };
                assert_close(
                    &format!("attention {} h={h} t={t} s={s} hd={hd}", isa.name()),
                    &run(isa),
                    &run(Isa::Generic),
                    1e-5,
                );
            }
        }
    }
}

#[test]
fn packed_matmul_equals_its_portable_twin() {
    // (rows, out, k): one row, tails of the 6-row tile and 16-wide panels,
    // k across the 256 block and off the 32-value q8_0 block.
    let shapes = [
        (1, 1, 32),
        (1, 17, 64),
        (5, 33, 300),
        (7, 16, 256),
        (13, 48, 288),
        (100, 21, 513),
    ];
    for isa in simd_isas() {
        for &(rows, n, k) in &shapes {
            let x = values(rows * k, (rows * n) as u64, 1.0);
            let w = values(n * k, (n * k) as u64, 0.5);
            let b = values(n, n as u64, 0.1);
            let mut forms = vec![("f32", PackedMatrix::pack(&w, n, k))];
            if let Some(q) = PackedMatrix::quantize_q8_0(&w, n, k) {
                forms.push(("q8_0", q));
            }
            for (form, p) in &forms {
                for bias in [None, Some(b.as_slice())] {
                    // q8_0's twin is the portable int8 kernel fed the
                    // activation bits of the ISA's kernel (7 on AVX2).
                    let twin = if p.is_q8_0() {
                        let bits = I8Kernel::for_isa(isa).activation_bits();
                        p.matmul_i8_with(I8Kernel::Generic, bits, &x, rows, bias)
                    } else {
                        p.matmul_vec_with(Isa::Generic, &x, rows, bias)
                    };
                    assert_close(
                        &format!("matmul {form} {} {rows}x{n}x{k}", isa.name()),
                        &p.matmul_vec_with(isa, &x, rows, bias),
                        &twin,
                        1e-5 * (k as f32).sqrt(),
                    );
                }
            }
        }
    }
}

#[test]
fn int8_kernels_equal_their_portable_twin() {
    // (rows, out, k): one row, tails of the 4- and 8-row tiles and of the
    // 16-wide panel, one and many 32-value blocks, encoder-sized rows.
    let shapes = [
        (1, 1, 32),
        (1, 17, 64),
        (3, 33, 96),
        (9, 16, 256),
        (13, 48, 288),
        (70, 21, 512),
    ];
    for &(rows, n, k) in &shapes {
        // Outliers in x: a block's scale follows its own largest value.
        let mut x = values(rows * k, (rows * n) as u64, 1.0);
        x[rows * k / 2] = 40.0;
        let w = values(n * k, (n * k) as u64, 0.5);
        let b = values(n, n as u64, 0.1);
        let p = PackedMatrix::quantize_q8_0(&w, n, k).unwrap();
        let wq = p.unpack();
        // The portable kernel against the maths it implements, in f64: x
        // quantized per row and block as q8_0 quantizes (to 127 levels, or
        // 63 for 7-bit activations), times the q8_0 weights, plus the bias.
        for bits in [8, 7] {
            let levels = ((1 << (bits - 1)) - 1) as f32;
            let xq: Vec<f32> = x
                .chunks(32)
                .flat_map(|blk| {
                    let d = blk.iter().fold(0f32, |a, &v| a.max(v.abs())) / levels;
                    let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
                    blk.iter().map(move |&v| (v * inv).round_ties_even() * d)
                })
                .collect();
            let generic = p.matmul_i8_with(I8Kernel::Generic, bits, &x, rows, Some(&b));
            for r in 0..rows {
                for j in 0..n {
                    let want: f64 = (0..k)
                        .map(|kk| xq[r * k + kk] as f64 * wq[j * k + kk] as f64)
                        .sum::<f64>()
                        + b[j] as f64;
                    let got = generic[r * n + j] as f64;
                    assert!(
                        (got - want).abs() <= 1e-5 * want.abs().max(1.0) * (k as f64).sqrt(),
                        "generic int8 ({bits} bits) {rows}x{n}x{k} at ({r}, {j}): {got} vs {want}"
                    );
                }
            }
        }
        // Each SIMD kernel against the portable one fed the same activation
        // bits: its own (7 for AVX2), and 7 for the VNNI ones as well.
        for kernel in I8Kernel::ALL.into_iter().skip(1) {
            if !kernel.supported() {
                eprintln!("skipped: CPU lacks {}", kernel.name());
                continue;
            }
            eprintln!("int8 {}: {}", kernel.name(), kernel.encoding());
            for bits in [kernel.activation_bits(), 7] {
                for bias in [None, Some(b.as_slice())] {
                    assert_close(
                        &format!("int8 {} ({bits} bits) {rows}x{n}x{k}", kernel.name()),
                        &p.matmul_i8_with(kernel, bits, &x, rows, bias),
                        &p.matmul_i8_with(I8Kernel::Generic, bits, &x, rows, bias),
                        1e-5 * (k as f32).sqrt(),
                    );
                }
            }
        }
    }
    // The extremes `vpmaddubsw` could saturate on: every activation at the
    // top of its range against weights of ±127, and -128 in a weight block
    // (GGUF files may hold it), must still give the exact integer sums.
    let (rows, n, k) = (5, 32, 128);
    for sign in [1.0f32, -1.0] {
        let x = vec![sign; rows * k];
        let mut blocks = Vec::new();
        for j in 0..n {
            for _ in 0..k / 32 {
                blocks.extend_from_slice(&half::f16::from_f32(0.01).to_le_bytes());
                let v: i8 = if j % 2 == 0 { 127 } else { -128 };
                blocks.extend(std::iter::repeat_n(v as u8, 32));
            }
        }
        let p = PackedMatrix::pack_q8_0(&blocks, n, k).unwrap();
        let want: Vec<f32> = (0..rows * n)
            .map(|i| {
                let d = half::f16::from_f32(0.01).to_f32();
                sign * k as f32 * d * if i % n % 2 == 0 { 127.0 } else { -128.0 }
            })
            .collect();
        for kernel in I8Kernel::ALL.into_iter().filter(|k| k.supported()) {
            for bits in [kernel.activation_bits(), 7] {
                assert_close(
                    &format!("int8 {} ({bits} bits) at the extremes", kernel.name()),
                    &p.matmul_i8_with(kernel, bits, &x, rows, None),
                    &want,
                    1e-6,
                );
            }
        }
    }
    // TRANSUM_CPU_ISA=generic runs the portable kernel; the others run the
    // best the CPU has within the chosen instruction set.
    assert_eq!(I8Kernel::for_isa(Isa::Generic), I8Kernel::Generic);
    for isa in Isa::ALL.into_iter().filter(|i| i.supported()) {
        assert!(I8Kernel::for_isa(isa).supported());
    }
}

#[test]
fn the_instruction_set_is_parsed_and_checked() {
    assert_eq!(Isa::parse("generic").unwrap(), Isa::Generic);
    assert_eq!(
        Isa::parse(" AVX2 ").ok(),
        Isa::Avx2.supported().then_some(Isa::Avx2)
    );
    let err = Isa::parse("neon").unwrap_err().to_string();
    assert!(
        err.contains("TRANSUM_CPU_ISA") && err.contains("generic, avx2, avx512"),
        "{err}"
    );
    for isa in Isa::ALL.into_iter().filter(|i| !i.supported()) {
        let err = Isa::parse(isa.name()).unwrap_err().to_string();
        assert!(err.contains("does not support"), "{err}");
    }
    assert!(Isa::best().supported());
}

#[test]
fn an_unknown_instruction_set_is_a_setup_error() {
    let dir = crate::harness::TempDir::new("isa");
    let out = crate::harness::transum_env(
        dir.path(),
        &["translate", "-"],
        Some("Bonjour.\n"),
        &[("HF_HUB_OFFLINE", "1"), ("TRANSUM_CPU_ISA", "neon")],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("TRANSUM_CPU_ISA=\"neon\"") && err.contains("hint: use one of: generic"),
        "{err}"
    );
}

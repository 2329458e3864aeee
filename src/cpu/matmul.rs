//! Packed f32 matrix multiply for the CPU: `y = x Wᵀ + b` with `W` stored once,
//! at load, in the panel layout the multiply streams through.
//!
//! Why our own and not candle's gemm: decoding multiplies a few rows (16 to 64)
//! by every weight matrix at every step. gemm repacks the whole weight matrix on
//! each call (122 MB for opus-mt's LM head), so a step costs three passes over
//! memory instead of one, and its result for `W·xᵀ` still has to be transposed.
//! Packing once makes the weight a sequential stream: panels of [`NR`] output
//! features, each laid out k-major ([k][NR]), so the micro-kernel reads 64
//! contiguous bytes per k and keeps a [`MR`] x [`NR`] tile of outputs in
//! registers (BLIS's scheme, with the weight as the packed "B" panel kept in L1
//! and the rows as the "A" block kept in L2, read in place: the kernel
//! broadcasts one float of each row per k, so they need no transposing).
//! Threads split the panels (rayon's pool, the one `--threads` sizes), so
//! nothing is shared while writing.
//!
//! Each output is one float32 dot product summed in k order (fused multiply-add
//! on AVX2), then the bias is added, as torch's `addmm` rounds: the result is
//! within float32 rounding of candle's and torch's, not bit-identical to them.
//! The register tile exists three times: portable (`tile_generic`), AVX2+FMA
//! intrinsics (`avx2::tile`, 6 rows x two ymm) and AVX-512 intrinsics
//! (`avx512::tile`, 12 rows x one zmm: half the instructions per product, and
//! twice the FMA width where the CPU has two 512-bit FMA units), chosen by the
//! [`Isa`] the multiply is given. All three sum each output in the same k
//! order with one rounding per product (fused on the SIMD ones).
//! q8_0 panels are multiplied by `cpu::int8`'s kernels instead, in integer
//! arithmetic, with the same panel split across threads.

use std::sync::Arc;

use rayon::prelude::*;

use super::int8::{self, I8Kernel};
use super::Isa;

/// Output features per packed panel (two AVX registers).
pub const NR: usize = 16;
/// Rows per AVX2 (and portable) register tile: 6 x 2 accumulators + 2
/// weights + 1 broadcast = 15 of the 16 AVX registers.
const MR: usize = 6;
/// Rows per AVX-512 register tile: 12 accumulators + 1 weight of the 32 zmm
/// registers, the broadcasts folded into the FMAs; 12 rows keep one weight
/// load per 12 FMAs, so two loads per cycle feed two FMA units.
const MR512: usize = 12;

/// Rows per register tile for `isa`.
fn tile_rows(isa: Isa) -> usize {
    match isa {
        Isa::Avx512 => MR512,
        _ => MR,
    }
}
/// k per block: a panel block (KC x NR floats, 16 KiB) stays in L1 while every
/// row tile passes over it.
const KC: usize = 256;
/// Rows per block: one k block of them (MC x KC floats, 96 KiB) stays in L2.
const MC: usize = 96;

/// Values per q8_0 block along k (GGML's QK8_0).
pub const Q8_BLOCK: usize = 32;

/// Packed weights: float, or q8_0 (GGML's format: one scale per 32 weights of a
/// row, int8 values) laid out in the same panels.
#[derive(Debug, Clone)]
enum Panels {
    /// [panels][k][NR], zero-padded past the last feature.
    F32(Arc<Vec<f32>>),
    /// `q` [panels][k/4][NR][4] int8 (four consecutive k of a feature side
    /// by side: the int8 kernels' operand layout), `d` [panels][k/32][NR]
    /// scales (f16 in GGUF, held as the f32 they convert to), and `comp`
    /// [panels][k/32][NR], 128 times each block's sum of values (see
    /// `cpu::int8`). Multiplied by int8 activations in integer arithmetic.
    Q8 {
        q: Arc<Vec<i8>>,
        d: Arc<Vec<f32>>,
        comp: Arc<Vec<i32>>,
    },
}

/// A weight matrix [out, k] packed as panels of [`NR`] output features.
#[derive(Debug, Clone)]
pub struct PackedMatrix {
    data: Panels,
    /// First panel of this view (a view of whole panels of a larger matrix).
    first_panel: usize,
    out: usize,
    k: usize,
}

impl PackedMatrix {
    /// Pack a row-major [out, k] matrix.
    pub fn pack(w: &[f32], out: usize, k: usize) -> Self {
        assert_eq!(w.len(), out * k, "weight is [out, k]");
        let panels = out.div_ceil(NR);
        let mut data = vec![0f32; panels * k * NR];
        data.par_chunks_mut(k * NR)
            .enumerate()
            .for_each(|(p, panel)| {
                for j in 0..NR.min(out - p * NR) {
                    let row = &w[(p * NR + j) * k..(p * NR + j + 1) * k];
                    for (kk, &v) in row.iter().enumerate() {
                        panel[kk * NR + j] = v;
                    }
                }
            });
        PackedMatrix {
            data: Panels::F32(Arc::new(data)),
            first_panel: 0,
            out,
            k,
        }
    }

    /// Pack a q8_0 matrix from GGML blocks (row-major [out, k/32] blocks of 34
    /// bytes: an f16 scale, then 32 int8 values), as candle's `QTensor` and GGUF
    /// files hold it. None when the sizes do not fit that format.
    pub fn pack_q8_0(blocks: &[u8], out: usize, k: usize) -> Option<Self> {
        const BYTES: usize = 2 + Q8_BLOCK;
        let nb = k / Q8_BLOCK;
        if !k.is_multiple_of(Q8_BLOCK) || blocks.len() != out * nb * BYTES {
            return None;
        }
        Some(Self::build_q8_0(out, k, |row, b, qs| {
            let block = &blocks[(row * nb + b) * BYTES..(row * nb + b + 1) * BYTES];
            for (q, &v) in qs.iter_mut().zip(&block[2..]) {
                *q = v as i8;
            }
            half::f16::from_le_bytes([block[0], block[1]]).to_f32()
        }))
    }

    /// Quantize a row-major f32 [out, k] matrix to q8_0 straight into panels,
    /// with GGML's rounding (scale = amax / 127 held as f16, values
    /// round(x / scale)): the same int8 values and scales as candle's
    /// `QTensor::quantize`, without its full-size f32 and block copies (the
    /// LM head is 122 MB). None unless k is a multiple of 32.
    pub fn quantize_q8_0(w: &[f32], out: usize, k: usize) -> Option<Self> {
        assert_eq!(w.len(), out * k, "weight is [out, k]");
        if !k.is_multiple_of(Q8_BLOCK) {
            return None;
        }
        Some(Self::build_q8_0(out, k, |row, b, qs| {
            let xs = &w[row * k + b * Q8_BLOCK..row * k + (b + 1) * Q8_BLOCK];
            let amax = xs.iter().fold(0f32, |a, &x| a.max(x.abs()));
            let scale = amax / 127.0;
            let inv = if scale != 0.0 { 1.0 / scale } else { 0.0 };
            for (q, &x) in qs.iter_mut().zip(xs) {
                *q = (x * inv).round() as i8;
            }
            half::f16::from_f32(scale).to_f32()
        }))
    }

    /// q8_0 panels filled by `block(row, b, values)`, which writes block `b`
    /// (k = 32b..32b+32) of weight row `row` and returns its scale.
    fn build_q8_0(
        out: usize,
        k: usize,
        block: impl Fn(usize, usize, &mut [i8; Q8_BLOCK]) -> f32 + Sync,
    ) -> Self {
        let nb = k / Q8_BLOCK;
        let panels = out.div_ceil(NR);
        let mut q = vec![0i8; panels * k * NR];
        let mut d = vec![0f32; panels * nb * NR];
        let mut comp = vec![0i32; panels * nb * NR];
        q.par_chunks_mut(k * NR)
            .zip(d.par_chunks_mut(nb * NR).zip(comp.par_chunks_mut(nb * NR)))
            .enumerate()
            .for_each(|(p, (qp, (dp, cp)))| {
                let mut qs = [0i8; Q8_BLOCK];
                for j in 0..NR.min(out - p * NR) {
                    for b in 0..nb {
                        dp[b * NR + j] = block(p * NR + j, b, &mut qs);
                        cp[b * NR + j] = 128 * qs.iter().map(|&v| v as i32).sum::<i32>();
                        for (i, &v) in qs.iter().enumerate() {
                            qp[q8_at(b * Q8_BLOCK + i, j)] = v;
                        }
                    }
                }
            });
        PackedMatrix {
            data: Panels::Q8 {
                q: Arc::new(q),
                d: Arc::new(d),
                comp: Arc::new(comp),
            },
            first_panel: 0,
            out,
            k,
        }
    }

    /// Whether the weights are q8_0.
    pub fn is_q8_0(&self) -> bool {
        matches!(self.data, Panels::Q8 { .. })
    }

    /// Output features.
    pub fn out_dim(&self) -> usize {
        self.out
    }

    /// Input features.
    pub fn in_dim(&self) -> usize {
        self.k
    }

    /// Output features `start..start+len` as a matrix of their own, sharing the
    /// data; None unless `start` falls on a panel boundary.
    pub fn rows(&self, start: usize, len: usize) -> Option<Self> {
        if !start.is_multiple_of(NR) || start + len > self.out {
            return None;
        }
        Some(PackedMatrix {
            data: self.data.clone(),
            first_panel: self.first_panel + start / NR,
            out: len,
            k: self.k,
        })
    }

    /// Output features `start..start+len` as a matrix of their own: a view
    /// when `start` falls on a panel boundary, else a copy of exactly those
    /// weights (the same f32 values, or the same int8 values and scales).
    pub fn take_rows(&self, start: usize, len: usize) -> Self {
        assert!(start + len <= self.out, "rows beyond the matrix");
        if let Some(view) = self.rows(start, len) {
            return view;
        }
        let k = self.k;
        match &self.data {
            Panels::F32(_) => {
                let mut w = vec![0f32; len * k];
                for (i, row) in w.chunks_mut(k).enumerate() {
                    self.row_into(start + i, row);
                }
                PackedMatrix::pack(&w, len, k)
            }
            Panels::Q8 { q, d, .. } => {
                let nb = k / Q8_BLOCK;
                Self::build_q8_0(len, k, |row, b, qs| {
                    let i = start + row;
                    let (p, j) = (self.first_panel + i / NR, i % NR);
                    for (kk, v) in qs.iter_mut().enumerate() {
                        *v = q[p * k * NR + q8_at(b * Q8_BLOCK + kk, j)];
                    }
                    d[(p * nb + b) * NR + j]
                })
            }
        }
    }

    /// The f32 panels.
    fn f32_data(&self) -> &[f32] {
        match &self.data {
            Panels::F32(data) => data,
            Panels::Q8 { .. } => unreachable!("q8_0 panels take the int8 kernels"),
        }
    }

    /// Weights `k0..k0+kc` of f32 panel `p` (output features `p*NR..`) as [kc][NR].
    fn block(&self, p: usize, k0: usize, kc: usize) -> &[f32] {
        let p = self.first_panel + p;
        &self.f32_data()[(p * self.k + k0) * NR..(p * self.k + k0 + kc) * NR]
    }

    /// Where to prefetch while weights `..k1` of panel `p` are multiplied:
    /// the weight stream one block past the next (panels are contiguous), to
    /// L2. Fetching the very next block to L1 evicted the block in use (16 +
    /// 16 KiB of a 32 KiB L1, with the rows streaming through too); with this,
    /// issued by each block's first row tile only, the opus-mt-shaped model
    /// went from 216 to 244 tok/s at beam 4 and from 484 to 611 greedy
    /// (f32, Zen 4 held to AVX2, 2 threads, `cargo bench --bench throughput
    /// -- --batch 16 --beams 4|1`).
    fn prefetch_from(&self, p: usize, k1: usize) -> *const f32 {
        let p = self.first_panel + p;
        self.f32_data()
            .as_ptr()
            .wrapping_add((p * self.k + k1 + KC) * NR)
    }

    /// Panel `p` of a q8_0 matrix, as the int8 kernels take it.
    fn q8_panel(&self, p: usize) -> int8::Panel<'_> {
        let p = self.first_panel + p;
        let nb = self.k / Q8_BLOCK;
        match &self.data {
            Panels::Q8 { q, d, comp } => int8::Panel {
                q: &q[p * self.k * NR..(p + 1) * self.k * NR],
                d: &d[p * nb * NR..(p + 1) * nb * NR],
                comp: &comp[p * nb * NR..(p + 1) * nb * NR],
                // The next panel's bytes (panels are contiguous).
                ahead: q.as_ptr().wrapping_add((p + 1) * self.k * NR),
            },
            Panels::F32(_) => unreachable!("f32 panels take the f32 kernel"),
        }
    }

    /// Weight row `i` (output feature i), e.g. a token's embedding when the
    /// matrix is a tied LM head.
    pub fn row_into(&self, i: usize, dst: &mut [f32]) {
        let (p, j) = (self.first_panel + i / NR, i % NR);
        match &self.data {
            Panels::F32(data) => {
                let panel = &data[p * self.k * NR..(p + 1) * self.k * NR];
                for (kk, v) in dst.iter_mut().enumerate() {
                    *v = panel[kk * NR + j];
                }
            }
            Panels::Q8 { q, d, .. } => {
                let nb = self.k / Q8_BLOCK;
                for (kk, v) in dst.iter_mut().enumerate() {
                    *v = q[p * self.k * NR + q8_at(kk, j)] as f32
                        * d[(p * nb + kk / Q8_BLOCK) * NR + j];
                }
            }
        }
    }

    /// The matrix back in row-major [out, k] order.
    pub fn unpack(&self) -> Vec<f32> {
        let mut w = vec![0f32; self.out * self.k];
        for (i, row) in w.chunks_mut(self.k).enumerate() {
            self.row_into(i, row);
        }
        w
    }

    /// `x Wᵀ (+ bias)` for row-major `x` [rows, k], as [rows, out], written once
    /// without zeroing it first (the LM head's output is 15 MB per step at 64 rows).
    pub fn matmul_vec(&self, x: &[f32], rows: usize, bias: Option<&[f32]>) -> Vec<f32> {
        let kernel = int8::kernel().unwrap_or_else(|e| panic!("{e}"));
        self.product(
            super::isa(),
            kernel,
            kernel.activation_bits(),
            x,
            rows,
            bias,
        )
    }

    /// [`PackedMatrix::matmul_vec`] with the kernels of `isa`.
    ///
    /// # Panics
    /// When this CPU does not support `isa`, or `x`/`bias` do not fit the matrix.
    pub fn matmul_vec_with(
        &self,
        isa: Isa,
        x: &[f32],
        rows: usize,
        bias: Option<&[f32]>,
    ) -> Vec<f32> {
        assert!(isa.supported(), "this CPU does not support {}", isa.name());
        let kernel = I8Kernel::for_isa(isa);
        self.product(isa, kernel, kernel.activation_bits(), x, rows, bias)
    }

    /// [`PackedMatrix::matmul_vec`] of a q8_0 matrix with the int8 kernel
    /// `kernel` on activations of `bits` (8 or 7; how the tests compare each
    /// kernel with the portable one fed its activation bits).
    ///
    /// # Panics
    /// When this CPU does not support `kernel`, the matrix is not q8_0, or
    /// the kernel cannot take `bits` (AVX2 takes only 7).
    pub fn matmul_i8_with(
        &self,
        kernel: I8Kernel,
        bits: u32,
        x: &[f32],
        rows: usize,
        bias: Option<&[f32]>,
    ) -> Vec<f32> {
        assert!(
            kernel.supported(),
            "this CPU does not support {}",
            kernel.name()
        );
        assert!(self.is_q8_0(), "int8 kernels multiply q8_0 matrices");
        self.product(Isa::Generic, kernel, bits, x, rows, bias)
    }

    /// The product with the f32 kernels of `isa` or the int8 `kernel` on
    /// `bits`-bit activations, whichever the weights take; both supported by
    /// the CPU.
    fn product(
        &self,
        isa: Isa,
        kernel: I8Kernel,
        bits: u32,
        x: &[f32],
        rows: usize,
        bias: Option<&[f32]>,
    ) -> Vec<f32> {
        let len = rows * self.out;
        let mut out = Vec::<f32>::with_capacity(len);
        // SAFETY: matmul_raw writes every one of the `len` elements exactly once
        // (every row, every column below `self.out`), so all are initialized;
        // the CPU supports `isa` and `kernel` (the callers asserted it).
        unsafe {
            self.matmul_raw(isa, kernel, bits, x, rows, bias, SendPtr(out.as_mut_ptr()));
            out.set_len(len);
        }
        out
    }

    /// # Safety
    /// `out` points to `rows * self.out` writable floats, and the CPU supports
    /// `isa` and `kernel`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn matmul_raw(
        &self,
        isa: Isa,
        kernel: I8Kernel,
        bits: u32,
        x: &[f32],
        rows: usize,
        bias: Option<&[f32]>,
        out: SendPtr,
    ) {
        let (n, k) = (self.out, self.k);
        assert_eq!(x.len(), rows * k, "x is [rows, k]");
        if let Some(b) = bias {
            assert_eq!(b.len(), n, "bias is [out]");
        }
        if rows == 0 || n == 0 {
            return;
        }
        // The rows as the weights' kernel takes them: packed f32 tiles, or
        // int8 quantized per block.
        enum Rows<'a> {
            /// In place, or packed per k block (see `pack_rows`).
            F32(&'a [f32], Option<Vec<f32>>),
            I8(int8::QuantizedRows),
        }
        let xp = match self.data {
            Panels::F32(_) => Rows::F32(
                x,
                (tile_rows(isa) > IN_PLACE_ROWS).then(|| pack_rows(x, rows, k)),
            ),
            Panels::Q8 { .. } => Rows::I8(int8::quantize_rows(kernel, bits, x, rows, k)),
        };
        let panels = n.div_ceil(NR);
        // Enough tasks to balance two to a few dozen threads, few enough that
        // each streams a long run of panels.
        let tasks = (rayon::current_num_threads() * 4).clamp(1, panels);
        let per_task = panels.div_ceil(tasks);
        let work = |t: usize| {
            let p0 = t * per_task;
            let p1 = (p0 + per_task).min(panels);
            // One set per thread, reused: zeroing 22 KiB for each of the LM head's
            // 3,720 panels cost more than the panels' output writes, and even per
            // task it was 7 MB of memset per beam-search step.
            BUFFERS.with_borrow_mut(|bufs| {
                for p in p0..p1 {
                    // SAFETY: panels are disjoint column ranges of `out`, and each
                    // task owns its own panels, so no two threads write one element.
                    unsafe {
                        match &xp {
                            Rows::F32(x, packed) => self.panel_product(
                                isa,
                                x,
                                packed.as_deref(),
                                rows,
                                p,
                                bias,
                                out,
                                bufs,
                            ),
                            Rows::I8(xq) => {
                                self.panel_product_i8(kernel, xq, rows, p, bias, out, bufs)
                            }
                        }
                    };
                }
            });
        };
        if rows * n * k < 1 << 16 {
            (0..tasks).for_each(work);
        } else {
            (0..tasks).into_par_iter().for_each(work);
        }
    }

    /// Columns of q8_0 panel `p` for every row, with the int8 `kernel`.
    ///
    /// # Safety
    /// `out` points to [rows, self.out] floats, no other thread writes panel
    /// `p`'s columns, and the CPU supports `kernel`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn panel_product_i8(
        &self,
        kernel: I8Kernel,
        xq: &int8::QuantizedRows,
        rows: usize,
        p: usize,
        bias: Option<&[f32]>,
        out: SendPtr,
        bufs: &mut Buffers,
    ) {
        let n = self.out;
        let c0 = p * NR;
        let cols = NR.min(n - c0);
        let panel = self.q8_panel(p);
        if cols == NR {
            // A full panel: straight into `out`, bias added.
            let dst = int8::Dst {
                // SAFETY: column c0 of row 0 lies inside [rows, n].
                ptr: unsafe { out.0.add(c0) },
                ld: n,
                bias: bias.map(|b| b[c0..c0 + NR].as_ptr()),
            };
            // SAFETY: `dst` covers rows 0..rows of this panel's 16 columns,
            // which no other thread writes; 16 biases from c0 exist.
            unsafe { int8::panel_product(kernel, xq, 0, rows, panel, dst) };
            return;
        }
        // The last, partial panel: through the tile buffer, its columns copied.
        for r0 in (0..rows).step_by(MC) {
            let r1 = (r0 + MC).min(rows);
            let acc = &mut bufs.acc[..r1 - r0];
            let dst = int8::Dst {
                ptr: acc.as_mut_ptr().cast::<f32>(),
                ld: NR,
                bias: None,
            };
            // SAFETY: `acc` holds r1 - r0 rows of NR floats.
            unsafe { int8::panel_product(kernel, xq, r0, r1 - r0, panel, dst) };
            // SAFETY: the caller's promise on `out` and panel `p`.
            unsafe { write_partial(acc, out, n, r0, c0, cols, bias) };
        }
    }

    /// Columns of panel `p` for every row.
    ///
    /// # Safety
    /// `out` points to [rows, self.out] floats, no other thread writes panel
    /// `p`'s columns, and the CPU supports `isa`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn panel_product(
        &self,
        isa: Isa,
        x: &[f32],
        packed: Option<&[f32]>,
        rows: usize,
        p: usize,
        bias: Option<&[f32]>,
        out: SendPtr,
        bufs: &mut Buffers,
    ) {
        let (n, k) = (self.out, self.k);
        let Buffers { acc } = bufs;
        let c0 = p * NR;
        let cols = NR.min(n - c0);
        for r0 in (0..rows).step_by(MC) {
            let r1 = (r0 + MC).min(rows);
            let acc = &mut acc[..r1 - r0];
            for k0 in (0..k).step_by(KC) {
                let kc = KC.min(k - k0);
                let wblock = self.block(p, k0, kc);
                // This k block's rows: in place (`k` apart, from column k0)
                // or packed (`kc` apart).
                let (rows_at, ld) = match packed {
                    Some(xp) => (&xp[k0 * rows..(k0 + kc) * rows], kc),
                    None => (&x[k0..], k),
                };
                let tr = tile_rows(isa);
                for t0 in (r0..r1).step_by(tr) {
                    let mr = tr.min(r1 - t0);
                    // A full panel's last k block goes from registers to `out`
                    // (bias added); otherwise the sums wait in `acc`.
                    let fin = (k0 + kc == k && cols == NR).then(|| Final {
                        // SAFETY: row t0, column c0 lies inside [rows, n].
                        out: unsafe { out.0.add(t0 * n + c0) },
                        ld: n,
                        bias: bias.map(|b| b[c0..c0 + NR].as_ptr()),
                    });
                    // SAFETY: `fin` points into this task's own columns of `out`
                    // (16 of them, rows t0.. of the tile), and the CPU supports `isa`.
                    unsafe {
                        tile(
                            isa,
                            mr,
                            kc,
                            &rows_at[t0 * ld..(t0 + mr - 1) * ld + kc],
                            ld,
                            wblock,
                            &mut acc[t0 - r0..t0 - r0 + mr],
                            k0 == 0,
                            fin,
                            // The weight stream ahead, fetched to L2 by the
                            // block's first tile (once is enough: the later
                            // tiles' repeats cost more than they saved).
                            if t0 == r0 {
                                self.prefetch_from(p, k0 + kc)
                            } else {
                                std::ptr::null()
                            },
                        )
                    };
                }
            }
            if cols == NR {
                continue;
            }
            // SAFETY: the caller's promise on `out` and panel `p`.
            unsafe { write_partial(acc, out, n, r0, c0, cols, bias) };
        }
    }
}

/// A partial panel's sums, rows `r0..` of `acc`, to its `cols` columns
/// from `c0` of `out` [rows, n], plus the bias.
///
/// # Safety
/// Those columns of those rows lie inside `out`, and no other thread writes them.
unsafe fn write_partial(
    acc: &[[f32; NR]],
    out: SendPtr,
    n: usize,
    r0: usize,
    c0: usize,
    cols: usize,
    bias: Option<&[f32]>,
) {
    for (r, a) in acc.iter().enumerate() {
        // SAFETY: the caller's promise.
        let o = unsafe { std::slice::from_raw_parts_mut(out.0.add((r0 + r) * n + c0), cols) };
        match bias {
            Some(b) => {
                for ((o, &a), &b) in o.iter_mut().zip(a).zip(&b[c0..c0 + cols]) {
                    *o = a + b;
                }
            }
            None => o.copy_from_slice(&a[..cols]),
        }
    }
}

/// Where value (k = `kk`, feature `j`) of a q8_0 panel lies: groups of
/// four k per feature ([k/4][NR][4]).
#[inline(always)]
fn q8_at(kk: usize, j: usize) -> usize {
    ((kk / 4) * NR + j) * 4 + kk % 4
}

/// Where a tile's finished sums go: row r of the tile to `out + r * ld`
/// (16 floats), plus the 16 biases at `bias`.
#[derive(Clone, Copy)]
struct Final {
    out: *mut f32,
    ld: usize,
    bias: Option<*const f32>,
}

thread_local! {
    /// Each thread's working memory for the packed kernel.
    static BUFFERS: std::cell::RefCell<Box<Buffers>> = std::cell::RefCell::new(Box::new(Buffers {
        acc: [[0f32; NR]; MC],
    }));
}

/// A task's working memory for [`PackedMatrix::panel_product`].
struct Buffers {
    /// The panel's outputs for one row block: they stay here (L1) across k
    /// blocks, so `out` (rows far apart in memory) is written once.
    acc: [[f32; NR]; MC],
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: used only to hand disjoint regions of one buffer to rayon tasks.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

/// The most rows a register tile reads in place. Rows a multiple of 4 KiB
/// apart (k = 1024, 2048) fall in one L1 set, which holds 8 lines: the
/// AVX-512 tile's twelve row streams then evict each other (fc2's product ran
/// at two thirds of its speed), so its rows are packed first.
const IN_PLACE_ROWS: usize = 8;

/// `x` [rows, k] copied per k block, each block row-major ([rows][kc]): a
/// tile's rows are then 1 KiB apart, at most three to an L1 set.
fn pack_rows(x: &[f32], rows: usize, k: usize) -> Vec<f32> {
    let mut xp = vec![0f32; rows * k];
    // Block b (k from b * KC) as its rows' kc-long slices, one after another.
    let fill = |(b, dst): (usize, &mut [f32])| {
        let (k0, kc) = (b * KC, KC.min(k - b * KC));
        for (r, d) in dst.chunks_mut(kc).enumerate() {
            d.copy_from_slice(&x[r * k + k0..r * k + k0 + kc]);
        }
    };
    // Encoder-sized inputs (hundreds of rows) are packed on every thread;
    // a decode step's few rows are not worth waking them.
    if rows * k >= 1 << 16 {
        xp.par_chunks_mut(KC * rows).enumerate().for_each(fill);
    } else {
        xp.chunks_mut(KC * rows).enumerate().for_each(fill);
    }
    xp
}

/// `acc[r] = (first ? 0 : acc[r]) + Σ_kk x[r * ldx + kk] * w[kk][..]` for
/// the `mr` rows of one tile, `ldx` floats apart: read in place (the kernel
/// broadcasts one float of each row per k, so a transposed copy of them
/// bought nothing, and making one cost 2% of a beam-4 step on one thread)
/// unless the tile is taller than [`IN_PLACE_ROWS`]; with `fin`, the sums
/// (plus bias) are written there instead.
///
/// # Safety
/// `fin`, when given, points to `mr` rows of 16 writable floats `ld` apart and
/// 16 readable biases; the CPU supports `isa`.
#[allow(clippy::too_many_arguments)]
unsafe fn tile(
    isa: Isa,
    mr: usize,
    kc: usize,
    x: &[f32],
    ldx: usize,
    w: &[f32],
    acc: &mut [[f32; NR]],
    first: bool,
    fin: Option<Final>,
    next: *const f32,
) {
    assert!(
        mr >= 1
            && ldx >= kc
            && x.len() == (mr - 1) * ldx + kc
            && w.len() == kc * NR
            && acc.len() == mr
    );
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX-512 F (the caller's promise); `x` holds mr
        // rows of kc floats ldx apart and `w` kc*NR floats (asserted);
        // `fin` is the caller's promise.
        Isa::Avx512 => unsafe {
            match mr {
                12 => avx512::tile::<12>(kc, x, ldx, w, acc, first, fin, next),
                11 => avx512::tile::<11>(kc, x, ldx, w, acc, first, fin, next),
                10 => avx512::tile::<10>(kc, x, ldx, w, acc, first, fin, next),
                9 => avx512::tile::<9>(kc, x, ldx, w, acc, first, fin, next),
                8 => avx512::tile::<8>(kc, x, ldx, w, acc, first, fin, next),
                7 => avx512::tile::<7>(kc, x, ldx, w, acc, first, fin, next),
                6 => avx512::tile::<6>(kc, x, ldx, w, acc, first, fin, next),
                5 => avx512::tile::<5>(kc, x, ldx, w, acc, first, fin, next),
                4 => avx512::tile::<4>(kc, x, ldx, w, acc, first, fin, next),
                3 => avx512::tile::<3>(kc, x, ldx, w, acc, first, fin, next),
                2 => avx512::tile::<2>(kc, x, ldx, w, acc, first, fin, next),
                _ => avx512::tile::<1>(kc, x, ldx, w, acc, first, fin, next),
            }
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the CPU has AVX2 and FMA (the caller's promise); `x` holds
        // mr rows of kc floats ldx apart and `w` kc*NR floats (asserted);
        // `fin` is the caller's promise.
        Isa::Avx2 => unsafe {
            match mr {
                6 => avx2::tile::<6>(kc, x, ldx, w, acc, first, fin, next),
                5 => avx2::tile::<5>(kc, x, ldx, w, acc, first, fin, next),
                4 => avx2::tile::<4>(kc, x, ldx, w, acc, first, fin, next),
                3 => avx2::tile::<3>(kc, x, ldx, w, acc, first, fin, next),
                2 => avx2::tile::<2>(kc, x, ldx, w, acc, first, fin, next),
                _ => avx2::tile::<1>(kc, x, ldx, w, acc, first, fin, next),
            }
        },
        // SAFETY: `fin` is the caller's promise.
        _ => unsafe { tile_generic(mr, kc, x, ldx, w, acc, first, fin) },
    }
}

/// The portable register tile (see `tile`).
///
/// # Safety
/// As `tile`, for `fin`.
#[allow(clippy::too_many_arguments)]
unsafe fn tile_generic(
    mr: usize,
    kc: usize,
    x: &[f32],
    ldx: usize,
    w: &[f32],
    acc: &mut [[f32; NR]],
    first: bool,
    fin: Option<Final>,
) {
    if first {
        acc.fill([0.0; NR]);
    }
    for kk in 0..kc {
        let wk = &w[kk * NR..(kk + 1) * NR];
        for (r, a) in acc.iter_mut().enumerate().take(mr) {
            let xv = x[r * ldx + kk];
            for (a, &wv) in a.iter_mut().zip(wk) {
                *a += xv * wv;
            }
        }
    }
    if let Some(f) = fin {
        for (r, a) in acc.iter().enumerate() {
            for (j, &v) in a.iter().enumerate() {
                // SAFETY: the caller's promise on `fin`.
                unsafe { *f.out.add(r * f.ld + j) = v + f.bias.map_or(0.0, |b| *b.add(j)) };
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Final, NR};
    use std::arch::x86_64::*;

    /// The register tile: R rows x 16 features in 2R accumulators.
    ///
    /// # Safety
    /// The CPU supports AVX2 and FMA; `x` holds R rows of kc floats `ldx`
    /// apart, `w` kc*NR floats, `acc` R rows; `fin`, when given, points to R
    /// rows of 16 writable floats `ld` apart and 16 readable biases.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn tile<const R: usize>(
        kc: usize,
        x: &[f32],
        ldx: usize,
        w: &[f32],
        acc: &mut [[f32; NR]],
        first: bool,
        fin: Option<Final>,
        next: *const f32,
    ) {
        // SAFETY: the caller's promises cover every load and store below.
        unsafe {
            let mut a = [[_mm256_setzero_ps(); 2]; R];
            if !first {
                for r in 0..R {
                    a[r][0] = _mm256_loadu_ps(acc[r].as_ptr());
                    a[r][1] = _mm256_loadu_ps(acc[r].as_ptr().add(8));
                }
            }
            let wp = w.as_ptr();
            let xr: [*const f32; R] = std::array::from_fn(|r| x.as_ptr().add(r * ldx));
            for kk in 0..kc {
                // One 64-byte line of the weight stream ahead per k, to L2:
                // prefetches never fault, so running past the end of the
                // matrix is harmless.
                if !next.is_null() {
                    _mm_prefetch::<_MM_HINT_T1>(next.wrapping_add(kk * NR) as *const i8);
                }
                let w0 = _mm256_loadu_ps(wp.add(kk * NR));
                let w1 = _mm256_loadu_ps(wp.add(kk * NR + 8));
                for (r, ar) in a.iter_mut().enumerate() {
                    let b = _mm256_broadcast_ss(&*xr[r].add(kk));
                    ar[0] = _mm256_fmadd_ps(b, w0, ar[0]);
                    ar[1] = _mm256_fmadd_ps(b, w1, ar[1]);
                }
            }
            match fin {
                Some(f) => {
                    let (b0, b1) = match f.bias {
                        Some(b) => (_mm256_loadu_ps(b), _mm256_loadu_ps(b.add(8))),
                        None => (_mm256_setzero_ps(), _mm256_setzero_ps()),
                    };
                    for (r, ar) in a.iter().enumerate() {
                        let o = f.out.add(r * f.ld);
                        _mm256_storeu_ps(o, _mm256_add_ps(ar[0], b0));
                        _mm256_storeu_ps(o.add(8), _mm256_add_ps(ar[1], b1));
                    }
                }
                None => {
                    for r in 0..R {
                        _mm256_storeu_ps(acc[r].as_mut_ptr(), a[r][0]);
                        _mm256_storeu_ps(acc[r].as_mut_ptr().add(8), a[r][1]);
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Final, NR};
    use std::arch::x86_64::*;

    /// The register tile: R rows x 16 features, one zmm accumulator per row.
    ///
    /// # Safety
    /// The CPU supports AVX-512 F; otherwise as `avx2::tile`.
    #[target_feature(enable = "avx512f,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn tile<const R: usize>(
        kc: usize,
        x: &[f32],
        ldx: usize,
        w: &[f32],
        acc: &mut [[f32; NR]],
        first: bool,
        fin: Option<Final>,
        next: *const f32,
    ) {
        // SAFETY: the caller's promises cover every load and store below.
        unsafe {
            let mut a = [_mm512_setzero_ps(); R];
            if !first {
                for r in 0..R {
                    a[r] = _mm512_loadu_ps(acc[r].as_ptr());
                }
            }
            let wp = w.as_ptr();
            let xr: [*const f32; R] = std::array::from_fn(|r| x.as_ptr().add(r * ldx));
            for kk in 0..kc {
                // One 64-byte line of the weight stream ahead per k (see avx2::tile).
                if !next.is_null() {
                    _mm_prefetch::<_MM_HINT_T1>(next.wrapping_add(kk * NR) as *const i8);
                }
                let wv = _mm512_loadu_ps(wp.add(kk * NR));
                for (r, ar) in a.iter_mut().enumerate() {
                    *ar = _mm512_fmadd_ps(_mm512_set1_ps(*xr[r].add(kk)), wv, *ar);
                }
            }
            match fin {
                Some(f) => {
                    let b = match f.bias {
                        Some(b) => _mm512_loadu_ps(b),
                        None => _mm512_setzero_ps(),
                    };
                    for (r, ar) in a.iter().enumerate() {
                        _mm512_storeu_ps(f.out.add(r * f.ld), _mm512_add_ps(*ar, b));
                    }
                }
                None => {
                    for r in 0..R {
                        _mm512_storeu_ps(acc[r].as_mut_ptr(), a[r]);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q8_0_quantization_is_candles() {
        use candle_core::quantized::{GgmlDType, QTensor};
        let (out, k) = (37, 96);
        let w: Vec<f32> = (0..out * k)
            .map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * (1.0 + (i % 5) as f32))
            .collect();
        let dev = candle_core::Device::Cpu;
        let t = candle_core::Tensor::from_vec(w.clone(), (out, k), &dev).unwrap();
        let q = QTensor::quantize(&t, GgmlDType::Q8_0).unwrap();
        let from_blocks = PackedMatrix::pack_q8_0(&q.data().unwrap(), out, k).unwrap();
        let direct = PackedMatrix::quantize_q8_0(&w, out, k).unwrap();
        assert_eq!(from_blocks.unpack(), direct.unpack());
        let deq = q.dequantize(&dev).unwrap().flatten_all().unwrap();
        assert_eq!(direct.unpack(), deq.to_vec1::<f32>().unwrap());
    }

    fn reference(
        x: &[f32],
        w: &[f32],
        b: Option<&[f32]>,
        rows: usize,
        n: usize,
        k: usize,
    ) -> Vec<f64> {
        let mut y = vec![0f64; rows * n];
        for r in 0..rows {
            for j in 0..n {
                let mut s = 0f64;
                for kk in 0..k {
                    s += x[r * k + kk] as f64 * w[j * k + kk] as f64;
                }
                y[r * n + j] = s + b.map_or(0.0, |b| b[j] as f64);
            }
        }
        y
    }

    #[test]
    fn matches_f64_on_awkward_shapes() {
        let mut seed = 1u64;
        let mut rnd = move || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        for &(rows, n, k) in &[
            (1, 1, 1),
            (7, 33, 300),
            (16, 512, 512),
            (100, 17, 513),
            (13, 64, 40),
            // Enough to pack the rows on every thread (see `pack_rows`).
            (130, 20, 600),
        ] {
            let x: Vec<f32> = (0..rows * k).map(|_| rnd()).collect();
            let w: Vec<f32> = (0..n * k).map(|_| rnd()).collect();
            let b: Vec<f32> = (0..n).map(|_| rnd()).collect();
            let p = PackedMatrix::pack(&w, n, k);
            assert_eq!(p.unpack(), w);
            for isa in Isa::ALL.into_iter().filter(|i| i.supported()) {
                let out = p.matmul_vec_with(isa, &x, rows, Some(&b));
                let want = reference(&x, &w, Some(&b), rows, n, k);
                for (i, (&o, &e)) in out.iter().zip(&want).enumerate() {
                    assert!(
                        (o as f64 - e).abs() < 1e-5 * (k as f64).sqrt(),
                        "{}: {rows}x{n}x{k} at {i}: {o} vs {e}",
                        isa.name()
                    );
                }
                // A view on a panel boundary computes the same columns.
                if n > NR {
                    let v = p.rows(NR, n - NR).unwrap();
                    let part = v.matmul_vec_with(isa, &x, rows, None);
                    for r in 0..rows {
                        for j in 0..n - NR {
                            let e = want[r * n + NR + j] - b[NR + j] as f64;
                            assert!(
                                (part[r * (n - NR) + j] as f64 - e).abs()
                                    < 1e-5 * (k as f64).sqrt()
                            );
                        }
                    }
                }
            }
        }
    }
}

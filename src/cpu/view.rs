//! Borrowed f32 data of a contiguous CPU tensor: what the kernels read, so
//! that a candle tensor's storage is used in place instead of copied out.

/// Read access to the f32 data of a contiguous CPU tensor.
pub struct CpuView<'a> {
    guard: Box<dyn std::ops::Deref<Target = candle_core::Storage> + 'a>,
    start: usize,
    end: usize,
}

impl<'a> CpuView<'a> {
    /// None unless `t` is a contiguous f32 tensor on the CPU and the CPU
    /// kernels are on (`TRANSUM_DEVICE_PATH`): every kernel's caller then
    /// takes candle's ops instead.
    pub fn new(t: &'a candle_core::Tensor) -> Option<Self> {
        if !super::host_kernels() {
            return None;
        }
        Self::any(t)
    }

    /// As [`CpuView::new`], whichever path runs (for reading data out).
    fn any(t: &'a candle_core::Tensor) -> Option<Self> {
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

    pub fn slice(&self) -> &[f32] {
        match &**self.guard {
            candle_core::Storage::Cpu(cpu) => {
                &cpu.as_slice::<f32>().expect("checked in new")[self.start..self.end]
            }
            _ => unreachable!("checked in new"),
        }
    }
}

/// `f` over the f32 data of a CPU tensor: in place when contiguous, else a copy.
pub fn with_f32<R>(
    t: &candle_core::Tensor,
    f: impl FnOnce(&[f32]) -> R,
) -> crate::error::Result<R> {
    if let Some(v) = CpuView::any(t) {
        return Ok(f(v.slice()));
    }
    Ok(f(&t
        .to_dtype(candle_core::DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?))
}

//! Weight loading: safetensors (read tensor by tensor), PyTorch
//! `pytorch_model.bin` (candle's pickle reader, which executes no code) or a
//! GGUF `model.gguf` written by `transum quantize` (quantized projections stay
//! quantized; everything else becomes a float tensor) into one name -> tensor
//! map, carrying the device and dtype chosen once in `device.rs`.
//!
//! Tensor names stay the Hugging Face checkpoint's; the only renames happen here
//! (checkpoints saved without the `model.` prefix). Every lookup error names the
//! tensor, the file and the expected shape.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::{gguf_file, GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Device, Tensor};

use crate::cpu::matmul::PackedMatrix;
use crate::device::Placement;
use crate::error::{Error, Result};

/// A projection's weight matrix [out, in] in one of the forms it can take
/// (see `models::linear`, which multiplies by each).
#[derive(Debug, Clone)]
pub enum Weight {
    /// A plain tensor on any device, in any float dtype.
    Dense(Tensor),
    /// GGML blocks multiplied by candle (`QMatMul`).
    Quantized(QMatMul),
    /// Panels for the CPU kernel (f32 or q8_0).
    Packed(PackedMatrix),
}

/// Weight file names we know, in order of preference.
pub const WEIGHT_FILES: [&str; 3] = ["model.safetensors", "pytorch_model.bin", "model.gguf"];

/// The first weight file present in `dir`, safetensors preferred.
pub fn find_weight_file(dir: &Path) -> Result<PathBuf> {
    WEIGHT_FILES
        .iter()
        .map(|f| dir.join(f))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::file(
                dir,
                "has no model.safetensors, pytorch_model.bin or model.gguf",
                "download the model (`transum download <model>`) or point --model at a complete checkpoint directory",
                None,
            )
        })
}

/// Read a safetensors file tensor by tensor with positioned reads.
///
/// Not memory-mapped on purpose: candle's CPU tensors own their data, so a map
/// would be copied anyway and its pages would count in the peak RSS next to the
/// copies (measured: 576 MiB peak for a 300 MB f32 model). Reading each tensor
/// into its final buffer keeps the peak at the model plus one tensor.
fn read_safetensors(path: &Path, sink: &mut dyn FnMut(String, Tensor) -> Result<()>) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let bad = |what: String, source: Option<crate::error::BoxError>| {
        Error::file(
            path,
            what,
            "fetch it again with `transum download --force <model>`",
            source,
        )
    };
    let file =
        std::fs::File::open(path).map_err(|e| bad("cannot be opened".into(), Some(Box::new(e))))?;
    let file_len = file
        .metadata()
        .map_err(|e| bad("cannot be read".into(), Some(Box::new(e))))?
        .len();
    let mut len_bytes = [0u8; 8];
    file.read_exact_at(&mut len_bytes, 0).map_err(|e| {
        bad(
            "is truncated or corrupt (no safetensors header)".into(),
            Some(Box::new(e)),
        )
    })?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > file_len.saturating_sub(8) || header_len > 100 << 20 {
        return Err(bad(
            format!("is truncated or corrupt (header length {header_len})"),
            None,
        ));
    }
    let mut header = vec![0u8; 8 + header_len as usize];
    file.read_exact_at(&mut header, 0).map_err(|e| {
        bad(
            "is truncated or corrupt (short header)".into(),
            Some(Box::new(e)),
        )
    })?;
    // The header is JSON: {name: {dtype, shape, data_offsets: [start, end]}, "__metadata__": {..}}.
    let meta: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header[8..])
        .map_err(|e| {
            bad(
                "is truncated or corrupt (bad safetensors header)".into(),
                Some(Box::new(e)),
            )
        })?;
    let data_start = 8 + header_len;
    // Largest first: the big transient of a load (an f32 embedding table read
    // before it is quantized) then happens while little else is resident.
    let span = |info: &serde_json::Value| -> u64 {
        let offsets = info.get("data_offsets").and_then(|o| o.as_array());
        let at = |i: usize| {
            offsets
                .and_then(|o| o.get(i))
                .and_then(|x| x.as_u64())
                .unwrap_or(0)
        };
        at(1).saturating_sub(at(0))
    };
    let mut entries: Vec<(String, serde_json::Value)> = meta
        .into_iter()
        .filter(|(name, _)| name != "__metadata__")
        .collect();
    entries.sort_by_key(|(name, info)| (std::cmp::Reverse(span(info)), name.clone()));
    for (name, info) in entries {
        let field = |k: &str| info.get(k).cloned().unwrap_or(serde_json::Value::Null);
        let dtype = match field("dtype").as_str().unwrap_or("") {
            "F32" => DType::F32,
            "F16" => DType::F16,
            "BF16" => DType::BF16,
            "F64" => DType::F64,
            "I64" => DType::I64,
            "U32" => DType::U32,
            "U8" => DType::U8,
            other => {
                return Err(bad(
                    format!("tensor `{name}` has unsupported dtype {other:?}"),
                    None,
                ))
            }
        };
        let nums = |k: &str| -> Option<Vec<usize>> {
            field(k)
                .as_array()?
                .iter()
                .map(|x| x.as_u64().map(|x| x as usize))
                .collect()
        };
        let (Some(shape), Some(offsets)) = (nums("shape"), nums("data_offsets")) else {
            return Err(bad(
                format!("is corrupt (tensor `{name}` has no shape or offsets)"),
                None,
            ));
        };
        let (start, end) = (
            offsets.first().copied().unwrap_or(0),
            offsets.get(1).copied().unwrap_or(0),
        );
        let expected = shape.iter().product::<usize>() * dtype.size_in_bytes();
        if end < start || end - start != expected || data_start + end as u64 > file_len {
            return Err(bad(
                format!("is truncated or corrupt (tensor `{name}` lies outside the file)"),
                None,
            ));
        }
        let offset = data_start + start as u64;
        let read_err =
            |e: std::io::Error| bad(format!("is truncated (tensor `{name}`)"), Some(Box::new(e)));
        let t = if dtype == DType::F32 && cfg!(target_endian = "little") {
            // Read straight into the tensor's own buffer: no second copy.
            let mut data = vec![0f32; expected / 4];
            // SAFETY: f32 has no invalid bit patterns and the byte view covers
            // exactly the vector's initialized memory.
            let bytes =
                unsafe { std::slice::from_raw_parts_mut(data.as_mut_ptr().cast::<u8>(), expected) };
            file.read_exact_at(bytes, offset).map_err(read_err)?;
            Tensor::from_vec(data, shape, &Device::Cpu)?
        } else {
            let mut bytes = vec![0u8; expected];
            file.read_exact_at(&mut bytes, offset).map_err(read_err)?;
            Tensor::from_raw_buffer(&bytes, dtype, &shape, &Device::Cpu)?
        };
        sink(name, t)?;
    }
    Ok(())
}

/// Read a `pytorch_model.bin` one tensor at a time into `sink`, largest
/// first, so that each projection can be quantized or packed before the
/// next is read: the peak is the model plus one tensor, as from safetensors
/// (reading every tensor first peaked at 696 MB for opus-mt-fr-en at q8_0,
/// against 276 MB from safetensors). Tied copies (older exports store
/// `model.shared.weight` again as both `embed_tokens` and as `lm_head`, all
/// views of one storage) are read once, under the shared name the models
/// look up first; the others are dropped, never duplicated in memory.
fn read_pth(path: &Path, sink: &mut dyn FnMut(String, Tensor) -> Result<()>) -> Result<()> {
    let pth = candle_core::pickle::PthTensors::new(path, None)?;
    let mut groups: HashMap<(String, usize, Vec<usize>), Vec<&str>> = HashMap::new();
    for (name, info) in pth.tensor_infos() {
        let key = (
            info.path.clone(),
            info.layout.start_offset(),
            info.layout.dims().to_vec(),
        );
        groups.entry(key).or_default().push(name);
    }
    // Of the names sharing one storage, the shared table's, else the first.
    let rank = |n: &str| (!n.ends_with("shared.weight"), n.to_string());
    let mut names: Vec<(usize, &str)> = groups
        .into_iter()
        .map(|((_, _, dims), mut aliases)| {
            aliases.sort_by_key(|n| rank(n));
            if aliases.len() > 1 {
                tracing::debug!("{}: {:?} are one tensor", path.display(), aliases);
            }
            (dims.iter().product(), aliases[0])
        })
        .collect();
    names.sort_by_key(|&(size, name)| (std::cmp::Reverse(size), name));
    for (_, name) in names {
        if let Some(t) = pth.get(name)? {
            sink(name.to_string(), t)?;
        }
    }
    Ok(())
}

/// Whether `name` is a projection weight (what quantization applies to).
pub fn is_projection(name: &str) -> bool {
    name == "lm_head.weight"
        || ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
            .iter()
            .any(|p| name.ends_with(&format!(".{p}.weight")))
}

/// A GGUF file's tensors: quantized ones kept as they are, float ones as tensors.
type GgufTensors = (
    Vec<(String, Tensor)>,
    HashMap<String, Arc<QTensor>>,
    Option<GgmlDType>,
);

/// Read `model.gguf`. Float (F32/F16) tensors become tensors; quantized ones
/// stay quantized for `QMatMul`. Also returns the quantization recorded in the
/// metadata (`transum.quantization`), if any.
fn read_gguf(path: &Path, device: &Device) -> Result<GgufTensors> {
    let bad = |e: candle_core::Error| {
        Error::file(
            path,
            "cannot be read as GGUF (truncated or corrupt?)",
            "write it again with `transum quantize`, or fetch it again",
            Some(Box::new(e)),
        )
    };
    let mut file = std::fs::File::open(path).map_err(|e| {
        Error::file(
            path,
            "cannot be opened",
            "check the model directory",
            Some(Box::new(e)),
        )
    })?;
    let content = gguf_file::Content::read(&mut file).map_err(bad)?;
    let quant = content
        .metadata
        .get("transum.quantization")
        .and_then(|v| v.to_string().ok())
        .and_then(|s| crate::device::parse_quant(s).ok());
    let mut names: Vec<String> = content.tensor_infos.keys().cloned().collect();
    names.sort();
    let mut floats = Vec::new();
    let mut quantized = HashMap::new();
    for name in names {
        let qt = content.tensor(&mut file, &name, device).map_err(bad)?;
        match qt.dtype() {
            GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16 => {
                floats.push((name, qt.dequantize(device).map_err(bad)?));
            }
            _ => {
                quantized.insert(name, Arc::new(qt));
            }
        }
    }
    Ok((floats, quantized, quant))
}

/// Every tensor of a checkpoint: (float ones, quantized ones), sorted by name.
pub type AllTensors<'a> = (Vec<(&'a str, &'a Tensor)>, Vec<(&'a str, &'a Arc<QTensor>)>);

struct Inner {
    tensors: HashMap<String, Tensor>,
    /// The tied embedding table quantized to q8_0 and packed as it was read
    /// (see [`Weights::load`]'s `tied_table`).
    packed: HashMap<String, PackedMatrix>,
    /// Projections (and a q8_0 tied table) held quantized: as a GGUF file
    /// stores them, or quantized as read for a placement that does not pack.
    quantized: HashMap<String, Arc<QTensor>>,
    /// The quantization a GGUF file was written with.
    quantization: Option<GgmlDType>,
    path: PathBuf,
    device: Device,
    dtype: DType,
}

/// A loaded checkpoint plus a name prefix, like candle's `VarBuilder::pp`.
#[derive(Clone)]
pub struct Weights {
    inner: Arc<Inner>,
    prefix: String,
}

impl Weights {
    /// Load every tensor of `path` for `placement`: floats converted to its
    /// dtype on its device, and every projection weight quantized as it is
    /// read when the placement quantizes (and its input width fits the
    /// format's blocks: [`Placement::quantization_for`]), so that a
    /// checkpoint never has all its f32 projections in memory at once; q8_0
    /// for the CPU kernel goes straight into its panels. With `tied_table` (a
    /// model whose embedding table is also its LM head) the shared table is
    /// quantized the same way, so its f32 copy (122 MB for opus-mt) never sits
    /// in memory beside the other weights.
    pub fn load(path: &Path, placement: &Placement, tied_table: bool) -> Result<Self> {
        let (device, dtype) = (&placement.device, placement.dtype);
        let mut packed: HashMap<String, PackedMatrix> = HashMap::new();
        let corrupt = |e: candle_core::Error| {
            Error::file(
                path,
                "cannot be read as a weight file (truncated or corrupt?)",
                "fetch it again with `transum download --force <model>`",
                Some(Box::new(e)),
            )
        };
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        let mut quantized: HashMap<String, Arc<QTensor>> = HashMap::new();
        let mut quantization = None;
        let mut tensors = HashMap::new();
        // `stored`: the tensor comes quantized from the file, so it is taken
        // as it is.
        let mut add_tensor = |name: String, t: Tensor, stored: bool| -> Result<()> {
            let table = tied_table && (name == "model.shared.weight" || name == "shared.weight");
            if (is_projection(&name) || table) && t.rank() == 2 && !stored {
                let (out, k) = t.dims2()?;
                match placement.quantization_for(k) {
                    Some(GgmlDType::Q8_0) if placement.packs() => {
                        let p =
                            crate::cpu::with_f32(&t, |w| PackedMatrix::quantize_q8_0(w, out, k))?
                                .expect("the width fits q8_0's blocks");
                        packed.insert(name, p);
                        return Ok(());
                    }
                    // A table that is also an embedding stays float, except in
                    // q8_0: that is how a q8_0 `model.gguf` stores it (one
                    // table), and the model then multiplies by it quantized
                    // and embeds with its dequantized rows, as the packed
                    // form does.
                    Some(q) if !table || q == GgmlDType::Q8_0 => {
                        let t = t.to_dtype(DType::F32)?.contiguous()?;
                        quantized.insert(name, Arc::new(QTensor::quantize(&t, q)?));
                        return Ok(());
                    }
                    _ => {}
                }
            }
            let t = if t.dtype().is_float() && t.dtype() != dtype {
                t.to_dtype(dtype)?
            } else {
                t
            };
            tensors.insert(name, t.to_device(device)?);
            Ok(())
        };
        match ext {
            "safetensors" => read_safetensors(path, &mut |n, t| add_tensor(n, t, false))?,
            "gguf" => {
                let (floats, mut q, qd) = read_gguf(path, device)?;
                // A q8_0 file stores a table that is both embeddings and LM
                // head once, quantized (`transum quantize`): it goes into the
                // panels as read, never through f32; a placement that does
                // not pack keeps it quantized (see `add_tensor`).
                let mut table = None;
                if let Some((name, qt)) = ["model.shared.weight", "shared.weight"]
                    .into_iter()
                    .find_map(|n| q.remove_entry(n))
                {
                    let (out, k) = qt.shape().dims2()?;
                    if tied_table && qt.dtype() == GgmlDType::Q8_0 {
                        if placement.packs() {
                            let p =
                                PackedMatrix::pack_q8_0(&qt.data()?, out, k).ok_or_else(|| {
                                    corrupt(candle_core::Error::Msg(format!(
                                        "q8_0 tensor `{name}` [{out}, {k}] has the wrong size"
                                    )))
                                })?;
                            table = Some((name, p));
                        } else {
                            q.insert(name, qt);
                        }
                    } else {
                        add_tensor(name, qt.dequantize(device)?, true)?;
                    }
                }
                for (name, t) in floats {
                    add_tensor(name, t, false)?;
                }
                packed.extend(table);
                quantized.extend(q);
                quantization = qd;
            }
            _ => read_pth(path, &mut |n, t| add_tensor(n, t, false)).map_err(|e| match e {
                Error::Candle(e) => corrupt(e),
                e => e,
            })?,
        }
        // Some exports drop the `model.` prefix of BartModel-style checkpoints.
        if !tensors
            .keys()
            .chain(quantized.keys())
            .any(|k| k.starts_with("model."))
        {
            let prefixed = |k: String| {
                if k == "final_logits_bias" || k.starts_with("lm_head.") {
                    k
                } else {
                    format!("model.{k}")
                }
            };
            tensors = tensors.into_iter().map(|(k, v)| (prefixed(k), v)).collect();
            quantized = quantized
                .into_iter()
                .map(|(k, v)| (prefixed(k), v))
                .collect();
            packed = packed.into_iter().map(|(k, v)| (prefixed(k), v)).collect();
        }
        Ok(Weights {
            inner: Arc::new(Inner {
                tensors,
                packed,
                quantized,
                quantization,
                path: path.to_path_buf(),
                device: device.clone(),
                dtype,
            }),
            prefix: String::new(),
        })
    }

    /// From tensors already in memory (tests, benchmarks).
    pub fn from_tensors(tensors: HashMap<String, Tensor>, device: &Device, dtype: DType) -> Self {
        Weights {
            inner: Arc::new(Inner {
                tensors,
                packed: HashMap::new(),
                quantized: HashMap::new(),
                quantization: None,
                path: PathBuf::from("<memory>"),
                device: device.clone(),
                dtype,
            }),
            prefix: String::new(),
        }
    }

    /// A view with `name` appended to the prefix.
    pub fn pp(&self, name: impl AsRef<str>) -> Self {
        let prefix = if self.prefix.is_empty() {
            name.as_ref().to_string()
        } else {
            format!("{}.{}", self.prefix, name.as_ref())
        };
        Weights {
            inner: self.inner.clone(),
            prefix,
        }
    }

    fn full_name(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.prefix, name)
        }
    }

    /// The device every tensor lives on.
    pub fn device(&self) -> &Device {
        &self.inner.device
    }

    /// The floating-point dtype of the weights.
    pub fn dtype(&self) -> DType {
        self.inner.dtype
    }

    /// The file the weights came from.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Whether `name` (under the prefix) exists.
    pub fn contains(&self, name: &str) -> bool {
        let full = self.full_name(name);
        self.inner.tensors.contains_key(&full)
            || self.inner.quantized.contains_key(&full)
            || self.inner.packed.contains_key(&full)
    }

    /// `name` (under the prefix) if it was packed as it was read.
    pub fn packed(&self, name: &str) -> Option<PackedMatrix> {
        self.inner.packed.get(&self.full_name(name)).cloned()
    }

    /// Whether `name` is stored quantized (GGUF).
    pub fn is_quantized(&self, name: &str) -> bool {
        self.inner.quantized.contains_key(&self.full_name(name))
    }

    /// The quantization of a GGUF file, if it recorded one.
    pub fn quantization(&self) -> Option<GgmlDType> {
        self.inner.quantization
    }

    /// All tensor names, for diagnostics.
    pub fn names(&self) -> Vec<&str> {
        self.inner.tensors.keys().map(String::as_str).collect()
    }

    /// Tensor `name` with exactly `shape` (a quantized one is dequantized).
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let full = self.full_name(name);
        if let Some(q) = self.inner.quantized.get(&full) {
            self.check_shape(&full, q.shape().dims(), shape)?;
            return Ok(q
                .dequantize(&self.inner.device)?
                .to_dtype(self.inner.dtype)?);
        }
        let t = self.inner.tensors.get(&full).ok_or_else(|| Error::Tensor {
            path: self.inner.path.clone(),
            name: full.clone(),
            what: format!("is missing (expected shape {shape:?})"),
            hint: "the weight file does not belong to this config.json, or it is incomplete; fetch the checkpoint again (`transum download --force <model>`)".into(),
        })?;
        self.check_shape(&full, t.dims(), shape)?;
        Ok(t.clone())
    }

    fn check_shape(&self, full: &str, got: &[usize], want: &[usize]) -> Result<()> {
        if got != want {
            return Err(Error::Tensor {
                path: self.inner.path.clone(),
                name: full.to_string(),
                what: format!("has shape {got:?}, expected {want:?} from config.json"),
                hint: "config.json and the weight file come from different checkpoints; fetch them together (`transum download --force <model>`)".into(),
            });
        }
        Ok(())
    }

    /// A [out, in] projection weight in the form it was read: packed or
    /// quantized when the loader made it so (or the file stores it
    /// quantized), else a plain tensor.
    pub fn weight(&self, name: &str, out_dim: usize, in_dim: usize) -> Result<Weight> {
        let full = self.full_name(name);
        if let Some(p) = self.inner.packed.get(&full) {
            self.check_shape(&full, &[p.out_dim(), p.in_dim()], &[out_dim, in_dim])?;
            return Ok(Weight::Packed(p.clone()));
        }
        if let Some(q) = self.inner.quantized.get(&full) {
            self.check_shape(&full, q.shape().dims(), &[out_dim, in_dim])?;
            return Ok(Weight::Quantized(QMatMul::from_arc(q.clone())?));
        }
        Ok(Weight::Dense(self.get(name, &[out_dim, in_dim])?))
    }

    /// All tensors, float and quantized, by full name (for `transum quantize`).
    pub fn all(&self) -> AllTensors<'_> {
        let mut f: Vec<_> = self
            .inner
            .tensors
            .iter()
            .map(|(k, v)| (k.as_str(), v))
            .collect();
        let mut q: Vec<_> = self
            .inner
            .quantized
            .iter()
            .map(|(k, v)| (k.as_str(), v))
            .collect();
        f.sort_by_key(|p| p.0);
        q.sort_by_key(|p| p.0);
        (f, q)
    }
}

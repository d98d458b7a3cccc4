//! The GGUF container (v2/v3, little-endian): header, metadata key/values, tensor infos, and
//! the tensor data section, memory-mapped.
//!
//! Layout: magic "GGUF" | u32 version | u64 tensor_count | u64 kv_count | kv_count x (string key,
//! u32 value type, value) | tensor_count x (string name, u32 n_dims, n_dims x u64 ne,
//! u32 ggml type, u64 offset) | padding to `general.alignment` (default 32) | tensor data.
//! Strings are u64 length + UTF-8 bytes. Every read is bounds-checked against the file length,
//! so a truncated or corrupt file gives an error, never a panic or a huge allocation.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::ggml_type::{dequantize, GgmlType};
use super::GgufError;

/// ggml supports at most 4 dimensions.
const MAX_DIMS: u32 = 4;
const DEFAULT_ALIGNMENT: u64 = 32;

/// One metadata value. Arrays hold values of one element type (arrays of arrays are allowed).
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    /// u8.
    U8(u8),
    /// i8.
    I8(i8),
    /// u16.
    U16(u16),
    /// i16.
    I16(i16),
    /// u32.
    U32(u32),
    /// i32.
    I32(i32),
    /// f32.
    F32(f32),
    /// bool.
    Bool(bool),
    /// A UTF-8 string.
    String(String),
    /// An array of values.
    Array(Vec<GgufValue>),
    /// u64.
    U64(u64),
    /// i64.
    I64(i64),
    /// f64.
    F64(f64),
}

impl GgufValue {
    /// GGUF's name of the value type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            GgufValue::U8(_) => "uint8",
            GgufValue::I8(_) => "int8",
            GgufValue::U16(_) => "uint16",
            GgufValue::I16(_) => "int16",
            GgufValue::U32(_) => "uint32",
            GgufValue::I32(_) => "int32",
            GgufValue::F32(_) => "float32",
            GgufValue::Bool(_) => "bool",
            GgufValue::String(_) => "string",
            GgufValue::Array(_) => "array",
            GgufValue::U64(_) => "uint64",
            GgufValue::I64(_) => "int64",
            GgufValue::F64(_) => "float64",
        }
    }

    /// Any integer type that holds a non-negative value (writers differ in u32 vs u64 vs i32).
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v as u64),
            GgufValue::U16(v) => Some(v as u64),
            GgufValue::U32(v) => Some(v as u64),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer type as i64 (token types are int32).
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::U64(v) => i64::try_from(v).ok(),
            GgufValue::I8(v) => Some(v as i64),
            GgufValue::I16(v) => Some(v as i64),
            GgufValue::I32(v) => Some(v as i64),
            GgufValue::I64(v) => Some(v),
            _ => self.as_u64().map(|v| v as i64),
        }
    }

    /// f32 or f64 (f32 widened exactly).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v as f64),
            GgufValue::F64(v) => Some(v),
            _ => None,
        }
    }

    /// The value as a bool, if it is one.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    /// The value as a string, if it is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an array, if it is one.
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// One tensor's info. `dims` is ggml's ne order: `dims[0]` is the fastest-varying (columns), so
/// the row-major (HF / safetensors) shape is `dims` reversed.
#[derive(Debug, Clone)]
pub struct TensorInfo {
    /// The tensor's name.
    pub name: String,
    /// Its dimensions (ggml's order: fastest first).
    pub dims: Vec<u64>,
    /// Its element type.
    pub ggml_type: GgmlType,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
    /// Size of the data in bytes; `None` for a type id ggml does not define.
    pub n_bytes: Option<u64>,
}

impl TensorInfo {
    /// Elements.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Row-major shape (HF / safetensors / numpy order): `dims` reversed.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// An open GGUF file: parsed metadata and tensor infos, data memory-mapped (not read).
pub struct GgufFile {
    path: PathBuf,
    version: u32,
    alignment: u64,
    metadata: BTreeMap<String, GgufValue>,
    tensors: Vec<TensorInfo>,
    /// Absolute file offset of the data section.
    data_start: u64,
    mmap: Mmap,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// A bounds-checked little-endian cursor over the mapped header.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> Result<&'a [u8], GgufError> {
        let left = (self.buf.len() - self.pos) as u64;
        if n > left {
            return Err(GgufError::Truncated { path: self.path.to_path_buf(), what: what(), offset: self.pos as u64, needed: n, len: self.buf.len() as u64 });
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> Result<[u8; N], GgufError> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| self.malformed(format!("{} is not valid UTF-8", what())))
    }

    fn malformed(&self, msg: String) -> GgufError {
        GgufError::Malformed { path: self.path.to_path_buf(), msg }
    }

    /// Reads a value of GGUF value type `ty` (`depth` guards against absurd array nesting).
    fn value(&mut self, ty: u32, what: &dyn Fn() -> String, depth: u32) -> Result<GgufValue, GgufError> {
        Ok(match ty {
            0 => GgufValue::U8(self.array::<1>(what)?[0]),
            1 => GgufValue::I8(self.array::<1>(what)?[0] as i8),
            2 => GgufValue::U16(u16::from_le_bytes(self.array(what)?)),
            3 => GgufValue::I16(i16::from_le_bytes(self.array(what)?)),
            4 => GgufValue::U32(self.u32(what)?),
            5 => GgufValue::I32(i32::from_le_bytes(self.array(what)?)),
            6 => GgufValue::F32(f32::from_le_bytes(self.array(what)?)),
            // ggml reads a bool as one byte, non-zero meaning true.
            7 => GgufValue::Bool(self.array::<1>(what)?[0] != 0),
            8 => GgufValue::String(self.string(what)?),
            9 => {
                if depth >= 8 {
                    return Err(self.malformed(format!("{}: arrays nested too deep", what())));
                }
                let elem_ty = self.u32(what)?;
                let count = self.u64(what)?;
                // Every element takes at least one byte: a count beyond the bytes left is a
                // truncated (or corrupt) file, caught before allocating.
                let left = (self.buf.len() - self.pos) as u64;
                if count > left {
                    return Err(GgufError::Truncated {
                        path: self.path.to_path_buf(),
                        what: format!("{} ({count} array elements)", what()),
                        offset: self.pos as u64,
                        needed: count,
                        len: self.buf.len() as u64,
                    });
                }
                // Capped reservation: a corrupt count must not reserve 32x the file size.
                let mut items = Vec::with_capacity(count.min(1 << 16) as usize);
                for _ in 0..count {
                    items.push(self.value(elem_ty, what, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::U64(self.u64(what)?),
            11 => GgufValue::I64(i64::from_le_bytes(self.array(what)?)),
            12 => GgufValue::F64(f64::from_le_bytes(self.array(what)?)),
            t => return Err(self.malformed(format!("{}: unknown value type {t}", what()))),
        })
    }
}

impl GgufFile {
    /// Opens and parses a GGUF file; the tensor data stays mapped, unread. Checks that every
    /// tensor's data lies inside the file (when its type is known) and is aligned.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile, GgufError> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| GgufError::io(path, e))?;
        let len = file.metadata().map_err(|e| GgufError::io(path, e))?.len();
        if len < 4 {
            return Err(GgufError::Truncated { path: path.to_path_buf(), what: "the magic".into(), offset: 0, needed: 4, len });
        }
        // SAFETY: the map is read-only; as with every mmap, the file must not be truncated by
        // another process while it is open (all reads below are bounds-checked against `len`).
        let mmap = unsafe { Mmap::map(&file) }.map_err(|e| GgufError::io(path, e))?;
        let mut c = Cursor { buf: &mmap, pos: 0, path };

        let magic = c.array::<4>(&|| "the magic".into())?;
        if &magic != b"GGUF" {
            return Err(GgufError::BadMagic { path: path.to_path_buf(), found: String::from_utf8_lossy(&magic).into_owned() });
        }
        let version = c.u32(&|| "the version".into())?;
        if version.swap_bytes() == 2 || version.swap_bytes() == 3 {
            return Err(GgufError::Malformed { path: path.to_path_buf(), msg: "big-endian GGUF files are not supported".into() });
        }
        if version != 2 && version != 3 {
            return Err(GgufError::UnsupportedVersion { path: path.to_path_buf(), version });
        }
        let n_tensors = c.u64(&|| "the tensor count".into())?;
        let n_kv = c.u64(&|| "the metadata count".into())?;

        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = c.string(&|| format!("metadata key #{i}"))?;
            let what = || format!("metadata value `{key}`");
            let ty = c.u32(&what)?;
            let value = c.value(ty, &what, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(c.malformed(format!("metadata key `{key}` appears twice")));
            }
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a > 0 && a.is_power_of_two() => a,
                _ => return Err(c.malformed(format!("general.alignment must be a power of two, found {v:?}"))),
            },
        };

        let mut tensors = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for i in 0..n_tensors {
            let name = c.string(&|| format!("tensor info #{i} name"))?;
            let what = || format!("tensor info `{name}`");
            let n_dims = c.u32(&what)?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(c.malformed(format!("tensor {name}: {n_dims} dimensions (1 to {MAX_DIMS} allowed)")));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(c.u64(&what)?);
            }
            let ggml_type = GgmlType(c.u32(&what)?);
            let offset = c.u64(&what)?;
            if offset % alignment != 0 {
                return Err(c.malformed(format!("tensor {name}: data offset {offset} is not a multiple of the alignment {alignment}")));
            }
            let n_elements =
                dims.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).ok_or_else(|| c.malformed(format!("tensor {name}: dimensions {dims:?} overflow")))?;
            let n_bytes = match ggml_type.block_layout() {
                None => None,
                Some((block, block_bytes)) => {
                    // ggml requires whole blocks along each row (ne[0]).
                    if dims[0] % block != 0 {
                        return Err(c.malformed(format!(
                            "tensor {name}: row length {} is not a multiple of the {} block size {block}",
                            dims[0],
                            ggml_type.name()
                        )));
                    }
                    Some((n_elements / block).checked_mul(block_bytes).ok_or_else(|| c.malformed(format!("tensor {name}: size overflows")))?)
                }
            };
            if !seen.insert(name.clone()) {
                return Err(c.malformed(format!("tensor {name} appears twice")));
            }
            tensors.push(TensorInfo { name, dims, ggml_type, offset, n_bytes });
        }

        // The data section starts at the next multiple of the alignment after the infos.
        let header_end = c.pos as u64;
        let data_start = header_end.div_ceil(alignment) * alignment;
        for t in &tensors {
            if let Some(n) = t.n_bytes {
                let start = data_start.checked_add(t.offset);
                let end = start.and_then(|s| s.checked_add(n));
                match (start, end) {
                    (Some(_), Some(end)) if end <= len => {}
                    _ => {
                        return Err(GgufError::TensorOutOfBounds {
                            path: path.to_path_buf(),
                            name: t.name.clone(),
                            start: start.unwrap_or(u64::MAX),
                            end: end.unwrap_or(u64::MAX),
                            len,
                        })
                    }
                }
            }
        }

        // No two tensors may share bytes: overlapping extents mean a retyped tensor (its size no
        // longer matches the layout) or two tensors aliasing one another's data.
        let mut extents: Vec<(u64, u64, &str)> = tensors.iter().filter_map(|t| t.n_bytes.map(|n| (t.offset, t.offset + n, t.name.as_str()))).collect();
        extents.sort_unstable();
        if let Some(w) = extents.windows(2).find(|w| w[1].0 < w[0].1 && w[0].1 > w[0].0 && w[1].1 > w[1].0) {
            return Err(c.malformed(format!(
                "tensors {} (bytes {}..{}) and {} (bytes {}..{}) overlap in the data section",
                w[0].2, w[0].0, w[0].1, w[1].2, w[1].0, w[1].1
            )));
        }

        Ok(GgufFile { path: path.to_path_buf(), version, alignment, metadata, tensors, data_start, mmap })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Its GGUF version.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Alignment of its tensor data (bytes).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Every metadata key and value.
    pub fn metadata(&self) -> &BTreeMap<String, GgufValue> {
        &self.metadata
    }

    /// One metadata value.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    /// Every tensor's description.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// One tensor's description.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of a tensor (bounds were checked at open).
    pub fn tensor_data(&self, t: &TensorInfo) -> Result<&[u8], GgufError> {
        let unsupported = || GgufError::UnsupportedTensorType {
            path: self.path.clone(),
            name: t.name.clone(),
            type_name: t.ggml_type.name().to_string(),
            type_id: t.ggml_type.0,
        };
        let n = t.n_bytes.ok_or_else(unsupported)?;
        let start = (self.data_start + t.offset) as usize;
        self.mmap.get(start..start + n as usize).ok_or_else(|| GgufError::TensorOutOfBounds {
            path: self.path.clone(),
            name: t.name.clone(),
            start: start as u64,
            end: start as u64 + n,
            len: self.mmap.len() as u64,
        })
    }

    /// Dequantizes a tensor to f32, in ggml's element order (row-major over the reversed dims).
    pub fn dequantize(&self, t: &TensorInfo) -> Result<Vec<f32>, GgufError> {
        if !t.ggml_type.is_supported() {
            return Err(GgufError::UnsupportedTensorType {
                path: self.path.clone(),
                name: t.name.clone(),
                type_name: t.ggml_type.name().to_string(),
                type_id: t.ggml_type.0,
            });
        }
        let data = self.tensor_data(t)?;
        dequantize(t.ggml_type, data, t.n_elements() as usize)
            .ok_or_else(|| GgufError::Malformed { path: self.path.clone(), msg: format!("tensor {}: data size does not match its shape", t.name) })
    }

    // ---- typed metadata getters: clear errors naming the key ----

    pub(crate) fn require(&self, key: &str) -> Result<&GgufValue, GgufError> {
        self.metadata.get(key).ok_or_else(|| GgufError::MissingKey { path: self.path.clone(), key: key.to_string() })
    }

    fn wrong_type(&self, key: &str, expected: &str, v: &GgufValue) -> GgufError {
        GgufError::WrongType { path: self.path.clone(), key: key.to_string(), expected: expected.to_string(), found: v.type_name().to_string() }
    }

    pub(crate) fn get_u64(&self, key: &str) -> Result<Option<u64>, GgufError> {
        self.metadata.get(key).map(|v| v.as_u64().ok_or_else(|| self.wrong_type(key, "a non-negative integer", v))).transpose()
    }

    pub(crate) fn req_u64(&self, key: &str) -> Result<u64, GgufError> {
        let v = self.require(key)?;
        v.as_u64().ok_or_else(|| self.wrong_type(key, "a non-negative integer", v))
    }

    pub(crate) fn get_f64(&self, key: &str) -> Result<Option<f64>, GgufError> {
        self.metadata.get(key).map(|v| v.as_f64().ok_or_else(|| self.wrong_type(key, "a float", v))).transpose()
    }

    pub(crate) fn get_bool(&self, key: &str) -> Result<Option<bool>, GgufError> {
        self.metadata.get(key).map(|v| v.as_bool().ok_or_else(|| self.wrong_type(key, "a bool", v))).transpose()
    }

    pub(crate) fn get_str(&self, key: &str) -> Result<Option<&str>, GgufError> {
        self.metadata.get(key).map(|v| v.as_str().ok_or_else(|| self.wrong_type(key, "a string", v))).transpose()
    }

    pub(crate) fn req_str(&self, key: &str) -> Result<&str, GgufError> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| self.wrong_type(key, "a string", v))
    }

    /// A required array of strings (tokens, merges).
    pub(crate) fn req_str_array(&self, key: &str) -> Result<Vec<&str>, GgufError> {
        let v = self.require(key)?;
        let arr = v.as_array().ok_or_else(|| self.wrong_type(key, "an array of strings", v))?;
        arr.iter().map(|e| e.as_str().ok_or_else(|| self.wrong_type(key, "an array of strings", e))).collect()
    }

    /// An optional array of integers (token types).
    pub(crate) fn get_i64_array(&self, key: &str) -> Result<Option<Vec<i64>>, GgufError> {
        let Some(v) = self.metadata.get(key) else { return Ok(None) };
        let arr = v.as_array().ok_or_else(|| self.wrong_type(key, "an array of integers", v))?;
        arr.iter().map(|e| e.as_i64().ok_or_else(|| self.wrong_type(key, "an array of integers", e))).collect::<Result<Vec<_>, _>>().map(Some)
    }
}

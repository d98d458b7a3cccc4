//! Output side of the conversion: a streaming safetensors writer (one tensor in memory at a
//! time) and an output directory that appears atomically (written beside, then renamed).

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use half::{bf16, f16};
use rayon::prelude::*;
use serde_json::{json, Value};

use super::GgufError;

/// Element type of the written `model.safetensors`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OutDType {
    /// f32 weights.
    #[default]
    F32,
    /// bf16 weights.
    Bf16,
    /// f16 weights.
    F16,
}

impl OutDType {
    pub(super) fn torch_dtype(self) -> &'static str {
        match self {
            OutDType::F32 => "float32",
            OutDType::Bf16 => "bfloat16",
            OutDType::F16 => "float16",
        }
    }
}

impl FromStr for OutDType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(OutDType::F32),
            "bf16" | "bfloat16" => Ok(OutDType::Bf16),
            "f16" | "float16" => Ok(OutDType::F16),
            _ => Err(format!("unknown dtype `{s}` (expected f32, bf16 or f16)")),
        }
    }
}

impl std::fmt::Display for OutDType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OutDType::F32 => "f32",
            OutDType::Bf16 => "bf16",
            OutDType::F16 => "f16",
        })
    }
}

/// One tensor to write: its HF name, row-major shape, and a producer of its f32 values.
pub(crate) struct OutTensor<'a> {
    pub name: String,
    pub shape: Vec<usize>,
    pub produce: Box<dyn Fn() -> Result<Vec<f32>, GgufError> + Sync + 'a>,
}

fn dtype_str(d: OutDType) -> &'static str {
    match d {
        OutDType::F32 => "F32",
        OutDType::Bf16 => "BF16",
        OutDType::F16 => "F16",
    }
}

fn elem_bytes(d: OutDType) -> usize {
    match d {
        OutDType::F32 => 4,
        OutDType::Bf16 | OutDType::F16 => 2,
    }
}

/// f32 values -> little-endian bytes of `dtype` (round to nearest even for the 16-bit types).
fn encode(values: &[f32], dtype: OutDType) -> Cow<'_, [u8]> {
    match dtype {
        // safetensors is little-endian, as is every host lorafleet targets (x86-64, aarch64).
        OutDType::F32 if cfg!(target_endian = "little") => Cow::Borrowed(bytemuck::cast_slice(values)),
        OutDType::F32 => Cow::Owned(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        OutDType::Bf16 => {
            let v: Vec<u16> = values.par_iter().map(|&x| bf16::from_f32(x).to_bits().to_le()).collect();
            Cow::Owned(bytemuck::cast_slice(&v).to_vec())
        }
        OutDType::F16 => {
            let v: Vec<u16> = values.par_iter().map(|&x| f16::from_f32(x).to_bits().to_le()).collect();
            Cow::Owned(bytemuck::cast_slice(&v).to_vec())
        }
    }
}

/// Writes `tensors` as a safetensors file: u64 LE header length, JSON header (padded with
/// spaces to a multiple of 8), then the tensors back to back in the given order. The header is
/// computed from the shapes up front, so values are produced and written one tensor at a time.
/// `on_tensor(name, bytes)` is called after each tensor (progress).
pub(crate) fn write_safetensors(path: &Path, tensors: &[OutTensor<'_>], dtype: OutDType, on_tensor: &dyn Fn(&str, u64)) -> Result<(), GgufError> {
    let io = |e| GgufError::io(path, e);
    let mut header = BTreeMap::new();
    let mut offset = 0usize;
    for t in tensors {
        let n = t.shape.iter().product::<usize>() * elem_bytes(dtype);
        header.insert(t.name.clone(), json!({ "dtype": dtype_str(dtype), "shape": t.shape, "data_offsets": [offset, offset + n] }));
        offset += n;
    }
    header.insert("__metadata__".to_string(), json!({ "format": "pt" }));
    let mut header = Value::from(serde_json::Map::from_iter(header)).to_string().into_bytes();
    header.resize(header.len().next_multiple_of(8), b' ');

    let file = File::create(path).map_err(io)?;
    let mut w = BufWriter::with_capacity(8 << 20, file);
    w.write_all(&(header.len() as u64).to_le_bytes()).map_err(io)?;
    w.write_all(&header).map_err(io)?;
    for t in tensors {
        let values = (t.produce)()?;
        let expected: usize = t.shape.iter().product();
        if values.len() != expected {
            return Err(GgufError::Other(format!("internal: tensor {} produced {} values for shape {:?}", t.name, values.len(), t.shape)));
        }
        let bytes = encode(&values, dtype);
        w.write_all(&bytes).map_err(io)?;
        on_tensor(&t.name, bytes.len() as u64);
    }
    let file = w.into_inner().map_err(|e| GgufError::io(path, e.into_error()))?;
    file.sync_all().map_err(io)?;
    Ok(())
}

/// A temporary directory beside the final output; removed on drop unless committed.
pub(crate) struct StagingDir {
    pub path: PathBuf,
    target: PathBuf,
    committed: bool,
}

impl StagingDir {
    /// Creates `<parent>/.<name>.tmp-<pid>-<nanos>` next to `target` (same filesystem, so the
    /// final rename is atomic), creating the parent when needed.
    pub fn new(target: &Path) -> Result<StagingDir, GgufError> {
        let parent = match target.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&parent).map_err(|e| GgufError::io(&parent, e))?;
        let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "out".into());
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let path = parent.join(format!(".{name}.tmp-{}-{nanos}", std::process::id()));
        fs::create_dir(&path).map_err(|e| GgufError::io(&path, e))?;
        Ok(StagingDir { path, target: target.to_path_buf(), committed: false })
    }

    pub fn write(&self, name: &str, contents: &[u8]) -> Result<(), GgufError> {
        let p = self.path.join(name);
        fs::write(&p, contents).map_err(|e| GgufError::io(&p, e))
    }

    /// Moves the staged files into place. A missing or empty target directory is replaced by
    /// one rename; an existing non-empty one keeps its other files (never deleted) and gets each
    /// staged file by its own (atomic) rename.
    pub fn commit(mut self) -> Result<(), GgufError> {
        let target = self.target.clone();
        let io = |e| GgufError::io(&target, e);
        match fs::metadata(&target) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::rename(&self.path, &target).map_err(io)?;
            }
            Err(e) => return Err(io(e)),
            Ok(m) if !m.is_dir() => {
                return Err(GgufError::io(&target, std::io::Error::new(std::io::ErrorKind::AlreadyExists, "exists and is not a directory")))
            }
            Ok(_) => {
                let empty = fs::read_dir(&target).map_err(io)?.next().is_none();
                if empty {
                    fs::remove_dir(&target).map_err(io)?;
                    fs::rename(&self.path, &target).map_err(io)?;
                } else {
                    for entry in fs::read_dir(&self.path).map_err(|e| GgufError::io(&self.path, e))? {
                        let entry = entry.map_err(|e| GgufError::io(&self.path, e))?;
                        fs::rename(entry.path(), target.join(entry.file_name())).map_err(io)?;
                    }
                    fs::remove_dir(&self.path).map_err(|e| GgufError::io(&self.path, e))?;
                }
            }
        }
        self.committed = true;
        Ok(())
    }
}

impl Drop for StagingDir {
    fn drop(&mut self) {
        if !self.committed {
            // Best effort: a leftover temp dir is harmless and named as such.
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

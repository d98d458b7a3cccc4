//! Weight files: HF safetensors (one file or a sharded index), memory-mapped, tensors read as
//! f32 whatever their stored dtype (F32, BF16, F16).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::tensor::Metadata;
use safetensors::{Dtype, SafeTensors};

use crate::{Error, Result};

/// The safetensors files of a model directory, memory-mapped.
pub struct WeightFiles {
    /// (path, map, header length + 8 = start of the data section, parsed header)
    files: Vec<(PathBuf, Mmap, usize, Metadata)>,
    /// tensor name -> index into `files`
    index: HashMap<String, usize>,
}

/// A tensor read to host memory as f32, row-major.
#[derive(Debug, Clone)]
pub struct HostTensor {
    /// The tensor's name.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its values, as f32.
    pub data: Vec<f32>,
}

impl WeightFiles {
    /// Opens `dir/model.safetensors`, or the shards listed in `dir/model.safetensors.index.json`.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index = dir.join("model.safetensors.index.json");
        let paths: Vec<PathBuf> = if single.exists() {
            vec![single]
        } else if index.exists() {
            let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
            let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Weights { path: index.clone(), msg: format!("not valid JSON: {e}") })?;
            let map =
                v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| Error::Weights { path: index.clone(), msg: "no `weight_map` object".into() })?;
            let mut shards: Vec<String> = map.values().filter_map(|s| s.as_str().map(str::to_owned)).collect();
            shards.sort();
            shards.dedup();
            shards.into_iter().map(|s| dir.join(s)).collect()
        } else {
            return Err(Error::Weights { path: dir.to_path_buf(), msg: "no model.safetensors or model.safetensors.index.json in this directory".into() });
        };
        Self::open_files(&paths)
    }

    /// Opens (memory-maps) safetensors files.
    pub fn open_files(paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::new();
        let mut index = HashMap::new();
        for (i, p) in paths.iter().enumerate() {
            let f = std::fs::File::open(p).map_err(|e| Error::io(p, e))?;
            // SAFETY: the file is opened read-only and we never write through the map; a file
            // changed under us by another process is outside what we can defend against (as with
            // every mmap-based loader).
            let mmap = unsafe { Mmap::map(&f) }.map_err(|e| Error::io(p, e))?;
            let bad = |e: safetensors::SafeTensorError| Error::Weights { path: p.clone(), msg: format!("not a valid safetensors file: {e}") };
            // deserialize validates every tensor's offsets against the file length (a truncated
            // file fails here); the parsed header is then kept for lookups.
            SafeTensors::deserialize(&mmap).map_err(bad)?;
            let (n, meta) = SafeTensors::read_metadata(&mmap).map_err(bad)?;
            for name in meta.tensors().keys() {
                index.insert(name.clone(), i);
            }
            files.push((p.clone(), mmap, n + 8, meta));
        }
        Ok(WeightFiles { files, index })
    }

    /// Whether a tensor of that name is in the files.
    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    /// Every tensor's name.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(String::as_str)
    }

    /// Path, shape, dtype and stored bytes of a tensor.
    pub fn raw(&self, name: &str) -> Result<(&Path, Vec<usize>, Dtype, &[u8])> {
        let &i = self
            .index
            .get(name)
            .ok_or_else(|| Error::MissingTensor { name: name.to_string(), path: self.files.first().map(|f| f.0.clone()).unwrap_or_default() })?;
        let (path, mmap, start, meta) = &self.files[i];
        let info = meta.info(name).ok_or_else(|| Error::MissingTensor { name: name.into(), path: path.clone() })?;
        // In bounds: deserialize() checked every tensor's offsets against the file at open.
        let data = &mmap[start + info.data_offsets.0..start + info.data_offsets.1];
        Ok((path, info.shape.clone(), info.dtype, data))
    }

    /// Shape and dtype of a tensor, without reading it.
    pub fn info(&self, name: &str) -> Result<(Vec<usize>, Dtype)> {
        let (_, shape, dtype, _) = self.raw(name)?;
        Ok((shape, dtype))
    }

    /// Reads a tensor as f32.
    pub fn f32(&self, name: &str) -> Result<HostTensor> {
        let (path, shape, dtype, bytes) = self.raw(name)?;
        let data = to_f32(dtype, bytes).map_err(|msg| Error::Weights { path: path.to_path_buf(), msg: format!("tensor `{name}`: {msg}") })?;
        Ok(HostTensor { name: name.to_string(), shape, data })
    }

    /// Reads a tensor as f32 and checks its shape.
    pub fn f32_shaped(&self, name: &str, shape: &[usize]) -> Result<HostTensor> {
        let t = self.f32(name)?;
        if t.shape != shape {
            return Err(Error::Shape { name: name.to_string(), expected: shape.to_vec(), found: t.shape });
        }
        Ok(t)
    }
}

/// Converts little-endian F32/BF16/F16 bytes to f32.
pub fn to_f32(dtype: Dtype, bytes: &[u8]) -> std::result::Result<Vec<f32>, String> {
    let conv = |width: usize, f: &dyn Fn(&[u8]) -> f32| -> std::result::Result<Vec<f32>, String> {
        if !bytes.len().is_multiple_of(width) {
            return Err(format!("{} bytes is not a whole number of {dtype:?} values", bytes.len()));
        }
        Ok(bytes.chunks_exact(width).map(f).collect())
    };
    match dtype {
        Dtype::F32 => conv(4, &|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        Dtype::BF16 => conv(2, &|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        Dtype::F16 => conv(2, &|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()),
        other => Err(format!("dtype {other:?} cannot be read as floats (F32, BF16, F16 can)")),
    }
}

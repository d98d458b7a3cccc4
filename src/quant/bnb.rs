//! bitsandbytes' serialization of a 4-bit weight, as transformers saves a `load_in_4bit` model:
//! for a weight `W`,
//!
//! | tensor | dtype, shape | holds |
//! | --- | --- | --- |
//! | `W` | U8 `[ceil(numel/2), 1]` | the packed NF4 indices |
//! | `W.absmax` | F32 `[blocks]`, or U8 with double quant | block scales |
//! | `W.quant_map` | F32 `[16]` | the NF4 levels |
//! | `W.nested_absmax` | F32 `[ceil(blocks/256)]` | double quant only |
//! | `W.nested_quant_map` | F32 `[256]` | double quant only: the dynamic code |
//! | `W.quant_state.bitsandbytes__nf4` | U8 `[len]` | JSON: quant_type, blocksize, dtype, shape, nested_blocksize, nested_dtype, nested_offset |

use std::path::Path;

use safetensors::Dtype;

use super::nf4::{Absmax, Nf4Tensor};
use crate::weights::{to_f32, WeightFiles};
use crate::{Error, Result};

/// The suffix of the JSON quant-state tensor of an NF4 weight.
pub const QUANT_STATE_SUFFIX: &str = ".quant_state.bitsandbytes__nf4";

/// Whether `w` holds `name` in bitsandbytes NF4 serialization.
pub fn is_nf4(w: &WeightFiles, name: &str) -> bool {
    w.contains(&format!("{name}{QUANT_STATE_SUFFIX}"))
}

/// One tensor ready for `safetensors::serialize`: (name, dtype, shape, little-endian bytes).
pub type RawTensor = (String, Dtype, Vec<usize>, Vec<u8>);

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The tensors bitsandbytes writes for `t` stored as `name` (`dtype`: the original dtype it
/// records, e.g. "float32" or "bfloat16").
pub fn serialize(name: &str, t: &Nf4Tensor, dtype: &str) -> Vec<RawTensor> {
    let mut out =
        vec![(name.to_string(), Dtype::U8, vec![t.packed.len(), 1], t.packed.clone()), (format!("{name}.quant_map"), Dtype::F32, vec![16], f32_bytes(&t.code))];
    let mut state = serde_json::json!({
        "quant_type": "nf4",
        "blocksize": t.blocksize,
        "dtype": dtype,
        "shape": t.shape,
    });
    match &t.absmax {
        Absmax::Plain(a) => out.push((format!("{name}.absmax"), Dtype::F32, vec![a.len()], f32_bytes(a))),
        Absmax::Double { q, offset, nested_absmax, nested_blocksize, code } => {
            out.push((format!("{name}.absmax"), Dtype::U8, vec![q.len()], q.clone()));
            out.push((format!("{name}.nested_absmax"), Dtype::F32, vec![nested_absmax.len()], f32_bytes(nested_absmax)));
            out.push((format!("{name}.nested_quant_map"), Dtype::F32, vec![256], f32_bytes(&code[..])));
            state["nested_blocksize"] = (*nested_blocksize).into();
            state["nested_dtype"] = "float32".into();
            state["nested_offset"] = (*offset as f64).into();
        }
    }
    let json = state.to_string().into_bytes();
    out.push((format!("{name}{QUANT_STATE_SUFFIX}"), Dtype::U8, vec![json.len()], json));
    out
}

/// Reads the NF4 weight `name` from bitsandbytes serialization; every length is checked
/// against the recorded shape (a malformed file is an error, never a panic).
pub fn read(w: &WeightFiles, name: &str) -> Result<Nf4Tensor> {
    let state_name = format!("{name}{QUANT_STATE_SUFFIX}");
    let (path, _, _, state_bytes) = w.raw(&state_name)?;
    let bad = |msg: String| Error::Weights { path: path.to_path_buf(), msg: format!("NF4 weight `{name}`: {msg}") };
    let state: serde_json::Value = serde_json::from_slice(state_bytes).map_err(|e| bad(format!("quant state is not JSON: {e}")))?;
    if state.get("quant_type").and_then(|v| v.as_str()) != Some("nf4") {
        return Err(bad(format!("quant_type {:?} (only nf4 is supported)", state.get("quant_type"))));
    }
    let uint = |key: &str| -> Result<usize> {
        state.get(key).and_then(|v| v.as_u64()).map(|v| v as usize).ok_or_else(|| bad(format!("quant state has no integer `{key}`")))
    };
    let blocksize = uint("blocksize")?;
    let shape: Vec<usize> = state
        .get("shape")
        .and_then(|v| v.as_array())
        .and_then(|a| a.iter().map(|x| x.as_u64().map(|x| x as usize)).collect())
        .ok_or_else(|| bad("quant state has no integer array `shape`".into()))?;
    let floats = |n: &str| -> Result<Vec<f32>> {
        let (p, _, dt, b) = w.raw(n)?;
        to_f32(dt, b).map_err(|m| Error::Weights { path: p.to_path_buf(), msg: format!("tensor `{n}`: {m}") })
    };
    let bytes = |n: &str| -> Result<Vec<u8>> {
        let (_, _, dt, b) = w.raw(n)?;
        if dt != Dtype::U8 {
            return Err(bad(format!("`{n}` is {dt:?}, expected U8")));
        }
        Ok(b.to_vec())
    };
    let packed = bytes(name)?;
    let code: [f32; 16] =
        floats(&format!("{name}.quant_map"))?.try_into().map_err(|v: Vec<f32>| bad(format!("quant_map has {} values, expected 16", v.len())))?;
    let absmax_name = format!("{name}.absmax");
    let absmax = if state.get("nested_offset").is_some() {
        let offset = state["nested_offset"].as_f64().ok_or_else(|| bad("nested_offset is not a number".into()))? as f32;
        let nested_code: [f32; 256] = floats(&format!("{name}.nested_quant_map"))?
            .try_into()
            .map_err(|v: Vec<f32>| bad(format!("nested_quant_map has {} values, expected 256", v.len())))?;
        Absmax::Double {
            q: bytes(&absmax_name)?,
            offset,
            nested_absmax: floats(&format!("{name}.nested_absmax"))?,
            nested_blocksize: uint("nested_blocksize")?,
            code: Box::new(nested_code),
        }
    } else {
        Absmax::Plain(floats(&absmax_name)?)
    };
    let t = Nf4Tensor { shape, blocksize, packed, absmax, code };
    t.validate().map_err(bad)?;
    Ok(t)
}

/// Writes `tensors` to a safetensors file at `path` with `metadata` (e.g. `{"format": "pt"}`).
pub fn write_safetensors(path: &Path, tensors: &[RawTensor]) -> Result<()> {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, dt, shape, b)| {
            safetensors::tensor::TensorView::new(*dt, shape.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::InvalidArgument(format!("tensor `{n}`: {e}")))
        })
        .collect::<Result<_>>()?;
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(views, Some(meta), path).map_err(|e| Error::io(path, std::io::Error::other(e.to_string())))
}

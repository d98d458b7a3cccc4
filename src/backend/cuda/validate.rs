//! The argument checks every ops launch makes, as pure functions of buffer lengths, shapes and
//! host-side indices: they run (and are tested) on any machine, GPU or not. Each returns the
//! kernel's parameter struct, so a launch cannot use a shape that was not checked.
//!
//! What they guarantee to the kernels (csrc/ops.h): every count is positive and fits the C type
//! of its field; every buffer holds exactly the elements its shape says; every id and position
//! indexes inside its table; every row-major width a kernel indexes with int32 fits int32; row
//! counts are at most `i32::MAX`, the CUDA grid's x limit.

use crate::{Error, Result};

use super::ffi::{LfElementwiseParams, LfEmbeddingParams, LfRmsNormParams, LfRopeParams};

/// Head layout of the q and k buffers RoPE rotates: q `[rows, n_q_heads * head_dim]`,
/// k `[rows, n_k_heads * head_dim]` (GQA: n_k_heads divides n_q_heads, though RoPE does not care).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RopeDims {
    /// Query heads.
    pub n_q_heads: usize,
    /// Key/value heads.
    pub n_k_heads: usize,
    /// Dimensions per head.
    pub head_dim: usize,
}

/// The one constructor of an argument error in the CUDA backend: a bad shape, dtype or size,
/// refused in Rust before any launch.
pub(crate) fn invalid(msg: impl Into<String>) -> Error {
    Error::InvalidArgument(msg.into())
}

/// `v` as a positive int32 kernel count.
pub(crate) fn count_i32(op: &str, name: &str, v: usize) -> Result<i32> {
    if v == 0 {
        return Err(invalid(format!("{op}: {name} is 0; it must be positive")));
    }
    i32::try_from(v).map_err(|_| invalid(format!("{op}: {name} = {v} exceeds the kernel limit {}", i32::MAX)))
}

/// `a * b` without overflow.
pub(crate) fn mul(op: &str, what: &str, a: usize, b: usize) -> Result<usize> {
    a.checked_mul(b).ok_or_else(|| invalid(format!("{op}: {what} = {a} * {b} overflows")))
}

/// A buffer must hold exactly the elements of its shape.
fn expect_len(op: &str, buf: &str, len: usize, expected: usize, shape: &str) -> Result<()> {
    if len != expected {
        return Err(invalid(format!("{op}: `{buf}` has {len} elements; its shape {shape} needs {expected}")));
    }
    Ok(())
}

/// RMSNorm: x, out `[rows, cols]`, w `[cols]`; eps finite and >= 0.
pub fn rms_norm(x_len: usize, w_len: usize, out_len: usize, rows: usize, cols: usize, eps: f32) -> Result<LfRmsNormParams> {
    const OP: &str = "rms_norm";
    let r = count_i32(OP, "rows", rows)?;
    let c = count_i32(OP, "cols", cols)?;
    if !(eps.is_finite() && eps >= 0.0) {
        return Err(invalid(format!("{OP}: eps = {eps}; it must be finite and >= 0")));
    }
    let n = mul(OP, "rows * cols", rows, cols)?;
    let shape = format!("[{rows}, {cols}]");
    expect_len(OP, "x", x_len, n, &shape)?;
    expect_len(OP, "w", w_len, cols, &format!("[{cols}]"))?;
    expect_len(OP, "out", out_len, n, &shape)?;
    Ok(LfRmsNormParams { rows: r, cols: c, eps })
}

/// RoPE: q `[rows, n_q_heads * head_dim]`, k `[rows, n_k_heads * head_dim]`, rows =
/// positions.len(); cos, sin `[max_pos, head_dim / 2]` with max_pos = cos_len / (head_dim / 2);
/// head_dim even; every position < max_pos.
pub fn rope(q_len: usize, k_len: usize, positions: &[u32], cos_len: usize, sin_len: usize, dims: RopeDims) -> Result<LfRopeParams> {
    const OP: &str = "rope";
    let RopeDims { n_q_heads, n_k_heads, head_dim } = dims;
    let rows = count_i32(OP, "rows (positions.len())", positions.len())?;
    let nq = count_i32(OP, "n_q_heads", n_q_heads)?;
    let nk = count_i32(OP, "n_k_heads", n_k_heads)?;
    let hd = count_i32(OP, "head_dim", head_dim)?;
    if head_dim % 2 != 0 {
        return Err(invalid(format!("{OP}: head_dim = {head_dim} is odd; rotate-half needs it even")));
    }
    // The kernel indexes inside one token's q and k rows with int32.
    let q_width = mul(OP, "n_q_heads * head_dim", n_q_heads, head_dim)?;
    let k_width = mul(OP, "n_k_heads * head_dim", n_k_heads, head_dim)?;
    let both = mul(OP, "(n_q_heads + n_k_heads) * head_dim", n_q_heads + n_k_heads, head_dim)?;
    count_i32(OP, "(n_q_heads + n_k_heads) * head_dim", both)?;
    let n = positions.len();
    expect_len(OP, "q", q_len, mul(OP, "rows * q width", n, q_width)?, &format!("[{n}, {n_q_heads} * {head_dim}]"))?;
    expect_len(OP, "k", k_len, mul(OP, "rows * k width", n, k_width)?, &format!("[{n}, {n_k_heads} * {head_dim}]"))?;
    let half = head_dim / 2;
    if cos_len == 0 || !cos_len.is_multiple_of(half) {
        return Err(invalid(format!("{OP}: the cos table has {cos_len} elements, not a positive multiple of head_dim / 2 = {half}")));
    }
    let max_pos = cos_len / half;
    let mp = count_i32(OP, "max_pos (cos table rows)", max_pos)?;
    expect_len(OP, "sin", sin_len, cos_len, &format!("[{max_pos}, {half}] (as cos)"))?;
    if let Some((i, &p)) = positions.iter().enumerate().find(|&(_, &p)| p as usize >= max_pos) {
        return Err(invalid(format!("{OP}: positions[{i}] = {p} is outside the tables (max_pos {max_pos})")));
    }
    Ok(LfRopeParams { rows, n_q_heads: nq, n_k_heads: nk, head_dim: hd, max_pos: mp })
}

/// A flat element-wise op: every buffer has the same positive length n. `bufs`: (name, length).
pub fn elementwise(op: &str, bufs: &[(&str, usize)]) -> Result<LfElementwiseParams> {
    let Some(&(first, n)) = bufs.first() else {
        return Err(invalid(format!("{op}: no buffers")));
    };
    if n == 0 {
        return Err(invalid(format!("{op}: `{first}` is empty; the op needs at least one element")));
    }
    for &(name, len) in &bufs[1..] {
        expect_len(op, name, len, n, &format!("[{n}] (as `{first}`)"))?;
    }
    let n = i64::try_from(n).map_err(|_| invalid(format!("{op}: {n} elements exceed the kernel limit")))?;
    Ok(LfElementwiseParams { n })
}

/// `out = silu(gate) * up`: gate, up, out `[n]`.
pub fn silu_mul(gate_len: usize, up_len: usize, out_len: usize) -> Result<LfElementwiseParams> {
    elementwise("silu_mul", &[("gate", gate_len), ("up", up_len), ("out", out_len)])
}

/// `x += y`: x, y `[n]`.
pub fn add_assign(x_len: usize, y_len: usize) -> Result<LfElementwiseParams> {
    elementwise("add_assign", &[("x", x_len), ("y", y_len)])
}

/// Embedding gather: table `[vocab, hidden]` with vocab = table_len / hidden, out
/// `[ids.len(), hidden]`, every id < vocab.
pub fn embedding(table_len: usize, hidden: usize, ids: &[u32], out_len: usize) -> Result<LfEmbeddingParams> {
    const OP: &str = "embedding";
    let h = count_i32(OP, "hidden", hidden)?;
    let n_ids = count_i32(OP, "ids.len()", ids.len())?;
    if table_len == 0 || !table_len.is_multiple_of(hidden) {
        return Err(invalid(format!("{OP}: the table has {table_len} elements, not a positive multiple of hidden = {hidden}")));
    }
    let vocab = table_len / hidden;
    let v = count_i32(OP, "vocab (table rows)", vocab)?;
    if let Some((i, &id)) = ids.iter().enumerate().find(|&(_, &id)| id as usize >= vocab) {
        return Err(invalid(format!("{OP}: ids[{i}] = {id} is outside the vocabulary ({vocab} rows)")));
    }
    let n = ids.len();
    expect_len(OP, "out", out_len, mul(OP, "ids.len() * hidden", n, hidden)?, &format!("[{n}, {hidden}]"))?;
    Ok(LfEmbeddingParams { n_ids, hidden: h, vocab: v })
}

//! ggml tensor element types and their dequantization to f32.
//!
//! Dequantization follows gguf-py (`gguf/quants.py`) operation for operation, so the f32 result
//! is bit-identical: the f16 scale is widened to f32 first, then one f32 multiply (and one f32
//! add for Q4_1). Rust never contracts `a * b + c` into an FMA, which keeps the rounding equal.

use half::{bf16, f16};
use rayon::prelude::*;

/// A ggml type id as stored in the GGUF tensor info. Unknown ids are kept (not rejected at open)
/// so that the error can name the tensor that has them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GgmlType(pub u32);

/// The types lorafleet can import.
pub const SUPPORTED_TYPES: &[GgmlType] = &[GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0, GgmlType::Q4_0, GgmlType::Q4_1];

/// (id, name, elements per block, bytes per block), from gguf-py's `GGML_QUANT_SIZES`.
const TYPE_TABLE: &[(u32, &str, u64, u64)] = &[
    (0, "F32", 1, 4),
    (1, "F16", 1, 2),
    (2, "Q4_0", 32, 18),
    (3, "Q4_1", 32, 20),
    (6, "Q5_0", 32, 22),
    (7, "Q5_1", 32, 24),
    (8, "Q8_0", 32, 34),
    (9, "Q8_1", 32, 40),
    (10, "Q2_K", 256, 84),
    (11, "Q3_K", 256, 110),
    (12, "Q4_K", 256, 144),
    (13, "Q5_K", 256, 176),
    (14, "Q6_K", 256, 210),
    (15, "Q8_K", 256, 292),
    (16, "IQ2_XXS", 256, 66),
    (17, "IQ2_XS", 256, 74),
    (18, "IQ3_XXS", 256, 98),
    (19, "IQ1_S", 256, 50),
    (20, "IQ4_NL", 32, 18),
    (21, "IQ3_S", 256, 110),
    (22, "IQ2_S", 256, 82),
    (23, "IQ4_XS", 256, 136),
    (24, "I8", 1, 1),
    (25, "I16", 1, 2),
    (26, "I32", 1, 4),
    (27, "I64", 1, 8),
    (28, "F64", 1, 8),
    (29, "IQ1_M", 256, 56),
    (30, "BF16", 1, 2),
    (34, "TQ1_0", 256, 54),
    (35, "TQ2_0", 256, 66),
    (39, "MXFP4", 32, 17),
];

impl GgmlType {
    /// f32.
    pub const F32: GgmlType = GgmlType(0);
    /// f16.
    pub const F16: GgmlType = GgmlType(1);
    /// 4-bit blocks of 32, one f16 scale.
    pub const Q4_0: GgmlType = GgmlType(2);
    /// 4-bit blocks of 32, f16 scale and minimum.
    pub const Q4_1: GgmlType = GgmlType(3);
    /// 8-bit blocks of 32, one f16 scale.
    pub const Q8_0: GgmlType = GgmlType(8);
    /// bf16.
    pub const BF16: GgmlType = GgmlType(30);

    fn entry(self) -> Option<&'static (u32, &'static str, u64, u64)> {
        TYPE_TABLE.iter().find(|e| e.0 == self.0)
    }

    /// ggml's name ("Q4_K"), or "unknown" for an id ggml does not define.
    pub fn name(self) -> &'static str {
        self.entry().map_or("unknown", |e| e.1)
    }

    /// (elements per block, bytes per block), when the id is a known ggml type.
    pub fn block_layout(self) -> Option<(u64, u64)> {
        self.entry().map(|e| (e.2, e.3))
    }

    /// Whether this importer decodes it.
    pub fn is_supported(self) -> bool {
        SUPPORTED_TYPES.contains(&self)
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.0)
    }
}

/// Elements per parallel work item: large enough to amortise rayon, a multiple of 32 (blocks).
const CHUNK: usize = 32 * 1024;

/// Dequantizes `n` elements of type `ty` from `data` into f32 (row-major in ggml's ne order).
/// `None` when `ty` is not supported or `data` does not hold exactly `n` elements; the caller
/// (which knows the tensor name) turns that into a proper error, so this never panics.
pub fn dequantize(ty: GgmlType, data: &[u8], n: usize) -> Option<Vec<f32>> {
    let (block, block_bytes) = ty.block_layout()?;
    let (block, block_bytes) = (block as usize, block_bytes as usize);
    if !ty.is_supported() || !n.is_multiple_of(block) || data.len() != (n / block).checked_mul(block_bytes)? {
        return None;
    }
    let mut out = vec![0f32; n];
    // Each CHUNK of output elements reads its own CHUNK/block blocks of input.
    let in_chunk = CHUNK / block * block_bytes;
    out.par_chunks_mut(CHUNK).zip(data.par_chunks(in_chunk)).for_each(|(o, d)| match ty {
        GgmlType::F32 => {
            for (o, b) in o.iter_mut().zip(d.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        GgmlType::F16 => {
            for (o, b) in o.iter_mut().zip(d.chunks_exact(2)) {
                *o = f16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        GgmlType::BF16 => {
            for (o, b) in o.iter_mut().zip(d.chunks_exact(2)) {
                *o = bf16::from_le_bytes([b[0], b[1]]).to_f32();
            }
        }
        GgmlType::Q8_0 => {
            // Block (34 bytes): f16 d, 32 x i8 q; x = q * d.
            for (o, b) in o.chunks_exact_mut(32).zip(d.chunks_exact(34)) {
                let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
                for (o, &q) in o.iter_mut().zip(&b[2..34]) {
                    *o = (q as i8) as f32 * d;
                }
            }
        }
        GgmlType::Q4_0 => {
            // Block (18 bytes): f16 d, 16 bytes; element j < 16 is the low nibble of byte j,
            // element j + 16 the high nibble; x = (q - 8) * d.
            for (o, b) in o.chunks_exact_mut(32).zip(d.chunks_exact(18)) {
                let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
                let (lo, hi) = o.split_at_mut(16);
                for j in 0..16 {
                    let q = b[2 + j];
                    lo[j] = d * ((q & 0x0F) as i32 - 8) as f32;
                    hi[j] = d * ((q >> 4) as i32 - 8) as f32;
                }
            }
        }
        GgmlType::Q4_1 => {
            // Block (20 bytes): f16 d, f16 m, 16 bytes; x = q * d + m, nibbles as in Q4_0.
            for (o, b) in o.chunks_exact_mut(32).zip(d.chunks_exact(20)) {
                let d = f16::from_le_bytes([b[0], b[1]]).to_f32();
                let m = f16::from_le_bytes([b[2], b[3]]).to_f32();
                let (lo, hi) = o.split_at_mut(16);
                for j in 0..16 {
                    let q = b[4 + j];
                    lo[j] = d * (q & 0x0F) as f32 + m;
                    hi[j] = d * (q >> 4) as f32 + m;
                }
            }
        }
        // Excluded by `is_supported` above.
        _ => {}
    });
    Some(out)
}

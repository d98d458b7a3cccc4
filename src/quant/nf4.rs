//! NF4 quantization, bit-exact with bitsandbytes `quantize_4bit(blocksize=64, quant_type="nf4")`
//! and `dequantize_4bit`, with and without double quantization (`compress_statistics=True`).
//!
//! Layout (bitsandbytes'): the tensor is flattened row-major and cut into blocks of 64 elements;
//! each block stores `absmax = max |x|` and each element the index of the NF4 level nearest to
//! `x * (1 / absmax)`, two indices per byte, the first element in the high nibble. Double
//! quantization stores the absmax values minus their mean (`offset`) as 8-bit indices into the
//! dynamic code, blockwise with block 256 and an f32 absmax (`nested_absmax`) per block.

use super::codes::{DYNAMIC_CODE_BITS, NF4_CODE_BITS};

/// Elements per NF4 block (bitsandbytes' default for 4-bit weights).
pub const NF4_BLOCK: usize = 64;
/// Absmax values per block of the double quantization.
pub const NESTED_BLOCK: usize = 256;

const fn table<const N: usize>(bits: [u32; N]) -> [f32; N] {
    let mut t = [0f32; N];
    let mut i = 0;
    while i < N {
        t[i] = f32::from_bits(bits[i]);
        i += 1;
    }
    t
}

/// The 16 NF4 levels, ascending.
pub const NF4_CODE: [f32; 16] = table(NF4_CODE_BITS);
/// The 256 levels of bitsandbytes' signed 8-bit dynamic code, ascending.
pub const DYNAMIC_CODE: [f32; 256] = table(DYNAMIC_CODE_BITS);

/// The per-block scales of an NF4 tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum Absmax {
    /// One f32 per block of `blocksize` elements.
    Plain(Vec<f32>),
    /// Double quantization: `absmax[b] = code[q[b]] * nested_absmax[b / nested_blocksize] + offset`.
    Double { q: Vec<u8>, offset: f32, nested_absmax: Vec<f32>, nested_blocksize: usize, code: Box<[f32; 256]> },
}

/// An NF4-quantized tensor of `shape` (row-major), as bitsandbytes stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct Nf4Tensor {
    pub shape: Vec<usize>,
    pub blocksize: usize,
    /// `ceil(numel / 2)` bytes; element `2i` in the high nibble of byte `i`.
    pub packed: Vec<u8>,
    pub absmax: Absmax,
    /// The 16 levels (bitsandbytes stores them with the tensor; always `NF4_CODE` when quantized here).
    pub code: [f32; 16],
}

/// Nearest level of an ascending `code` (ties to the lower index, as `torch.argmin` picks the first).
fn nearest(code: &[f32], v: f32) -> usize {
    let mut best = 0;
    let mut best_d = f32::INFINITY;
    for (i, &c) in code.iter().enumerate() {
        let d = (v - c).abs();
        if d < best_d {
            best = i;
            best_d = d;
        }
    }
    best
}

/// bitsandbytes blockwise quantization to an ascending `code`: per block `absmax = max |x|`,
/// then each `clamp(x * (1 / absmax), -1, 1)` to the nearest level. Returns (indices, absmax).
/// An all-zero block has absmax 0 and maps its elements (NaN after the scale) to index 0, as
/// `argmin` over NaN distances does.
fn quantize_blocks(x: &[f32], blocksize: usize, code: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let mut idx = Vec::with_capacity(x.len());
    let mut absmax = Vec::with_capacity(x.len().div_ceil(blocksize));
    for block in x.chunks(blocksize) {
        let m = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        // bitsandbytes multiplies by the f32 reciprocal (not a division): it rounds differently.
        let inv = 1.0 / m;
        absmax.push(m);
        idx.extend(block.iter().map(|&v| nearest(code, (v * inv).clamp(-1.0, 1.0)) as u8));
    }
    (idx, absmax)
}

impl Nf4Tensor {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Quantizes `data` (row-major, `shape`) like `quantize_4bit(blocksize=64, quant_type="nf4",
    /// compress_statistics=double)`.
    pub fn quantize(data: &[f32], shape: &[usize], double: bool) -> Self {
        debug_assert_eq!(data.len(), shape.iter().product::<usize>());
        let (idx, absmax) = quantize_blocks(data, NF4_BLOCK, &NF4_CODE);
        let packed = idx.chunks(2).map(|p| (p[0] << 4) | p.get(1).copied().unwrap_or(0)).collect();
        let absmax = if double { double_quantize(&absmax) } else { Absmax::Plain(absmax) };
        Nf4Tensor { shape: shape.to_vec(), blocksize: NF4_BLOCK, packed, absmax, code: NF4_CODE }
    }

    /// The f32 absmax of every block (double quantization undone as bitsandbytes does it).
    pub fn block_absmax(&self) -> Vec<f32> {
        match &self.absmax {
            Absmax::Plain(a) => a.clone(),
            Absmax::Double { q, offset, nested_absmax, nested_blocksize, code } => q
                .iter()
                .enumerate()
                .map(|(i, &c)| code[c as usize] * nested_absmax[i / nested_blocksize] + offset)
                .collect(),
        }
    }

    /// The level index of element `i`.
    #[inline]
    pub fn index(&self, i: usize) -> u8 {
        let b = self.packed[i / 2];
        if i & 1 == 0 {
            b >> 4
        } else {
            b & 0xf
        }
    }

    /// Dequantizes the whole tensor: `code[q] * absmax[block]` (f32, like bitsandbytes).
    pub fn dequantize(&self) -> Vec<f32> {
        let absmax = self.block_absmax();
        (0..self.numel()).map(|i| self.code[self.index(i) as usize] * absmax[i / self.blocksize]).collect()
    }

    /// Checks that the stored arrays have the lengths `shape` and `blocksize` imply (for tensors
    /// read from files). Returns a message naming the first inconsistency.
    pub fn validate(&self) -> Result<(), String> {
        let n = self.numel();
        if self.blocksize == 0 {
            return Err("blocksize 0".into());
        }
        if self.packed.len() != n.div_ceil(2) {
            return Err(format!("{} packed bytes for {n} elements (need {})", self.packed.len(), n.div_ceil(2)));
        }
        let blocks = n.div_ceil(self.blocksize);
        let (len, nested) = match &self.absmax {
            Absmax::Plain(a) => (a.len(), None),
            Absmax::Double { q, nested_absmax, nested_blocksize, .. } => (q.len(), Some((nested_absmax.len(), *nested_blocksize))),
        };
        if len != blocks {
            return Err(format!("{len} absmax values for {blocks} blocks of {}", self.blocksize));
        }
        if let Some((nl, nb)) = nested {
            if nb == 0 || nl != blocks.div_ceil(nb) {
                return Err(format!("{nl} nested absmax values for {blocks} absmax values in blocks of {nb}"));
            }
        }
        Ok(())
    }
}

/// bitsandbytes' `compress_statistics`: `offset = mean(absmax)`, then `absmax - offset`
/// quantized blockwise (256) to the signed dynamic code.
fn double_quantize(absmax: &[f32]) -> Absmax {
    // torch's float32 mean sums pairwise; an f64 sum rounded once agrees to the last bit or so.
    let offset = (absmax.iter().map(|&a| a as f64).sum::<f64>() / absmax.len().max(1) as f64) as f32;
    let centred: Vec<f32> = absmax.iter().map(|&a| a - offset).collect();
    let (q, nested_absmax) = quantize_blocks(&centred, NESTED_BLOCK, &DYNAMIC_CODE);
    Absmax::Double { q, offset, nested_absmax, nested_blocksize: NESTED_BLOCK, code: Box::new(DYNAMIC_CODE) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_high_nibble_first_and_round_trips_levels() {
        // Each element is exactly a level times the block absmax (1.0): dequantize is exact.
        let data: Vec<f32> = (0..130).map(|i| NF4_CODE[(i * 7) % 16]).collect();
        let t = Nf4Tensor::quantize(&data, &[130], false);
        assert_eq!(t.packed.len(), 65);
        assert_eq!(t.packed[0], 0x07); // elements 0 (index 0) and 1 (index 7)
        assert_eq!(t.dequantize(), data);
        assert!(t.validate().is_ok());
    }

    #[test]
    fn zero_block_dequantizes_to_zero() {
        let t = Nf4Tensor::quantize(&[0.0; 64], &[64], true);
        assert!(t.dequantize().iter().all(|v| *v == 0.0));
    }
}

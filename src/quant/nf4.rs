//! NF4 quantization, bit-exact with bitsandbytes 0.50 on the CPU `quantize_4bit(blocksize=64,
//! quant_type="nf4")` and `dequantize_4bit`, with and without double quantization
//! (`compress_statistics=True`).
//!
//! Layout (bitsandbytes'): the tensor is flattened row-major and cut into blocks of 64 elements;
//! each block stores `absmax = max |x|` and each element the index of the NF4 level nearest to
//! `x * (1 / absmax)`, two indices per byte, the first element in the high nibble. Double
//! quantization stores the absmax values minus their mean (`offset`) as 8-bit indices into the
//! dynamic code, blockwise with block 256 and an f32 absmax (`nested_absmax`) per block.

use super::codes::{DYNAMIC_CODE_BITS, NF4_CODE_BITS};
use super::torch_sum::torch_mean_f32;

/// Elements per NF4 block (bitsandbytes' default for 4-bit weights).
pub const NF4_BLOCK: usize = 64;
/// Absmax values per block of the double quantization.
pub const NESTED_BLOCK: usize = 256;
/// The index of the NF4 level 0.0.
const NF4_ZERO_INDEX: u8 = 7;

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
    Double {
        /// One 8-bit code per block.
        q: Vec<u8>,
        /// Added to every decoded scale (bitsandbytes' `offset`, the mean it subtracted).
        offset: f32,
        /// One f32 scale per `nested_blocksize` codes.
        nested_absmax: Vec<f32>,
        /// Codes per nested scale (256 in bitsandbytes).
        nested_blocksize: usize,
        /// The 256-entry dynamic code that `q` indexes.
        code: Box<[f32; 256]>,
    },
}

/// An NF4-quantized tensor of `shape` (row-major), as bitsandbytes stores it.
#[derive(Debug, Clone, PartialEq)]
pub struct Nf4Tensor {
    /// The tensor's shape.
    pub shape: Vec<usize>,
    /// Elements per absmax scale.
    pub blocksize: usize,
    /// `ceil(numel / 2)` bytes; element `2i` in the high nibble of byte `i`.
    pub packed: Vec<u8>,
    /// The scales.
    pub absmax: Absmax,
    /// The 16 levels (bitsandbytes stores them with the tensor; always `NF4_CODE` when quantized here).
    pub code: [f32; 16],
}

/// bitsandbytes 0.50 `quantize_4bit` (its default backend, which the CPU uses): per block
/// `absmax = max |x|`; `scaled = clamp(x * (1 / max(absmax, 1e-38)), -1, 1)` (a multiply by the f32
/// reciprocal, which rounds differently from a division); the index is the number of midpoints
/// `(code[i] + code[i + 1]) / 2` strictly below `scaled` (`torch.bucketize`, so a value exactly on
/// a midpoint takes the lower level). A trailing partial block divides by its absmax instead, and
/// stores it clamped to 1e-38. An all-zero full block stores absmax 0 and the index of level 0.0.
fn quantize_nf4_blocks(x: &[f32], blocksize: usize, code: &[f32; 16]) -> (Vec<u8>, Vec<f32>) {
    let mids: [f32; 15] = std::array::from_fn(|i| (code[i] + code[i + 1]) * 0.5);
    let bucket = |v: f32| mids.partition_point(|&m| m < v) as u8;
    let mut idx = Vec::with_capacity(x.len());
    let mut absmax = Vec::with_capacity(x.len().div_ceil(blocksize));
    for block in x.chunks(blocksize) {
        let m = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        if block.len() == blocksize {
            let inv = 1.0 / m.max(1e-38);
            absmax.push(m);
            idx.extend(block.iter().map(|&v| bucket((v * inv).clamp(-1.0, 1.0))));
        } else {
            let m = m.max(1e-38);
            absmax.push(m);
            idx.extend(block.iter().map(|&v| bucket((v / m).clamp(-1.0, 1.0))));
        }
    }
    (idx, absmax)
}

/// Entries of the lookup table bitsandbytes' CPU `quantize_blockwise` maps a scaled value through.
const DYNAMIC_LUT_SIZE: usize = 65536;

/// bitsandbytes 0.50's CPU 8-bit quantizer (`quantize_cpu`, which double quantization calls) does
/// not search the code for the nearest level: it cuts [-1, 1] into 65536 bins and maps each bin
/// to a level once. Bin `i` stands for `(2i) / 65535 - 1` and takes the first level whose upper
/// midpoint `(code[c] + code[c + 1]) * 0.5` is not below that value, so values within about half
/// a bin (1.5e-5) of a midpoint can get the farther level; reproducing the table reproduces
/// bitsandbytes' codes exactly.
fn dynamic_lut() -> &'static [u8] {
    static LUT: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    LUT.get_or_init(|| {
        let mids: Vec<f32> = DYNAMIC_CODE.windows(2).map(|w| (w[0] + w[1]) * 0.5).collect();
        let mut c = 0usize;
        (0..DYNAMIC_LUT_SIZE)
            .map(|i| {
                let v = (i as f32 + i as f32) / (DYNAMIC_LUT_SIZE - 1) as f32 - 1.0;
                while c < mids.len() && v > mids[c] {
                    c += 1;
                }
                c as u8
            })
            .collect()
    })
}

/// bitsandbytes 0.50 CPU `quantize_blockwise` (f32 input) to the dynamic code: per block
/// `absmax = max |x|`, `v = clamp(x * (1 / absmax), -1, 1)`, bin `trunc(fma((v + 1) * 0.5, 65535,
/// 0.5))` (the library's compiled code contracts the last multiply-add into one FMA, and the FMA
/// rounds once: `f32::mul_add` does the same), level `dynamic_lut()[bin]`. An all-zero block stores
/// absmax 0 and index 0. Returns (indices, absmax).
fn quantize_dynamic_blocks(x: &[f32], blocksize: usize) -> (Vec<u8>, Vec<f32>) {
    let lut = dynamic_lut();
    let mut idx = Vec::with_capacity(x.len());
    let mut absmax = Vec::with_capacity(x.len().div_ceil(blocksize));
    for block in x.chunks(blocksize) {
        let m = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        absmax.push(m);
        if m == 0.0 {
            idx.extend(std::iter::repeat_n(0u8, block.len()));
            continue;
        }
        let inv = 1.0 / m;
        idx.extend(block.iter().map(|&v| {
            let t = ((v * inv).clamp(-1.0, 1.0) + 1.0) * 0.5;
            // The library converts with truncation to i32 and keeps the low 16 bits.
            lut[(t.mul_add((DYNAMIC_LUT_SIZE - 1) as f32, 0.5) as i32 as u16) as usize]
        }));
    }
    (idx, absmax)
}

impl Nf4Tensor {
    /// Elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// Quantizes `data` (row-major, `shape`) like `quantize_4bit(blocksize=64, quant_type="nf4",
    /// compress_statistics=double)`.
    pub fn quantize(data: &[f32], shape: &[usize], double: bool) -> Self {
        debug_assert_eq!(data.len(), shape.iter().product::<usize>());
        let (idx, absmax) = quantize_nf4_blocks(data, NF4_BLOCK, &NF4_CODE);
        // An odd element count pads with 0.0 before packing, as bitsandbytes does (index 7).
        let packed = idx.chunks(2).map(|p| (p[0] << 4) | p.get(1).copied().unwrap_or(NF4_ZERO_INDEX)).collect();
        let absmax = if double { double_quantize(&absmax) } else { Absmax::Plain(absmax) };
        Nf4Tensor { shape: shape.to_vec(), blocksize: NF4_BLOCK, packed, absmax, code: NF4_CODE }
    }

    /// The f32 absmax of every block (double quantization undone as bitsandbytes does it).
    pub fn block_absmax(&self) -> Vec<f32> {
        match &self.absmax {
            Absmax::Plain(a) => a.clone(),
            Absmax::Double { q, offset, nested_absmax, nested_blocksize, code } => {
                q.iter().enumerate().map(|(i, &c)| code[c as usize] * nested_absmax[i / nested_blocksize] + offset).collect()
            }
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
/// quantized blockwise (256) to the signed dynamic code by the CPU quantizer
/// (`quantize_dynamic_blocks`).
fn double_quantize(absmax: &[f32]) -> Absmax {
    let offset = torch_mean_f32(absmax);
    let centred: Vec<f32> = absmax.iter().map(|&a| a - offset).collect();
    let (q, nested_absmax) = quantize_dynamic_blocks(&centred, NESTED_BLOCK);
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
    fn odd_partial_tensor_packs_like_bitsandbytes() {
        // bitsandbytes 0.50.2, quantize_4bit([0.5, -1.0, 0.25], blocksize=64, nf4): packed
        // [0xc0, 0xa7] (the pad element is 0.0, level 7), absmax [1.0].
        let t = Nf4Tensor::quantize(&[0.5, -1.0, 0.25], &[3], false);
        assert_eq!(t.packed, [0xc0, 0xa7]);
        assert_eq!(t.absmax, Absmax::Plain(vec![1.0]));
    }

    #[test]
    fn zero_block_dequantizes_to_zero() {
        let t = Nf4Tensor::quantize(&[0.0; 64], &[64], true);
        assert!(t.dequantize().iter().all(|v| *v == 0.0));
        // bitsandbytes: index of level 0.0 (7) in both nibbles.
        assert!(t.packed.iter().all(|&b| b == 0x77));
    }

    #[test]
    fn nested_codes_follow_the_bitsandbytes_lookup_table_not_the_nearest_level() {
        // From the t1 golden: 0.083126396 lies 1.4e-6 above the midpoint 0.083125 of levels 184
        // (0.08171876) and 185 (0.08453125), inside the bin that bitsandbytes' table maps to 184.
        let v = 0.083126396f32;
        let (q, absmax) = quantize_dynamic_blocks(&[1.0, v, -1.0, 0.0], NESTED_BLOCK);
        assert_eq!(absmax, [1.0]);
        assert!((DYNAMIC_CODE[185] - v).abs() < (DYNAMIC_CODE[184] - v).abs(), "185 is the nearest level");
        // 0.0 falls in bin 32768, which stands for 1.5e-5 and takes level 131 (3.05e-5), not the
        // exact zero at 127 (checked against bitsandbytes 0.50.2's own quantize_blockwise).
        assert_eq!(q, [255, 184, 0, 131]);
    }
}

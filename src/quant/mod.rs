//! Weight quantization: bitsandbytes-compatible NF4 (`nf4`), its code tables (`codes`) and
//! bitsandbytes' own safetensors serialization of a 4-bit weight (`bnb`).

pub mod bnb;
pub mod codes;
pub mod nf4;
pub mod torch_sum;

pub use nf4::{Absmax, Nf4Tensor, NESTED_BLOCK, NF4_BLOCK};

/// A quantization applied to the decoder's linear weights while loading a dense checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantization {
    /// bitsandbytes NF4, block 64, double-quantized absmax (as QLoRA and `quantize` write it).
    Nf4,
}

impl std::str::FromStr for Quantization {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "nf4" => Ok(Quantization::Nf4),
            other => Err(format!("unknown quantization `{other}` (supported: nf4)")),
        }
    }
}

//! Weight quantization: bitsandbytes-compatible NF4 (`nf4`), its code tables (`codes`) and
//! bitsandbytes' own safetensors serialization of a 4-bit weight (`bnb`).

pub mod bnb;
pub mod codes;
pub mod nf4;

pub use nf4::{Absmax, Nf4Tensor, NF4_BLOCK, NESTED_BLOCK};

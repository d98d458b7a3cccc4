//! Backends: `cpu` (the reference) and `cuda` (the kernels).

pub mod cpu;
pub mod cuda;

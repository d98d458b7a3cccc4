//! CUDA backend (placeholder; replaced by the kernel-side work).

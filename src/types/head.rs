//! How the lm_head is held (`--lm-head`), a choice every backend understands.

/// How the lm_head is held for serving (`--lm-head`). A decode step reads the whole head: on
/// SmolLM2 the f32 head (49,152 × 576, 113 MB) is twice the bytes of all 30 NF4 layers. The
/// embedding table the inputs are gathered from stays f32 (a tied head gets its own copy in the
/// smaller format). The trainer's head stays f32 (its cross-entropy reads f32 rows).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeadFormat {
    /// f32 as loaded: logits exactly as the reference computes them.
    #[default]
    F32,
    /// Rounded to bf16: half the bytes (what llama.cpp's BF16 files hold).
    Bf16,
    /// 8-bit codes with an f32 scale per 32 values (llama.cpp's Q8_0 layout, what its Q4_0
    /// files hold for a tied head): 28% of the bytes. CPU only.
    Q8,
}

impl std::str::FromStr for HeadFormat {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(HeadFormat::F32),
            "bf16" => Ok(HeadFormat::Bf16),
            "q8" => Ok(HeadFormat::Q8),
            other => Err(format!("unknown lm_head format `{other}` (supported: f32, bf16, q8)")),
        }
    }
}

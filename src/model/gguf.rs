//! GGUF import (placeholder; replaced by the importer).

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("{0}")]
    Other(String),
}

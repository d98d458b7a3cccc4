#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("out of KV blocks")]
    OutOfBlocks,
}

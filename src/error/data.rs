//! `DataError`: a bad training or evaluation data file (`data`).

use std::fmt;
use std::path::PathBuf;

/// A bad data file: which file, which line (1-based) when known, and what is wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct DataError {
    /// The file.
    pub path: PathBuf,
    /// The line, where one is to blame (1-based).
    pub line: Option<usize>,
    /// What is wrong.
    pub msg: String,
}

impl DataError {
    /// An error in `path` at `line`.
    pub fn new(path: impl Into<PathBuf>, line: Option<usize>, msg: String) -> Self {
        DataError { path: path.into(), line, msg }
    }
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "{}:{l}: {}", self.path.display(), self.msg),
            None => write!(f, "{}: {}", self.path.display(), self.msg),
        }
    }
}

impl std::error::Error for DataError {}

//! Start-up, written once for every verb of both CLIs and for the server: size the CPU pool
//! (`set_threads`), check the model folder (`check_model_dir`), open the device `--device` names
//! (`backend::device::open_backend`), and load the model and its tokenizer once on it (`load`,
//! giving a `Loaded`). Running a verb on the CPU pool's thread (`backend::cpu::on_pool`) is the
//! caller's choice: a one-shot verb does (its ops split in place), the server does not (its
//! engine thread enters the pool for each step, `Backend::run_step`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::backend::Backend;
use crate::model::random::RandomModel;
use crate::model::{BaseFormat, HeadFormat, Llama, LoadOptions};
use crate::{Error, Result, TextTokenizer};

/// Where the weights come from and how they are held.
#[derive(Debug, Clone)]
pub struct ModelSource {
    /// The model folder (with `random`, only its tokenizer is read).
    pub dir: PathBuf,
    /// How the linear weights are held.
    pub format: BaseFormat,
    /// How the lm_head is held.
    pub head: HeadFormat,
    /// Seeded random weights of a known shape instead of the folder's checkpoint.
    pub random: Option<RandomModel>,
    /// A progress bar while the weights load.
    pub progress: bool,
}

/// A model and its tokenizer, loaded on a backend.
pub struct Loaded<B: Backend> {
    /// The backend.
    pub be: Arc<B>,
    /// The model.
    pub model: Llama<B>,
    /// Its tokenizer.
    pub tok: TextTokenizer,
}

/// Sizes the global CPU pool (`--threads`): at least 1; call before anything uses the pool.
pub fn set_threads(threads: Option<usize>) -> Result<()> {
    if let Some(n) = threads {
        if n == 0 {
            return Err(Error::InvalidArgument("threads must be at least 1 (option `threads`)".into()));
        }
        // Fails only if the pool was already built, which cannot happen this early.
        let _ = rayon::ThreadPoolBuilder::new().num_threads(n).build_global();
    }
    Ok(())
}

/// `--model` must be a folder (checked before any device opens: a bad flag is one error line).
pub fn check_model_dir(dir: &Path) -> Result<()> {
    if !dir.is_dir() {
        return Err(Error::InvalidArgument(format!(
            "model folder {} (option `model_dir`): not a directory (get one with `lorafleet fetch-model smollm2-135m-instruct`)",
            dir.display()
        )));
    }
    Ok(())
}

/// Loads the tokenizer and the model on `be`, and refuses a tokenizer that cannot encode text
/// into the model's vocabulary (it would fail every request).
pub fn load<B: Backend>(be: B, src: &ModelSource) -> Result<Loaded<B>> {
    let tok = TextTokenizer::from_dir(&src.dir)?;
    let model = match &src.random {
        Some(r) => r.load(&be, src.format, src.progress)?,
        None => Llama::load_with(&be, &src.dir, LoadOptions { format: src.format, head: src.head, progress: src.progress })?,
    };
    crate::model::check::tokenizer_in(&src.dir, &tok, src.random.is_none().then_some(model.config.vocab_size))?;
    Ok(Loaded { be: Arc::new(be), model, tok })
}

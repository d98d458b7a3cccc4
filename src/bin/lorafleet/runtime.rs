//! What every verb that runs the model does first: check the model flags, open the device
//! `--device` names, load the model and tokenizer once (`Loaded`), and run the verb on the
//! device's thread (`on_device!`: on the CPU, a thread of the compute pool).

use std::io::IsTerminal;
use std::sync::Arc;

use lorafleet::backend::Backend;
use lorafleet::model::Llama;
use lorafleet::{Error, Result, TextTokenizer};

use super::args::ModelArgs;

/// Opens the backend `--device` names, loads the model on it (then says which device on stderr) and runs
/// `$body` with `$l` bound to the `Loaded` model, generic over the backend.
macro_rules! on_device {
    ($m:expr, |$l:ident| $body:expr) => {{
        check_model_args($m)?;
        let (opened, note) = open_backend($m.device, $m.act_dtype, !$m.no_cuda_graphs)?;
        // Said once the model is on the device (a load error stays one line).
        match opened {
            // On a thread of the CPU pool: each op's parallel loop is split in place rather than
            // handed from this thread to the pool and waited on (backend::cpu::on_pool).
            OpenedBackend::Cpu(be) => lorafleet::backend::cpu::on_pool(|| {
                let $l = load($m, be)?;
                eprintln!("{note}");
                $body
            }),
            OpenedBackend::Cuda(be) => {
                let $l = load($m, be)?;
                eprintln!("{note}");
                $body
            }
        }
    }};
}

pub(crate) struct Loaded<B: Backend> {
    pub(crate) be: Arc<B>,
    pub(crate) model: Llama<B>,
    pub(crate) tok: TextTokenizer,
}

/// Checks `--threads` and `--model` (before any device is opened, so a bad flag is one error
/// line) and sizes the CPU thread pool.
pub(crate) fn check_model_args(m: &ModelArgs) -> Result<()> {
    if let Some(n) = m.threads {
        if n == 0 {
            return Err(Error::InvalidArgument("--threads must be at least 1".into()));
        }
        // Fails only if the pool was already built, which cannot happen this early.
        let _ = rayon::ThreadPoolBuilder::new().num_threads(n).build_global();
    }
    m.random()?;
    if !m.model.is_dir() {
        return Err(Error::InvalidArgument(format!(
            "--model {}: not a directory (get one with `lorafleet fetch-model smollm2-135m-instruct`)",
            m.model.display()
        )));
    }
    Ok(())
}

pub(crate) fn load<B: Backend>(m: &ModelArgs, be: B) -> Result<Loaded<B>> {
    let tok = TextTokenizer::from_dir(&m.model)?;
    let opts = lorafleet::model::LoadOptions { format: m.format(), head: m.lm_head, progress: std::io::stderr().is_terminal() };
    let random = m.random()?;
    let model = match &random {
        Some(r) => r.load(&be, opts.format, opts.progress)?,
        None => Llama::load_with(&be, &m.model, opts)?,
    };
    lorafleet::model::check::tokenizer_in(&m.model, &tok, random.is_none().then_some(model.config.vocab_size))?;
    Ok(Loaded { be: Arc::new(be), model, tok })
}


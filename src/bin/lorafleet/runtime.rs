//! What every verb that runs the model does first: check the model flags, open the device
//! `--device` names, load the model and tokenizer once (`lorafleet::runtime`), and run the verb
//! on the device's thread (`on_device!`: on the CPU, a thread of the compute pool).

use std::io::IsTerminal;

use lorafleet::backend::Backend;
use lorafleet::Result;

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

pub(crate) use lorafleet::runtime::Loaded;

/// Checks `--threads`, `--random-weights` and `--model` (before any device is opened, so a bad
/// flag is one error line) and sizes the CPU thread pool.
pub(crate) fn check_model_args(m: &ModelArgs) -> Result<()> {
    lorafleet::runtime::set_threads(m.threads)?;
    m.random()?;
    lorafleet::runtime::check_model_dir(&m.model)
}

pub(crate) fn load<B: Backend>(m: &ModelArgs, be: B) -> Result<Loaded<B>> {
    let src = lorafleet::runtime::ModelSource {
        dir: m.model.clone(),
        format: m.format(),
        head: m.lm_head,
        random: m.random()?,
        progress: std::io::stderr().is_terminal(),
    };
    lorafleet::runtime::load(be, &src)
}

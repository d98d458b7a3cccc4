//! The lorafleet command line: generate, score, convert, quantize, fetch-model, fetch-data, eval,
//! serve, bench. The flags are in `args`, the verbs in `verbs` and `bench`.

use std::io::IsTerminal;
use std::process::ExitCode;

use lorafleet::model::fetch;
use lorafleet::model::gguf::{convert_gguf, OutDType};
use lorafleet::{Error, Result};

mod args;
#[macro_use]
mod runtime;
mod bench;
mod verbs;

use args::*;
use bench::{bench, decode_bench};
use verbs::{eval, fetch_data, generate, score};

fn main() -> ExitCode {
    // Before anything else: restart with a heap of 2 MiB pages where the kernel offers them,
    // then keep freed activation buffers in the process (src/heap.rs).
    lorafleet::heap::restart_with_huge_pages();
    lorafleet::heap::keep_freed_memory();
    let cli: Cli = lorafleet::cli_env::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", lorafleet::cli_flags::with_flag_names(&e.to_string()));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Command::Generate(a) => generate(a),
        Command::Score(a) => score(a),
        Command::Convert(a) => {
            let dtype: OutDType = a.dtype.parse().map_err(|e| Error::InvalidArgument(format!("--dtype: {e}")))?;
            convert_gguf(&a.gguf, &a.out, dtype, std::io::stderr().is_terminal())?;
            eprintln!("wrote {}", a.out.display());
            Ok(())
        }
        Command::Quantize(a) => {
            lorafleet::model::quantize::quantize_dir(&a.model, &a.out, std::io::stderr().is_terminal())?;
            eprintln!("wrote {}", a.out.display());
            Ok(())
        }
        Command::FetchModel(a) => {
            let out = a.out.unwrap_or_else(|| fetch::default_model_dir(&a.name));
            let dir = fetch::fetch_model(&a.name, &out, std::io::stderr().is_terminal())?;
            println!("{}", dir.display());
            Ok(())
        }
        Command::FetchData(a) => fetch_data(a),
        Command::Eval(a) => eval(a),
        Command::Serve(a) => lorafleet::server::serve(a.into_options()?),
        Command::Bench(a) => bench(a),
        Command::DecodeBench(a) => decode_bench(a),
    }
}

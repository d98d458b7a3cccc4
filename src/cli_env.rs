//! Every command-line option can also come from the environment, as servers in containers are
//! configured: `--kv-cache-bytes` from `LORAFLEET_KV_CACHE_BYTES`, `--api-key` from
//! `LORAFLEET_API_KEY`, and so on (the flag wins over the variable). Both CLIs (`lorafleet` and
//! `lorafleet-train`) build their parser through `with_env_vars`, so no option is left out and
//! `--help` shows each variable.

/// The variable an option reads: `LORAFLEET_` and its id in upper case, `-` as `_`.
pub fn env_name(id: &str) -> String {
    format!("LORAFLEET_{}", id.to_ascii_uppercase().replace('-', "_"))
}

/// `cmd` with `env(env_name(id))` on every named option of it and of its subcommands
/// (positionals, `--help` and `--version` excepted).
pub fn with_env_vars(cmd: clap::Command) -> clap::Command {
    cmd.mut_args(|a| {
        let id = a.get_id().as_str().to_string();
        if a.is_positional() || id == "help" || id == "version" {
            a
        } else {
            // clap keeps `&'static str` names: one small leak per option, once per process.
            let name: &'static str = Box::leak(env_name(&id).into_boxed_str());
            a.env(name)
        }
    })
    .mut_subcommands(with_env_vars)
}

/// Parses the process's arguments (and the environment) into `T`; on a bad command line,
/// prints clap's message and exits, as `Parser::parse` does.
///
/// `--version` also says which CPU kernels run (`backend::cpu::isa::summary`).
pub fn parse<T: clap::Parser>() -> T {
    let mut cmd = T::command();
    if let Some(v) = cmd.get_version() {
        let v: &'static str = Box::leak(format!("{v}\n{}", crate::backend::cpu::isa::summary()).into_boxed_str());
        cmd = cmd.version(v);
    }
    let m = with_env_vars(cmd).get_matches();
    T::from_arg_matches(&m).unwrap_or_else(|e| e.exit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        cmd: Cmd,
    }

    #[derive(clap::Subcommand, Debug)]
    enum Cmd {
        Serve {
            #[arg(long)]
            kv_cache_bytes: Option<String>,
            #[arg(long)]
            no_cuda_graphs: bool,
            file: Option<String>,
        },
    }

    #[test]
    fn every_option_of_every_subcommand_reads_its_variable() {
        let cmd = with_env_vars(Cli::command());
        let serve = cmd.find_subcommand("serve").unwrap();
        let env = |id: &str| serve.get_arguments().find(|a| a.get_id() == id).and_then(|a| a.get_env()).map(|e| e.to_string_lossy().into_owned());
        assert_eq!(env("kv_cache_bytes").as_deref(), Some("LORAFLEET_KV_CACHE_BYTES"));
        assert_eq!(env("no_cuda_graphs").as_deref(), Some("LORAFLEET_NO_CUDA_GRAPHS"));
        assert_eq!(env("file"), None, "positionals take no variable");
        assert_eq!(env_name("max-queued-requests"), "LORAFLEET_MAX_QUEUED_REQUESTS");
    }
}

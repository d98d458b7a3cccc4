//! lorafleet-train: the QLoRA trainer (a skeleton; the trainer issue fills it in: backward
//! passes, AdamW, checkpoints, `gradients`).

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "lorafleet-train",
    version,
    about = "QLoRA trainer for lorafleet (not implemented yet: this binary only reports its version)"
)]
struct Cli {}

fn main() {
    let _ = Cli::parse();
    eprintln!("lorafleet-train {}: the trainer is not implemented yet", env!("CARGO_PKG_VERSION"));
    std::process::exit(2);
}

//! `cargo xtask bench log` (being written).

use clap::Args;

/// Options of the log benchmark.
#[derive(Args)]
pub struct LogArgs {}

/// Runs the log benchmark.
pub fn run(_args: LogArgs) -> bool {
    eprintln!("not implemented yet");
    false
}

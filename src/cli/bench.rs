//! `echoloop bench`.

use std::process::ExitCode;

use super::CliError;

/// Arguments of `echoloop bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {}

/// Runs the load generator.
pub fn run(_args: BenchArgs) -> Result<ExitCode, CliError> {
    Err("bench is not built yet".into())
}

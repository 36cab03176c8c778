//! `echoloop client`.

use std::process::ExitCode;

use super::CliError;

/// Arguments of `echoloop client`.
#[derive(Debug, clap::Args)]
pub struct ClientArgs {}

/// Runs the client.
pub fn run(_args: ClientArgs) -> Result<ExitCode, CliError> {
    Err("client is not built yet".into())
}

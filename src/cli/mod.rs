//! The `echoloop` command line: argument parsing and printing only. Each subcommand is a
//! thin layer over the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// `eprintln!` that cannot panic: a server whose stderr is a closed pipe (`serve 2>&1 |
/// head`) keeps serving instead of dying with "failed printing to stderr". What cannot
/// be written is lost, as a terminal that went away would lose it.
macro_rules! errln {
    () => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr());
    }};
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod activation;
pub mod bench;
pub mod client;
mod common;
mod live;
mod metrics;
pub mod report;
pub mod serve;
pub mod units;

pub use common::{CliError, Transport, idle_strategy, init_logging, parse_level};

/// Non-blocking echo servers, clients and load generator over TCP, UDP, TLS and Unix sockets.
#[derive(Debug, Parser)]
#[command(name = "echoloop", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve echo on TCP, UDP, TLS and Unix sockets (defaults: tcp 127.0.0.1:8881, udp 127.0.0.1:8883).
    Serve(serve::ServeArgs),
    /// Send messages and check their echo.
    Client(client::ClientArgs),
    /// Generate echo load and report throughput and latency.
    Bench(bench::BenchArgs),
}

/// Parses the command line and runs the subcommand; errors are printed as one line.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(a) => serve::run(a),
        Command::Client(a) => client::run(a),
        Command::Bench(a) => bench::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            errln!("echoloop: error: {e}");
            ExitCode::FAILURE
        }
    }
}

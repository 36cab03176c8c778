//! The `echoloop` command line: argument parsing and printing only. Each subcommand is a
//! thin layer over the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// `eprintln!` that cannot panic and never blocks: the line goes to stderr through
/// [`outlet`], written by a thread of its own, so a server whose stderr is a pipe nobody
/// reads keeps serving (and one whose stderr is a closed pipe, `serve 2>&1 | head`, does
/// not die with "failed printing to stderr"). What cannot be written is lost and counted.
macro_rules! errln {
    () => {{
        $crate::cli::outlet::line(String::new());
    }};
    ($($arg:tt)*) => {{
        $crate::cli::outlet::line(format!($($arg)*));
    }};
}

pub mod bench;
pub mod client;
mod common;
pub mod outlet;
pub mod procfs;
pub mod serve;
pub mod units;

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
    // Boxed, as bench: the variants differ in size by hundreds of bytes.
    Serve(Box<serve::ServeArgs>),
    /// Send messages and check their echo.
    Client(client::ClientArgs),
    /// Generate echo load and report throughput and latency.
    // Boxed: bench has by far the most options, and the parsed command is moved around.
    Bench(Box<bench::BenchArgs>),
}

/// Parses the command line and runs the subcommand; errors are printed as one line.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(a) => serve::run(*a),
        Command::Client(a) => client::run(a),
        Command::Bench(a) => bench::run(*a),
    };
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            errln!("echoloop: error: {e}");
            ExitCode::FAILURE
        }
    };
    // The last lines (a final summary, the error) are written before the process ends.
    outlet::drain();
    code
}

//! `echoloop`: see `echoloop --help`. The command line is a client of the library: its
//! modules (`cli`) belong to this binary, and use only the library's public API.

mod cli;
// The property tests' settings, shared with the library's tests (the same file).
#[cfg(test)]
mod test_support;

fn main() -> std::process::ExitCode {
    cli::main()
}

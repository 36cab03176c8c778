//! `echoloop`: see `echoloop --help`. All the work is in the library.

fn main() -> std::process::ExitCode {
    echoloop::cli::main()
}

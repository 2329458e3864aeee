//! The `transum` binary: parse arguments, set up logging, call the library, and
//! map errors to exit codes (0 ok, 1 some inputs failed, 2 setup error).

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    transum::device::tune_allocator();
    let args = cli::Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(if args.verbose { "info" } else { "warn" })
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

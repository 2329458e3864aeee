//! The `transum` binary: parse arguments, set up logging, call the library, and
//! map errors to exit codes (0 ok, 1 some inputs failed, 2 setup error).

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    transum::device::tune_allocator();
    let args = cli::Cli::parse();
    if let Some(n) = args.threads {
        if n == 0 {
            eprintln!("error: --threads must be at least 1\n  hint: omit it to use every core");
            return ExitCode::from(2);
        }
        // candle's CPU kernels read RAYON_NUM_THREADS; rayon's pool is built
        // here, before any work, so both use exactly n threads.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global();
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(if args.verbose { "info" } else { "warn" })
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    // The kernels' instruction set, chosen once (TRANSUM_CPU_ISA may force one).
    match transum::cpu::init().and_then(|isa| Ok((isa, transum::cpu::int8::kernel()?))) {
        Ok((isa, int8)) => tracing::info!(
            "CPU kernels: {}, int8: {} ({})",
            isa.name(),
            int8.name(),
            int8.encoding()
        ),
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    }
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

//! `weft`: the router daemon and its command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// weft: a container network for Kubernetes.
#[derive(Parser)]
#[command(name = "weft", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Bring up a virtual cluster in network namespaces on this machine, show traffic across it,
    /// and tear it down (needs root).
    Demo(weft_router::demo::Options),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(opts) => weft_router::demo::run(&opts),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            ExitCode::FAILURE
        }
    }
}

//! `weft`: the router daemon and its command line.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use weft_router::cli;

/// weft: a container network for Kubernetes.
#[derive(Parser)]
#[command(name = "weft", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once per run: the router's many flags cost nothing
enum Command {
    /// Run the router daemon on this host (needs root or NET_ADMIN).
    Router(Box<weft_router::daemon::config::RouterArgs>),
    /// Show what the mesh is doing: a summary, or peers, connections, ipam, targets.
    Status(cli::StatusArgs),
    /// Add an address to the peers this router dials.
    Connect(cli::AdminArgs),
    /// Stop dialling an address.
    Forget(cli::AdminArgs),
    /// Reclaim the address space of a peer that is gone for good.
    Rmpeer(cli::AdminArgs),
    /// Remove what the router left on this host (nftables table, bridge, TAP; with --state its
    /// state, with --cni weft-cni and its conflist): for uninstalling, with the router stopped.
    Reset(weft_router::reset::ResetArgs),
    /// Bring up a virtual cluster in network namespaces on this machine, show traffic across it,
    /// and tear it down (needs root).
    Demo(weft_router::demo::Options),
}

fn report(e: &dyn std::error::Error) -> ExitCode {
    eprintln!("weft: {e}");
    let mut source = e.source();
    while let Some(s) = source {
        eprintln!("  caused by: {s}");
        source = s.source();
    }
    ExitCode::FAILURE
}

fn print(r: Result<String, weft_api::ClientError>) -> ExitCode {
    match r {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => report(&e),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Router(args) => {
            weft_router::daemon::logging::init();
            let config = match weft_router::daemon::config::Config::from_args(*args, |k| std::env::var(k).ok()) {
                Ok(c) => c,
                Err(e) => return report(&e),
            };
            match weft_router::daemon::run(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => report(&e),
            }
        }
        Command::Status(a) => print(cli::status(&a)),
        Command::Connect(a) => print(cli::connect(&a)),
        Command::Forget(a) => print(cli::forget(&a)),
        Command::Rmpeer(a) => print(cli::rmpeer(&a)),
        Command::Reset(a) => match weft_router::reset::reset(&a) {
            Ok(r) => {
                if r.done.is_empty() && r.failed.is_empty() {
                    println!("nothing of weft's was left to remove");
                }
                r.done.iter().for_each(|d| println!("{d}"));
                // Every failed step is reported; any one of them fails the command.
                let mut code = ExitCode::SUCCESS;
                for e in &r.failed {
                    code = report(e);
                }
                code
            }
            Err(e) => report(&e),
        },
        Command::Demo(opts) => match weft_router::demo::run(&opts) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => report(&e),
        },
    }
}

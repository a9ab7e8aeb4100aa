//! Logs through `tracing`: one line per meaningful event, `info` readable in a busy cluster;
//! `WEFT_LOG` (or `RUST_LOG`) picks levels, e.g. `WEFT_LOG=weft_router=debug`.

/// Installs the log subscriber (stderr). Safe to call once per process; later calls do nothing.
pub fn init() {
    let filter = std::env::var("WEFT_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .try_init();
}

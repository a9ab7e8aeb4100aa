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

/// An error and its causes on one line, `what failed: why: why`, for logs (an error's own text
/// names what failed; its [`source`](std::error::Error::source) chain says why).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_chain_names_each_cause_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("open the state")]
        struct Outer(#[source] std::io::Error);
        let e = Outer(std::io::Error::other("disk on fire"));
        assert_eq!(super::chain(&e), "open the state: disk on fire");
    }
}

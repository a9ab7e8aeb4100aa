//! `weft-cni`: the CNI plugin (type `weft-cni`) through which container runtimes attach pods.
//!
//! It reads `CNI_COMMAND` and the other `CNI_*` variables and the network configuration on stdin,
//! and answers on stdout in the CNI version it was given. It must start and finish fast: it links
//! neither tokio nor quinn, and reaches the router only over its unix socket.
//!
//! Today it answers VERSION; ADD, DEL, CHECK, STATUS and GC are the CNI issue's work and answer
//! with CNI error 4 ("not supported yet") rather than pretending to succeed.

mod cni;

use std::io::Read;
use std::process::ExitCode;

fn main() -> ExitCode {
    let command = std::env::var("CNI_COMMAND").unwrap_or_default();
    let mut stdin = Vec::new();
    // VERSION may come with an empty stdin; other commands need the configuration.
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let answer = cni::dispatch(&command, &stdin);
    println!("{}", answer.body);
    if answer.ok { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

//! `weft reset`: removes from this network namespace what `weft router` leaves behind, for
//! uninstalling: the nftables tables `ip weft` (masquerade) and `inet weft-policy` (NetworkPolicy), the bridge `weft` (pods still on it
//! lose their network) and the TAP `weft-tap` if some process still holds it; with `--state`,
//! the files the router keeps in its state directory (the peer's identity and key, IPAM state)
//! and the directory if that leaves it empty (and it is not a mount point); with `--cni`, `weft-cni` and `10-weft.conflist`.
//!
//! It refuses while a router answers on the API socket (that router would put everything back).
//! Forwarding and the bridge netfilter setting are left on: other software may rely on them.
//! Every step is tried even when one fails, and every failure is reported. A second run finds
//! nothing and says so.

use std::path::{Path, PathBuf};
use std::time::Duration;

use weft_kernel::Handle;

use crate::daemon::hostnet::{self, HostNetError};
use crate::daemon::plumbing::Devices;

/// The files the router writes in its state directory (temporary ones included).
pub const STATE_FILES: [&str; 5] = [
    weft_mesh::identity::FILE,
    weft_mesh::transport::tls::KEY_FILE,
    "identity.tmp",
    weft_mesh::ipam::persist::STATE_FILE,
    "ipam.state.tmp",
];
/// The conflist the deploy installs in the CNI configuration directory.
pub const CNI_CONF_FILE: &str = "10-weft.conflist";
/// The plugin binary in the CNI binary directory.
pub const CNI_BINARY: &str = "weft-cni";

/// Flags of `weft reset`.
#[derive(Debug, Clone, clap::Args)]
pub struct ResetArgs {
    /// The router's API socket: reset refuses while a router answers on it.
    #[arg(long, env = "WEFT_API_SOCKET", default_value = weft_api::client::DEFAULT_SOCKET)]
    pub api_socket: PathBuf,
    /// Also remove the router's state: its identity (it comes back as a new peer) and its IPAM
    /// state (its part of the pod range is lost until the other peers `weft rmpeer` it).
    #[arg(long)]
    pub state: bool,
    /// The state directory (with --state).
    #[arg(long, env = "WEFT_STATE_DIR", default_value = "/var/lib/weft")]
    pub state_dir: PathBuf,
    /// Also remove weft-cni from --cni-bin-dir and 10-weft.conflist from --cni-conf-dir.
    #[arg(long)]
    pub cni: bool,
    /// Where weft-cni was installed (with --cni).
    #[arg(long, default_value = "/opt/cni/bin")]
    pub cni_bin_dir: PathBuf,
    /// Where the conflist was written (with --cni).
    #[arg(long, default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
}

/// A step of the reset that failed.
#[derive(Debug, thiserror::Error)]
pub enum ResetError {
    /// A router is running: it would put everything back.
    #[error("a router is running (its API answers on {0}): stop it first (on Kubernetes, delete the DaemonSet and wait for its pods to end)")]
    Running(PathBuf),
    /// The nftables table could not be removed.
    #[error("remove the nftables table {}", hostnet::TABLE)]
    Table(#[source] HostNetError),
    /// The NetworkPolicy table could not be removed.
    #[error("remove the nftables table inet {}", weft_policy::TABLE)]
    PolicyTable(#[source] weft_policy::nft::Error),
    /// Netlink could not be opened or a device not deleted.
    #[error("delete {0}")]
    Link(String, #[source] weft_kernel::Error),
    /// A file could not be removed.
    #[error("remove {0}")]
    File(PathBuf, #[source] std::io::Error),
}

/// What a reset did and what failed.
#[derive(Debug, Default)]
pub struct Report {
    /// One line per thing removed.
    pub done: Vec<String>,
    /// Each step that failed.
    pub failed: Vec<ResetError>,
}

/// Runs the reset in this process's network namespace; fails whole only when a router is
/// running.
pub fn reset(args: &ResetArgs) -> Result<Report, ResetError> {
    let client = weft_api::Client::new(&args.api_socket).with_timeout(Duration::from_secs(2));
    // Any answer, even a refusal or a stall, means something serves the socket.
    if !matches!(client.get::<serde_json::Value>("/status"), Err(weft_api::ClientError::NotRunning { .. })) {
        return Err(ResetError::Running(args.api_socket.clone()));
    }
    let mut r = Report::default();
    match hostnet::remove_table(&hostnet::Tools::default().nft) {
        Ok(true) => r.done.push(format!("removed the nftables table {}", hostnet::TABLE)),
        Ok(false) => {}
        // Without nft this node has no table weft could have made.
        Err(HostNetError::NftMissing { .. }) => {}
        Err(e) => r.failed.push(ResetError::Table(e)),
    }
    match weft_policy::nft::exists(weft_policy::TABLE).and_then(|there| if there { weft_policy::nft::remove(weft_policy::TABLE).map(|()| true) } else { Ok(false) }) {
        Ok(true) => r.done.push(format!("removed the nftables table inet {} (NetworkPolicy)", weft_policy::TABLE)),
        Ok(false) | Err(weft_policy::nft::Error::Spawn(_)) => {}
        Err(e) => r.failed.push(ResetError::PolicyTable(e)),
    }
    let dev = Devices::default();
    match Handle::open() {
        Ok(mut nl) => {
            for (name, what) in [(&dev.tap, "TAP (a process still held it open: a router with another --api-socket?)"), (&dev.bridge, "bridge")] {
                match nl.delete_link_if_exists(name) {
                    Ok(true) => r.done.push(format!("deleted the {what} {name}")),
                    Ok(false) => {}
                    Err(e) => r.failed.push(ResetError::Link(name.clone(), e)),
                }
            }
        }
        Err(e) => r.failed.push(ResetError::Link(format!("{} and {}", dev.tap, dev.bridge), e)),
    }
    if args.state {
        for f in STATE_FILES {
            remove_file(&args.state_dir.join(f), &mut r);
        }
        match std::fs::remove_dir(&args.state_dir) {
            Ok(()) => r.done.push(format!("removed the state directory {}", args.state_dir.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty => {
                r.done.push(format!("kept {}: it holds files that are not weft's", args.state_dir.display()))
            }
            // A mount point (the state directory mounted into a container): emptied is enough.
            Err(e) if e.kind() == std::io::ErrorKind::ResourceBusy => {}
            Err(e) => r.failed.push(ResetError::File(args.state_dir.clone(), e)),
        }
    }
    if args.cni {
        remove_file(&args.cni_conf_dir.join(CNI_CONF_FILE), &mut r);
        remove_file(&args.cni_bin_dir.join(CNI_BINARY), &mut r);
    }
    Ok(r)
}

fn remove_file(path: &Path, r: &mut Report) {
    match std::fs::remove_file(path) {
        Ok(()) => r.done.push(format!("removed {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => r.failed.push(ResetError::File(path.to_owned(), e)),
    }
}

//! The nftables backend: runs `nft` in the calling thread's network namespace (enter the host's
//! namespace on a dedicated thread first, as `weft_kernel::netns::NetNs::run` does), and reads
//! the drop counters back.
//!
//! Every script is handed to one `nft -f -`, which applies it as one transaction: all of it or
//! nothing.

use std::io::Write;
use std::process::{Command, Stdio};

use crate::model::Direction;
use crate::render::CounterValues;

/// What went wrong talking to nftables.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `nft` could not be started (install Debian's nftables package).
    #[error("run nft (is the nftables package installed?)")]
    Spawn(#[source] std::io::Error),
    /// `nft` refused the script; nothing of it was applied.
    #[error("nft rejected the script: {stderr}")]
    Rejected {
        /// What nft printed.
        stderr: String,
    },
    /// `nft -j` printed something that is not the JSON expected.
    #[error("unexpected output of nft -j list counters")]
    Json(#[source] serde_json::Error),
    /// bridge netfilter could not be switched on.
    #[error("enable bridge netfilter (/proc/sys/net/bridge/bridge-nf-call-iptables)")]
    BridgeNetfilter(#[source] std::io::Error),
}

/// Runs `nft` with `args`, `script` on its standard input; its standard output.
fn nft(args: &[&str], script: &str) -> Result<String, Error> {
    let mut child = Command::new("nft")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(Error::Spawn)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(script.as_bytes()).map_err(Error::Spawn)?;
    }
    let out = child.wait_with_output().map_err(Error::Spawn)?;
    if !out.status.success() {
        return Err(Error::Rejected { stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned() });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Applies an `nft -f` script (from [`crate::render`]) as one transaction.
pub fn apply(script: &str) -> Result<(), Error> {
    nft(&["-f", "-"], script).map(drop)
}

/// Whether `table` (family `inet`) exists.
pub fn exists(table: &str) -> Result<bool, Error> {
    match nft(&["list", "table", "inet", table], "") {
        Ok(_) => Ok(true),
        Err(Error::Rejected { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Removes `table` (family `inet`) if it is there.
pub fn remove(table: &str) -> Result<(), Error> {
    apply(&format!("table inet {table} {{}}\ndelete table inet {table}\n"))
}

/// Makes bridged IPv4 pass the IP hooks (and conntrack), without which the `inet` table sees no
/// pod-to-pod traffic. Per network namespace; Kubernetes nodes have it on already.
pub fn enable_bridge_netfilter() -> Result<(), Error> {
    std::fs::write("/proc/sys/net/bridge/bridge-nf-call-iptables", "1").map_err(Error::BridgeNetfilter)
}

/// Drops of one policy in one direction, since its counter was created (full updates carry the
/// values over).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Drops {
    /// The direction.
    pub direction: Direction,
    /// The policy's namespace.
    pub namespace: String,
    /// The policy's name.
    pub name: String,
    /// Packets dropped.
    pub packets: u64,
    /// Bytes dropped.
    pub bytes: u64,
}

/// Reads the drop counters of `table` (what the router's metrics export).
pub fn read_drops(table: &str) -> Result<Vec<Drops>, Error> {
    parse_drops(&nft(&["-j", "list", "counters", "table", "inet", table], "")?)
}

/// The raw counter values of `table`, to carry over into a full update; none if there is no table.
pub fn read_counters(table: &str) -> Result<CounterValues, Error> {
    match nft(&["-j", "list", "counters", "table", "inet", table], "") {
        Ok(json) => Ok(parse_counters(&json)?),
        Err(Error::Rejected { .. }) => Ok(CounterValues::new()), // no such table yet
        Err(e) => Err(e),
    }
}

/// Parses `nft -j list counters` output into raw counter values by name.
pub fn parse_counters(json: &str) -> Result<CounterValues, Error> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(Error::Json)?;
    let mut out = CounterValues::new();
    for item in v.get("nftables").and_then(|n| n.as_array()).into_iter().flatten() {
        let Some(c) = item.get("counter") else { continue };
        let (Some(name), Some(packets), Some(bytes)) =
            (c.get("name").and_then(|n| n.as_str()), c.get("packets").and_then(|p| p.as_u64()), c.get("bytes").and_then(|b| b.as_u64()))
        else {
            continue;
        };
        out.insert(name.to_owned(), (packets, bytes));
    }
    Ok(out)
}

/// Parses `nft -j list counters` output into per-policy drops (counters not named
/// `DIRECTION/NAMESPACE/NAME` are skipped).
pub fn parse_drops(json: &str) -> Result<Vec<Drops>, Error> {
    Ok(parse_counters(json)?
        .into_iter()
        .filter_map(|(name, (packets, bytes))| {
            let mut parts = name.splitn(3, '/');
            let direction = match parts.next()? {
                "ingress" => Direction::Ingress,
                "egress" => Direction::Egress,
                _ => return None,
            };
            let namespace = parts.next()?.to_owned();
            let name = parts.next()?.to_owned();
            Some(Drops { direction, namespace, name, packets, bytes })
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_from_nft_json() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
            {"counter": {"family": "inet", "name": "ingress/default/web", "table": "weft-policy", "handle": 2, "packets": 3, "bytes": 180}},
            {"counter": {"family": "inet", "name": "other", "table": "weft-policy", "handle": 3, "packets": 1, "bytes": 1}}]}"#;
        let drops = parse_drops(json).unwrap();
        assert_eq!(
            drops,
            vec![Drops { direction: Direction::Ingress, namespace: "default".into(), name: "web".into(), packets: 3, bytes: 180 }]
        );
        assert!(parse_drops("not json").is_err());
        assert!(parse_drops("{}").unwrap().is_empty());
    }
}

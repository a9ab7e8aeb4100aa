//! Request and response bodies of the local API. Field names are the JSON schema `weft status
//! --json` documents; add fields, never rename them.

use serde::{Deserialize, Serialize};

/// The body of every non-200 answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong and what to do.
    pub error: String,
}

/// `GET /status`: the summary `weft status` prints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// weft's version.
    pub version: String,
    /// This peer's name (MAC-style).
    pub name: String,
    /// This peer's nickname.
    pub nickname: String,
    /// Whether a cluster password is set (sleeve encrypted, peers authenticated).
    pub encryption: bool,
    /// Whether addresses learned from peers are dialled.
    pub peer_discovery: bool,
    /// Addresses this peer tries to stay connected to.
    pub targets: Vec<String>,
    /// Connections by state.
    pub connections: ConnectionCounts,
    /// Peers in the topology, this one included.
    pub peers: usize,
    /// IPAM's state.
    pub ipam: IpamSummary,
    /// How long (µs) GRO on the pods' host ports holds their UDP to coalesce it
    /// (`--pod-udp-coalesce-us`); 0: never held.
    #[serde(default)]
    pub pod_udp_coalesce_us: u64,
    /// From which packet rate (per second, from one pod) its UDP is held
    /// (`--pod-udp-coalesce-above`); 0: every pod's always, from when it attaches.
    #[serde(default)]
    pub pod_udp_coalesce_above: u64,
    /// The pods' host ports whose UDP is held now.
    #[serde(default)]
    pub pod_udp_coalesce_ports: Vec<String>,
}

impl Status {
    /// GRO's hold on the pods' UDP, when a pod's is held; `None`: never held.
    pub fn pod_udp_coalesce(&self) -> Option<std::time::Duration> {
        (self.pod_udp_coalesce_us > 0).then(|| std::time::Duration::from_micros(self.pod_udp_coalesce_us))
    }

    /// The hold a pod's host port gets when it attaches (what weft-cni sets): the hold when
    /// every pod is held always, else none (the router holds a pod once it sends fast).
    pub fn pod_udp_coalesce_at_attach(&self) -> Option<std::time::Duration> {
        self.pod_udp_coalesce().filter(|_| self.pod_udp_coalesce_above == 0)
    }
}

/// Connection counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionCounts {
    /// Authenticated and carrying traffic.
    pub established: usize,
    /// Being set up.
    pub pending: usize,
    /// Failed (and retrying).
    pub failed: usize,
    /// Gossiped addresses given up (not dialled any more).
    #[serde(default)]
    pub dropped: usize,
}

/// IPAM's state for the status summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamSummary {
    /// `ready`, `awaiting-consensus`, `waiting-for-space`, or `left` (after a hand-over on exit).
    pub state: String,
    /// A sentence for the operator, with what to do when something is wrong.
    pub detail: String,
    /// The pod range.
    pub range: String,
    /// Addresses this peer owns.
    pub owned: u64,
    /// Addresses allocated to pods here.
    pub allocated: u64,
}

/// `GET /peers`: each peer and its connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// Name.
    pub name: String,
    /// Nickname.
    pub nickname: String,
    /// Whether it is reachable from here.
    pub reachable: bool,
    /// The peer frames to it are sent to when that is not the peer itself (relayed, as
    /// `NAME(NICKNAME)`); absent for direct neighbours, ourselves and unreachable peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// Its connections as it gossips them.
    pub connections: Vec<PeerLink>,
}

/// One connection of a peer, as gossiped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerLink {
    /// The remote peer's name.
    pub name: String,
    /// The remote peer's nickname, if known.
    pub nickname: String,
    /// The remote address.
    pub address: String,
    /// Whether the peer dialled it.
    pub outbound: bool,
    /// Whether it is established.
    pub established: bool,
}

/// Where a connection (or an attempt at one) stands; in JSON the lowercase name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionState {
    /// Authenticated and carrying traffic.
    Established,
    /// Being dialled or set up.
    Pending,
    /// Failed; it will be tried again (see `retry_in_secs`).
    Retrying,
    /// Refused for good (e.g. a second live router with the same name); `reason` says why.
    Failed,
    /// A gossiped address given up (it failed too often, or this host has no route to it); not
    /// dialled any more unless the mesh reports its peer back. `reason` says why.
    Dropped,
}

impl ConnectionState {
    /// The name, as in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionState::Established => "established",
            ConnectionState::Pending => "pending",
            ConnectionState::Retrying => "retrying",
            ConnectionState::Failed => "failed",
            ConnectionState::Dropped => "dropped",
        }
    }
}

impl std::fmt::Display for ConnectionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// `GET /connections`: this peer's connections and connection attempts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Connection {
    /// `outbound` or `inbound`.
    pub direction: String,
    /// Remote address.
    pub remote: String,
    /// Remote peer's name, once known.
    pub peer: Option<String>,
    /// Remote peer's nickname, once known.
    pub nickname: Option<String>,
    /// Its state.
    pub state: ConnectionState,
    /// `sleeve`, `fastpath`, or `none` before data flows.
    pub overlay: String,
    /// Whether the data path is encrypted.
    pub encrypted: bool,
    /// The largest pod packet (IP, bytes) this connection carries without fragmenting: one
    /// datagram of the path MTU found (`path_mtu`), less the sleeve's headers, capped by the pod
    /// MTU. A larger packet that may not be fragmented is answered with "fragmentation needed"
    /// carrying this size.
    pub mtu: Option<u32>,
    /// Round-trip time in milliseconds.
    pub rtt_ms: Option<f64>,
    /// For a retrying, failed or dropped one: why.
    pub reason: Option<String>,
    /// For a retrying one: seconds until the next attempt.
    pub retry_in_secs: Option<f64>,
    /// For an established one: the largest IPv4 packet the sleeve's path MTU discovery has seen
    /// cross to the peer (its datagram size plus 28 bytes of IPv4 and UDP headers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_mtu: Option<u32>,
}

/// A container attachment: container ID and interface, the key of an allocation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Attachment {
    /// The runtime's container ID.
    pub container_id: String,
    /// The interface inside the container.
    pub ifname: String,
}

/// `POST /ipam/allocate`: an address for an attachment (the same one again if it has one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocateRequest {
    /// Who asks.
    #[serde(flatten)]
    pub attachment: Attachment,
}

/// `POST /ipam/claim`: a specific address for an attachment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClaimRequest {
    /// Who asks.
    #[serde(flatten)]
    pub attachment: Attachment,
    /// The address wanted.
    pub address: String,
}

/// `POST /ipam/release`: give an attachment's address back (succeeds if it has none).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRequest {
    /// Whose address.
    #[serde(flatten)]
    pub attachment: Attachment,
}

/// An allocation, as the API answers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    /// Whose.
    #[serde(flatten)]
    pub attachment: Attachment,
    /// `ADDRESS/PREFIX` in the pod range.
    pub address: String,
    /// The gateway pods route through (the bridge's address), if any.
    pub gateway: Option<String>,
    /// The MTU pods should use.
    pub mtu: u32,
}

/// `POST /ipam/gc`: release every allocation not in `keep`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GcRequest {
    /// The attachments that still exist.
    pub keep: Vec<Attachment>,
}

/// `GET /ipam`: each peer's share of the range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IpamShare {
    /// Peer name.
    pub peer: String,
    /// Nickname, if known.
    pub nickname: String,
    /// Whether the peer is reachable.
    pub reachable: bool,
    /// Addresses owned.
    pub size: u64,
    /// Share of the whole range, in percent.
    pub percent: f64,
    /// Addresses allocated (known for this peer only).
    pub allocated: Option<u64>,
}

/// `POST /connect` and `POST /forget`: an address to dial or to stop dialling.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetRequest {
    /// `HOST` or `HOST:PORT`.
    pub address: String,
}

/// `POST /rmpeer`: reclaim a dead peer's address space.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RmpeerRequest {
    /// The peer's name or nickname.
    pub peer: String,
}

/// The answer to `POST /rmpeer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RmpeerResponse {
    /// Addresses reclaimed by this peer.
    pub reclaimed: u64,
}

/// `GET /policy`: the NetworkPolicy this host enforces.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyStatus {
    /// `off` (not enabled), `waiting` (Pods, Namespaces and NetworkPolicies not all listed yet),
    /// `enforcing`, or `failing` (the last update was refused; the table in place stays).
    pub state: String,
    /// Why it is failing or waiting; empty otherwise.
    pub detail: String,
    /// Updates applied: the whole table (`full`) and set elements only (`delta`).
    pub full_updates: u64,
    /// Set-element updates applied.
    pub delta_updates: u64,
    /// NetworkPolicies in the cluster.
    pub cluster_policies: usize,
    /// Pods on this host with an address.
    pub local_pods: usize,
    /// The policies selecting at least one pod of this host.
    pub policies: Vec<PolicyEntry>,
    /// Policies not understood (`namespace/name: why`), enforced with nothing allowed.
    pub rejected: Vec<String>,
}

/// One policy enforced on this host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyEntry {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// The directions it isolates (`ingress`, `egress`).
    pub types: Vec<String>,
    /// The pods of this host it selects (`namespace/name`).
    pub pods: Vec<String>,
    /// Packets dropped for it, to its pods (counted on the first policy selecting the pod).
    pub dropped_ingress: u64,
    /// Packets dropped for it, from its pods.
    pub dropped_egress: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_states_are_lowercase_strings_in_json() {
        for (state, text) in [(ConnectionState::Established, "established"), (ConnectionState::Pending, "pending"), (ConnectionState::Retrying, "retrying")] {
            assert_eq!(serde_json::to_string(&state).unwrap(), format!("\"{text}\""));
            assert_eq!(serde_json::from_str::<ConnectionState>(&format!("\"{text}\"")).unwrap(), state);
            assert_eq!((state.as_str(), format!("{state:<12}|")), (text, format!("{text:<12}|")));
        }
        assert!(serde_json::from_str::<ConnectionState>("\"Established\"").is_err());
    }
}

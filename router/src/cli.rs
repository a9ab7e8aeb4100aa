//! The command line's client side: `weft status [peers|connections|ipam|targets|policy] [--json]`,
//! `weft connect`, `weft forget`, `weft rmpeer`, talking to the local daemon's API.
//!
//! The text forms follow what Weave Net users know; `--json` prints the API's documented JSON
//! (see `weft_api::types`) unchanged.

use std::fmt::Write as _;
use std::path::PathBuf;

use weft_api::Client;
use weft_api::types::{Connection, ConnectionState, IpamShare, Peer, PolicyStatus, RmpeerRequest, RmpeerResponse, Status, TargetRequest};

/// `weft status` arguments.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// What to show: the summary (default), peers, connections, ipam, targets or policy.
    #[arg(value_enum)]
    pub what: Option<StatusView>,
    /// Print the API's JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// The daemon's API socket.
    #[arg(long, env = "WEFT_API_SOCKET", default_value = weft_api::client::DEFAULT_SOCKET)]
    pub api_socket: PathBuf,
}

/// The views of `weft status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StatusView {
    /// Each peer and its connections.
    Peers,
    /// This peer's connections and attempts.
    Connections,
    /// Each peer's share of the address range.
    Ipam,
    /// The addresses this peer dials.
    Targets,
    /// The NetworkPolicies enforced on this host, the pods they select and their drops.
    Policy,
}

/// Arguments of `weft connect` / `weft forget` / `weft rmpeer`.
#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    /// The address (`HOST[:PORT]`) or, for rmpeer, the peer's name or nickname.
    pub target: String,
    /// The daemon's API socket.
    #[arg(long, env = "WEFT_API_SOCKET", default_value = weft_api::client::DEFAULT_SOCKET)]
    pub api_socket: PathBuf,
}

/// Runs `weft status`; returns what to print.
pub fn status(args: &StatusArgs) -> Result<String, weft_api::ClientError> {
    let c = Client::new(&args.api_socket);
    fn json<T: serde::Serialize>(v: &T) -> String {
        serde_json::to_string_pretty(v).unwrap_or_default() + "\n"
    }
    Ok(match (args.what, args.json) {
        (None, false) => render_status(&c.get("/status")?),
        (None, true) => json(&c.get::<Status>("/status")?),
        (Some(StatusView::Peers), false) => render_peers(&c.get::<Vec<Peer>>("/peers")?),
        (Some(StatusView::Peers), true) => json(&c.get::<Vec<Peer>>("/peers")?),
        (Some(StatusView::Connections), false) => render_connections(&c.get::<Vec<Connection>>("/connections")?),
        (Some(StatusView::Connections), true) => json(&c.get::<Vec<Connection>>("/connections")?),
        (Some(StatusView::Ipam), false) => render_ipam(&c.get::<Vec<IpamShare>>("/ipam")?),
        (Some(StatusView::Ipam), true) => json(&c.get::<Vec<IpamShare>>("/ipam")?),
        (Some(StatusView::Targets), false) => c.get::<Vec<String>>("/targets")?.iter().map(|t| format!("{t}\n")).collect(),
        (Some(StatusView::Targets), true) => json(&c.get::<Vec<String>>("/targets")?),
        (Some(StatusView::Policy), false) => render_policy(&c.get::<PolicyStatus>("/policy")?),
        (Some(StatusView::Policy), true) => json(&c.get::<PolicyStatus>("/policy")?),
    })
}

/// Runs `weft connect ADDR`.
pub fn connect(args: &AdminArgs) -> Result<String, weft_api::ClientError> {
    Client::new(&args.api_socket).post::<_, serde_json::Value>("/connect", &TargetRequest { address: args.target.clone() })?;
    Ok(format!("connecting to {}\n", args.target))
}

/// Runs `weft forget ADDR`.
pub fn forget(args: &AdminArgs) -> Result<String, weft_api::ClientError> {
    Client::new(&args.api_socket).post::<_, serde_json::Value>("/forget", &TargetRequest { address: args.target.clone() })?;
    Ok(format!("forgot {}\n", args.target))
}

/// Runs `weft rmpeer PEER`.
pub fn rmpeer(args: &AdminArgs) -> Result<String, weft_api::ClientError> {
    let r: RmpeerResponse = Client::new(&args.api_socket).post("/rmpeer", &RmpeerRequest { peer: args.target.clone() })?;
    Ok(format!("{} IPs taken over from {}\n", r.reclaimed, args.target))
}

/// `; N addresses dropped` when gossiped addresses were given up (not connections: not in the
/// summary's total).
fn dropped(n: usize) -> String {
    match n {
        0 => String::new(),
        1 => "; 1 address dropped".to_owned(),
        n => format!("; {n} addresses dropped"),
    }
}

/// The summary, aligned as `weave status` is.
pub fn render_status(s: &Status) -> String {
    let onoff = |b: bool| if b { "enabled" } else { "disabled" };
    let c = &s.connections;
    let total = c.established + c.pending + c.failed;
    let rows = [
        ("Version", s.version.clone()),
        ("Name", format!("{}({})", s.name, s.nickname)),
        ("Encryption", onoff(s.encryption).to_owned() + if s.encryption { "" } else { " (no password: the mesh is open)" }),
        ("PeerDiscovery", onoff(s.peer_discovery).to_owned()),
        ("Targets", s.targets.len().to_string()),
        ("Connections", format!("{total} ({} established, {} pending, {} failed{})", c.established, c.pending, c.failed, dropped(c.dropped))),
        ("Peers", s.peers.to_string()),
        ("IPAM", format!("{} — {}", s.ipam.state, s.ipam.detail)),
        ("Range", format!("{} ({} owned here, {} allocated)", s.ipam.range, s.ipam.owned, s.ipam.allocated)),
        ("PodUDPCoalesce", match (s.pod_udp_coalesce_us, s.pod_udp_coalesce_above) {
            (0, _) => "off".to_owned(),
            (us, 0) => format!("{us} µs, every pod (pods' UDP bursts cross the sleeve coalesced)"),
            (us, above) => {
                let now = if s.pod_udp_coalesce_ports.is_empty() { "none now".to_owned() } else { format!("now {}", s.pod_udp_coalesce_ports.join(", ")) };
                format!("{us} µs, pods sending ≥ {above} packets/s ({now})")
            }
        }),
    ];
    let mut out = String::new();
    for (k, v) in rows {
        let _ = writeln!(out, "{k:>15}: {v}");
    }
    out
}

/// NetworkPolicy on this host: the state, then each policy selecting pods here with its
/// directions, drops and pods, then the policies not understood.
pub fn render_policy(p: &PolicyStatus) -> String {
    let mut out = String::new();
    let detail = if p.detail.is_empty() { String::new() } else { format!(" — {}", p.detail) };
    let _ = writeln!(out, "{:>15}: {}{detail}", "NetworkPolicy", p.state);
    if p.state == "off" {
        return out;
    }
    let _ = writeln!(out, "{:>15}: {} in the cluster, {} selecting pods here", "Policies", p.cluster_policies, p.policies.len());
    let _ = writeln!(out, "{:>15}: {} on this host", "Pods", p.local_pods);
    let _ = writeln!(out, "{:>15}: {} full, {} set elements only", "Updates", p.full_updates, p.delta_updates);
    if !p.policies.is_empty() {
        let _ = writeln!(out, "\n{:<40} {:<15} {:>8} {:>8}  PODS", "POLICY", "TYPES", "DROP-IN", "DROP-OUT");
    }
    for e in &p.policies {
        let name = format!("{}/{}", e.namespace, e.name);
        let _ = writeln!(out, "{name:<40} {:<15} {:>8} {:>8}  {}", e.types.join(","), e.dropped_ingress, e.dropped_egress, e.pods.join(" "));
    }
    for r in &p.rejected {
        let _ = writeln!(out, "not understood, nothing allowed: {r}");
    }
    out
}

/// Each peer and, below it, its connections.
pub fn render_peers(peers: &[Peer]) -> String {
    let mut out = String::new();
    for p in peers {
        let mark = match (&p.via, p.reachable) {
            (_, false) => "  (unreachable)".to_owned(),
            (Some(v), true) => format!("  via {v}"),
            (None, true) => String::new(),
        };
        let _ = writeln!(out, "{}({}){mark}", p.name, p.nickname);
        for l in &p.connections {
            let arrow = if l.outbound { "->" } else { "<-" };
            let state = if l.established { ConnectionState::Established } else { ConnectionState::Pending };
            let _ = writeln!(out, "   {arrow} {:<22} {}({:<10} {state}", l.address, l.name, l.nickname.clone() + ")");
        }
    }
    out
}

/// One line per connection: direction, address, state, overlay, encryption, MTU, RTT, peer,
/// and for a failed one the reason and the next retry.
pub fn render_connections(conns: &[Connection]) -> String {
    let mut out = String::new();
    for c in conns {
        let arrow = if c.direction == "outbound" { "->" } else { "<-" };
        let enc = if c.encrypted { "encrypted" } else { "unencrypted" };
        let mtu = c.mtu.map(|m| format!("mtu={m}")).unwrap_or_else(|| "mtu=-".into());
        let rtt = c.rtt_ms.map(|r| format!("rtt={r:.1}ms")).unwrap_or_else(|| "rtt=-".into());
        let who = match (&c.peer, &c.nickname) {
            (Some(p), Some(n)) => format!("{p}({n})"),
            (Some(p), None) => p.clone(),
            _ => String::new(),
        };
        let _ = write!(out, "{arrow} {:<22} {:<11} {:<8} {enc:<11} {mtu:<9} {rtt:<12} {who}", c.remote, c.state, c.overlay);
        if let Some(p) = c.path_mtu {
            let _ = write!(out, " pmtu={p}");
        }
        if let Some(r) = &c.reason {
            let _ = write!(out, " — {r}");
        }
        if let Some(t) = c.retry_in_secs {
            let _ = write!(out, ", retry in {t:.1}s");
        }
        out.push('\n');
    }
    out
}

/// Each peer's share of the range.
pub fn render_ipam(shares: &[IpamShare]) -> String {
    let mut out = String::new();
    for s in shares {
        let active = s.allocated.map(|a| format!(" - {a} active")).unwrap_or_default();
        let mark = if s.reachable { "" } else { " - unreachable!" };
        let _ = writeln!(out, "{}({:<12} {:>8} IPs ({:>5.1}% of total){active}{mark}", s.peer, s.nickname.clone() + ")", s.size, s.percent);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_api::types::{ConnectionCounts, IpamSummary, PeerLink};

    #[test]
    fn the_summary_reads_like_weave_status() {
        let s = Status {
            version: "0.1.0".into(),
            name: "0e:00:00:00:00:0a".into(),
            nickname: "host-a".into(),
            encryption: true,
            peer_discovery: true,
            targets: vec!["192.0.2.12:6783".into()],
            connections: ConnectionCounts { established: 1, pending: 0, failed: 1, dropped: 0 },
            peers: 3,
            ipam: IpamSummary { state: "ready".into(), detail: "allocating from 1 range".into(), range: "10.32.0.0/12".into(), owned: 524288, allocated: 2 },
            pod_udp_coalesce_us: 20,
            pod_udp_coalesce_above: 0,
            pod_udp_coalesce_ports: Vec::new(),
        };
        let text = render_status(&s);
        let expected = "        Version: 0.1.0
           Name: 0e:00:00:00:00:0a(host-a)
     Encryption: enabled
  PeerDiscovery: enabled
        Targets: 1
    Connections: 2 (1 established, 0 pending, 1 failed)
          Peers: 3
           IPAM: ready — allocating from 1 range
          Range: 10.32.0.0/12 (524288 owned here, 2 allocated)
 PodUDPCoalesce: 20 µs, every pod (pods' UDP bursts cross the sleeve coalesced)
";
        assert_eq!(text, expected);
        let adaptive = |ports: &[&str]| Status { pod_udp_coalesce_above: 20_000, pod_udp_coalesce_ports: ports.iter().map(|p| p.to_string()).collect(), ..s.clone() };
        assert!(render_status(&adaptive(&[])).ends_with(" PodUDPCoalesce: 20 µs, pods sending ≥ 20000 packets/s (none now)\n"));
        assert!(render_status(&adaptive(&["veth1", "veth2"])).ends_with(" PodUDPCoalesce: 20 µs, pods sending ≥ 20000 packets/s (now veth1, veth2)\n"));
    }

    #[test]
    fn connections_show_overlay_and_failure_reasons() {
        let ok = Connection {
            direction: "outbound".into(),
            remote: "192.0.2.12:6783".into(),
            peer: Some("0e:00:00:00:00:0b".into()),
            nickname: Some("host-b".into()),
            state: ConnectionState::Established,
            overlay: "sleeve".into(),
            encrypted: true,
            mtu: Some(1376),
            rtt_ms: Some(0.42),
            reason: None,
            retry_in_secs: None,
            path_mtu: Some(1500),
        };
        let bad = Connection {
            direction: "outbound".into(),
            remote: "192.0.2.99:6783".into(),
            peer: None,
            nickname: None,
            state: ConnectionState::Retrying,
            overlay: "none".into(),
            encrypted: false,
            mtu: None,
            rtt_ms: None,
            reason: Some("timed out".into()),
            retry_in_secs: Some(4.25),
            path_mtu: None,
        };
        let text = render_connections(&[ok, bad]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "-> 192.0.2.12:6783        established sleeve   encrypted   mtu=1376  rtt=0.4ms    0e:00:00:00:00:0b(host-b) pmtu=1500");
        assert!(lines[1].starts_with("-> 192.0.2.99:6783        retrying    none     unencrypted mtu=-"), "{}", lines[1]);
        assert!(lines[1].ends_with("— timed out, retry in 4.2s"), "{}", lines[1]);
    }

    #[test]
    fn peers_print_as_a_tree_and_ipam_as_shares() {
        let p = Peer {
            name: "0e:00:00:00:00:0a".into(),
            nickname: "host-a".into(),
            reachable: true,
            via: None,
            connections: vec![PeerLink { name: "0e:00:00:00:00:0b".into(), nickname: "host-b".into(), address: "192.0.2.12:6783".into(), outbound: true, established: true }],
        };
        assert_eq!(
            render_peers(&[p]),
            "0e:00:00:00:00:0a(host-a)\n   -> 192.0.2.12:6783        0e:00:00:00:00:0b(host-b)    established\n"
        );
        let s = IpamShare { peer: "0e:00:00:00:00:0c".into(), nickname: "host-c".into(), reachable: false, size: 262144, percent: 25.0, allocated: None };
        assert_eq!(render_ipam(&[s]), "0e:00:00:00:00:0c(host-c)        262144 IPs ( 25.0% of total) - unreachable!\n");
    }

    #[test]
    fn policy_shows_what_is_enforced_here() {
        use weft_api::types::PolicyEntry;
        let p = PolicyStatus {
            state: "enforcing".into(),
            detail: String::new(),
            full_updates: 3,
            delta_updates: 12,
            cluster_policies: 5,
            local_pods: 4,
            policies: vec![
                PolicyEntry {
                    namespace: "shop".into(),
                    name: "web-from-front".into(),
                    types: vec!["ingress".into()],
                    pods: vec!["shop/web-1".into(), "shop/web-2".into()],
                    dropped_ingress: 17,
                    dropped_egress: 0,
                },
                PolicyEntry { namespace: "shop".into(), name: "deny-out".into(), types: vec!["ingress".into(), "egress".into()], pods: vec!["shop/db".into()], dropped_ingress: 0, dropped_egress: 2 },
            ],
            rejected: vec!["shop/odd: protocol \"ICMP\" is not TCP, UDP or SCTP".into()],
        };
        assert_eq!(
            render_policy(&p),
            "  NetworkPolicy: enforcing
       Policies: 5 in the cluster, 2 selecting pods here
           Pods: 4 on this host
        Updates: 3 full, 12 set elements only

POLICY                                   TYPES            DROP-IN DROP-OUT  PODS
shop/web-from-front                      ingress               17        0  shop/web-1 shop/web-2
shop/deny-out                            ingress,egress         0        2  shop/db
not understood, nothing allowed: shop/odd: protocol \"ICMP\" is not TCP, UDP or SCTP
"
        );
        let off = PolicyStatus { state: "off".into(), detail: "--network-policy is off".into(), ..PolicyStatus::default() };
        assert_eq!(render_policy(&off), "  NetworkPolicy: off — --network-policy is off\n");
    }
}

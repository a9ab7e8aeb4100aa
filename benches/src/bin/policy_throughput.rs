//! Pod-to-pod TCP throughput with NetworkPolicy in force, as a ratio to none, measured in the
//! same run (root needed; the goal is at least 0.9).
//!
//! Usage: `cargo run --release -p weft-benches --bin policy_throughput -- [SECONDS] [ROUNDS]`
//! (defaults 5 and 3). Two paths, each its own test bed, bridge netfilter on (as on a Kubernetes
//! node) with and without policy: *same host*, a server and a client pod on one host's pod
//! bridge `weft`; *cross-host*, the server on one host and the client on another, their bridges
//! joined by kernel VXLAN over a segment (the datapath of weft's fast path), each host enforcing
//! its own node's table. Policy:
//! the synthetic cluster of `weft_policy::synthetic` (1000 pods, this host being `node0` with
//! 250 of them, and 99 policies) plus one policy letting the client reach the server's port —
//! 100 policies, compiled and applied as the router does (one `nft -f`). Both pods are selected
//! (the client by egress policies, the server by ingress ones) so every new connection is looked
//! up in the sets; established packets pass on the conntrack rule. Same-host traffic crosses only
//! the bridge, so the table's cost is the largest share of the path there. Rounds alternate (none,
//! policy), each an `iperf3` single-stream run of SECONDS; before each run with policy a
//! connection to a port no policy allows must time out (the tables are in force), and without it
//! be refused. Prints every run, and per path the medians, their ratio and the median of
//! the rounds' ratios.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use weft_policy::controller::{Controller, Event, Update};
use weft_policy::model::{LabelSelector, NetworkPolicy, Peer, Pod, PolicyPort, PortSpec, Protocol, Rule};
use weft_policy::model::{ContainerPort, Direction, Objects};
use weft_policy::{Node, TABLE, nft, render, synthetic};
use weft_testbed::topology::{self, POD_BRIDGE, add_pod_bridge};
use weft_testbed::{NodeId, TestBed, iperf3_tcp};

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 32, 100, 1);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 32, 100, 2);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 32, 255, 254);
const IPERF_PORT: u16 = 5201;

fn main() {
    let secs: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    let rounds: usize = std::env::args().nth(2).and_then(|s| s.parse().ok()).unwrap_or(3);
    if let Err(e) = run(Duration::from_secs(secs), rounds.max(1)) {
        eprintln!("policy_throughput: {e}");
        std::process::exit(1);
    }
}

fn bench_pod(name: &str, ip: Ipv4Addr) -> Pod {
    Pod {
        namespace: "ns0".into(),
        name: name.into(),
        labels: [("app".to_owned(), "a0".to_owned()), ("tier".to_owned(), "t1".to_owned())].into(),
        ip: Some(ip),
        node: "node0".into(),
        ports: vec![ContainerPort { name: Some("http".into()), port: IPERF_PORT, protocol: Protocol::Tcp }],
    }
}

/// The objects: the synthetic cluster with 99 policies, the two pods, and the policy that lets
/// the client out to the server's named port (the synthetic ones select `app=a0` in `ns0` for
/// egress too, allowing only addresses outside the pod range).
fn objects() -> Objects {
    let mut o = synthetic::cluster(1000, 99);
    o.pods.push(bench_pod("server", SERVER));
    o.pods.push(bench_pod("client", CLIENT));
    o.policies.push(NetworkPolicy {
        namespace: "ns0".into(),
        name: "bench-egress".into(),
        pod_selector: LabelSelector::labels([("app", "a0")]),
        policy_types: Some(vec![Direction::Egress]),
        ingress: vec![],
        egress: vec![Rule {
            peers: vec![Peer::Pods { pod_selector: Some(LabelSelector::labels([("tier", "t1")])), namespace_selector: None }],
            ports: vec![PolicyPort { protocol: Protocol::Tcp, port: PortSpec::Named("http".into()) }],
        }],
    });
    o
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// A connection from the client to a server port nothing listens on and no policy allows:
/// "refused" without policy, "timed out" with it.
fn closed_port(bed: &TestBed, client: NodeId) -> &'static str {
    let to = SocketAddr::from((SERVER, IPERF_PORT + 1));
    match bed.ns(client).run(|| TcpStream::connect_timeout(&to, Duration::from_millis(500))) {
        Ok(Ok(_)) => "connected",
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => "refused",
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::TimedOut => "timed out",
        Ok(Err(_)) | Err(_) => "failed",
    }
}

/// A measured path: the bed, the server and client pods, and each host with the script of its
/// node's table.
struct Path {
    label: &'static str,
    bed: TestBed,
    server: NodeId,
    client: NodeId,
    hosts: Vec<(NodeId, String)>,
}

/// The script of `node`'s table.
fn script(objects: &Objects, node: &str, print: bool) -> Result<String, String> {
    let mut c = Controller::new(Node { name: node.into(), bridge: POD_BRIDGE.into() });
    c.handle(Event::Restarted(objects.clone()));
    let Some(Update::Full(ruleset)) = c.poll_update() else { return Err("no full update for the first ruleset".into()) };
    if print {
        let elements: usize = ruleset.sets.values().map(|s| s.elements.len()).sum();
        let rules: usize = ruleset.chains.iter().map(|c| c.rules.len()).sum();
        println!(
            "policy: {} pods, {} policies ({} on {node}'s pods); its table inet {TABLE}: {} sets, {elements} elements, {rules} rules",
            objects.pods.len(),
            objects.policies.len(),
            objects.policies.iter().filter(|p| objects.pods.iter().any(|pod| pod.node == node && p.selects(pod))).count(),
            ruleset.sets.len()
        );
    }
    Ok(render::full(&ruleset, &render::CounterValues::new()))
}

fn chain(e: &weft_kernel::Error) -> String {
    weft_kernel::chain(e)
}

/// One host (node0) with both pods on its bridge.
fn same_host(objects: &Objects) -> Result<Path, String> {
    let mut bed = TestBed::new().map_err(|e| format!("a test bed needs root: {}", chain(&e)))?;
    let host = bed.add_node("h").map_err(|e| chain(&e))?;
    add_pod_bridge(&mut bed, host, GATEWAY, 16).map_err(|e| chain(&e))?;
    let server = bed.add_pod(host, "server", POD_BRIDGE, "vserver", SERVER, 16, Some(GATEWAY)).map_err(|e| chain(&e))?;
    let client = bed.add_pod(host, "client", POD_BRIDGE, "vclient", CLIENT, 16, Some(GATEWAY)).map_err(|e| chain(&e))?;
    Ok(Path { label: "same host", bed, server, client, hosts: vec![(host, script(objects, "node0", true)?)] })
}

/// Two hosts (node0 with the server, node1 with the client) whose bridges are joined by kernel
/// VXLAN over their segment, as weft's fast path joins them; each enforces its own node's table.
fn cross_host(objects: &Objects) -> Result<Path, String> {
    let mut bed = TestBed::new().map_err(|e| format!("a test bed needs root: {}", chain(&e)))?;
    let lan = topology::shared_segment(&mut bed, 2).map_err(|e| chain(&e))?;
    topology::vxlan_bridges(&mut bed, &lan, "vx-bench", 1450).map_err(|e| chain(&e))?;
    let mut pods = Vec::new();
    for (i, &h) in lan.hosts.iter().enumerate() {
        let (name, addr) = if i == 0 { ("server", SERVER) } else { ("client", CLIENT) };
        let pod = bed.add_pod(h, name, POD_BRIDGE, "vp0", addr, 16, None).map_err(|e| chain(&e))?;
        bed.netlink(pod).set_mtu("eth0", 1450).map_err(|e| chain(&e))?;
        pods.push(pod);
    }
    let hosts = vec![(lan.hosts[0], script(objects, "node0", false)?), (lan.hosts[1], script(objects, "node1", true)?)];
    Ok(Path { label: "cross-host", bed, server: pods[0], client: pods[1], hosts })
}

/// Alternating rounds without and with policy on `path`: the medians (none, policy) in Gbit/s,
/// and the median of each round's ratio (policy over the run just before it, on a machine whose
/// load changes over minutes the fairer pairing).
fn measure(path: &mut Path, d: Duration, rounds: usize) -> Result<(f64, f64, f64), String> {
    for (h, _) in &path.hosts {
        path.bed.ns(*h).run(nft::enable_bridge_netfilter).map_err(|e| chain(&e))?.map_err(|e| weft_kernel::chain(&e))?;
    }
    let (mut none, mut with) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        for policy in [false, true] {
            for (h, script) in &path.hosts {
                let applied = path.bed.ns(*h).run(|| if policy { nft::apply(script) } else { nft::remove(TABLE) }).map_err(|e| chain(&e))?;
                applied.map_err(|e| weft_kernel::chain(&e))?;
            }
            let probe = closed_port(&path.bed, path.client);
            let expected = if policy { "timed out" } else { "refused" };
            if probe != expected {
                return Err(format!("{}: a connection to a port no policy allows {probe}, expected {expected} (policy {policy})", path.label));
            }
            let t = iperf3_tcp(&mut path.bed, path.server, path.client, SERVER, d, 1)?;
            let gbps = t.bits_per_second / 1e9;
            println!("{:<10} round {} {:<12} {gbps:7.2} Gbit/s  retransmits {}", path.label, round + 1, if policy { "100 policies" } else { "no policy" }, t.retransmits);
            if policy { with.push(gbps) } else { none.push(gbps) }
        }
    }
    let paired = none.iter().zip(&with).map(|(a, b)| b / a).collect();
    Ok((median(none), median(with), median(paired)))
}

fn run(d: Duration, rounds: usize) -> Result<(), String> {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim().to_owned();
    let objects = objects();
    println!("{} s per iperf3 run, {rounds} rounds per path, bridge netfilter on", d.as_secs());
    let mut results = Vec::new();
    for make in [same_host as fn(&Objects) -> Result<Path, String>, cross_host] {
        let mut path = make(&objects)?;
        let r = measure(&mut path, d, rounds);
        for (h, _) in &path.hosts {
            let _ = path.bed.ns(*h).run(|| nft::remove(TABLE));
        }
        let label = path.label;
        path.bed.teardown().map_err(|e| chain(&e))?;
        results.push((label, r?));
    }
    for (label, (m0, m1, paired)) in results {
        println!("{label:<10} median: no policy {m0:.2} Gbit/s, 100 policies {m1:.2} Gbit/s; ratio of medians {:.3}, median of round ratios {paired:.3} (goal ≥ 0.9)", m1 / m0);
    }
    println!("load average before/after: {load} / {}", std::fs::read_to_string("/proc/loadavg").unwrap_or_default().trim());
    Ok(())
}

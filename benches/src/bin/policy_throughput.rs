//! Pod-to-pod TCP throughput with NetworkPolicy in force, as a ratio to none, measured in the
//! same run (root needed; the goal is at least 0.9).
//!
//! Usage: `cargo run --release -p weft-benches --bin policy_throughput -- [SECONDS] [ROUNDS]`
//! (defaults 5 and 3). One host of a test bed with the pod bridge `weft` (bridge netfilter on,
//! as on a Kubernetes node, in both cases) and two pods on it, a server and a client. Policy:
//! the synthetic cluster of `weft_policy::synthetic` (1000 pods, this host being `node0` with
//! 250 of them, and 99 policies) plus one policy letting the client reach the server's port —
//! 100 policies, compiled and applied as the router does (one `nft -f`). Both pods are selected
//! (the client by egress policies, the server by ingress ones) so every new connection is looked
//! up in the sets; established packets pass on the conntrack rule. Same-host traffic crosses only
//! the bridge, so the table's cost is the largest share of the path here; across hosts the
//! overlay adds its own cost and the ratio can only be closer to 1. Rounds alternate (none,
//! policy), each an `iperf3` single-stream run of SECONDS; before each run with policy a
//! connection to a port no policy allows must time out (the table is in force), and without it be
//! refused. Prints every run, the medians and their ratio.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use weft_policy::controller::{Controller, Event, Update};
use weft_policy::model::{LabelSelector, NetworkPolicy, Peer, Pod, PolicyPort, PortSpec, Protocol, Rule};
use weft_policy::model::{ContainerPort, Direction};
use weft_policy::{Node, TABLE, nft, render, synthetic};
use weft_testbed::topology::{POD_BRIDGE, add_pod_bridge};
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
fn objects() -> weft_policy::model::Objects {
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

fn run(d: Duration, rounds: usize) -> Result<(), String> {
    let e = |e: weft_kernel::Error| weft_kernel::chain(&e);
    let mut bed = TestBed::new().map_err(|e| format!("a test bed needs root: {}", weft_kernel::chain(&e)))?;
    let host = bed.add_node("h").map_err(e)?;
    add_pod_bridge(&mut bed, host, GATEWAY, 16).map_err(e)?;
    let server = bed.add_pod(host, "server", POD_BRIDGE, "vserver", SERVER, 16, Some(GATEWAY)).map_err(e)?;
    let client = bed.add_pod(host, "client", POD_BRIDGE, "vclient", CLIENT, 16, Some(GATEWAY)).map_err(e)?;
    let ns = bed.ns(host);
    ns.run(nft::enable_bridge_netfilter).map_err(|e| weft_kernel::chain(&e))?.map_err(|e| weft_kernel::chain(&e))?;

    let objects = objects();
    let mut c = Controller::new(Node { name: "node0".into(), bridge: POD_BRIDGE.into() });
    c.handle(Event::Restarted(objects.clone()));
    let Some(Update::Full(ruleset)) = c.poll_update() else { return Err("no full update for the first ruleset".into()) };
    let elements: usize = ruleset.sets.values().map(|s| s.elements.len()).sum();
    let rules: usize = ruleset.chains.iter().map(|c| c.rules.len()).sum();
    let script = render::full(&ruleset, &render::CounterValues::new());
    println!(
        "policy: {} pods, {} policies ({} on this node's pods); table inet {TABLE}: {} sets, {elements} elements, {rules} rules",
        objects.pods.len(),
        objects.policies.len(),
        objects.policies.iter().filter(|p| objects.pods.iter().any(|pod| pod.node == "node0" && p.selects(pod))).count(),
        ruleset.sets.len()
    );
    println!("{} s per iperf3 run, {rounds} rounds, same host (pod bridge, bridge netfilter on)", d.as_secs());

    let (mut none, mut with) = (Vec::new(), Vec::new());
    let result = (|| -> Result<(), String> {
        for round in 0..rounds {
            for policy in [false, true] {
                let ns = bed.ns(host);
                let applied = ns
                    .run(|| if policy { nft::apply(&script) } else { nft::remove(TABLE) })
                    .map_err(|e| weft_kernel::chain(&e))?;
                applied.map_err(|e| weft_kernel::chain(&e))?;
                let probe = closed_port(&bed, client);
                let expected = if policy { "timed out" } else { "refused" };
                if probe != expected {
                    return Err(format!("a connection to a port no policy allows {probe}, expected {expected} (policy {policy})"));
                }
                let t = iperf3_tcp(&mut bed, server, client, SERVER, d, 1)?;
                let gbps = t.bits_per_second / 1e9;
                println!("round {} {:<12} {gbps:7.2} Gbit/s  retransmits {}", round + 1, if policy { "100 policies" } else { "no policy" }, t.retransmits);
                if policy { with.push(gbps) } else { none.push(gbps) }
            }
        }
        Ok(())
    })();
    let _ = bed.ns(host).run(|| nft::remove(TABLE));
    bed.teardown().map_err(e)?;
    result?;
    let (m0, m1) = (median(none), median(with));
    println!("median: no policy {m0:.2} Gbit/s, 100 policies {m1:.2} Gbit/s; ratio {:.3} (goal ≥ 0.9)", m1 / m0);
    Ok(())
}

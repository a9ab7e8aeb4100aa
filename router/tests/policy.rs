//! NetworkPolicy across hosts with real routers (root needed): two hosts on one segment run
//! `weft router --kube-peers --kubeconfig` against the stand-in of the Kubernetes API
//! (`kube/tests/standin`, in its own namespace on the segment) — the production path: Pods,
//! Namespaces and NetworkPolicies listed and watched over HTTP, converted, enforced by each
//! router with nftables. Pods (addresses from the routers' IPAM) run TCP and UDP servers; each
//! scenario pushes objects to the stand-in, waits until both routers have applied them, and
//! probes a matrix of TCP connects and UDP exchanges between pods on the same host and on
//! different hosts, printing allowed/denied against the expectation. Once over the encrypted
//! sleeve (a password), once over the fast path (kernel VXLAN, no password), each checked to be
//! the overlay in use. Also: `weft status policy`, the drop metrics, and a restart of a router
//! with policy in force (denied stays denied throughout).

#[path = "../../kube/tests/standin/mod.rs"]
mod standin;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use standin::StandIn;
use weft_api::types::{Connection, PolicyStatus};
use weft_kernel::netns::NetNs;
use weft_testbed::routers::{self, RouterOptions, RouterProc, RunDir};
use weft_testbed::topology::SEGMENT_1;
use weft_testbed::servers::{self, EchoServers};
use weft_testbed::{NodeId, TestBed};

const API_ADDR: &str = "192.0.2.2:8080";
const TCP_PORTS: [u16; 2] = [8080, 9090];
const UDP_PORT: u16 = 5353;
const WAIT: Duration = Duration::from_millis(700);

fn weft() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft"))
}

/// A TCP connection from `ns` to `to:port` that gets the server's greeting.
fn tcp(ns: &NetNs, to: Ipv4Addr, port: u16) -> bool {
    servers::tcp_greeted(ns, to, port, WAIT)
}

/// A UDP datagram from `ns` to `to` that comes back (3 tries).
fn udp(ns: &NetNs, to: Ipv4Addr) -> bool {
    servers::udp_echoed(ns, to, UDP_PORT, WAIT / 2, 3)
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Proto {
    Tcp(u16),
    Udp,
}

/// A pod of the test: (name, host index, namespace, labels).
type PodSpec = (&'static str, usize, &'static str, &'static [(&'static str, &'static str)]);

const PODS: [PodSpec; 6] = [
    ("web1", 0, "a", &[("app", "web")]),
    ("client1", 0, "a", &[("app", "client")]),
    ("other1", 0, "b", &[("app", "other")]),
    ("web2", 1, "a", &[("app", "web")]),
    ("client2", 1, "a", &[("app", "client")]),
    ("other2", 1, "b", &[("app", "other")]),
];

struct Cluster {
    bed: TestBed,
    run: RunDir,
    api: StandIn,
    routers: Vec<RouterProc>,
    opts: Vec<RouterOptions>,
    hosts: Vec<NodeId>,
    /// name → (pod node, address)
    pods: Vec<(&'static str, NodeId, Ipv4Addr)>,
    servers: EchoServers,
    failures: Vec<String>,
}

impl Cluster {
    fn up(password: Option<&str>) -> Cluster {
        let mut bed = TestBed::new().expect("namespace tests need root (CI runs as root)");
        let run = RunDir::new(bed.id()).unwrap();
        let seg = bed.add_segment("lan", SEGMENT_1, 24).unwrap();
        let api_node = bed.add_node("api").unwrap();
        bed.attach(api_node, seg, 2).unwrap();
        let listener = bed.ns(api_node).run(|| TcpListener::bind(API_ADDR)).unwrap().unwrap();
        let api = StandIn::serve(listener);
        let kubeconfig = run.path().join("kubeconfig");
        api.write_kubeconfig(&kubeconfig);
        api.put(standin::namespace("a", &[("team", "x")]));
        api.put(standin::namespace("b", &[("team", "y")]));
        let mut hosts = Vec::new();
        for i in 0..2 {
            let h = bed.add_node(&format!("h{}", i + 1)).unwrap();
            bed.attach(h, seg, 11 + i as u8).unwrap();
            api.add_node(&format!("h{}", i + 1), &format!("192.0.2.{}", 11 + i));
            hosts.push(h);
        }
        let mut routers = Vec::new();
        let mut opts = Vec::new();
        for (i, h) in hosts.iter().enumerate() {
            let mut extra: Vec<String> = ["--kube-peers", "--kubeconfig", kubeconfig.to_str().unwrap(), "--node-name", &format!("h{}", i + 1)].iter().map(|s| s.to_string()).collect();
            if i == 0 {
                // Drops logged on one host: nft takes the log rules.
                extra.extend(["--policy-log-drops".to_owned(), "5".to_owned()]);
            }
            let o = RouterOptions { binary: weft(), password: password.map(str::to_owned), extra_args: extra };
            routers.push(routers::start_router(&mut bed, &run, *h, &format!("h{}", i + 1), &[], &o).unwrap());
            opts.push(o);
        }
        let mut c = Cluster { bed, run, api, routers, opts, hosts, pods: Vec::new(), servers: EchoServers::default(), failures: Vec::new() };
        for (i, r) in c.routers.iter().enumerate() {
            routers::wait_for(r, Duration::from_secs(40), |s| s.connections.established == 1 && s.ipam.state == "ready")
                .unwrap_or_else(|e| panic!("h{}: {e}\n{}", i + 1, c.logs()));
        }
        for (j, (name, host, ns, labels)) in PODS.iter().enumerate() {
            let (node, ip) = c.add_pod(*host, j, name);
            c.api.put(standin::pod(ns, name, labels, &format!("h{}", host + 1), &ip.to_string(), &[("http", 8080, "TCP")]));
            c.pods.push((name, node, ip));
        }
        for (_, node, ip) in c.pods.clone() {
            c.servers.start(c.bed.ns(node), ip, &TCP_PORTS, UDP_PORT).expect("start servers");
        }
        c
    }

    fn add_pod(&mut self, host: usize, j: usize, name: &str) -> (NodeId, Ipv4Addr) {
        routers::add_allocated_pod(&mut self.bed, &self.routers[host], self.hosts[host], &format!("pod-{name}"), name, &format!("vp{}", j + 1)).unwrap()
    }

    fn logs(&self) -> String {
        self.routers.iter().enumerate().map(|(i, r)| format!("--- h{} ---\n{}", i + 1, r.log_text())).collect()
    }

    fn pod(&self, name: &str) -> (&NetNs, Ipv4Addr) {
        let (_, node, ip) = self.pods.iter().find(|(n, _, _)| *n == name).expect("known pod");
        (self.bed.ns(*node), *ip)
    }

    fn policy(&self, i: usize) -> PolicyStatus {
        self.routers[i].client().get("/policy").unwrap()
    }

    /// Waits until every router enforces `policies` NetworkPolicies and has applied every update
    /// it started (its status is written after each apply) with `cond` holding.
    fn wait_applied(&self, what: &str, policies: usize, cond: impl Fn(usize, &PolicyStatus) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        for i in 0..self.routers.len() {
            loop {
                let s = self.policy(i);
                if s.state == "enforcing" && s.cluster_policies == policies && cond(i, &s) {
                    break;
                }
                assert!(Instant::now() < deadline, "h{}: {what} not applied within 20 s: {s:?}\n{}", i + 1, self.logs());
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Probes `(from, to, protocol)` and compares with `expect`. A probe that disagrees is tried
    /// again for up to 3 s (an update that needs no change of the policy counts above may still
    /// be on its way), then counted as a failure.
    fn check(&mut self, scenario: &str, matrix: &[(&str, &str, Proto, bool)]) {
        for &(from, to, proto, expect) in matrix {
            let (from_ns, _) = self.pod(from);
            let (_, to_ip) = self.pod(to);
            let probe = || match proto {
                Proto::Tcp(port) => tcp(from_ns, to_ip, port),
                Proto::Udp => udp(from_ns, to_ip),
            };
            let deadline = Instant::now() + Duration::from_secs(3);
            let mut got = probe();
            while got != expect && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
                got = probe();
            }
            let host = |n: &str| PODS.iter().find(|p| p.0 == n).unwrap().1;
            let place = if host(from) == host(to) { "same host" } else { "cross-host" };
            let word = |b: bool| if b { "allowed" } else { "denied" };
            let p = match proto {
                Proto::Tcp(port) => format!("tcp/{port}"),
                Proto::Udp => format!("udp/{UDP_PORT}"),
            };
            let line = format!("{scenario:<26} {from:>8} → {to:<8} {p:<9} {place:<10} expected {:<8} got {}", word(expect), word(got));
            println!("{line}{}", if got == expect { "" } else { "   <-- MISMATCH" });
            if got != expect {
                self.failures.push(line);
            }
        }
    }

    fn down(self) {
        let Cluster { bed, servers, failures, .. } = self;
        drop(servers);
        bed.teardown().unwrap();
        assert!(failures.is_empty(), "{} probes differ from the expected matrix:\n{}", failures.len(), failures.join("\n"));
    }
}

fn http_get(ns: &NetNs, path: &str) -> String {
    ns.run(|| {
        let mut s = TcpStream::connect("127.0.0.1:6782").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    })
    .unwrap()
}

const T8080: Proto = Proto::Tcp(8080);
const T9090: Proto = Proto::Tcp(9090);
const UDP: Proto = Proto::Udp;

fn np(ns: &str, name: &str, spec: Value) -> Value {
    standin::network_policy(ns, name, spec)
}

fn conformance(password: Option<&str>, overlay: &str) {
    let mut c = Cluster::up(password);
    // The overlay under test carries the cross-host traffic.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let conns: Vec<Connection> = c.routers[0].client().get("/connections").unwrap();
        if conns.iter().any(|k| k.overlay == overlay) {
            break;
        }
        assert!(Instant::now() < deadline, "no connection over {overlay}: {conns:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    println!("cross-host traffic over the {overlay}");
    c.wait_applied("the first table", 0, |_, s| s.local_pods == 3);

    // 1. No policy: everything flows.
    c.check("no policy", &[
        ("client1", "web1", T8080, true),
        ("client1", "web2", T9090, true),
        ("other2", "web1", UDP, true),
        ("web2", "other1", T8080, true),
    ]);

    // 2. Default deny ingress in namespace a.
    c.api.put(np("a", "deny-in", json!({"podSelector": {}, "policyTypes": ["Ingress"]})));
    c.wait_applied("deny-in", 1, |_, s| s.policies.len() == 1);
    c.check("default deny ingress (a)", &[
        ("client1", "web1", T8080, false),
        ("client1", "web2", T8080, false),
        ("other2", "web1", UDP, false),
        ("other1", "client2", UDP, false),
        ("web1", "other2", T8080, true),
        ("other1", "other2", UDP, true),
    ]);

    // 3. Allow to app=web: from app=client pods on the named port; UDP from namespaces team=y.
    c.api.put(np(
        "a",
        "web-allow",
        json!({"podSelector": {"matchLabels": {"app": "web"}},
               "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "client"}}}], "ports": [{"port": "http"}]},
                           {"from": [{"namespaceSelector": {"matchLabels": {"team": "y"}}}], "ports": [{"protocol": "UDP", "port": 5353}]}]}),
    ));
    c.wait_applied("web-allow", 2, |_, s| s.policies.len() == 2);
    c.check("pod selector, named port", &[
        ("client1", "web1", T8080, true),
        ("client1", "web2", T8080, true),
        ("client2", "web1", T8080, true),
        ("client1", "web2", T9090, false),
        ("client2", "web1", UDP, false),
        ("other1", "web2", T8080, false),
    ]);
    c.check("namespace selector, UDP", &[
        ("other1", "web1", UDP, true),
        ("other2", "web1", UDP, true),
        ("other1", "web2", UDP, true),
        ("other1", "client2", UDP, false),
    ]);

    // 4. Egress of namespace b: UDP only, to the pod range except web2.
    let web2 = c.pod("web2").1;
    c.api.put(np(
        "b",
        "egress",
        json!({"podSelector": {}, "policyTypes": ["Egress"],
               "egress": [{"to": [{"ipBlock": {"cidr": "10.32.0.0/12", "except": [format!("{web2}/32")]}}], "ports": [{"protocol": "UDP", "port": 5000, "endPort": 6000}]}]}),
    ));
    c.wait_applied("egress", 3, |_, s| s.policies.len() == 3);
    c.check("egress ipBlock except, range", &[
        ("other1", "web1", UDP, true),
        ("other2", "web1", UDP, true),
        ("other1", "web2", UDP, false),
        ("other2", "web2", UDP, false),
        ("other1", "other2", UDP, true),
        ("other1", "other2", T8080, false),
        ("web1", "other2", T8080, true),
    ]);

    // 5. A pod changes: client2 loses its label (set elements only on both hosts).
    let before: Vec<u64> = (0..2).map(|i| c.policy(i).delta_updates).collect();
    let client2 = c.pod("client2").1;
    c.api.put(standin::pod("a", "client2", &[("app", "gone")], "h2", &client2.to_string(), &[]));
    c.wait_applied("client2 relabelled", 3, |i, s| s.delta_updates > before[i]);
    c.check("pod relabelled", &[
        ("client2", "web1", T8080, false),
        ("client2", "web2", T8080, false),
        ("client1", "web2", T8080, true),
    ]);

    // Status, drop counters and metrics on h1, where deny-in and web-allow select web1.
    let s = c.policy(0);
    let out = Command::new(weft()).args(["status", "policy", "--api-socket"]).arg(&c.routers[0].api_socket).output().unwrap();
    println!("weft status policy (h1):\n{}", String::from_utf8_lossy(&out.stdout));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let drops_in: u64 = s.policies.iter().map(|p| p.dropped_ingress).sum();
    let drops_out: u64 = s.policies.iter().map(|p| p.dropped_egress).sum();
    assert!(drops_in > 0 && drops_out > 0, "denied probes counted: {s:?}");
    let metrics = http_get(c.bed.ns(c.hosts[0]), "/metrics");
    let lines: Vec<&str> = metrics.lines().filter(|l| l.starts_with("weft_policy_dropped_packets_total{")).collect();
    println!("{}", lines.join("\n"));
    assert!(lines.iter().any(|l| l.contains("direction=\"ingress\",namespace=\"a\"") && !l.ends_with(" 0")), "{metrics}");
    assert!(lines.iter().any(|l| l.contains("direction=\"egress\",namespace=\"b\",policy=\"egress\"") && !l.ends_with(" 0")), "{metrics}");

    // 6. h2's router restarts with policy in force: on h2, denied stays denied while it is down
    // and while the new one takes over, allowed stays allowed.
    let pid = c.routers[1].pid;
    c.bed.kill(pid).unwrap();
    let mut wrong = Vec::new();
    let t0 = Instant::now();
    let mut restarted = false;
    let mut probes = 0;
    while t0.elapsed() < Duration::from_secs(8) {
        if !restarted && t0.elapsed() > Duration::from_secs(1) {
            let h = c.hosts[1];
            c.routers[1] = routers::start_router(&mut c.bed, &c.run, h, "h2", &[], &c.opts[1]).unwrap();
            restarted = true;
        }
        // Both on h2, so neither depends on the overlay (the sleeve is down with its router).
        let (client2, _) = c.pod("client2");
        let (web2_ns, _) = c.pod("web2");
        let other2 = c.pod("other2").1;
        probes += 1;
        if tcp(client2, web2, 8080) {
            wrong.push(format!("{:?}: client2 → web2 tcp/8080 allowed", t0.elapsed()));
        }
        if !tcp(web2_ns, other2, 8080) {
            wrong.push(format!("{:?}: web2 → other2 tcp/8080 denied", t0.elapsed()));
        }
    }
    routers::wait_for(&c.routers[1], Duration::from_secs(20), |s| s.connections.established == 1).unwrap();
    c.wait_applied("the restarted router's table", 3, |_, s| s.full_updates >= 1);
    println!("router h2 killed and restarted: {probes} probe pairs over 8 s, {} wrong", wrong.len());
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // 7. Everything removed: everything flows again.
    for (ns, name) in [("a", "deny-in"), ("a", "web-allow"), ("b", "egress")] {
        c.api.remove("NetworkPolicy", ns, name);
    }
    c.wait_applied("no policy", 0, |_, s| s.policies.is_empty());
    c.check("policies removed", &[
        ("client2", "web1", T8080, true),
        ("other1", "web2", T9090, true),
        ("other2", "client1", UDP, true),
    ]);

    // `weft reset` on h1 (its router stopped) removes the policy table with the rest.
    let pid = c.routers[0].pid;
    c.bed.kill(pid).unwrap();
    let h1 = c.hosts[0];
    let out = c.bed.run(h1, Command::new(weft()).arg("reset").arg("--api-socket").arg(&c.routers[0].api_socket)).unwrap();
    let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && said.contains("removed the nftables table inet weft-policy"), "{said}");
    let listed = c.bed.run(h1, Command::new("nft").args(["list", "table", "inet", "weft-policy"])).unwrap();
    assert!(!listed.status.success(), "the table is gone");
    c.down();
}

#[test]
fn policy_across_hosts_over_the_sleeve() {
    conformance(Some("a policy test password"), "sleeve");
}

#[test]
fn policy_across_hosts_over_the_fast_path() {
    conformance(None, "fastpath");
}

//! NetworkPolicy conformance on real namespaces, real nftables and real traffic (needs root).
//!
//! Two hosts, each with the pod bridge `weft`; their bridges are joined by a veth named `weft-tap`
//! on both sides — a port of the bridge carrying the other host's pods' frames, as the sleeve's
//! TAP (and the fast path's VXLAN device) does — so pods on different hosts talk over L2 through
//! it and each host enforces with its own controller and its own table. Host 1 also routes to an
//! outside node `ext` (192.0.2.12). Every pod and `ext` run TCP servers (which answer a byte on
//! accept and then echo) and a UDP echo server; each scenario applies policies through the
//! controller and the nft backend, probes a matrix of TCP connects and UDP exchanges, prints
//! allowed/denied next to the expectation, and fails on any difference.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use weft_kernel::netlink::Route;
use weft_kernel::netns::NetNs;
use weft_policy::controller::{Controller, Event, Update};
use weft_policy::model::{
    ContainerPort, Direction, IpBlock, LabelSelector, Labels, Namespace, NetworkPolicy, Peer, Pod, PolicyPort, PortSpec,
    Protocol, Rule,
};
use weft_policy::{Node, TABLE, nft};
use weft_testbed::topology::{POD_BRIDGE, add_pod_bridge};
use weft_testbed::servers::{self, EchoServers};
use weft_testbed::{NodeId, TestBed};

const TCP_PORTS: [u16; 2] = [8080, 9090];
const UDP_PORT: u16 = 5353;
const WAIT: Duration = Duration::from_millis(700);
const EXT: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 12);

/// A TCP connection from `ns` to `to:port` that gets the server's greeting.
fn tcp(ns: &NetNs, to: Ipv4Addr, port: u16) -> bool {
    servers::tcp_greeted(ns, to, port, WAIT)
}

/// A UDP datagram from `ns` to `to` that comes back (4 tries).
fn udp(ns: &NetNs, to: Ipv4Addr, port: u16) -> bool {
    servers::udp_echoed(ns, to, port, WAIT / 2, 4)
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn policy(ns: &str, name: &str, selector: LabelSelector, types: &[Direction], ingress: Vec<Rule>, egress: Vec<Rule>) -> NetworkPolicy {
    NetworkPolicy { namespace: ns.into(), name: name.into(), pod_selector: selector, policy_types: Some(types.to_vec()), ingress, egress }
}

fn pods_peer(pods: Option<LabelSelector>, namespaces: Option<LabelSelector>) -> Peer {
    Peer::Pods { pod_selector: pods, namespace_selector: namespaces }
}

/// A pod of the test: name, host index, namespace, labels, address, container ports.
type PodSpec = (&'static str, usize, &'static str, &'static [(&'static str, &'static str)], Ipv4Addr, Vec<ContainerPort>);

struct Host {
    node: NodeId,
    controller: Controller,
}

struct Cluster {
    bed: TestBed,
    hosts: Vec<Host>,
    /// name → (namespace node, address)
    ends: Vec<(&'static str, NodeId, Ipv4Addr)>,
    failures: Vec<String>,
}

impl Cluster {
    fn ns(&self, name: &str) -> &NetNs {
        let (_, node, _) = self.ends.iter().find(|(n, _, _)| *n == name).expect("known endpoint");
        self.bed.ns(*node)
    }

    fn ip(&self, name: &str) -> Ipv4Addr {
        self.ends.iter().find(|(n, _, _)| *n == name).expect("known endpoint").2
    }

    /// Feeds `event` to every host's controller and applies what they ask for.
    fn event(&mut self, event: Event) -> Vec<&'static str> {
        let mut kinds = Vec::new();
        for h in &mut self.hosts {
            h.controller.handle(event.clone());
            let Some(update) = h.controller.poll_update() else { continue };
            kinds.push(if matches!(update, Update::Full(_)) { "full" } else { "delta" });
            let ns = self.bed.ns(h.node);
            let result = ns
                .run(|| {
                    let counters = nft::read_counters(TABLE)?;
                    nft::apply(&update.script(&counters))
                })
                .expect("enter host namespace");
            h.controller.applied(result.is_ok());
            if let Err(e) = result {
                panic!("apply on {}: {e}\n{}", ns.name(), update.script(&Default::default()));
            }
        }
        kinds
    }

    /// Probes `(from, to, protocol, port)` and compares with `expect`.
    fn check(&mut self, scenario: &str, matrix: &[(&str, &str, Protocol, u16, bool)]) {
        for &(from, to, proto, port, expect) in matrix {
            let to_ip = self.ip(to);
            let got = match proto {
                Protocol::Tcp => tcp(self.ns(from), to_ip, port),
                _ => udp(self.ns(from), to_ip, port),
            };
            let word = |b: bool| if b { "allowed" } else { "denied" };
            let line = format!("{scenario:<28} {from:>9} → {to:<9} {}/{port:<5} expected {:<8} got {}", proto.keyword(), word(expect), word(got));
            println!("{line}{}", if got == expect { "" } else { "   <-- MISMATCH" });
            if got != expect {
                self.failures.push(line);
            }
        }
    }
}

#[test]
fn network_policy_conformance() {
    let mut bed = TestBed::new().unwrap_or_else(|e| panic!("{}", weft_kernel::chain(&e)));
    let h1 = bed.add_node("h1").expect("host 1");
    let h2 = bed.add_node("h2").expect("host 2");
    add_pod_bridge(&mut bed, h1, Ipv4Addr::new(10, 32, 1, 1), 12).expect("bridge h1");
    add_pod_bridge(&mut bed, h2, Ipv4Addr::new(10, 32, 2, 1), 12).expect("bridge h2");
    // The overlay port: one veth, `weft-tap` on both hosts, on both bridges.
    let h2ns = bed.ns(h2).name().to_owned();
    let h2_handle = NetNs::open(&h2ns).expect("open h2 namespace");
    bed.netlink(h1).add_veth_pair_into("weft-tap", "weft-tap", &h2_handle).expect("overlay veth");
    drop(h2_handle);
    for h in [h1, h2] {
        bed.netlink(h).set_master("weft-tap", POD_BRIDGE).expect("tap on bridge");
        bed.netlink(h).set_up("weft-tap").expect("tap up");
        bed.ns(h).run(nft::enable_bridge_netfilter).expect("enter").expect("bridge netfilter");
    }
    // The outside: ext on a segment with h1, which routes.
    let seg = bed.add_segment("lan", Ipv4Addr::new(192, 0, 2, 0), 24).expect("segment");
    let ext = bed.add_node("ext").expect("ext");
    let h1_lan = bed.attach(h1, seg, 11).expect("attach h1");
    bed.attach(ext, seg, 12).expect("attach ext");
    bed.enable_forwarding(h1).expect("forwarding");
    bed.add_route(ext, &Route { dest: Ipv4Addr::new(10, 32, 0, 0).into(), prefix_len: 12, via: Some(h1_lan.addr.into()), dev: None })
        .expect("route to pods");

    let http = |port| ContainerPort { name: Some("http".into()), port, protocol: Protocol::Tcp };
    let specs: [PodSpec; 6] = [
        ("a-web", 0, "a", &[("app", "web")], Ipv4Addr::new(10, 32, 1, 10), vec![http(8080)]),
        ("a-client", 0, "a", &[("app", "client")], Ipv4Addr::new(10, 32, 1, 11), vec![]),
        ("b-client", 0, "b", &[("app", "client")], Ipv4Addr::new(10, 32, 1, 12), vec![]),
        ("b-other", 0, "b", &[("app", "other")], Ipv4Addr::new(10, 32, 1, 13), vec![]),
        ("c-client", 0, "c", &[("app", "client")], Ipv4Addr::new(10, 32, 1, 14), vec![]),
        ("b-remote", 1, "b", &[("app", "client")], Ipv4Addr::new(10, 32, 2, 10), vec![http(9090)]),
    ];
    let host_ids = [h1, h2];
    let mut ends = vec![("h1", h1, Ipv4Addr::new(10, 32, 1, 1)), ("ext", ext, EXT)];
    let mut pods = Vec::new();
    for (i, (name, host, ns, l, ip, ports)) in specs.iter().enumerate() {
        let gw = if *host == 0 { Ipv4Addr::new(10, 32, 1, 1) } else { Ipv4Addr::new(10, 32, 2, 1) };
        let node = bed.add_pod(host_ids[*host], name, POD_BRIDGE, &format!("vp{i}"), *ip, 12, Some(gw)).expect("pod");
        ends.push((*name, node, *ip));
        pods.push(Pod {
            namespace: (*ns).into(),
            name: (*name).into(),
            labels: labels(l),
            ip: Some(*ip),
            node: if *host == 0 { "h1".into() } else { "h2".into() },
            ports: ports.clone(),
        });
    }
    let mut servers = EchoServers::default();
    for (_, node, ip) in &ends {
        servers.start(bed.ns(*node), *ip, &TCP_PORTS, UDP_PORT).expect("start servers");
    }
    let hosts = ["h1", "h2"]
        .iter()
        .zip(host_ids)
        .map(|(n, node)| Host { node, controller: Controller::new(Node { name: (*n).into(), bridge: POD_BRIDGE.into() }) })
        .collect();
    let mut c = Cluster { bed, hosts, ends, failures: Vec::new() };
    for (n, team) in [("a", None), ("b", Some("x")), ("c", Some("y"))] {
        c.event(Event::NamespaceApplied(Namespace { name: n.into(), labels: team.map(|t| labels(&[("team", t)])).unwrap_or_default() }));
    }
    for p in &pods {
        c.event(Event::PodApplied(p.clone()));
    }
    use Protocol::{Tcp, Udp};

    c.check("no policy", &[
        ("b-client", "a-web", Tcp, 8080, true),
        ("b-remote", "a-web", Udp, UDP_PORT, true),
        ("ext", "a-web", Tcp, 8080, true),
        ("a-web", "ext", Tcp, 8080, true),
    ]);

    // An open connection, to see it survive the policies that follow (conntrack).
    let web = c.ip("a-web");
    let mut open = c.ns("b-client").run(|| TcpStream::connect_timeout(&SocketAddr::from((web, 9090)), WAIT)).expect("enter").expect("open connection");
    open.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut b = [0u8; 1];
    open.read_exact(&mut b).expect("first byte");

    let deny_a = policy("a", "default-deny", LabelSelector::everything(), &[Direction::Ingress], vec![], vec![]);
    c.event(Event::PolicyApplied(deny_a.clone()));
    c.check("default deny ingress (a)", &[
        ("b-client", "a-web", Tcp, 8080, false),
        ("a-client", "a-web", Tcp, 8080, false),
        ("b-remote", "a-web", Udp, UDP_PORT, false),
        ("ext", "a-web", Tcp, 8080, false),
        ("h1", "a-web", Tcp, 8080, true), // the node itself (kubelet probes)
        ("a-web", "b-client", Tcp, 8080, true),
        ("a-web", "ext", Tcp, 8080, true),
    ]);
    let established = open.write_all(b"ping").is_ok() && {
        let mut buf = [0u8; 4];
        open.read_exact(&mut buf).is_ok() && &buf == b"ping"
    };
    println!("connection opened before the deny: {}", if established { "still flows" } else { "cut" });
    if !established {
        c.failures.push("an established connection was cut by a new policy".into());
    }

    let from_team_x = policy("a", "from-team-x", LabelSelector::labels([("app", "web")]), &[Direction::Ingress],
        vec![Rule { peers: vec![pods_peer(None, Some(LabelSelector::labels([("team", "x")])))], ports: vec![] }], vec![]);
    c.event(Event::PolicyApplied(from_team_x.clone()));
    c.check("allow from namespace", &[
        ("b-client", "a-web", Tcp, 8080, true),
        ("b-other", "a-web", Udp, UDP_PORT, true),
        ("b-remote", "a-web", Tcp, 9090, true),
        ("c-client", "a-web", Tcp, 8080, false),
        ("a-client", "a-web", Tcp, 8080, false),
    ]);
    c.event(Event::PolicyDeleted("a".into(), "from-team-x".into()));

    let from_clients = policy("a", "from-clients", LabelSelector::labels([("app", "web")]), &[Direction::Ingress],
        vec![Rule { peers: vec![pods_peer(Some(LabelSelector::labels([("app", "client")])), None)], ports: vec![] }], vec![]);
    c.event(Event::PolicyApplied(from_clients));
    c.check("allow from pod label", &[
        ("a-client", "a-web", Tcp, 8080, true),
        ("b-client", "a-web", Tcp, 8080, false),
    ]);
    c.event(Event::PolicyDeleted("a".into(), "from-clients".into()));

    let both = policy("a", "both", LabelSelector::labels([("app", "web")]), &[Direction::Ingress],
        vec![Rule { peers: vec![pods_peer(Some(LabelSelector::labels([("app", "client")])), Some(LabelSelector::labels([("team", "x")])))], ports: vec![] }], vec![]);
    c.event(Event::PolicyApplied(both));
    c.check("both selectors", &[
        ("b-client", "a-web", Tcp, 8080, true),
        ("b-remote", "a-web", Tcp, 8080, true),
        ("b-other", "a-web", Tcp, 8080, false),
        ("c-client", "a-web", Tcp, 8080, false),
        ("a-client", "a-web", Tcp, 8080, false),
    ]);
    // Pod churn: b-other becomes a client — a set element change, no new rules.
    let mut relabelled = pods[3].clone();
    relabelled.labels = labels(&[("app", "client")]);
    let kinds = c.event(Event::PodApplied(relabelled));
    println!("relabel b-other: updates {kinds:?}");
    if kinds.iter().any(|k| *k != "delta") || kinds.is_empty() {
        c.failures.push(format!("relabelling a pod gave updates {kinds:?}, not deltas"));
    }
    c.check("both selectors, relabelled", &[("b-other", "a-web", Tcp, 8080, true)]);
    c.event(Event::PodApplied(pods[3].clone()));
    c.event(Event::PolicyDeleted("a".into(), "both".into()));

    let ports = policy("a", "ports", LabelSelector::labels([("app", "web")]), &[Direction::Ingress],
        vec![Rule { peers: vec![], ports: vec![
            PolicyPort { protocol: Tcp, port: PortSpec::Named("http".into()) },
            PolicyPort { protocol: Udp, port: PortSpec::Range { start: 5000, end: 5400 } },
        ] }], vec![]);
    c.event(Event::PolicyApplied(ports));
    c.check("named port, port range", &[
        ("b-client", "a-web", Tcp, 8080, true),
        ("b-client", "a-web", Tcp, 9090, false),
        ("b-remote", "a-web", Udp, UDP_PORT, true),
        ("ext", "a-web", Tcp, 8080, true),
    ]);
    c.event(Event::PolicyDeleted("a".into(), "ports".into()));

    let block = |cidr: &str, except: &[&str]| Peer::IpBlock(IpBlock { cidr: cidr.parse().expect("cidr"), except: except.iter().map(|e| e.parse().expect("cidr")).collect() });
    let ipblock = policy("a", "ipblock", LabelSelector::labels([("app", "web")]), &[Direction::Ingress],
        vec![Rule { peers: vec![block("10.32.0.0/12", &["10.32.1.13/32", "10.32.2.0/24"]), block("192.0.2.0/24", &["192.0.2.128/25"])], ports: vec![] }], vec![]);
    c.event(Event::PolicyApplied(ipblock));
    c.check("ipBlock with except", &[
        ("b-client", "a-web", Tcp, 8080, true),
        ("b-other", "a-web", Tcp, 8080, false),
        ("b-remote", "a-web", Tcp, 8080, false),
        ("ext", "a-web", Tcp, 8080, true),
    ]);
    c.event(Event::PolicyDeleted("a".into(), "ipblock".into()));
    c.event(Event::PolicyDeleted("a".into(), "default-deny".into()));

    c.event(Event::PolicyApplied(policy("b", "deny-egress", LabelSelector::everything(), &[Direction::Egress], vec![], vec![])));
    c.check("default deny egress (b)", &[
        ("b-client", "a-web", Tcp, 8080, false),
        ("b-remote", "a-web", Udp, UDP_PORT, false),
        ("b-client", "ext", Tcp, 8080, false),
        ("b-client", "h1", Tcp, 8080, false), // the node's own address: egress applies
        ("a-web", "h1", Tcp, 8080, true),
        ("a-web", "b-client", Tcp, 8080, true),
        ("a-web", "b-remote", Tcp, 9090, true),
    ]);
    c.event(Event::PolicyApplied(policy("b", "to-lan", LabelSelector::labels([("app", "client")]), &[Direction::Egress], vec![],
        vec![Rule { peers: vec![block("192.0.2.0/24", &[])], ports: vec![PolicyPort { protocol: Tcp, port: PortSpec::Range { start: 8000, end: 8100 } }] }])));
    c.check("egress to a CIDR", &[
        ("b-client", "ext", Tcp, 8080, true),
        ("b-client", "ext", Tcp, 9090, false),
        ("b-client", "a-web", Tcp, 8080, false),
        ("b-other", "ext", Tcp, 8080, false),
    ]);
    c.event(Event::PolicyDeleted("b".into(), "to-lan".into()));
    c.event(Event::PolicyDeleted("b".into(), "deny-egress".into()));
    c.check("all removed", &[
        ("b-client", "a-web", Tcp, 8080, true),
        ("b-client", "ext", Tcp, 8080, true),
        ("c-client", "a-web", Udp, UDP_PORT, true),
    ]);

    // Drops were counted per policy: put default-deny back, knock, read the counter.
    c.event(Event::PolicyApplied(deny_a));
    c.check("counted", &[("c-client", "a-web", Tcp, 8080, false)]);
    let h1node = c.hosts[0].node;
    let drops = c.bed.ns(h1node).run(|| nft::read_drops(TABLE)).expect("enter").expect("read counters");
    println!("drops on h1: {drops:?}");
    let counted = drops.iter().find(|d| d.name == "default-deny" && d.direction == Direction::Ingress).map_or(0, |d| d.packets);
    if counted == 0 {
        c.failures.push("no drop counted for ingress/a/default-deny".into());
    }
    drop(open);
    drop(servers);
    let Cluster { bed, failures, .. } = c;
    bed.teardown().unwrap_or_else(|e| panic!("teardown: {}", weft_kernel::chain(&e)));
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
}

/// Time to apply, in a host's namespace, the full ruleset of a 1000-pod, 100-policy cluster and
/// then one pod's delta (printed; bounded loosely so a pathological slowdown fails).
#[test]
fn apply_time_1000_pods_100_policies() {
    let mut bed = TestBed::new().unwrap_or_else(|e| panic!("{}", weft_kernel::chain(&e)));
    let h = bed.add_node("h").expect("host");
    let ns = |i: u32| format!("ns{}", i % 10);
    let mk_pod = |i: u32| Pod {
        namespace: ns(i),
        name: format!("pod{i}"),
        labels: labels(&[("app", &format!("a{}", i % 20))]),
        ip: Some(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 32, 0, 10)) + i)),
        node: format!("node{}", i % 4),
        ports: vec![ContainerPort { name: Some("http".into()), port: 8000 + (i % 7) as u16, protocol: Protocol::Tcp }],
    };
    let mut c = Controller::new(Node { name: "node0".into(), bridge: POD_BRIDGE.into() });
    for i in 0..10 {
        c.handle(Event::NamespaceApplied(Namespace { name: ns(i), labels: labels(&[("team", &format!("t{}", i % 3))]) }));
    }
    for i in 0..1000 {
        c.handle(Event::PodApplied(mk_pod(i)));
    }
    for i in 0..100 {
        c.handle(Event::PolicyApplied(policy(&ns(i), &format!("pol{i}"), LabelSelector::labels([("app", format!("a{}", i % 20).as_str())]),
            &[Direction::Ingress, Direction::Egress],
            vec![Rule {
                peers: vec![pods_peer(Some(LabelSelector::labels([("app", format!("a{}", (i + 1) % 20).as_str())])), Some(LabelSelector::labels([("team", "t1")])))],
                ports: vec![PolicyPort { protocol: Protocol::Tcp, port: PortSpec::Named("http".into()) }, PolicyPort { protocol: Protocol::Udp, port: PortSpec::Range { start: 5000, end: 5100 } }],
            }],
            vec![Rule { peers: vec![Peer::IpBlock(IpBlock { cidr: "10.0.0.0/8".parse().expect("cidr"), except: vec!["10.32.0.0/12".parse().expect("cidr")] })], ports: vec![] }])));
    }
    let time_update = |c: &mut Controller| {
        let t = std::time::Instant::now();
        let update = c.poll_update().expect("an update");
        let compiled = t.elapsed();
        let script = update.script(&Default::default());
        let t = std::time::Instant::now();
        let result = bed.ns(h).run(|| nft::apply(&script)).expect("enter");
        let applied = t.elapsed();
        c.applied(result.is_ok());
        result.unwrap_or_else(|e| panic!("apply: {e}"));
        (matches!(update, Update::Full(_)), script.len(), compiled, applied)
    };
    let full = time_update(&mut c);
    c.handle(Event::PodApplied(mk_pod(1000)));
    let delta = time_update(&mut c);
    println!("full update:  {} bytes, compile {:?}, nft -f {:?}", full.1, full.2, full.3);
    println!("pod delta:    {} bytes, compile {:?}, nft -f {:?}", delta.1, delta.2, delta.3);
    assert!(full.0 && !delta.0, "the first update is full, a pod's is a delta");
    assert!(full.3 < Duration::from_secs(10) && delta.3 < Duration::from_secs(5), "applying took far too long");
    bed.teardown().unwrap_or_else(|e| panic!("teardown: {}", weft_kernel::chain(&e)));
}

//! What an operator sees: the `weft` CLI (text and `--json`) against real routers, a peer with
//! the wrong password refused on both sides with its reason shown, and the Prometheus endpoint
//! scraped during traffic, with malformed, foreign and replayed datagrams counted as drops.
//! Root needed.

mod common;

use std::net::{Ipv4Addr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Mesh, weft};
use weft_api::types::{Connection, ConnectionState, IpamShare, Peer, Status};
use weft_testbed::{NodeId, TestBed, topology};
use weft_testbed::routers::{self, RouterOptions, RouterProc, RunDir};

fn cli(r: &RouterProc, args: &[&str]) -> (bool, String) {
    let out = Command::new(weft()).args(args).arg("--api-socket").arg(&r.api_socket).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
}

/// Scrapes the router's metrics from inside its host's namespace.
fn metrics(bed: &TestBed, host: NodeId) -> String {
    let out = bed.run(host, Command::new("curl").args(["-sf", "http://127.0.0.1:6782/metrics"])).unwrap();
    assert!(out.status.success(), "metrics endpoint did not answer");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

#[test]
fn the_cli_shows_the_mesh_in_text_and_json() {
    let m = Mesh::up(Some("weft-test-password"), 1);
    let (a, b) = (&m.routers[0], &m.routers[1]);

    let (ok, text) = cli(a, &["status"]);
    assert!(ok, "{text}");
    println!("weft status (a):\n{text}");
    for field in ["Version:", "Name:", "(a)", "Encryption: enabled", "PeerDiscovery: enabled", "Targets: 1", "Connections:", "Peers: 4", "IPAM: ready", "Range: 10.32.0.0/12", "PodUDPCoalesce: 20 µs"] {
        assert!(text.contains(field), "missing {field:?} in:\n{text}");
    }
    let (_, text) = cli(a, &["status", "peers"]);
    println!("weft status peers (a):\n{text}");
    let heads: Vec<&str> = text.lines().filter(|l| !l.starts_with(' ')).collect();
    assert_eq!(heads.len(), 4, "{text}");
    assert!(heads.iter().any(|l| l.contains("(c)  via ") && l.ends_with("(b)")), "{text}");
    assert!(text.lines().filter(|l| l.starts_with("   ") && l.contains("established")).count() >= 6, "{text}");
    let (_, text) = cli(b, &["status", "connections"]);
    println!("weft status connections (b):\n{text}");
    let up: Vec<&str> = text.lines().filter(|l| l.contains(" established ")).collect();
    assert!(up.len() >= 3 && up.iter().all(|l| (l.starts_with("<- ") || l.starts_with("-> ")) && l.contains("established sleeve   encrypted   mtu=1376  rtt=")), "{text}");
    let (_, text) = cli(a, &["status", "ipam"]);
    assert_eq!(text.lines().filter(|l| l.contains("262144 IPs ( 25.0% of total)")).count(), 4, "{text}");
    let (_, text) = cli(a, &["status", "targets"]);
    assert_eq!(text.trim(), format!("{}:6783", m.cluster.all_addrs[1][0]), "{text}");

    // JSON: the documented fields, parsed.
    let (_, json) = cli(a, &["status", "--json"]);
    let s: Status = serde_json::from_str(&json).unwrap();
    assert!(s.encryption && s.peer_discovery && s.peers == 4 && s.ipam.state == "ready" && s.connections.established >= 1);
    // Encrypted without trusted subnets, only the sleeve carries the pods' traffic: their UDP is
    // coalesced by default.
    assert_eq!(s.pod_udp_coalesce_us, weft_kernel::offload::POD_GRO_FLUSH_TIMEOUT.as_micros() as u64);
    let (_, json) = cli(a, &["status", "peers", "--json"]);
    let peers: Vec<Peer> = serde_json::from_str(&json).unwrap();
    assert!(peers.iter().all(|p| p.reachable && !p.name.is_empty()));
    let (_, json) = cli(b, &["status", "connections", "--json"]);
    let conns: Vec<Connection> = serde_json::from_str(&json).unwrap();
    let up: Vec<&Connection> = conns.iter().filter(|c| c.state == ConnectionState::Established).collect();
    assert!(up.len() >= 3 && up.iter().all(|c| c.overlay == "sleeve" && c.encrypted && c.mtu == Some(1376) && c.rtt_ms.is_some()), "{conns:?}");
    let (_, json) = cli(a, &["status", "ipam", "--json"]);
    let shares: Vec<IpamShare> = serde_json::from_str(&json).unwrap();
    assert_eq!(shares.iter().map(|s| s.size).sum::<u64>(), 1 << 20);
    let (_, json) = cli(a, &["status", "targets", "--json"]);
    let targets: Vec<String> = serde_json::from_str(&json).unwrap();
    assert_eq!(targets.len(), 1);

    // `weft connect` and `weft forget` change the targets.
    let (ok, text) = cli(a, &["connect", "198.51.100.99"]);
    assert!(ok, "{text}");
    let (_, text) = cli(a, &["status", "targets"]);
    assert!(text.contains("198.51.100.99:6783"), "{text}");
    let (ok, _) = cli(a, &["forget", "198.51.100.99"]);
    assert!(ok);
    // Host names are looked up beside the event loop; one that names this router itself is
    // refused with that reason, and one that does not resolve leaves the router answering.
    assert!(cli(a, &["connect", "localhost"]).0 && cli(a, &["connect", "no-such-host.invalid"]).0);
    let t0 = Instant::now();
    loop {
        let conns: Vec<Connection> = a.client().get("/connections").unwrap();
        if conns.iter().any(|c| c.reason.as_deref().is_some_and(|r| r.contains("connected to itself"))) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(15), "no self-connection reason: {conns:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(cli(a, &["forget", "localhost"]).0 && cli(a, &["forget", "no-such-host.invalid"]).0);
    assert!(cli(a, &["status"]).0);
    let (_, text) = cli(a, &["status", "targets"]);
    assert!(!text.contains("198.51.100.99"), "{text}");

    // A pod's UDP is held only while it sends fast: a's pod floods b's, a holds it, then lets go.
    assert!((s.pod_udp_coalesce_above, s.pod_udp_coalesce_at_attach(), s.pod_udp_coalesce_ports.len()) == (20_000, None, 0), "{s:?}");
    let (ns, to) = (m.bed.ns(m.pods[0][0].0), m.pods[1][0].1);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let hold = weft_kernel::offload::POD_GRO_FLUSH_TIMEOUT;
    let mut a_host = weft_kernel::netlink::Handle::open_in(m.bed.ns(m.cluster.hosts[0])).unwrap();
    // Once held, what the CLI, the metrics and the port say is read while the flood goes on.
    let (held, seen, sent) = std::thread::scope(|sc| {
        let sender = sc.spawn(|| ns.run(|| udp_flood(to, &stop)));
        let held = routers::wait_for(a, Duration::from_secs(4), |s| s.pod_udp_coalesce_ports == ["vp1"]);
        let seen = held.is_ok().then(|| {
            let (_, text) = cli(a, &["status"]);
            (text, metric(&metrics(&m.bed, m.cluster.hosts[0]), "weft_pod_udp_held_ports"), a_host.pod_udp_coalescing_is("vp1", Some(hold)).unwrap())
        });
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        (held, seen, sender.join().unwrap().unwrap())
    });
    held.unwrap_or_else(|e| panic!("a's pod port not held after {sent} datagrams: {e}\n{}", m.logs()));
    let (text, gauge, on_port) = seen.unwrap();
    assert!(text.contains("PodUDPCoalesce: 20 µs, pods sending ≥ 20000 packets/s (now vp1)"), "{text}");
    assert_eq!(gauge, 1, "weft_pod_udp_held_ports");
    assert!(on_port, "held in the status, not on the port");
    assert!(a.log_text().contains("holding the pod's datagrams"), "{}", a.log_text());
    let b_status: Status = m.routers[1].client().get("/status").unwrap();
    assert!(b_status.pod_udp_coalesce_ports.is_empty(), "b's pod only received: {b_status:?}");
    routers::wait_for(a, Duration::from_secs(5), |s| s.pod_udp_coalesce_ports.is_empty()).unwrap();
    assert!(a_host.pod_udp_coalescing_is("vp1", None).unwrap(), "let go in the status, still held on the port");
    assert_eq!(metric(&metrics(&m.bed, m.cluster.hosts[0]), "weft_pod_udp_held_ports"), 0);
    println!("a's pod held after {sent} datagrams, let go once quiet");
    m.down();
}

/// Sends 64-byte datagrams to `to` as fast as it can until `stop` (at most 4 s and 2 million);
/// returns how many.
fn udp_flood(to: Ipv4Addr, stop: &std::sync::atomic::AtomicBool) -> u64 {
    let sock = UdpSocket::bind("0.0.0.0:0").unwrap();
    let (start, mut sent) = (Instant::now(), 0u64);
    while !stop.load(std::sync::atomic::Ordering::Relaxed) && start.elapsed() < Duration::from_secs(4) && sent < 2_000_000 {
        if sock.send_to(&[0u8; 64], (to, 9)).is_ok() {
            sent += 1;
        }
    }
    sent
}

#[test]
fn a_peer_with_the_wrong_password_is_refused_on_both_sides_and_never_joins_the_topology() {
    let mut bed = TestBed::new().expect("namespace tests need root (CI runs as root)");
    let run = RunDir::new(bed.id()).unwrap();
    let lan = topology::shared_segment(&mut bed, 3).unwrap();
    let good = RouterOptions { binary: weft(), password: Some("the-right-password".into()), extra_args: vec![] };
    let bad = RouterOptions { password: Some("the-wrong-password".into()), ..good.clone() };
    let h1 = routers::start_router(&mut bed, &run, lan.hosts[0], "h1", &[], &good).unwrap();
    let h2 = routers::start_router(&mut bed, &run, lan.hosts[1], "h2", &[lan.links[0].addr], &good).unwrap();
    let intruder = routers::start_router(&mut bed, &run, lan.hosts[2], "intruder", &[lan.links[0].addr], &bad).unwrap();
    routers::wait_for(&h2, Duration::from_secs(30), |s| s.connections.established == 1).unwrap();
    let s = routers::wait_for(&intruder, Duration::from_secs(30), |s| s.connections.failed >= 1).unwrap();
    assert_eq!(s.connections.established, 0);
    let (_, text) = cli(&intruder, &["status", "connections"]);
    println!("intruder's connections:\n{text}");
    assert!(text.contains("retrying") && text.contains("wrong cluster password") && text.contains("retry in"), "{text}");
    let conns: Vec<Connection> = intruder.client().get("/connections").unwrap();
    assert!(conns[0].reason.as_deref().is_some_and(|r| r.contains("wrong cluster password")) && conns[0].retry_in_secs.is_some());
    std::thread::sleep(Duration::from_secs(2));
    for r in [&h1, &h2] {
        let peers: Vec<Peer> = r.client().get("/peers").unwrap();
        assert_eq!(peers.len(), 2, "the intruder appears in the topology: {peers:?}");
        assert!(peers.iter().all(|p| p.nickname != "intruder"));
    }
    let log = h1.log_text();
    assert!(log.contains("mesh connection refused: wrong cluster password"), "{log}");
    assert!(!log.contains("the-wrong-password") && !log.contains("the-right-password"), "a password reached the log");
    bed.teardown().unwrap();
}

#[test]
fn metrics_count_traffic_and_drop_malformed_foreign_and_replayed_datagrams() {
    let m = Mesh::up(Some("weft-test-password"), 1);
    let (a_host, b_host) = (m.cluster.hosts[0], m.cluster.hosts[1]);
    let (a_pod, c_addr) = (m.pods[0][0].0, m.pods[2][0].1);
    let before = metrics(&m.bed, a_host);
    for _ in 0..5 {
        assert!(m.bed.ping(a_pod, c_addr).unwrap());
    }
    let during = metrics(&m.bed, a_host);
    println!("{during}");
    for series in ["weft_frames_total{direction=\"out\",overlay=\"sleeve\"}", "weft_frames_total{direction=\"in\",overlay=\"sleeve\"}", "weft_datagrams_total{direction=\"out\"}", "weft_tap_frames_total{direction=\"from_bridge\"}"] {
        assert!(metric(&during, series) > metric(&before, series), "{series} did not grow");
    }
    assert_eq!(metric(&during, "weft_connections{state=\"established\",overlay=\"sleeve\",encryption=\"on\"}"), 1);
    assert_eq!(metric(&during, "weft_peers"), 4);
    assert!(metric(&during, "weft_ipam_addresses_owned") == 1 << 18);

    // Malformed and foreign datagrams sent to A's sleeve port from B's host.
    let a_sleeve = (m.cluster.host_addrs[0], 6784);
    let sock = m.bed.ns(b_host).run(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))).unwrap().unwrap();
    sock.send_to(b"short", a_sleeve).unwrap();
    let mut foreign = [0u8; 80];
    foreign[0] = 1; // version 1
    foreign[1] = 2; // sealed
    foreign[8..12].copy_from_slice(&0x0bad_cafe_u32.to_be_bytes());
    for _ in 0..3 {
        sock.send_to(&foreign, a_sleeve).unwrap();
    }

    // Replayed datagrams: B's host duplicates every sleeve datagram it sends to A (nftables
    // `dup`), so A sees each counter twice and must drop the copy.
    let nft = |args: &str| {
        let out = m.bed.run(b_host, Command::new("nft").args(args.split(' '))).unwrap();
        assert!(out.status.success(), "nft {args}: {}", String::from_utf8_lossy(&out.stderr));
    };
    nft("add table ip weftdup");
    nft("add chain ip weftdup out { type filter hook output priority 0 ; }");
    nft(&format!("add rule ip weftdup out ip daddr {} udp dport 6784 dup to {}", a_sleeve.0, a_sleeve.0));
    for _ in 0..5 {
        assert!(m.bed.ping(a_pod, c_addr).unwrap(), "traffic stops when datagrams are duplicated");
    }
    nft("delete table ip weftdup");
    let t0 = Instant::now();
    let after = loop {
        let after = metrics(&m.bed, a_host);
        if metric(&after, "weft_drops_total{reason=\"replay\"}") >= 5 || t0.elapsed() > Duration::from_secs(5) {
            break after;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    println!("{}", after.lines().filter(|l| l.starts_with("weft_drops_total")).collect::<Vec<_>>().join("\n"));
    assert!(metric(&after, "weft_drops_total{reason=\"malformed\"}") >= 1);
    assert!(metric(&after, "weft_drops_total{reason=\"unknown_session\"}") >= 3);
    assert!(metric(&after, "weft_drops_total{reason=\"replay\"}") >= 5);
    m.down();
}

#[test]
fn a_blocked_sleeve_port_is_reported_on_the_connection_until_it_opens_again() {
    let mut bed = TestBed::new().expect("namespace tests need root (CI runs as root)");
    let run = RunDir::new(bed.id()).unwrap();
    let lan = topology::shared_segment(&mut bed, 2).unwrap();
    // The sleeve alone: without a password the fast path would be probed too, and its reason
    // (`fastpath: probing …`) shown on the connection until it is established.
    let opts = RouterOptions { binary: weft(), password: None, extra_args: vec!["--no-fastpath".into()] };
    let h1 = routers::start_router(&mut bed, &run, lan.hosts[0], "h1", &[], &opts).unwrap();
    let h2 = routers::start_router(&mut bed, &run, lan.hosts[1], "h2", &[lan.links[0].addr], &opts).unwrap();
    routers::wait_for(&h1, Duration::from_secs(30), |s| s.connections.established == 1).unwrap();
    let nft = |args: &str| {
        let out = bed.run(lan.hosts[1], Command::new("nft").args(args.split(' '))).unwrap();
        assert!(out.status.success(), "nft {args}: {}", String::from_utf8_lossy(&out.stderr));
    };
    let reason = |r: &RouterProc| -> Option<String> {
        let conns: Vec<Connection> = r.client().get("/connections").unwrap();
        conns.into_iter().find(|c| c.state == ConnectionState::Established).and_then(|c| c.reason)
    };
    let wait = |want: bool| {
        let t0 = Instant::now();
        loop {
            let r = reason(&h2);
            if r.as_deref().is_some_and(|r| r.contains("no heartbeat")) == want {
                return (t0.elapsed(), r);
            }
            assert!(t0.elapsed() < Duration::from_secs(20), "reason still {r:?}\n{}", h2.log_text());
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    assert_eq!(reason(&h2), None);
    nft("add table ip weftblock");
    nft("add chain ip weftblock in { type filter hook input priority 0 ; }");
    nft("add rule ip weftblock in udp dport 6784 drop");
    let (after, why) = wait(true);
    println!("sleeve port blocked on h2 (h1's datagrams dropped): h2 reports {why:?} after {after:?}");
    let (_, text) = cli(&h2, &["status", "connections"]);
    assert!(text.contains("no heartbeat"), "{text}");
    nft("delete table ip weftblock");
    let (after, _) = wait(false);
    println!("port open again: cleared after {after:?}");
    assert!(h2.log_text().contains("is the sleeve port (UDP) blocked"));
    drop(h1);
    bed.teardown().unwrap();
}

#[test]
fn two_routers_dialling_each_other_at_once_keep_exactly_one_connection() {
    let mut bed = TestBed::new().expect("namespace tests need root (CI runs as root)");
    let run = RunDir::new(bed.id()).unwrap();
    let lan = topology::shared_segment(&mut bed, 2).unwrap();
    let opts = RouterOptions { binary: weft(), password: Some("a-cluster-password".into()), extra_args: vec![] };
    let h1 = routers::start_router(&mut bed, &run, lan.hosts[0], "h1", &[lan.links[1].addr], &opts).unwrap();
    let h2 = routers::start_router(&mut bed, &run, lan.hosts[1], "h2", &[lan.links[0].addr], &opts).unwrap();
    for r in [&h1, &h2] {
        routers::wait_for(r, Duration::from_secs(30), |s| s.connections.established == 1 && s.ipam.state == "ready").unwrap();
    }
    std::thread::sleep(Duration::from_secs(3));
    for r in [&h1, &h2] {
        let conns: Vec<Connection> = r.client().get("/connections").unwrap();
        let up: Vec<&Connection> = conns.iter().filter(|c| c.state == ConnectionState::Established).collect();
        assert_eq!(up.len(), 1, "{conns:?}");
        let peers: Vec<Peer> = r.client().get("/peers").unwrap();
        assert_eq!(peers.len(), 2);
    }
    let both = h1.log_text() + &h2.log_text();
    println!("duplicate resolution: {} connection(s) closed as duplicates", both.matches("duplicate connection").count() / 2);
    bed.teardown().unwrap();
}

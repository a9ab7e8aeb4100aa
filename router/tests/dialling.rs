//! Dialling that gives up: addresses this host has no route to are not dialled, a NAT's outside
//! address gossip reports for a connected peer is not dialled, and a gossiped address that never
//! answers is dropped after a few tries, no longer dialled, and shown as `dropped` with why.
//! Root needed.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Mesh, weft};
use weft_api::types::{Connection, ConnectionState, Status};
use weft_testbed::routers::{self, RouterOptions, RouterProc, RunDir};
use weft_testbed::{TestBed, topology};

fn conns(r: &RouterProc) -> Vec<Connection> {
    r.client().get("/connections").unwrap()
}

fn cli(r: &RouterProc, args: &[&str]) -> String {
    let out = Command::new(weft()).args(args).arg("--api-socket").arg(&r.api_socket).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

/// Every established record names a distinct peer, and the summary counts what the list shows.
fn one_record_per_peer(name: &str, r: &RouterProc) {
    let list = conns(r);
    let status: Status = r.client().get("/status").unwrap();
    let mut peers: Vec<&str> = list.iter().filter(|c| c.state == ConnectionState::Established).filter_map(|c| c.peer.as_deref()).collect();
    let n = peers.len();
    peers.sort_unstable();
    peers.dedup();
    assert_eq!(peers.len(), n, "{name}: two established records for one peer: {list:?}");
    let count = |s: ConnectionState| list.iter().filter(|c| c.state == s).count();
    assert_eq!(status.connections.established, count(ConnectionState::Established), "{name}: {status:?} vs {list:?}");
    assert_eq!(status.connections.dropped, count(ConnectionState::Dropped), "{name}: {status:?} vs {list:?}");
}

#[test]
fn addresses_without_a_route_and_a_nat_outside_address_are_not_dialled() {
    let m = Mesh::up(None, 0);
    let nat_outside = "198.51.100.254:6783";
    // A (192.0.2.0/24 only) learns C's and the NAT's addresses on 198.51.100.0/24: no route.
    let a = &m.routers[0];
    let t0 = Instant::now();
    let dropped = loop {
        let d: Vec<Connection> = conns(a).into_iter().filter(|c| c.state == ConnectionState::Dropped).collect();
        if d.len() >= 2 || t0.elapsed() > Duration::from_secs(20) {
            break d;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    print!("weft status connections (a):\n{}", cli(a, &["status", "connections"]));
    let no_route: Vec<&str> = dropped.iter().filter(|c| c.reason.as_deref().is_some_and(|r| r.contains("no route"))).map(|c| c.remote.as_str()).collect();
    assert!(no_route.contains(&"198.51.100.13:6783") && no_route.contains(&nat_outside), "A: {dropped:?}");
    assert!(conns(a).iter().all(|c| c.state != ConnectionState::Pending && c.state != ConnectionState::Retrying), "A: {:?}", conns(a));
    // B and C are connected to D, which they see at the NAT's outside address: never an attempt.
    std::thread::sleep(Duration::from_secs(3));
    for i in [1, 2] {
        let list = conns(&m.routers[i]);
        println!("{}: {}", common::NAMES[i], list.iter().map(|c| format!("{} {} {}", c.remote, c.state, c.reason.as_deref().unwrap_or(""))).collect::<Vec<_>>().join("; "));
        assert!(
            list.iter().all(|c| c.remote != nat_outside || c.state == ConnectionState::Established),
            "{}: an attempt at the NAT's outside address of a connected peer: {list:?}",
            common::NAMES[i]
        );
    }
    for (i, r) in m.routers.iter().enumerate() {
        one_record_per_peer(common::NAMES[i], r);
    }
    let logs = m.logs();
    assert!(!logs.contains("NetworkUnreachable") && !logs.contains("sendmsg error"), "{logs}");
    m.down();
}

#[test]
fn a_gossiped_address_that_never_answers_is_dropped_and_no_longer_dialled() {
    let mut bed = TestBed::new().expect("namespace tests need root (CI runs as root)");
    let run = RunDir::new(bed.id()).unwrap();
    let lan = topology::shared_segment(&mut bed, 3).unwrap();
    let opts = RouterOptions { binary: weft(), password: None, extra_args: vec![] };
    let (h2_addr, h3_addr) = (lan.links[1].addr, lan.links[2].addr);
    // h3 drops every mesh packet from h2: each learns the other's address from h1's gossip and
    // cannot reach it (h2's dials and h2's answers to h3's dials alike are counted here).
    let h3_host = lan.hosts[2];
    let nft = |bed: &TestBed, args: &str| {
        let out = bed.run(h3_host, Command::new("nft").args(args.split(' '))).unwrap();
        assert!(out.status.success(), "nft {args}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    nft(&bed, "add table ip weftdial");
    nft(&bed, "add chain ip weftdial in { type filter hook input priority 0 ; }");
    nft(&bed, &format!("add rule ip weftdial in ip saddr {h2_addr} udp dport 6783 counter drop"));
    let counted = |bed: &TestBed| -> u64 {
        let text = nft(bed, "list chain ip weftdial in");
        text.split_whitespace().skip_while(|w| *w != "packets").nth(1).and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("no counter in {text}"))
    };
    let h1 = routers::start_router(&mut bed, &run, lan.hosts[0], "h1", &[], &opts).unwrap();
    let h2 = routers::start_router(&mut bed, &run, lan.hosts[1], "h2", &[lan.links[0].addr], &opts).unwrap();
    let h3 = routers::start_router(&mut bed, &run, lan.hosts[2], "h3", &[lan.links[0].addr], &opts).unwrap();
    routers::wait_for(&h1, Duration::from_secs(30), |s| s.connections.established == 2).unwrap();
    let t0 = Instant::now();
    let dropped_by = |r: &RouterProc, addr: std::net::Ipv4Addr| {
        conns(r).into_iter().find(|c| c.remote == format!("{addr}:6783") && c.state == ConnectionState::Dropped)
    };
    let (mut h2_at, mut h3_at) = (None, None);
    while (h2_at.is_none() || h3_at.is_none()) && t0.elapsed() < Duration::from_secs(170) {
        if h2_at.is_none() && dropped_by(&h2, h3_addr).is_some() {
            h2_at = Some(t0.elapsed());
        }
        if h3_at.is_none() && dropped_by(&h3, h2_addr).is_some() {
            h3_at = Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    println!("h2 dropped h3's address after {h2_at:?}, h3 dropped h2's after {h3_at:?} (from the mesh being up)");
    let text = cli(&h2, &["status", "connections"]);
    print!("weft status connections (h2):\n{text}");
    assert!(h2_at.is_some() && h3_at.is_some(), "not dropped within 170 s\n{}\n{}", h2.log_text(), h3.log_text());
    let why = dropped_by(&h2, h3_addr).and_then(|c| c.reason).unwrap_or_default();
    assert!(why.contains("given up"), "{why}");
    assert!(text.lines().any(|l| l.contains(&format!("{h3_addr}:6783")) && l.contains("dropped")), "{text}");
    let summary = cli(&h2, &["status"]);
    assert!(summary.contains("1 address dropped"), "{summary}");
    // Nothing more is sent to h3's mesh port once both gave up (the last server-side
    // connection state lingers for the peer timeout).
    std::thread::sleep(Duration::from_secs(4));
    let before = counted(&bed);
    std::thread::sleep(Duration::from_secs(10));
    let after = counted(&bed);
    println!("packets from h2 to h3's mesh port: {before} when both had given up, {after} 10 s later");
    assert_eq!(before, after, "h2 and h3 still dial each other");
    // Both still reach each other through h1.
    for r in [&h2, &h3] {
        let s: Status = r.client().get("/status").unwrap();
        assert_eq!((s.peers, s.connections.established, s.connections.pending, s.connections.failed), (3, 1, 0, 0), "{s:?}");
    }
    drop(h1);
    bed.teardown().unwrap();
}

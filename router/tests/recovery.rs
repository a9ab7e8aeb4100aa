//! How fast the mesh recovers, measured on the four-host cluster (A–B segment, B–C segment, D
//! behind a NAT on C's side; B is the only relay between A and C), with figures printed: a
//! restarted relay, a healed cable, a dead peer noticed; and on a segment with a 1280-byte MTU,
//! the MTU `status connections` reports is what crosses. Root needed; every test tears its bed
//! down, also on failure.

mod common;

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::pinger::{Pinger, unix_now};
use common::{Mesh, NAMES};
use weft_api::types::{Connection, ConnectionState, Peer};
use weft_testbed::{NodeId, TestBed, routers};

/// The goal for traffic to flow again once the path or the peer is back.
const RECOVERY_GOAL: Duration = Duration::from_secs(1);
/// The goal for every router to know a dead peer is dead.
const DETECTION_GOAL: Duration = Duration::from_secs(3);

/// The timed tests run one at a time: each measures sub-second recovery of four routers, and
/// three clusters restarting routers at once on a two-core machine measure the machine.
static TIMED: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn timed() -> std::sync::MutexGuard<'static, ()> {
    TIMED.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn ping_out(bed: &TestBed, from: NodeId, to: Ipv4Addr, args: &[&str]) -> String {
    let out = bed.run(from, Command::new("ping").arg("-n").args(args).arg(to.to_string())).unwrap();
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn reachable(m: &Mesh, pod: NodeId, to: Ipv4Addr) -> bool {
    (0..3).any(|_| m.bed.ping(pod, to).unwrap())
}

#[test]
fn a_restarted_relay_carries_a_to_c_again_within_a_second() {
    let _one_at_a_time = timed();
    let mut m = Mesh::up(None, 1);
    let (a_pod, c_addr) = (m.pods[0][0].0, m.pods[2][0].1);
    assert!(reachable(&m, a_pod, c_addr));
    let mut figures = Vec::new();
    for round in 1..=2 {
        let pinger = Pinger::start(&m.bed, a_pod, c_addr, 30, "A -> C");
        std::thread::sleep(Duration::from_secs(1));
        let b = m.routers[1].clone();
        m.bed.kill(b.pid).unwrap();
        std::thread::sleep(Duration::from_secs(3));
        let restarted = unix_now();
        let t0 = Instant::now();
        m.routers[1] = routers::start_cluster_router(&mut m.bed, &m.run, &m.cluster, 1, &m.opts).unwrap();
        // Wait for the first reply after the restart (bounded), then a little more traffic.
        let deadline = t0 + Duration::from_secs(15);
        while Instant::now() < deadline && !m.bed.ping(a_pod, c_addr).unwrap() {}
        std::thread::sleep(Duration::from_secs(1));
        let log = pinger.finish();
        let gap = log.first_reply_after(restarted);
        println!("round {round}: kill -9 of B, restarted after 3 s: first A -> C reply {gap:.2?} after the restart ({} replies, {} duplicates)", log.replies.len(), log.dups);
        let gap = gap.unwrap_or_else(|| panic!("A -> C never came back after B restarted\n{}", m.logs()));
        assert_eq!(log.dups, 0);
        figures.push(gap);
    }
    let worst = figures.iter().max().copied().unwrap_or_default();
    println!("relay restart: worst gap after the restart {worst:.2?} (goal {RECOVERY_GOAL:?})");
    assert!(worst <= RECOVERY_GOAL + Duration::from_millis(500), "A -> C took {worst:?} to come back after B restarted\n{}", m.logs());
    m.down();
}

#[test]
fn a_to_c_flows_again_within_a_second_of_the_a_b_cable_healing() {
    let _one_at_a_time = timed();
    let mut m = Mesh::up(None, 1);
    let (a_pod, c_addr) = (m.pods[0][0].0, m.pods[2][0].1);
    assert!(reachable(&m, a_pod, c_addr));
    let mut figures = Vec::new();
    for round in 1..=2 {
        let pinger = Pinger::start(&m.bed, a_pod, c_addr, 30, "A -> C");
        std::thread::sleep(Duration::from_secs(1));
        m.bed.cut(m.cluster.a_cable.cable).unwrap();
        std::thread::sleep(Duration::from_secs(5));
        let healed = unix_now();
        m.bed.restore(m.cluster.a_cable.cable).unwrap();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(15) && !m.bed.ping(a_pod, c_addr).unwrap() {}
        std::thread::sleep(Duration::from_secs(1));
        let log = pinger.finish();
        let gap = log.first_reply_after(healed);
        println!("round {round}: A-B cable cut for 5 s: first A -> C reply {gap:.2?} after the heal ({} replies, {} duplicates)", log.replies.len(), log.dups);
        let gap = gap.unwrap_or_else(|| panic!("A -> C never came back after the heal\n{}", m.logs()));
        assert_eq!(log.dups, 0);
        figures.push(gap);
    }
    let worst = figures.iter().max().copied().unwrap_or_default();
    println!("cable heal: worst time from heal to the first reply {worst:.2?} (goal {RECOVERY_GOAL:?})");
    assert!(worst <= RECOVERY_GOAL + Duration::from_millis(500), "A -> C took {worst:?} to come back after the heal\n{}", m.logs());
    m.down();
}

#[test]
fn every_router_knows_a_killed_peer_is_unreachable_within_3_s() {
    let _one_at_a_time = timed();
    let mut m = Mesh::up(None, 0);
    let mut worst = Duration::ZERO;
    // C (connected to B and D; A sees it through B), then D (behind its NAT).
    for victim in [2, 3] {
        let others: Vec<usize> = (0..4).filter(|i| *i != victim && routers::alive(m.routers[*i].pid)).collect();
        let pid = m.routers[victim].pid;
        m.bed.kill(pid).unwrap();
        let t0 = Instant::now();
        let mut known = [None; 4];
        while t0.elapsed() < Duration::from_secs(20) && others.iter().any(|i| known[*i].is_none()) {
            for &i in &others {
                if known[i].is_none() {
                    let peers: Vec<Peer> = m.routers[i].client().get("/peers").unwrap_or_default();
                    if peers.iter().find(|p| p.nickname == NAMES[victim]).is_none_or(|p| !p.reachable) {
                        known[i] = Some(t0.elapsed());
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let each: Vec<String> = others.iter().map(|i| format!("{}: {:.2?}", NAMES[*i], known[*i])).collect();
        let last = others.iter().filter_map(|i| known[*i]).max().unwrap_or_default();
        println!("kill -9 of {}: shown unreachable by {} (all within {last:.2?}, goal {DETECTION_GOAL:?})", NAMES[victim], each.join(", "));
        assert!(others.iter().all(|i| known[*i].is_some()), "not every router noticed {} died\n{}", NAMES[victim], m.logs());
        worst = worst.max(last);
    }
    assert!(worst <= DETECTION_GOAL, "a dead peer was shown reachable for {worst:?}\n{}", m.logs());
    m.down();
}

#[test]
fn on_a_1280_byte_segment_status_shows_the_mtu_that_crosses() {
    let mut m = Mesh::up(Some("weft-test-password"), 1);
    // The A–B segment carries 1280-byte packets: A's interface, and both ends of the cable.
    let a = m.cluster.hosts[0];
    let a_if = m.cluster.a_cable.iface.clone();
    m.bed.netlink(a).set_mtu(&a_if, 1280).unwrap();
    let b = m.cluster.hosts[1];
    let b_addr = m.cluster.all_addrs[1][0];
    let b_if = m.bed.netlink(b).links().unwrap().into_iter().find(|l| m.bed.netlink(b).addresses(&l.name).is_ok_and(|a| a.iter().any(|(ip, _)| *ip == std::net::IpAddr::V4(b_addr)))).map(|l| l.name).unwrap();
    m.bed.netlink(b).set_mtu(&b_if, 1280).unwrap();
    // Reconnect A–B so the search starts afresh on the smaller path (as on a host that came up
    // with it): cut until the connection is dead, then heal.
    m.bed.cut(m.cluster.a_cable.cable).unwrap();
    let t0 = Instant::now();
    let gone = |m: &Mesh| {
        let conns: Vec<Connection> = m.routers[0].client().get("/connections").unwrap_or_default();
        !conns.iter().any(|c| c.state == ConnectionState::Established)
    };
    while !gone(&m) && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    m.bed.restore(m.cluster.a_cable.cable).unwrap();
    let healed = Instant::now();
    // Wait until A's connection to B reports the path MTU of 1280.
    let a_to_b = |m: &Mesh| -> Option<Connection> {
        let conns: Vec<Connection> = m.routers[0].client().get("/connections").ok()?;
        conns.into_iter().find(|c| c.state == ConnectionState::Established && c.nickname.as_deref() == Some("b"))
    };
    let mut seen = Vec::new();
    let settled = loop {
        let c = a_to_b(&m);
        if let Some(c) = &c {
            if seen.last() != Some(&(c.mtu, c.path_mtu)) {
                seen.push((c.mtu, c.path_mtu));
            }
            if c.path_mtu == Some(1280) {
                break healed.elapsed();
            }
        }
        assert!(healed.elapsed() < Duration::from_secs(20), "no pmtu=1280 on A -> B: {c:?}, seen {seen:?}\n{}", m.logs());
        std::thread::sleep(Duration::from_millis(50));
    };
    // Settled for good: it stays there.
    std::thread::sleep(Duration::from_secs(2));
    let c = a_to_b(&m).unwrap();
    println!("A -> B on a 1280-byte segment: pmtu=1280 shown {settled:.2?} after the connection could come back; now mtu={:?} pmtu={:?}; (mtu, pmtu) seen: {seen:?}", c.mtu, c.path_mtu);
    assert_eq!(c.path_mtu, Some(1280), "{c:?}");
    let mtu = c.mtu.unwrap();
    // 1252-byte datagrams less 78 bytes: sleeve header and tag 36, record 4, envelope 14,
    // virtio-net header 10, Ethernet 14.
    assert_eq!(mtu, 1174, "{c:?}");
    // The status tells the truth: a packet of exactly that size crosses with DF set; one byte
    // more is refused with "fragmentation needed" carrying that size.
    let (a_pod, b_addr_pod) = (m.pods[0][0].0, m.pods[1][0].1);
    assert!(reachable(&m, a_pod, b_addr_pod));
    let fits = (mtu - 28).to_string();
    let over = (mtu - 27).to_string();
    let ok = ping_out(&m.bed, a_pod, b_addr_pod, &["-M", "do", "-s", &fits, "-c", "3", "-i", "0.2", "-W", "2"]);
    assert!(ok.contains("3 received"), "{mtu}-byte packets do not cross:\n{ok}");
    let big = ping_out(&m.bed, a_pod, b_addr_pod, &["-M", "do", "-s", &over, "-c", "2", "-i", "0.3", "-W", "1"]);
    let told = big.contains(&format!("mtu = {mtu}")) || big.contains(&format!("mtu={mtu}"));
    assert!(told && !big.contains(" 2 received"), "{} bytes: no fragmentation-needed with mtu {mtu}:\n{big}", mtu + 1);
    println!("ping -M do at {mtu} bytes crosses; at {} bytes: {}", mtu + 1, big.lines().find(|l| l.contains("mtu")).unwrap_or_default().trim());
    let text = Command::new(common::weft()).args(["status", "connections", "--api-socket"]).arg(&m.routers[0].api_socket).output().unwrap();
    println!("{}", String::from_utf8_lossy(&text.stdout));
    m.down();
}

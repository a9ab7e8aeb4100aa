//! The kernel VXLAN fast path on the four-host cluster (A–B on one segment, B–C on another, D
//! behind a NAT): used between directly connected peers once heartbeats cross it, never
//! duplicating a frame (1 GiB checked byte for byte), put on hold when UDP 6785 is blocked and
//! back when it is not, and forwarding on while a router is killed or stopped and restarted,
//! sooner or later than the peer timeout. Root needed; every test tears its bed down.

mod common;

use std::net::Ipv4Addr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Mesh, NAMES};
use weft_api::types::{Connection, ConnectionState};
use weft_testbed::routers;
use weft_testbed::{NodeId, TestBed};

/// The size of the checked transfers.
const GIB: u64 = 1 << 30;

fn ping_out(bed: &TestBed, from: NodeId, to: Ipv4Addr, args: &[&str]) -> String {
    let out = bed.run(from, Command::new("ping").arg("-n").args(args).arg(to.to_string())).unwrap();
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn connections(m: &Mesh, host: usize) -> Vec<Connection> {
    m.routers[host].client().get("/connections").unwrap_or_default()
}

/// The established connection of `host` to the peer nicknamed `peer`.
fn conn_to(m: &Mesh, host: usize, peer: &str) -> Option<Connection> {
    connections(m, host).into_iter().find(|c| c.state == ConnectionState::Established && c.nickname.as_deref() == Some(peer))
}

/// Waits until `host`'s connection to `peer` uses `overlay`; returns how long it took.
fn wait_overlay(m: &Mesh, host: usize, peer: &str, overlay: &str, timeout: Duration) -> Result<Duration, String> {
    let t0 = Instant::now();
    let mut last = None;
    while t0.elapsed() < timeout {
        last = conn_to(m, host, peer);
        if last.as_ref().is_some_and(|c| c.overlay == overlay) {
            return Ok(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("{} -> {peer}: not {overlay} within {timeout:?}: {last:?}\n{}", NAMES[host], m.logs()))
}

/// The longest gap between consecutive echo replies of `ping -D` output, and replies.
fn longest_gap(text: &str) -> (Duration, usize) {
    let times: Vec<f64> = text
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('[').and_then(|r| r.split(']').next()).and_then(|t| t.parse().ok()))
        .collect();
    let gap = times.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
    (Duration::from_secs_f64(gap), times.len())
}

/// Runs `ping -D -i 0.02` from `from` to `to` for `secs` in the background.
fn ping_background(bed: &TestBed, from: NodeId, to: Ipv4Addr, secs: u32) -> std::thread::JoinHandle<String> {
    let ns = bed.ns(from).name().to_owned();
    std::thread::spawn(move || {
        let out = Command::new("ip")
            .args(["netns", "exec", &ns, "ping", "-n", "-D", "-i", "0.02", "-w", &secs.to_string(), &to.to_string()])
            .output()
            .unwrap();
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    })
}

/// Counts the per-MAC entries the router programmed on `weft-vxlan` of `host` (heartbeat and
/// flood entries aside).
fn mac_entries(m: &mut Mesh, host: usize) -> usize {
    let h = m.cluster.hosts[host];
    m.bed.netlink(h).fdb_entries("weft-vxlan").unwrap().iter().filter(|e| e.mac != [0; 6] && e.mac[0] != 0xfa).count()
}

#[test]
fn without_a_password_direct_peers_use_the_fast_path_exactly_once() {
    let mut m = Mesh::up(None, 2);
    wait_overlay(&m, 0, "b", "fastpath", Duration::from_secs(10)).unwrap();
    wait_overlay(&m, 1, "c", "fastpath", Duration::from_secs(10)).unwrap();
    let pods = m.all_pods();
    let mut failed = Vec::new();
    for &(hi, from, _) in &pods {
        for &(hj, to_node, to) in &pods {
            if from != to_node && !m.bed.ping(from, to).unwrap() && !m.bed.ping(from, to).unwrap() {
                failed.push(format!("{} -> {} ({to})", NAMES[hi], NAMES[hj]));
            }
        }
    }
    assert!(failed.is_empty(), "pings failed: {failed:?}\n{}", m.logs());
    // Learned MACs are now programmed: unicast between A and B crosses the kernel path.
    std::thread::sleep(Duration::from_millis(600));
    assert!(mac_entries(&mut m, 0) >= 2, "A programmed B's pod MACs");
    let (a_pod, b_pod, c_pod, d_pod) = (m.pods[0][0].0, m.pods[1][0].1, m.pods[2][0].1, m.pods[3][0].1);
    for to in [b_pod, c_pod, d_pod] {
        let text = ping_out(&m.bed, a_pod, to, &["-c", "10", "-i", "0.05", "-W", "2"]);
        assert!(text.contains("10 received") && !text.contains("DUP!"), "{text}");
    }
    let text = ping_out(&m.bed, a_pod, Ipv4Addr::new(10, 47, 255, 255), &["-b", "-c", "2", "-W", "1"]);
    assert!(!text.contains("DUP!"), "{text}");

    // A: fast path to B; D is behind a NAT: B and C keep it on the sleeve.
    let ab = conn_to(&m, 0, "b").unwrap();
    assert_eq!((ab.overlay.as_str(), ab.encrypted), ("fastpath", false), "{ab:?}");
    for (h, p) in [(1, "d"), (2, "d"), (3, "b"), (3, "c")] {
        let c = conn_to(&m, h, p).unwrap_or_else(|| panic!("{} -> {p} connected", NAMES[h]));
        assert_eq!(c.overlay, "sleeve", "{} -> {p}: {c:?}", NAMES[h]);
    }
    let text = Command::new(common::weft()).args(["status", "connections", "--api-socket"]).arg(&m.routers[0].api_socket).output().unwrap();
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    println!("{text}");
    assert!(text.contains("fastpath"), "{text}");
    let metrics = m.bed.run(m.cluster.hosts[0], Command::new("curl").args(["-s", "http://127.0.0.1:6782/metrics"])).unwrap();
    let metrics = String::from_utf8_lossy(&metrics.stdout).into_owned();
    assert!(metrics.contains("weft_fastpath_changes_total{to=\"established\"} 1"), "{metrics}");

    // 1 GiB from A's pod to B's pod (the fast path) and to C's pod (not a direct peer of A:
    // relayed frames take the sleeve, A→B→C), every byte and the length checked by the receiver.
    let b_node = m.pods[1][0].0;
    let c_node = m.pods[2][0].0;
    let c_mac = m.bed.netlink(c_node).link("eth0").unwrap().mac.unwrap();
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
    for (to_node, to, what) in [(b_node, b_pod, "A→B over the fast path"), (c_node, c_pod, "A→C over the sleeve, relayed by B")] {
        let t = m.bed.checked_transfer(a_pod, to_node, to, GIB, seed, Duration::from_secs(300)).unwrap_or_else(|e| panic!("{what}: {}\n{}", weft_kernel::chain(&e), m.logs()));
        assert_eq!(t.bytes, GIB);
        println!("{what}: {} bytes, every byte checked, in {:.1} s: {:.2} Gbit/s", t.bytes, t.elapsed.as_secs_f64(), t.bits_per_second() / 1e9);
    }
    let a = m.cluster.hosts[0];
    let on_a = m.bed.netlink(a).fdb_entries("weft-vxlan").unwrap();
    assert!(!on_a.iter().any(|e| e.mac == c_mac), "C's pod is not a fast-path destination of A: {on_a:?}");
    m.down();
}

#[test]
fn a_blocked_vxlan_port_puts_the_path_on_hold_and_it_comes_back() {
    let m = Mesh::up(None, 1);
    wait_overlay(&m, 0, "b", "fastpath", Duration::from_secs(10)).unwrap();
    let (a_pod, b_pod) = (m.pods[0][0].0, m.pods[1][0].1);
    assert!(m.bed.ping(a_pod, b_pod).unwrap());
    std::thread::sleep(Duration::from_millis(600)); // B's pod MAC programmed on A
    let ping = ping_background(&m.bed, a_pod, b_pod, 14);
    std::thread::sleep(Duration::from_secs(2));
    let a = m.cluster.hosts[0];
    let nft = |rules: &str| {
        let mut child = Command::new("ip").args(["netns", "exec", m.bed.ns(a).name(), "nft", "-f", "-"]).stdin(std::process::Stdio::piped()).spawn().unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(rules.as_bytes()).unwrap();
        assert!(child.wait().unwrap().success(), "nft {rules}");
    };
    nft("table inet wtblock { chain block_in { type filter hook input priority 0; udp dport 6785 drop; }; chain block_out { type filter hook output priority 0; udp dport 6785 drop; }; }\n");
    let held = wait_overlay(&m, 0, "b", "sleeve", Duration::from_secs(5)).unwrap();
    let c = conn_to(&m, 0, "b").unwrap();
    println!("blocked: on hold after {held:?}; reason {:?}", c.reason);
    assert!(c.reason.as_deref().is_some_and(|r| r.starts_with("fastpath:") && r.contains("6785")), "{c:?}");
    std::thread::sleep(Duration::from_secs(3));
    nft("delete table inet wtblock\n");
    let back = wait_overlay(&m, 0, "b", "fastpath", Duration::from_secs(5)).unwrap();
    println!("unblocked: back on the fast path after {back:?}");
    let text = ping.join().unwrap();
    let (gap, replies) = longest_gap(&text);
    println!("20 ms pings A→B through block and unblock: {replies} replies, longest gap {gap:?}");
    assert!(!text.contains("DUP!"), "{text}");
    assert!(gap <= Duration::from_secs(2), "longest gap {gap:?}\n{}", m.logs());
    m.down();
}

/// The longest pause in pod traffic a router restart may cause between two fast-path hosts.
const RESTART_GAP: Duration = Duration::from_millis(200);

#[test]
fn traffic_on_the_fast_path_goes_on_while_a_router_is_killed_and_restarted() {
    let mut m = Mesh::up(None, 1);
    wait_overlay(&m, 0, "b", "fastpath", Duration::from_secs(10)).unwrap();
    let (a_pod, b_pod) = (m.pods[0][0].0, m.pods[1][0].1);
    assert!(m.bed.ping(a_pod, b_pod).unwrap());
    std::thread::sleep(Duration::from_millis(600));
    let before = mac_entries(&mut m, 0);
    assert!(before >= 1, "B's pod MAC programmed on A");
    // Down for less than the peer timeout (2 s: B does not notice A gone), and for longer (B
    // drops the connection and forgets A's MACs meanwhile; with SIGTERM at once, by A's Bye).
    let cases = [("killed (SIGKILL)", false, Duration::from_secs(1)), ("killed (SIGKILL)", false, Duration::from_secs(4)), ("stopped (SIGTERM)", true, Duration::from_secs(4))];
    for (round, (how, term, down)) in cases.into_iter().enumerate() {
        let ping = ping_background(&m.bed, a_pod, b_pod, down.as_secs() as u32 + 6);
        std::thread::sleep(Duration::from_secs(1));
        let pid = m.routers[0].pid;
        if term {
            m.bed.terminate(pid, Duration::from_secs(10)).unwrap();
        } else {
            m.bed.kill(pid).unwrap();
        }
        std::thread::sleep(down);
        let opts = m.opts.clone();
        m.routers[0] = routers::start_cluster_router(&mut m.bed, &m.run, &m.cluster, 0, &opts).unwrap();
        routers::wait_for(&m.routers[0], Duration::from_secs(20), |s| s.connections.established >= 1).unwrap();
        let text = ping.join().unwrap();
        let (gap, replies) = longest_gap(&text);
        println!("20 ms pings A→B while A's router was {how} and restarted after {down:?}: {replies} replies, longest gap {gap:?}");
        assert!(!text.contains("DUP!"), "{text}");
        assert!(gap <= RESTART_GAP, "{how}, down {down:?}: longest gap {gap:?}\n{}", m.logs());
        wait_overlay(&m, 0, "b", "fastpath", Duration::from_secs(10)).unwrap();
        // After the restart: no duplicates, and the entries are the router's again (adopted).
        let text = ping_out(&m.bed, a_pod, b_pod, &["-c", "10", "-i", "0.05", "-W", "2"]);
        assert!(text.contains("10 received") && !text.contains("DUP!"), "{text}");
        let log = m.routers[0].log_text();
        assert_eq!(log.matches("MAC entries of an earlier run").count(), round + 1, "{log}");
    }
    m.down();
}

#[test]
fn an_encrypted_mesh_without_trusted_subnets_never_uses_the_fast_path() {
    let m = Mesh::up(Some("fastpath-test-password-1234"), 1);
    let (a_pod, b_pod) = (m.pods[0][0].0, m.pods[1][0].1);
    assert!(m.bed.ping(a_pod, b_pod).unwrap());
    std::thread::sleep(Duration::from_secs(2));
    for (h, name) in NAMES.iter().enumerate() {
        for c in connections(&m, h).iter().filter(|c| c.state == ConnectionState::Established) {
            assert_eq!((c.overlay.as_str(), c.encrypted), ("sleeve", true), "{name} {c:?}");
        }
    }
    m.down();
}

#[test]
fn an_encrypted_mesh_uses_the_fast_path_inside_trusted_subnets_only() {
    let m = Mesh::up_with(Some("fastpath-test-password-1234"), 1, &["--trusted-subnets", "192.0.2.0/24"]);
    wait_overlay(&m, 0, "b", "fastpath", Duration::from_secs(10)).unwrap();
    let bc = conn_to(&m, 1, "c").unwrap();
    assert_eq!((bc.overlay.as_str(), bc.encrypted), ("sleeve", true), "{bc:?}");
    let text = ping_out(&m.bed, m.pods[0][0].0, m.pods[2][0].1, &["-c", "5", "-i", "0.1", "-W", "2"]);
    assert!(text.contains("5 received") && !text.contains("DUP!"), "{text}");
    m.down();
}

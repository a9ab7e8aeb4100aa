//! Routers meshing across the test bed's messy network: hosts A and B on one segment, B and C
//! on another (A and C reach each other only through weft on B), D behind a NAT. Pods get their
//! addresses from the routers' shared IPAM ring and talk across hosts over the sleeve. Root
//! needed; every test tears its bed down, also on failure.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Mesh, NAMES, cnitool, netconf, weft};
use weft_api::types::{Connection, ConnectionState, Peer, Status};
use weft_testbed::{NodeId, TestBed};
use weft_testbed::routers;

fn ping_out(bed: &TestBed, from: NodeId, to: Ipv4Addr, args: &[&str]) -> String {
    let out = bed.run(from, Command::new("ping").arg("-n").args(args).arg(to.to_string())).unwrap();
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn every_pod_pings_every_pod(password: Option<&str>) {
    let m = Mesh::up(password, 2);
    let pods = m.all_pods();
    let mut failed = Vec::new();
    let t0 = Instant::now();
    for &(hi, from, _) in &pods {
        for &(hj, _, to) in &pods {
            if from != pods.iter().find(|p| p.2 == to).unwrap().1 && !m.bed.ping(from, to).unwrap() {
                // One retry: the first packet of a pair may wait for ARP across the mesh.
                if !m.bed.ping(from, to).unwrap() {
                    failed.push(format!("{} -> {} ({to})", NAMES[hi], NAMES[hj]));
                }
            }
        }
    }
    println!("{} pod pairs pinged in {:?}", pods.len() * (pods.len() - 1), t0.elapsed());
    assert!(failed.is_empty(), "pings failed: {failed:?}\n{}", m.logs());

    // No duplicates: each echo (ARP and broadcast included) is delivered exactly once.
    let (a_pod, c_pod, d_pod) = (m.pods[0][0].0, m.pods[2][0].1, m.pods[3][1].1);
    for to in [c_pod, d_pod] {
        let text = ping_out(&m.bed, a_pod, to, &["-c", "5", "-i", "0.2", "-W", "2"]);
        assert!(text.contains("5 received") && !text.contains("DUP!"), "{text}");
    }
    let text = ping_out(&m.bed, a_pod, Ipv4Addr::new(10, 47, 255, 255), &["-b", "-c", "1", "-W", "1"]);
    assert!(!text.contains("DUP!"), "{text}");

    // A learned C and D through B (no path of its own), and says so.
    let peers: Vec<Peer> = m.routers[0].client().get("/peers").unwrap();
    let c = peers.iter().find(|p| p.nickname == "c").expect("A knows C");
    assert!(c.reachable && c.via.as_deref().is_some_and(|v| v.ends_with("(b)")), "{c:?}");
    let status: Status = m.routers[0].client().get("/status").unwrap();
    assert_eq!(status.encryption, password.is_some());
    let conns: Vec<Connection> = m.routers[1].client().get("/connections").unwrap();
    for c in conns.iter().filter(|c| c.state == ConnectionState::Established) {
        // Without a password, B's direct peers on its segments (A, C) may be on the fast path.
        let fast = password.is_none() && c.overlay == "fastpath" && c.nickname.as_deref() != Some("d");
        assert!(fast || (c.overlay.as_str(), c.encrypted) == ("sleeve", password.is_some()), "{c:?}");
    }
    let text = Command::new(weft()).args(["status", "peers", "--api-socket"]).arg(&m.routers[0].api_socket).output().unwrap();
    println!("{}", String::from_utf8_lossy(&text.stdout));
    m.down();
}

#[test]
fn every_pod_pings_every_pod_across_the_mesh_encrypted() {
    every_pod_pings_every_pod(Some("correct horse battery staple"));
}

#[test]
fn every_pod_pings_every_pod_across_the_mesh_unencrypted() {
    every_pod_pings_every_pod(None);
}

/// Deterministic bytes: the receiver regenerates them to check every byte.
fn pattern(seed: u64, buf: &mut [u8]) -> u64 {
    let mut x = seed;
    for chunk in buf.chunks_mut(8) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = x.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
    x
}

/// Sends `total` bytes over TCP from pod `from` to pod `to`; returns (seconds, bytes checked).
fn transfer(bed: &TestBed, from: NodeId, to: NodeId, to_addr: Ipv4Addr, total: u64) -> (f64, u64) {
    let listener = bed.ns(to).run(|| TcpListener::bind((to_addr, 5201))).unwrap().unwrap();
    let stream = bed.ns(from).run(|| TcpStream::connect_timeout(&SocketAddr::from((to_addr, 5201)), Duration::from_secs(10))).unwrap().unwrap();
    let t0 = Instant::now();
    let rx = std::thread::spawn(move || receive_checked(listener.accept().unwrap().0));
    let mut s = stream;
    let mut buf = vec![0u8; 1 << 20];
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut sent = 0;
    while sent < total {
        seed = pattern(seed, &mut buf);
        s.write_all(&buf).unwrap();
        sent += buf.len() as u64;
    }
    drop(s);
    let checked = rx.join().unwrap();
    (t0.elapsed().as_secs_f64(), checked)
}

#[test]
fn a_gigabyte_crosses_from_a_pod_on_a_to_a_pod_on_c_through_b_intact() {
    let m = Mesh::up(Some("weft-test-password"), 1);
    let (a_pod, c_pod, c_addr) = (m.pods[0][0].0, m.pods[2][0].0, m.pods[2][0].1);
    assert!(m.bed.ping(a_pod, c_addr).unwrap() || m.bed.ping(a_pod, c_addr).unwrap());
    let total = 1u64 << 30;
    let (secs, checked) = transfer(&m.bed, a_pod, c_pod, c_addr, total);
    assert_eq!(checked, total);
    println!("1 GiB A -> C via B, every byte checked: {secs:.1} s, {:.2} Gbit/s", total as f64 * 8.0 / secs / 1e9);
    // B relays the super-frames (copied together); C writes them to its TAP from their pieces
    // where they were received, as they come in order.
    let text = metrics_text(&m, 2);
    let (gathered, written) = (metric(&text, "weft_gathered_frames_total"), metric(&text, "weft_tap_frames_total{direction=\"to_bridge\"}"));
    let reassembled = metric(&text, "weft_reassembled_frames_total");
    println!("C: {gathered} of {written} frames to its TAP written from their pieces where they were received, {reassembled} reassembled");
    assert!(gathered > 1000, "C gathered {gathered} super-frames\n{text}");
    let b_text = metrics_text(&m, 1);
    assert_eq!(metric(&b_text, "weft_gathered_frames_total"), 0, "B relays every frame, copied together\n{b_text}");
    // Frames at the full pod MTU cross (DF set); larger ones are refused to the sender.
    let mtu = 1376;
    let ok = ping_out(&m.bed, a_pod, c_addr, &["-M", "do", "-s", &(mtu - 28).to_string(), "-c", "2", "-W", "2"]);
    assert!(ok.contains("2 received"), "{ok}");
    let big = ping_out(&m.bed, a_pod, c_addr, &["-M", "do", "-s", &(mtu - 27).to_string(), "-c", "1", "-W", "2"]);
    assert!(big.contains("mtu = 1376") || big.contains("too long"), "{big}");
    m.down();
}

/// Starts `ping -D` from `pod` to `to` every 50 ms for `secs` seconds (bounded by ping's own
/// deadline), in the pod's namespace.
fn start_pinger(bed: &TestBed, pod: NodeId, to: Ipv4Addr, secs: u32) -> std::process::Child {
    Command::new("ip")
        .args(["netns", "exec", bed.ns(pod).name(), "ping", "-n", "-D", "-i", "0.05", "-W", "1", "-w", &secs.to_string()])
        .arg(to.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run ping in the pod")
}

/// The longest time between two consecutive replies, and how many replies came.
fn longest_gap(child: std::process::Child) -> (Duration, usize) {
    let out = child.wait_with_output().unwrap();
    let times: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.strip_prefix('[')?.split_once(']')?.0.parse().ok())
        .collect();
    let gap = times.windows(2).map(|w| w[1] - w[0]).fold(0.0, f64::max);
    (Duration::from_secs_f64(gap), times.len())
}

#[test]
fn killing_the_middle_router_or_cutting_a_link_interrupts_a_to_c_only_until_it_is_back() {
    let mut m = Mesh::up(None, 1);
    let (a_pod, c_addr) = (m.pods[0][0].0, m.pods[2][0].1);
    assert!(m.bed.ping(a_pod, c_addr).unwrap() || m.bed.ping(a_pod, c_addr).unwrap());

    // kill -9 B while A pings C; restart it after 2 s (a new incarnation): the pings resume.
    let pinger = start_pinger(&m.bed, a_pod, c_addr, 25);
    std::thread::sleep(Duration::from_secs(2));
    let b = m.routers[1].clone();
    m.bed.kill(b.pid).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    m.routers[1] = routers::start_cluster_router(&mut m.bed, &m.run, &m.cluster, 1, &m.opts).unwrap();
    let (gap, replies) = longest_gap(pinger);
    println!("kill -9 of B (down 2 s, then restarted): longest gap in A -> C replies {gap:.2?}, {replies} replies in 25 s");
    assert!(gap < Duration::from_secs(20) && replies > 100, "A -> C did not resume after B restarted: gap {gap:?}, {replies} replies\n{}", m.logs());
    assert!(m.bed.ping(a_pod, c_addr).unwrap());

    // Cut the A–B cable for 2 s while A pings C.
    let pinger = start_pinger(&m.bed, a_pod, c_addr, 20);
    std::thread::sleep(Duration::from_secs(2));
    m.bed.cut(m.cluster.a_cable.cable).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    m.bed.restore(m.cluster.a_cable.cable).unwrap();
    let (gap, replies) = longest_gap(pinger);
    println!("A-B cable cut for 2 s: longest gap in A -> C replies {gap:.2?}, {replies} replies in 20 s");
    assert!(gap >= Duration::from_secs(1) && gap < Duration::from_secs(15) && replies > 100, "gap {gap:?}, {replies} replies\n{}", m.logs());
    m.down();
}

#[test]
fn pods_attached_by_cnitool_on_two_hosts_reach_each_other_and_pods_elsewhere() {
    assert!(Command::new("cnitool").arg("--help").output().is_ok(), "cnitool is missing: run scripts/install-deps --test");
    let mut m = Mesh::up(Some("weft-test-password"), 1);
    let mut attached = Vec::new();
    for host in [0, 2] {
        let conf = m.run.path().join(format!("net.d-{}", NAMES[host]));
        netconf(&conf, &m.routers[host].api_socket);
        let pod = m.bed.add_node(&format!("{}-cni", NAMES[host])).unwrap();
        let ns = m.bed.ns(pod).name().to_owned();
        let add = cnitool(&m.bed, m.cluster.hosts[host], &conf, "add", &ns);
        let text = String::from_utf8_lossy(&add.stdout).into_owned() + &String::from_utf8_lossy(&add.stderr);
        assert!(add.status.success(), "cnitool add on {}: {text}", NAMES[host]);
        let v: serde_json::Value = serde_json::from_slice(&add.stdout).unwrap();
        let addr: Ipv4Addr = v["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().parse().unwrap();
        attached.push((host, conf, pod, ns, addr));
    }
    let (a, c) = (&attached[0], &attached[1]);
    let b_pod = m.pods[1][0].1;
    for (from, to, what) in [(a.2, c.4, "a's CNI pod -> c's CNI pod"), (c.2, a.4, "c's CNI pod -> a's CNI pod"), (a.2, b_pod, "a's CNI pod -> b's pod"), (c.2, m.pods[3][0].1, "c's CNI pod -> d's pod")] {
        assert!(m.bed.ping(from, to).unwrap() || m.bed.ping(from, to).unwrap(), "{what} ({to}) failed\n{}", m.logs());
    }
    println!("cnitool pods {} (a) and {} (c) reach each other and pods on b and d", a.4, c.4);
    for (host, conf, _, ns, _) in &attached {
        let del = cnitool(&m.bed, m.cluster.hosts[*host], conf, "del", ns);
        assert!(del.status.success(), "cnitool del: {}", String::from_utf8_lossy(&del.stderr));
    }
    m.down();
}

#[test]
fn a_smaller_path_mtu_is_found_and_oversized_df_packets_get_fragmentation_needed() {
    let mut m = Mesh::up(Some("weft-test-password"), 1);
    // Every underlay link shrinks to 1400 bytes (as on a cloud network with a smaller MTU): the
    // 1472-byte datagrams the routers found at start are refused now, and must be found again.
    let nodes: Vec<NodeId> = m.cluster.hosts.iter().copied().chain([m.cluster.nat]).collect();
    for n in nodes {
        let ifaces: Vec<String> = m.bed.netlink(n).links().unwrap().into_iter().map(|l| l.name).filter(|n| n != "lo" && !n.starts_with("weft") && !n.starts_with("vp")).collect();
        for i in &ifaces {
            m.bed.netlink(n).set_mtu(i, 1400).unwrap();
        }
    }
    let (a_pod, c_addr) = (m.pods[0][0].0, m.pods[2][0].1);
    // A full-size packet that may not be fragmented no longer fits one datagram: once the
    // search has settled, the router answers "fragmentation needed" with the MTU that fits
    // (1372-byte datagrams less 78 bytes of sleeve, envelope and headers), and the pod's kernel
    // then refuses such packets itself with that MTU.
    let full = (1376 - 28).to_string();
    let fits = (1294 - 28).to_string();
    let t0 = Instant::now();
    let told = loop {
        let out = ping_out(&m.bed, a_pod, c_addr, &["-M", "do", "-s", &full, "-c", "1", "-W", "1"]);
        if out.contains("mtu = 1294") || out.contains("mtu=1294") {
            println!("{}", out.lines().find(|l| l.contains("1294")).unwrap_or_default());
            break t0.elapsed();
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "no fragmentation-needed with mtu 1294:\n{out}\n{}", m.logs());
    };
    let out = ping_out(&m.bed, a_pod, c_addr, &["-M", "do", "-s", &fits, "-c", "5", "-i", "0.2", "-W", "2"]);
    assert!(out.contains("5 received"), "{out}");
    let crossed = told;
    let (secs, checked) = transfer(&m.bed, a_pod, m.pods[2][0].0, c_addr, 64 << 20);
    assert_eq!(checked, 64 << 20);
    println!("underlay at 1400 bytes: fragmentation needed (mtu 1294) told after {crossed:?}, packets of 1294 bytes cross; 64 MiB checked in {secs:.1} s");
    let log = m.routers[1].log_text() + &m.routers[2].log_text();
    assert!(log.contains("datagram=1372"), "no path MTU of 1372 found:\n{log}");
    // And `weft status connections` shows it for the links that carried the large frames, A -> B
    // and B -> C (a link that sent nothing large since, such as B -> A, which carried only
    // acknowledgements, keeps what it found until its next search).
    std::thread::sleep(Duration::from_millis(500));
    for (from, nick) in [(0, "b"), (1, "c")] {
        let conns: Vec<Connection> = m.routers[from].client().get("/connections").unwrap();
        let c = conns.iter().find(|c| c.state == ConnectionState::Established && c.nickname.as_deref() == Some(nick)).unwrap();
        assert!(c.path_mtu.is_some_and(|p| (1228..=1400).contains(&p)), "{c:?}");
        println!("{} -> {nick}: pmtu {:?} mtu {:?}", NAMES[from], c.path_mtu, c.mtu);
    }
    m.down();
}

#[test]
fn sleeve_keys_rotate_every_few_seconds_under_load_without_losing_a_datagram() {
    let m = Mesh::up_with(Some("weft-test-password"), 1, &["--rekey-interval", "3"]);
    let (a_pod, c_pod, c_addr) = (m.pods[0][0].0, m.pods[2][0].0, m.pods[2][0].1);
    assert!(m.bed.ping(a_pod, c_addr).unwrap() || m.bed.ping(a_pod, c_addr).unwrap());
    let total = 1u64 << 30;
    let (secs, checked) = transfer(&m.bed, a_pod, c_pod, c_addr, total);
    assert_eq!(checked, total);
    std::thread::sleep(Duration::from_secs(4));
    let scrape = |host: usize| {
        let out = m.bed.run(m.cluster.hosts[host], Command::new("curl").args(["-sf", "http://127.0.0.1:6782/metrics"])).unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let value = |text: &str, series: &str| -> u64 { text.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok()).unwrap_or(0) };
    for (host, name) in NAMES.iter().enumerate().take(3) {
        let text = scrape(host);
        let rekeys = value(&text, "weft_sleeve_rekeys_total");
        let lost: u64 = ["auth", "replay", "other"].iter().map(|r| value(&text, &format!("weft_drops_total{{reason=\"{r}\"}}"))).sum();
        println!("{}: {rekeys} key switches, {lost} datagrams refused", name);
        assert!(rekeys >= 4, "{}: only {rekeys} key switches in {secs:.0} s\n{text}", name);
        assert_eq!(lost, 0, "{}: datagrams refused across key switches\n{text}", name);
    }
    println!("1 GiB A -> C with fresh sleeve secrets every 3 s: {secs:.1} s, every byte checked");
    m.down();
}

/// Reads one stream of `pattern` bytes to its end, checking every byte; returns how many.
fn receive_checked(mut s: TcpStream) -> u64 {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut got = vec![0u8; 1 << 20];
    let mut want = vec![0u8; 1 << 20];
    let (mut seed, mut n, mut have) = (0x9e37_79b9_7f4a_7c15u64, 0u64, 0usize);
    loop {
        let r = s.read(&mut got[have..]).expect("a flow stalled for 20 s");
        if r == 0 {
            break;
        }
        have += r;
        if have == got.len() {
            seed = pattern(seed, &mut want);
            assert!(got == want, "bytes differ in the MB ending at {}", n + have as u64);
            n += have as u64;
            have = 0;
        }
    }
    pattern(seed, &mut want);
    assert_eq!(&got[..have], &want[..have], "the last bytes differ");
    n + have as u64
}

/// The value of the metric line starting with `series` (0 if absent).
fn metric(text: &str, series: &str) -> u64 {
    text.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok()).unwrap_or(0)
}

/// Sends `flows` TCP flows of `per_flow` bytes at once from pod `from` to `to_addr` (pod `to`),
/// checking every byte; returns the seconds it took.
fn parallel_flows(bed: &TestBed, from: NodeId, to: NodeId, to_addr: Ipv4Addr, flows: usize, per_flow: u64) -> f64 {
    let listener = bed.ns(to).run(|| TcpListener::bind((to_addr, 5301))).unwrap().unwrap();
    let t0 = Instant::now();
    let rx = std::thread::spawn(move || {
        let readers: Vec<_> = (0..flows).map(|_| listener.accept().unwrap().0).map(|s| std::thread::spawn(move || receive_checked(s))).collect();
        readers.into_iter().map(|r| r.join().unwrap()).collect::<Vec<u64>>()
    });
    let senders: Vec<_> = (0..flows)
        .map(|_| {
            let mut s = bed.ns(from).run(|| TcpStream::connect_timeout(&SocketAddr::from((to_addr, 5301)), Duration::from_secs(10))).unwrap().unwrap();
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 20];
                let mut seed = 0x9e37_79b9_7f4a_7c15u64;
                let mut sent = 0;
                while sent < per_flow {
                    seed = pattern(seed, &mut buf);
                    s.write_all(&buf).unwrap();
                    sent += buf.len() as u64;
                }
            })
        })
        .collect();
    senders.into_iter().for_each(|s| s.join().unwrap());
    let checked = rx.join().unwrap();
    assert_eq!(checked, vec![per_flow; flows], "every flow's bytes arrived, checked");
    t0.elapsed().as_secs_f64()
}

/// Host `host`'s router's metrics text.
fn metrics_text(m: &Mesh, host: usize) -> String {
    let out = m.bed.run(m.cluster.hosts[host], Command::new("curl").args(["-sf", "http://127.0.0.1:6782/metrics"])).unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Host `host`'s TAP frames read and datagrams sent per queue (of 2), and its metrics text.
fn queue_counts(m: &Mesh, host: usize) -> (Vec<u64>, Vec<u64>, String) {
    let text = metrics_text(m, host);
    let tap = (0..2).map(|q| metric(&text, &format!("weft_dataplane_queue_tap_frames_total{{queue=\"{q}\"}}"))).collect();
    let sent = (0..2).map(|q| metric(&text, &format!("weft_dataplane_queue_datagrams_total{{queue=\"{q}\",direction=\"out\"}}"))).collect();
    (tap, sent, text)
}

#[test]
fn two_dataplane_queues_carry_sixteen_tcp_flows_from_a_to_b_intact_and_share_the_work() {
    const FLOWS: usize = 16;
    const PER_FLOW: u64 = 16 << 20;
    let mut m = Mesh::up_with(Some("weft-test-password"), 1, &["--dataplane-threads", "2"]);
    let (a_pod, b_pod, b_addr) = (m.pods[0][0].0, m.pods[1][0].0, m.pods[1][0].1);
    assert!(m.bed.ping(a_pod, b_addr).unwrap() || m.bed.ping(a_pod, b_addr).unwrap(), "{}", m.logs());
    // Each router runs two threads per queue.
    for r in &m.routers[..2] {
        let names: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", r.pid))
            .unwrap()
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|c| c.trim().to_owned())
            .collect();
        for t in ["weft-tap", "weft-sleeve", "weft-tap-1", "weft-sleeve-1"] {
            assert!(names.iter().any(|n| n == t), "no thread {t}: {names:?}");
        }
    }
    let secs = parallel_flows(&m.bed, a_pod, b_pod, b_addr, FLOWS, PER_FLOW);
    let total = PER_FLOW * FLOWS as u64;
    println!("{FLOWS} flows A -> B, {} MiB, every byte checked: {secs:.1} s, {:.2} Gbit/s", total >> 20, total as f64 * 8.0 / secs / 1e9);
    for (host, what) in [(0, "data"), (1, "acknowledgements")] {
        let (tap, sent, text) = queue_counts(&m, host);
        println!("{}: TAP frames read per queue {tap:?}, datagrams sent per queue {sent:?}", NAMES[host]);
        // The flows' frames are spread over both queues (16 flows all hashed to one of two
        // queues: 1 in 32768): each queue read and sent a share of them.
        assert!(tap.iter().all(|&n| n >= 100) && sent.iter().all(|&n| n >= 100), "{}: {what} not read and sent on both queues: {tap:?} {sent:?}\n{text}", NAMES[host]);
        let lost: u64 = ["auth", "replay", "other"].iter().map(|r| metric(&text, &format!("weft_drops_total{{reason=\"{r}\"}}"))).sum();
        assert_eq!(lost, 0, "{}: datagrams refused or lost\n{text}", NAMES[host]);
    }

    // B's TAP deleted: the repair recreates it with both queues, and both carry flows again
    // (the per-queue counters start again at 0 with the new queues).
    let b = m.cluster.hosts[1];
    m.bed.netlink(b).delete_link("weft-tap").unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(m.bed.ping(a_pod, b_addr).unwrap() && m.routers[1].log_text().contains("recreating it")) {
        assert!(Instant::now() < deadline, "B's TAP was not recreated within 20 s\n{}", m.logs());
        std::thread::sleep(Duration::from_millis(500));
    }
    parallel_flows(&m.bed, a_pod, b_pod, b_addr, FLOWS, 4 << 20);
    let (tap, _, text) = queue_counts(&m, 1);
    println!("b, after its TAP was recreated: TAP frames read per queue {tap:?}");
    assert!(tap.iter().all(|&n| n >= 100), "b: the recreated TAP's queues did not both carry frames: {tap:?}\n{text}");
    m.down();
}

/// A pod's UDP burst: `count` datagrams of `len` bytes (sequence number, then bytes derived from
/// it), sent back to back from pod `from` to `to_addr` (pod `to`). Returns the sequence numbers
/// received, in arrival order, after every datagram's bytes were checked.
fn udp_burst(bed: &TestBed, from: NodeId, to: NodeId, to_addr: Ipv4Addr, count: u32, len: usize) -> Vec<u32> {
    use nix::sys::socket::{setsockopt, sockopt};
    let rx = bed.ns(to).run(|| std::net::UdpSocket::bind((to_addr, 5401))).unwrap().unwrap();
    // Room for the whole burst: the receiving pod's kernel queues a super-frame's datagrams at once.
    setsockopt(&rx, sockopt::RcvBufForce, &(16 << 20)).unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let tx = bed.ns(from).run(|| std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))).unwrap().unwrap();
    let body = |seq: u32, buf: &mut [u8]| {
        buf[..4].copy_from_slice(&seq.to_be_bytes());
        pattern(u64::from(seq) + 1, &mut buf[4..]);
    };
    let reader = std::thread::spawn(move || {
        let (mut got, mut want, mut buf) = (Vec::new(), vec![0u8; len], vec![0u8; 65536]);
        while let Ok(n) = rx.recv(&mut buf) {
            assert_eq!(n, len, "a datagram of {n} bytes, not {len}");
            let seq = u32::from_be_bytes(buf[..4].try_into().unwrap());
            body(seq, &mut want);
            assert!(buf[..n] == want[..], "datagram {seq}: bytes differ");
            got.push(seq);
            if got.len() == count as usize {
                break;
            }
        }
        got
    });
    let mut buf = vec![0u8; len];
    for seq in 0..count {
        body(seq, &mut buf);
        tx.send_to(&buf, (to_addr, 5401)).unwrap();
    }
    reader.join().unwrap()
}

#[test]
fn a_pods_udp_burst_crosses_coalesced_or_is_merged_at_the_receiver_and_arrives_intact_and_in_order() {
    const COUNT: u32 = 4000;
    // Every pod held from when it attaches (a burst this short would be over before the router
    // saw its rate: `router/src/daemon/udphold.rs`).
    let mut m = Mesh::up_with(Some("weft-test-password"), 1, &["--pod-udp-coalesce-above", "0"]);
    let (a_pod, b_pod, b_addr) = (m.pods[0][0].0, m.pods[1][0].0, m.pods[1][0].1);
    assert!(m.bed.ping(a_pod, b_addr).unwrap() || m.bed.ping(a_pod, b_addr).unwrap(), "{}", m.logs());
    // The host end of A's pod is as weft-cni leaves it then.
    let features = m.bed.netlink(m.cluster.hosts[0]).features("vp1").unwrap();
    assert!(features.iter().any(|(n, on)| n == "rx-udp-gro-forwarding" && *on), "{features:?}");
    for len in [1348, 64] {
        let (before, _, _) = queue_counts(&m, 0);
        let got = udp_burst(&m.bed, a_pod, b_pod, b_addr, COUNT, len);
        let (after, _, text) = queue_counts(&m, 0);
        let read = after[0] - before[0];
        println!("{COUNT} datagrams of {len} B sent back to back from A's pod: {} arrived, every byte checked, in order; A's router read {read} TAP frames", got.len());
        assert!(got.windows(2).all(|w| w[0] < w[1]), "datagrams out of order or twice");
        assert!(got.len() as u32 >= COUNT * 9 / 10, "only {} of {COUNT} arrived\n{text}\n{}", got.len(), m.logs());
        // Coalesced: far fewer frames than datagrams (up to 64 per super-frame; one each
        // without coalescing). How many merge depends on the sender's pace against the 20 µs
        // flush timeout: on a quiet machine ~25-55 per frame, under CI's parallel tests ~4.
        assert!(read < u64::from(COUNT) / 2, "A's router read {read} TAP frames for {COUNT} datagrams: not coalesced\n{text}");
    }
    // A's pod port without coalescing (as a pod of another plugin, or the host's own UDP): the
    // datagrams cross one frame each, and B's router merges them before its TAP.
    m.bed.netlink(m.cluster.hosts[0]).set_pod_udp_coalescing("vp1", None).unwrap();
    for len in [1348, 64] {
        let (_, _, before) = queue_counts(&m, 1);
        let got = udp_burst(&m.bed, a_pod, b_pod, b_addr, COUNT, len);
        let (_, _, text) = queue_counts(&m, 1);
        let merged = metric(&text, "weft_udp_merged_datagrams_total") - metric(&before, "weft_udp_merged_datagrams_total");
        let writes = metric(&text, "weft_tap_frames_total{direction=\"to_bridge\"}") - metric(&before, "weft_tap_frames_total{direction=\"to_bridge\"}");
        println!("{COUNT} datagrams of {len} B, A's pod port not coalescing: {} arrived, every byte checked, in order; B's router wrote {writes} TAP frames, {merged} datagrams merged", got.len());
        assert!(got.windows(2).all(|w| w[0] < w[1]), "datagrams out of order or twice");
        // An unpaced flood of single frames may overflow A's TAP queue (what coalescing spares):
        // some loss is the sender's, not the merge's; what arrives is whole and in order.
        assert!(got.len() as u32 >= COUNT / 2, "only {} of {COUNT} arrived\n{text}\n{}", got.len(), m.logs());
        assert!(merged >= got.len() as u64 / 4, "B merged {merged} of the {} datagrams that arrived\n{text}", got.len());
    }
    m.down();
}

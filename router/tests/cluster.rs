//! The router on the test bed's cluster: A–B on one segment, B–C on another (A and C reach each
//! other only through weft on B), D behind a NAT; two pods per host. Root needed.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use weft_fastpath::testbed::topology::{self, Cluster};
use weft_fastpath::testbed::{NodeId, TestBed};
use weft_router::cluster::{self, RouterOptions, RouterProc, RunDir};

const MTU: u32 = 1376;

struct Up {
    bed: TestBed,
    cluster: Cluster,
    routers: Vec<RouterProc>,
    opts: RouterOptions,
    run: RunDir,
}

fn options(password: Option<&str>) -> RouterOptions {
    RouterOptions {
        binary: PathBuf::from(env!("CARGO_BIN_EXE_weft")),
        password: password.map(str::to_owned),
        extra_args: vec!["--mtu".into(), MTU.to_string()],
    }
}

/// Who dials whom: A and C dial B; D (behind the NAT) dials B's outside address.
fn peers_of(c: &Cluster, i: usize) -> Vec<Ipv4Addr> {
    match i {
        0 => vec![c.all_addrs[1][0]],
        2 => vec![c.all_addrs[1][1]],
        3 => vec![c.all_addrs[1][1]],
        _ => vec![],
    }
}

fn bring_up(password: Option<&str>) -> Up {
    let mut bed = TestBed::new().expect("cannot build a test bed");
    let cluster = topology::cluster(&mut bed, 2).unwrap();
    for pods in &cluster.pods {
        for (p, _) in pods {
            bed.netlink(*p).set_mtu("eth0", MTU).unwrap();
        }
    }
    let run = RunDir::new(bed.id()).unwrap();
    let opts = options(password);
    let mut routers = Vec::new();
    for (i, &h) in cluster.hosts.iter().enumerate() {
        let name = bed.name(h).to_owned();
        routers.push(cluster::start_router(&mut bed, &run, h, &name, &peers_of(&cluster, i), &opts).unwrap());
    }
    for r in &routers {
        cluster::wait_for(r, Duration::from_secs(20), |s| s.peers == 4 && s.connections.established >= 1).unwrap();
    }
    Up { bed, cluster, routers, opts, run }
}

fn all_pods(c: &Cluster) -> Vec<(NodeId, Ipv4Addr)> {
    c.pods.iter().flatten().copied().collect()
}

/// Pings every pod from every other pod; returns the pairs that failed.
fn ping_matrix(up: &Up) -> Vec<String> {
    let pods = all_pods(&up.cluster);
    let mut failed = Vec::new();
    for &(from, _) in &pods {
        for &(to, addr) in &pods {
            if from != to && !ping_ok(&up.bed, from, addr) {
                failed.push(format!("{} -> {}", up.bed.name(from), up.bed.name(to)));
            }
        }
    }
    failed
}

/// Three echoes, each answered exactly once (`ping` reports DUP! for duplicates).
fn ping_ok(bed: &TestBed, from: NodeId, addr: Ipv4Addr) -> bool {
    let out = bed.run(from, Command::new("ping").args(["-n", "-c", "3", "-i", "0.2", "-W", "2", &addr.to_string()])).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    out.status.success() && !text.contains("DUP!")
}

fn every_pod_reaches_every_pod(password: Option<&str>) {
    let up = bring_up(password);
    let failed = ping_matrix(&up);
    assert!(failed.is_empty(), "pairs that failed: {failed:?}\nlogs:\n{}", logs(&up));
}

fn logs(up: &Up) -> String {
    up.routers.iter().map(|r| format!("--- {}\n{}", up.bed.name(r.host), r.log_text())).collect()
}

#[test]
fn every_pod_reaches_every_pod_encrypted() {
    every_pod_reaches_every_pod(Some("correct horse battery staple"));
}

#[test]
fn every_pod_reaches_every_pod_unencrypted() {
    every_pod_reaches_every_pod(None);
}

/// Sends `len` bytes of a deterministic stream over TCP from pod `from` to pod `to` and checks
/// the receiver's digest; returns the throughput in Gbit/s.
fn tcp_transfer(bed: &TestBed, from: NodeId, to: NodeId, to_addr: Ipv4Addr, len: u64) -> f64 {
    let listener = bed.ns(to).run(|| TcpListener::bind((to_addr, 5201))).unwrap().unwrap();
    let receiver = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let (mut got, mut digest) = (0u64, Fnv::new());
        loop {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            digest.update(&buf[..n]);
            got += n as u64;
        }
        (got, digest.0)
    });
    let addr = SocketAddr::from((to_addr, 5201));
    let mut s = bed.ns(from).run(|| TcpStream::connect_timeout(&addr, Duration::from_secs(5))).unwrap().unwrap();
    let start = Instant::now();
    let mut sent_digest = Fnv::new();
    let mut block = vec![0u8; 1 << 16];
    let mut x: u64 = 0x1234_5678;
    let mut sent = 0u64;
    while sent < len {
        for chunk in block.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
        let n = (len - sent).min(block.len() as u64) as usize;
        s.write_all(&block[..n]).unwrap();
        sent_digest.update(&block[..n]);
        sent += n as u64;
    }
    drop(s);
    let (got, digest) = receiver.join().unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(got, len, "bytes received");
    assert_eq!(digest, sent_digest.0, "checksum of the stream");
    len as f64 * 8.0 / secs / 1e9
}

/// FNV-1a over the stream.
struct Fnv(u64);
impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn update(&mut self, b: &[u8]) {
        for &x in b {
            self.0 ^= u64::from(x);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

#[test]
fn a_gigabyte_crosses_from_a_to_c_through_b_intact() {
    let up = bring_up(Some("s3cret"));
    let (a_pod, _) = up.cluster.pods[0][0];
    let (c_pod, c_addr) = up.cluster.pods[2][0];
    let gbps = tcp_transfer(&up.bed, a_pod, c_pod, c_addr, 1 << 30);
    println!("1 GiB from a-pod1 to c-pod1 via b, encrypted: {gbps:.2} Gbit/s");
}

#[test]
fn full_mtu_frames_cross_and_larger_df_packets_get_fragmentation_needed() {
    let up = bring_up(Some("s3cret"));
    let (a_pod, _) = up.cluster.pods[0][0];
    let (_, c_addr) = up.cluster.pods[2][0];
    // 1376 - 20 (IP) - 8 (ICMP) = 1348 bytes of payload: exactly the pod MTU, DF set.
    let full = up.bed.run(a_pod, Command::new("ping").args(["-n", "-c", "2", "-W", "2", "-M", "do", "-s", "1348", &c_addr.to_string()])).unwrap();
    assert!(full.status.success(), "full-MTU ping failed: {}", String::from_utf8_lossy(&full.stdout));
    // One byte more cannot leave the pod: its own interface MTU refuses it.
    let over = up.bed.run(a_pod, Command::new("ping").args(["-n", "-c", "1", "-W", "2", "-M", "do", "-s", "1349", &c_addr.to_string()])).unwrap();
    assert!(!over.status.success());
}

#[test]
fn traffic_resumes_after_the_middle_router_is_killed_and_restarted() {
    let mut up = bring_up(None);
    let (a_pod, _) = up.cluster.pods[0][0];
    let (_, c_addr) = up.cluster.pods[2][0];
    assert!(ping_ok(&up.bed, a_pod, c_addr));
    let b = up.routers[1].clone();
    up.bed.kill(b.pid).unwrap(); // SIGKILL
    let killed = Instant::now();
    let name = up.bed.name(b.host).to_owned();
    let restarted = cluster::start_router(&mut up.bed, &up.run, b.host, &name, &[], &up.opts).unwrap();
    up.routers[1] = restarted;
    let mut back = None;
    while killed.elapsed() < Duration::from_secs(30) {
        if ping_once(&up.bed, a_pod, c_addr) {
            back = Some(killed.elapsed());
            break;
        }
    }
    let gap = back.unwrap_or_else(|| panic!("no traffic 30 s after restarting B\n{}", logs(&up)));
    println!("A -> C traffic gap across a kill -9 and restart of B: {:.2} s", gap.as_secs_f64());
}

fn ping_once(bed: &TestBed, from: NodeId, addr: Ipv4Addr) -> bool {
    bed.run(from, Command::new("ping").args(["-n", "-c", "1", "-W", "1", &addr.to_string()])).map(|o| o.status.success()).unwrap_or(false)
}

#[test]
fn traffic_resumes_after_the_a_b_link_is_cut_and_restored() {
    let mut up = bring_up(None);
    let (a_pod, _) = up.cluster.pods[0][0];
    let (_, c_addr) = up.cluster.pods[2][0];
    assert!(ping_ok(&up.bed, a_pod, c_addr));
    up.bed.cut(up.cluster.a_cable.cable).unwrap();
    assert!(!ping_once(&up.bed, a_pod, c_addr), "the cable is cut");
    std::thread::sleep(Duration::from_secs(2));
    up.bed.restore(up.cluster.a_cable.cable).unwrap();
    let restored = Instant::now();
    let mut back = None;
    while restored.elapsed() < Duration::from_secs(30) {
        if ping_once(&up.bed, a_pod, c_addr) {
            back = Some(restored.elapsed());
            break;
        }
    }
    let gap = back.unwrap_or_else(|| panic!("no traffic 30 s after restoring the cable\n{}", logs(&up)));
    println!("A -> C traffic back {:.2} s after the A-B cable was restored", gap.as_secs_f64());
}

//! A handshake flood against one `weft router`, and the router's memory under it.
//!
//! CONNECTIONS QUIC connections (default 300) from SOURCES hosts of the test bed (default 3)
//! that never authenticate: each opens the control stream, announces a 4 MiB frame, sends all
//! of it but the last byte, and holds on until the router closes it or the flood ends (15 s).
//! Prints the router's VmRSS from `/proc/PID/status` before the flood, its peak during it
//! (sampled every 50 ms, and VmHWM), and after, with how the connections ended.
//!
//! Usage, as root: `cargo build -p weft-router --bin weft && cargo run -p weft-benches --bin
//! mesh_flood -- [--weft PATH] [CONNECTIONS] [SOURCES]`. The router is the `weft` binary beside
//! this one unless `--weft` names another (e.g. an older build, to compare). It runs with a
//! password on a bed of its own; all traffic stays between the bed's namespaces.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use weft_mesh::transport::tls;
use weft_testbed::TestBed;
use weft_testbed::routers::{self, RouterOptions, RunDir};
use weft_testbed::topology;

const FRAME: usize = 4 << 20;
const FLOOD_FOR: Duration = Duration::from_secs(15);

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let mut binary = std::env::current_exe().ok().and_then(|p| p.parent().map(|d| d.join("weft"))).unwrap_or_else(|| PathBuf::from("weft"));
    if let Some(i) = args.iter().position(|a| a == "--weft") {
        if i + 1 >= args.len() {
            eprintln!("mesh_flood: --weft needs a path");
            std::process::exit(2);
        }
        binary = PathBuf::from(args.remove(i + 1));
        args.remove(i);
    }
    let connections: usize = args.first().and_then(|s| s.parse().ok()).unwrap_or(300);
    let sources: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(3).clamp(1, 20);
    if let Err(e) = run(binary, connections, sources) {
        eprintln!("mesh_flood: {e}");
        std::process::exit(1);
    }
}

/// A field of `/proc/PID/status` in kB.
fn status_kb(pid: u32, field: &str) -> Result<u64, String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| format!("read /proc/{pid}/status: {e}"))?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.trim().strip_suffix("kB")?.trim().parse().ok())
        .ok_or_else(|| format!("no {field} in /proc/{pid}/status"))
}

fn mb(kb: u64) -> String {
    format!("{:.1} MB", kb as f64 / 1024.0)
}

#[derive(Default)]
struct Counts {
    quic_up: AtomicU64,
    refused: AtomicU64,
    failed: AtomicU64,
    closed_by_router: AtomicU64,
    held_to_the_end: AtomicU64,
    bytes_sent: AtomicU64,
}

fn run(binary: PathBuf, connections: usize, sources: usize) -> Result<(), String> {
    let mut bed = TestBed::new().map_err(|e| e.to_string())?;
    let run = RunDir::new(bed.id()).map_err(|e| e.to_string())?;
    let lan = topology::shared_segment(&mut bed, 1 + sources as u8).map_err(|e| e.to_string())?;
    let opts = RouterOptions { binary: binary.clone(), password: Some("flood".into()), extra_args: vec![] };
    let router = routers::start_router(&mut bed, &run, lan.hosts[0], "target", &[], &opts)?;
    routers::wait_for(&router, Duration::from_secs(30), |_| true)?;
    std::thread::sleep(Duration::from_secs(2));
    let pid = router.pid;
    let before = status_kb(pid, "VmRSS")?;
    println!("router {} (pid {pid}), {connections} connections from {sources} sources, each announcing a {} MiB frame", binary.display(), FRAME >> 20);
    println!("  VmRSS before:      {}", mb(before));

    let target = SocketAddr::from((lan.links[0].addr, 6783));
    let mut sockets = Vec::new();
    for s in 0..sources {
        let addr = lan.links[1 + s].addr;
        let sock = bed.ns(lan.hosts[1 + s]).run(|| UdpSocket::bind((addr, 0))).map_err(|e| e.to_string())?.map_err(|e| format!("bind {addr}: {e}"))?;
        sockets.push(sock);
    }

    let flooding = Arc::new(AtomicBool::new(true));
    let sampler = {
        let flooding = flooding.clone();
        std::thread::spawn(move || {
            let mut peak = 0;
            while flooding.load(Ordering::Relaxed) {
                peak = peak.max(status_kb(pid, "VmRSS").unwrap_or(0));
                std::thread::sleep(Duration::from_millis(50));
            }
            peak
        })
    };
    let counts = Arc::new(Counts::default());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().map_err(|e| e.to_string())?;
    let started = Instant::now();
    rt.block_on(flood(sockets, target, connections, counts.clone()))?;
    let flood_time = started.elapsed();
    flooding.store(false, Ordering::Relaxed);
    let peak = sampler.join().map_err(|_| "the sampler panicked".to_owned())?;
    drop(rt);
    std::thread::sleep(Duration::from_secs(3));
    let after = status_kb(pid, "VmRSS")?;
    let hwm = status_kb(pid, "VmHWM")?;
    let alive = routers::alive(pid);
    println!("  VmRSS peak:        {} sampled, VmHWM {}", mb(peak), mb(hwm));
    println!("  VmRSS after:       {} (3 s after the flood)", mb(after));
    println!(
        "  connections: {} QUIC handshakes completed, {} refused before the handshake, {} failed otherwise; {} closed by the router, {} held open to the end ({:.1} s)",
        counts.quic_up.load(Ordering::Relaxed),
        counts.refused.load(Ordering::Relaxed),
        counts.failed.load(Ordering::Relaxed),
        counts.closed_by_router.load(Ordering::Relaxed),
        counts.held_to_the_end.load(Ordering::Relaxed),
        flood_time.as_secs_f64()
    );
    println!("  control-stream bytes the router's flow control let in: {}", mb(counts.bytes_sent.load(Ordering::Relaxed) / 1024));
    println!("  router still running: {alive}");
    bed.teardown().map_err(|e| e.to_string())?;
    Ok(())
}

async fn flood(sockets: Vec<UdpSocket>, target: SocketAddr, connections: usize, counts: Arc<Counts>) -> Result<(), String> {
    let transport = tls::transport(Duration::from_secs(1), Duration::from_secs(20), u32::MAX).map_err(|e| e.to_string())?;
    let client = tls::client_config(transport).map_err(|e| e.to_string())?;
    let mut endpoints = Vec::new();
    for sock in sockets {
        let runtime = quinn::default_runtime().ok_or("no async runtime")?;
        let mut ep = quinn::Endpoint::new(quinn::EndpointConfig::default(), None, sock, runtime).map_err(|e| e.to_string())?;
        ep.set_default_client_config(client.clone());
        endpoints.push(ep);
    }
    let deadline = tokio::time::Instant::now() + FLOOD_FOR;
    let mut tasks = Vec::new();
    for i in 0..connections {
        let ep = endpoints[i % endpoints.len()].clone();
        let counts = counts.clone();
        tasks.push(tokio::spawn(async move {
            if tokio::time::timeout_at(deadline, one(ep, target, &counts)).await.is_err() {
                counts.held_to_the_end.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    for ep in &endpoints {
        ep.close(0u32.into(), b"flood over");
    }
    Ok(())
}

/// One connection: announce a frame of FRAME bytes, send all but its last byte, wait to be
/// closed (the caller's deadline ends the wait).
async fn one(ep: quinn::Endpoint, target: SocketAddr, counts: &Counts) {
    let conn = match ep.connect(target, tls::SERVER_NAME) {
        Ok(c) => c.await,
        Err(_) => {
            counts.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    let conn = match conn {
        Ok(c) => c,
        Err(quinn::ConnectionError::ConnectionClosed(c)) if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED => {
            counts.refused.fetch_add(1, Ordering::Relaxed);
            return;
        }
        Err(_) => {
            counts.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    counts.quic_up.fetch_add(1, Ordering::Relaxed);
    let Ok((mut send, _recv)) = conn.open_bi().await else {
        counts.closed_by_router.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let chunk = vec![0u8; 64 << 10];
    let mut sent = 0usize;
    let mut ok = send.write_all(&(FRAME as u32).to_be_bytes()).await.is_ok();
    while ok && sent < FRAME - 1 {
        let n = chunk.len().min(FRAME - 1 - sent);
        match send.write(&chunk[..n]).await {
            Ok(k) => {
                sent += k;
                counts.bytes_sent.fetch_add(k as u64, Ordering::Relaxed);
            }
            Err(_) => ok = false,
        }
    }
    conn.closed().await;
    counts.closed_by_router.fetch_add(1, Ordering::Relaxed);
}

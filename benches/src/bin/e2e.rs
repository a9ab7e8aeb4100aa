//! End-to-end comparison between two hosts of a test bed, over each path, as ratios to kernel
//! VXLAN measured in the same run: raw veth (host to host across the segment), the kernel's
//! VXLAN (pod to pod over the same segment), and pod to pod through two `weft router` processes
//! in three ways: "weft encrypted" (the sleeve, with a cluster password), "weft plain sleeve"
//! (no password, `--no-fastpath`) and "weft fast path" (no password: weft's own kernel VXLAN
//! device, measured only once both routers report the connection's overlay as `fastpath` and
//! have programmed each other's pod MAC; the run fails if they do not within 20 s).
//!
//! The pods of weft's paths have their host-side veth as weft-cni leaves it with the router's
//! configuration: on the sleeve paths (encrypted, plain sleeve), GRO with UDP GRO forwarding and
//! a 20 µs flush timeout (`weft_kernel::offload`), so a pod's UDP burst reaches the router as
//! super-frames; on the fast path, plain veths, as the baseline's pods (a kernel-VXLAN network,
//! Flannel's, leaves them so). `WEFT_E2E_NO_POD_GRO=1` gives weft's pods plain veths on every
//! path, `WEFT_E2E_BASE_POD_GRO=1` gives the baseline's pods the sleeve paths' setting (what that
//! setting alone does for kernel VXLAN); `WEFT_E2E_POD_GRO_FLUSH_US=N` gives weft's pods on every
//! path that flush timeout (to weigh packet rate against the wait of a lone datagram).
//!
//! Every pod, the baseline's included, has the same MTU: weft's default pod MTU, 1376 (the
//! routers get `--mtu` explicitly, and the run fails if IPAM hands out another), so that each
//! overlay carries the same packets; `WEFT_E2E_MTU` sets another.
//!
//! Usage, as root: `benches/e2e.sh [SECONDS]` (builds the release binaries and runs this one).
//! Per path: TCP with one stream and with 4 parallel streams; UDP packet rate with 1348-byte and
//! 64-byte payloads offered as fast as the sender can (`iperf3 -u -b 0`: packets per second
//! received, and loss, with the part of it the server pod's socket dropped for a full buffer:
//! what the receiving program did not keep up with, the path having carried it); ping
//! round-trip time (200 echoes 10 ms apart, mean, median and 99th percentile), the same with
//! 1000 echoes 0.2 ms apart (no thread on the path sleeps long enough for its CPU to go idle:
//! what the round trip costs under steady traffic), and the same for UDP
//! requests of 64 bytes answered by an echo server (what a DNS query sees, and what the pods' UDP
//! coalescing costs a lone datagram). Last, what one wake-up of a thread asleep for 10 ms costs
//! on this machine (`weft_benches::wake_up_times`): the unit of a userspace overlay's added
//! round-trip time; and what sealing a ping's datagram costs after 10 ms asleep, against right
//! after (`weft_benches::seal_times`): what running cold costs.
//! Each iperf3 run lasts SECONDS (default 5). Around each run: the machine's CPU use from
//! `/proc/stat` (all processes, so other work on the machine counts too) and, on weft's paths,
//! each router's from `/proc/PID/stat`. On weft's paths, last, the routers' CPU over 10 s
//! without traffic and over 10 s of one ping a second (what the data plane costs when idle).
//!
//! Environment: `WEFT_E2E_ONLY=fastpath` (or any comma-separated list of `veth`, `encrypted`,
//! `sleeve`, `fastpath`) measures only those paths and kernel VXLAN, the baseline;
//! `WEFT_E2E_PAIRS=N` runs only N pairs of single-stream TCP runs over kernel VXLAN and weft's
//! fast path, both beds up at once, alternating, and prints each pair's ratio and their median
//! (on a busy machine the figures of one run each swing widely); `WEFT_E2E_ROUTER_ARGS` adds
//! flags to every router (for experiments, e.g. `--no-masquerade`, or `--dataplane-threads=2`
//! against the default in a run of its own); `WEFT_E2E_BASE_NAT=1` gives
//! the baseline's hosts a masquerade table like weft's, so that connection tracking weighs on
//! kernel VXLAN as it does on weft's paths;
//! `WEFT_E2E_ONLY_WEFT=1` runs only the encrypted single-stream TCP over weft (`=sleeve`: over
//! the plain sleeve; `WEFT_E2E_STREAMS=N`: N streams instead of one; with
//! `WEFT_E2E_PERF_UDP=PAYLOAD`, a UDP run of that payload instead, profiled as the TCP run is);
//! `WEFT_E2E_UDP_BITRATE=RATE` offers the UDP runs at iperf3's `-b RATE` (e.g. `300M`) instead
//! of as fast as the sender can;
//! `WEFT_E2E_QUICK=1` measures per path only single-stream TCP, the ping and UDP RTT and the idle CPU
//! (for latency work: several runs in the time of one);
//! `WEFT_E2E_HOLD=SECONDS` keeps each weft bed up and idle that long before measuring it, and
//! prints its pods' namespaces (for tracing one packet's trip: `benches/trace-ping.sh`);
//! `WEFT_E2E_PERF_DIR=DIR` records `perf` samples of each router during the encrypted
//! single-stream TCP run (`perf record -e cpu-clock --call-graph dwarf`: this VM has no hardware
//! counters) into `DIR/sender.data` (the client's host: its `weft-tap` thread carries the data
//! out) and `DIR/receiver.data` (its `weft-sleeve` thread carries the data in);
//! `benches/profile.sh` runs this and reports them.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use weft_api::types::{AllocateRequest, Allocation, Attachment, Connection, ConnectionState};
use weft_benches::{MachineCpu, cpu_time};
use weft_testbed::routers::{self, RouterOptions, RunDir};
use weft_testbed::topology::{self, POD_BRIDGE};
use weft_testbed::{NodeId, Rtt, TestBed, Throughput, UdpRate, iperf3_tcp, iperf3_udp};

/// UDP payloads: the largest that crosses every path unfragmented at the default pod MTU
/// (1348 + 28 bytes of IP and UDP header = 1376), and a small one.
const UDP_PAYLOADS: [usize; 2] = [1348, 64];
const PINGS: u32 = 200;
const PING_INTERVAL: Duration = Duration::from_millis(10);
/// Pings of the busy RTT run, and their spacing.
const BUSY_PINGS: u32 = 1000;
const BUSY_PING_INTERVAL: Duration = Duration::from_micros(200);
/// How long the routers' CPU is measured without traffic, and with one ping a second.
const IDLE: Duration = Duration::from_secs(10);
/// The pods' MTU on every path unless `WEFT_E2E_MTU` says otherwise: weft's default.
const POD_MTU: u32 = 1376;
/// How long the fast path may take to become established and programmed.
const FASTPATH_WAIT: Duration = Duration::from_secs(20);

/// How the routers of one weft column run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// With a cluster password: everything on the encrypted sleeve.
    Encrypted,
    /// Without a password and with `--no-fastpath`: the plain sleeve.
    PlainSleeve,
    /// Without a password: the kernel VXLAN fast path, once established.
    FastPath,
}

impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Encrypted => "weft encrypted",
            Mode::PlainSleeve => "weft plain sleeve",
            Mode::FastPath => "weft fast path",
        }
    }

    /// The word `WEFT_E2E_ONLY` selects it by.
    fn word(self) -> &'static str {
        match self {
            Mode::Encrypted => "encrypted",
            Mode::PlainSleeve => "sleeve",
            Mode::FastPath => "fastpath",
        }
    }
}

/// Which paths to measure (kernel VXLAN, the baseline, always).
struct Selection(Option<Vec<String>>);

impl Selection {
    fn from_env() -> Result<Selection, String> {
        let Ok(v) = std::env::var("WEFT_E2E_ONLY") else { return Ok(Selection(None)) };
        let words: Vec<String> = v.split(',').map(|w| w.trim().to_owned()).filter(|w| !w.is_empty()).collect();
        let known = ["veth", "vxlan", "encrypted", "sleeve", "fastpath"];
        if let Some(w) = words.iter().find(|w| !known.contains(&w.as_str())) {
            return Err(format!("WEFT_E2E_ONLY: unknown path {w:?} (known: {})", known.join(", ")));
        }
        Ok(Selection(Some(words)))
    }

    fn wants(&self, word: &str) -> bool {
        self.0.as_ref().is_none_or(|ws| ws.iter().any(|w| w == word))
    }
}

fn main() {
    let secs: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    if let Err(e) = run(Duration::from_secs(secs)) {
        eprintln!("e2e: {e}");
        std::process::exit(1);
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    weft_kernel::chain(e)
}

/// CPU used during one measurement.
#[derive(Clone, Copy, Debug, Default)]
struct Cpu {
    /// Cores busy on the whole machine (every process, and the kernel's softirq work).
    machine: f64,
    /// Cores used by each router (weft's paths only).
    routers: Option<[f64; 2]>,
}

/// Everything measured over one path.
struct PathResult {
    label: &'static str,
    tcp1: (Throughput, Cpu),
    /// Not measured with `WEFT_E2E_QUICK`.
    tcp4: Option<(Throughput, Cpu)>,
    /// One per [`UDP_PAYLOADS`]; none with `WEFT_E2E_QUICK`.
    udp: Vec<(UdpRate, Cpu)>,
    rtt: Rtt,
    /// Pings [`BUSY_PING_INTERVAL`] apart: no thread on the path goes idle between echoes.
    busy_rtt: Rtt,
    /// UDP request and answer (64 bytes each way), as the ping.
    udp_rtt: Rtt,
    /// The sleeps (voluntary context switches) of the routers' data plane threads (`weft-tap`,
    /// `weft-sleeve`; A+B) per echo of the RTT run (weft's paths): the wake-ups a round trip
    /// costs, their 100 ms poll timeouts and heartbeats included (about 0.2 per echo). A thread
    /// woken for a frame another thread took meanwhile counts too: this shows the wake-ups, not
    /// which of them the round trip waited for.
    wakeups: Option<f64>,
    /// The routers' CPU (cores, A+B) without traffic and with one ping a second (weft's paths).
    idle: Option<(f64, f64)>,
}

/// Runs `f`, measuring the machine's and `pids`' CPU use over it.
fn with_cpu<T>(pids: &[u32], f: impl FnOnce() -> Result<T, String>) -> Result<(T, Cpu), String> {
    let m0 = MachineCpu::now()?;
    let p0 = pids.iter().map(|&p| cpu_time(p)).collect::<Result<Vec<_>, _>>()?;
    let t0 = Instant::now();
    let out = f()?;
    let wall = t0.elapsed().as_secs_f64();
    let m1 = MachineCpu::now()?;
    let p1 = pids.iter().map(|&p| cpu_time(p)).collect::<Result<Vec<_>, _>>()?;
    let routers = (pids.len() == 2).then(|| [0, 1].map(|i| (p1[i] - p0[i]).as_secs_f64() / wall));
    Ok((out, Cpu { machine: m1.busy_cores_since(&m0), routers }))
}

/// How often the data plane threads (`weft-tap`, `weft-sleeve`) of process `pid` have gone to
/// sleep (voluntary context switches).
fn sleeps(pid: u32) -> Result<u64, String> {
    let dir = format!("/proc/{pid}/task");
    let mut total = 0;
    for task in std::fs::read_dir(&dir).map_err(|e| format!("read {dir}: {e}"))? {
        let path = task.map_err(|e| format!("read {dir}: {e}"))?.path().join("status");
        // A thread that ended meanwhile has no status any more: it sleeps no more either.
        let Ok(status) = std::fs::read_to_string(&path) else { continue };
        if !status.lines().any(|l| l.strip_prefix("Name:").is_some_and(|n| matches!(n.trim(), "weft-tap" | "weft-sleeve"))) {
            continue;
        }
        total += status.lines().find_map(|l| l.strip_prefix("voluntary_ctxt_switches:")).and_then(|v| v.trim().parse::<u64>().ok()).ok_or_else(|| format!("{}: no voluntary_ctxt_switches", path.display()))?;
    }
    Ok(total)
}

/// Runs `f`, a measurement lasting `d`, with `perf` recording `pids` meanwhile when asked.
fn profiled<T>(perf: Option<&Profile>, pids: &[u32], d: Duration, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    let recording = perf.map(|p| p.start(pids, d)).transpose()?;
    let out = f();
    if let Some(r) = recording {
        r.finish()?;
    }
    out
}

/// iperf3's `-b` for the UDP runs: `WEFT_E2E_UDP_BITRATE`, by default 0 (as fast as it can).
fn udp_bitrate() -> String {
    std::env::var("WEFT_E2E_UDP_BITRATE").unwrap_or_else(|_| "0".into())
}

/// The measurements over one path: from `client` to `server_addr` (on `server`).
#[allow(clippy::too_many_arguments)]
fn measure(label: &'static str, bed: &mut TestBed, server: NodeId, client: NodeId, server_addr: Ipv4Addr, d: Duration, pids: &[u32], perf: Option<&Profile>) -> Result<PathResult, String> {
    eprintln!("e2e: {label} ...");
    let quick = std::env::var_os("WEFT_E2E_QUICK").is_some();
    let tcp1 = with_cpu(pids, || profiled(perf, pids, d, || iperf3_tcp(bed, server, client, server_addr, d, 1)))?;
    let tcp4 = if quick { None } else { Some(with_cpu(pids, || iperf3_tcp(bed, server, client, server_addr, d, 4))?) };
    let mut udp = Vec::new();
    let udp_bitrate = udp_bitrate();
    for payload in UDP_PAYLOADS.iter().filter(|_| !quick) {
        udp.push(with_cpu(pids, || iperf3_udp(bed, server, client, server_addr, d, *payload, &udp_bitrate))?);
    }
    let w0 = pids.iter().map(|&p| sleeps(p)).sum::<Result<u64, String>>()?;
    let rtt = bed.ping_rtt(client, server_addr, PINGS, PING_INTERVAL)?;
    let w1 = pids.iter().map(|&p| sleeps(p)).sum::<Result<u64, String>>()?;
    let wakeups = (pids.len() == 2).then(|| w1.saturating_sub(w0) as f64 / f64::from(PINGS));
    let busy_rtt = bed.ping_rtt(client, server_addr, BUSY_PINGS, BUSY_PING_INTERVAL)?;
    let udp_rtt = bed.udp_rtt(client, server, server_addr, PINGS, PING_INTERVAL)?;
    let idle = if pids.len() == 2 {
        let both = |c: Cpu| c.routers.map_or(0.0, |[a, b]| a + b);
        let (_, still) = with_cpu(pids, || {
            std::thread::sleep(IDLE);
            Ok(())
        })?;
        let (_, pinged) = with_cpu(pids, || bed.ping_rtt(client, server_addr, IDLE.as_secs() as u32, Duration::from_secs(1)))?;
        Some((both(still), both(pinged)))
    } else {
        None
    };
    Ok(PathResult { label, tcp1, tcp4, udp, rtt, busy_rtt, udp_rtt, wakeups, idle })
}

fn run(d: Duration) -> Result<(), String> {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let perf = std::env::var_os("WEFT_E2E_PERF_DIR").map(|dir| Profile { dir: dir.into() });
    if let Some(v) = std::env::var_os("WEFT_E2E_ONLY_WEFT") {
        let perf = perf.as_ref();
        // `1` (or `encrypted`) is the encrypted sleeve; `sleeve` the plain one.
        let mode = match v.to_str() {
            Some("1" | "encrypted") => Mode::Encrypted,
            Some("sleeve") => Mode::PlainSleeve,
            _ => return Err(format!("WEFT_E2E_ONLY_WEFT={v:?}: not 1, encrypted or sleeve")),
        };
        if let Ok(v) = std::env::var("WEFT_E2E_PERF_UDP") {
            let payload: usize = v.parse().map_err(|_| format!("WEFT_E2E_PERF_UDP={v:?}: not a payload size in bytes"))?;
            let (u, cpu) = weft(mode, POD_MTU, |bed, server, client, addr, pids| {
                eprintln!("e2e: {}, UDP {payload} B ...", mode.label());
                with_cpu(pids, || profiled(perf, pids, d, || iperf3_udp(bed, server, client, addr, d, payload, "0")))
            })?;
            let [a, b] = cpu.routers.unwrap_or_default();
            println!("{}, UDP {payload} B: {:.1} kpackets/s received, loss {:.1}%; routers' CPU {:.0}% + {:.0}% of a core", mode.label(), u.packets_per_second / 1e3, u.loss_percent, a * 100.0, b * 100.0);
            return Ok(());
        }
        let streams = match std::env::var("WEFT_E2E_STREAMS") {
            Ok(v) => v.parse().ok().filter(|n| (1..=16).contains(n)).ok_or_else(|| format!("WEFT_E2E_STREAMS={v:?}: not 1 to 16"))?,
            Err(_) => 1,
        };
        let what = if streams == 1 { "single-stream TCP".to_string() } else { format!("TCP, {streams} streams") };
        let (t, cpu) = weft(mode, POD_MTU, |bed, server, client, addr, pids| {
            eprintln!("e2e: {}, {what} ...", mode.label());
            with_cpu(pids, || profiled(perf, pids, d, || iperf3_tcp(bed, server, client, addr, d, streams)))
        })?;
        let [a, b] = cpu.routers.unwrap_or_default();
        println!("{}, {what}: {:.2} Gbit/s, retransmits {}; routers' CPU {:.0}% + {:.0}% of a core", mode.label(), t.bits_per_second / 1e9, t.retransmits, a * 100.0, b * 100.0);
        return Ok(());
    }

    let mtu = match std::env::var("WEFT_E2E_MTU") {
        Ok(v) => v.parse().ok().filter(|m| (576..=1450).contains(m)).ok_or_else(|| format!("WEFT_E2E_MTU={v}: not an MTU between 576 and 1450"))?,
        Err(_) => POD_MTU,
    };
    let only = Selection::from_env()?;
    let base_nat = std::env::var_os("WEFT_E2E_BASE_NAT").is_some();
    let mut bed = TestBed::new().map_err(|e| chain(&e))?;
    let lan = topology::shared_segment(&mut bed, 2).map_err(|e| chain(&e))?;
    let (h1, h2) = (lan.hosts[0], lan.hosts[1]);
    // Kernel VXLAN between the hosts, with a pod on each host's bridge.
    topology::vxlan_bridges(&mut bed, &lan, "vx-base", mtu).map_err(|e| chain(&e))?;
    let mut pods = Vec::new();
    for (i, (&h, link)) in lan.hosts.iter().zip(&lan.links).enumerate() {
        if base_nat {
            // Connection tracking on, as on weft's hosts (its masquerade table) and on any
            // Kubernetes node: bridged frames meet it too (bridge-nf-call-iptables).
            bed.masquerade(h, &link.iface).map_err(|e| chain(&e))?;
        }
        let addr = Ipv4Addr::new(10, 32, 0, 10 + i as u8);
        let pod = bed.add_pod(h, &format!("pod{i}"), POD_BRIDGE, "vp0", addr, 12, None).map_err(|e| chain(&e))?;
        if std::env::var_os("WEFT_E2E_BASE_POD_GRO").is_some() {
            bed.netlink(h).set_pod_udp_coalescing("vp0", Some(weft_kernel::offload::POD_GRO_FLUSH_TIMEOUT)).map_err(|e| chain(&e))?;
        }
        bed.netlink(pod).set_mtu("eth0", mtu).map_err(|e| chain(&e))?;
        pods.push((pod, addr));
    }
    for _ in 0..3 {
        let _ = bed.ping(pods[0].0, pods[1].1);
    }
    if let Ok(v) = std::env::var("WEFT_E2E_PAIRS") {
        let rounds: usize = v.parse().ok().filter(|n| (1..=100).contains(n)).ok_or_else(|| format!("WEFT_E2E_PAIRS={v}: not a number of rounds from 1 to 100"))?;
        let base = (pods[1].0, pods[0].0, pods[1].1);
        let ratios = weft(Mode::FastPath, mtu, |wbed, server, client, addr, _| pairs(&mut bed, base, (wbed, server, client, addr), rounds, d))?;
        bed.teardown().map_err(|e| chain(&e))?;
        let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let mut sorted = ratios.clone();
        sorted.sort_by(f64::total_cmp);
        let median = if sorted.len() % 2 == 1 { sorted[sorted.len() / 2] } else { (sorted[sorted.len() / 2 - 1] + sorted[sorted.len() / 2]) / 2.0 };
        println!("load average before: {}; after: {}", load.trim(), load_after.trim());
        println!(
            "weft fast path / kernel VXLAN, single-stream TCP, {rounds} alternating pairs of {} s, pods' MTU {mtu}: median {median:.2}, min {:.2}, max {:.2}",
            d.as_secs(),
            sorted[0],
            sorted[sorted.len() - 1]
        );
        return Ok(());
    }
    let mut results = Vec::new();
    if only.wants("veth") {
        results.push(measure("raw veth", &mut bed, h2, h1, lan.links[1].addr, d, &[], None)?);
    }
    results.push(measure("kernel VXLAN", &mut bed, pods[1].0, pods[0].0, pods[1].1, d, &[], None)?);
    bed.teardown().map_err(|e| chain(&e))?;
    for mode in [Mode::Encrypted, Mode::PlainSleeve, Mode::FastPath] {
        if only.wants(mode.word()) {
            let perf = perf.as_ref().filter(|_| mode == Mode::Encrypted);
            results.push(weft(mode, mtu, |bed, server, client, addr, pids| measure(mode.label(), bed, server, client, addr, d, pids, perf))?);
        }
    }
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!("e2e: a thread's wake-up, a cold seal ...");
    let wake = weft_benches::wake_up_times(PINGS, PING_INTERVAL)?;
    let (cold, warm) = weft_benches::seal_times(PINGS, PING_INTERVAL)?;
    print!("{}", table(&results, d, mtu, load.trim(), load_after.trim()));
    println!(
        "a thread's wake-up after {} ms asleep ({PINGS} times): median {:.0} µs, p99 {:.0} µs (a round trip through a \
         userspace overlay waits for at least three: see README's Performance)",
        PING_INTERVAL.as_millis(),
        wake.p50.as_secs_f64() * 1e6,
        wake.p99.as_secs_f64() * 1e6
    );
    println!(
        "sealing a ping's datagram ({:?}, 110-byte body) after {} ms asleep: median {:.2} µs; right after, warm: {:.2} µs",
        weft_sleeve::Cipher::preferred(),
        PING_INTERVAL.as_millis(),
        cold.p50.as_secs_f64() * 1e6,
        warm.p50.as_secs_f64() * 1e6
    );
    Ok(())
}

/// `rounds` pairs of single-stream TCP runs, kernel VXLAN (`base`: its bed, server, client,
/// server address) and weft's fast path (the same on weft's bed), each pair run back to back in
/// alternating order so that the machine's other work weighs on both alike; returns each pair's
/// ratio, fast path to kernel VXLAN.
fn pairs(bed: &mut TestBed, base: (NodeId, NodeId, Ipv4Addr), weft: (&mut TestBed, NodeId, NodeId, Ipv4Addr), rounds: usize, d: Duration) -> Result<Vec<f64>, String> {
    let (wbed, ws, wc, wa) = weft;
    let mut ratios = Vec::new();
    for i in 0..rounds {
        let (b, f) = if i % 2 == 0 {
            let b = iperf3_tcp(bed, base.0, base.1, base.2, d, 1)?;
            (b, iperf3_tcp(wbed, ws, wc, wa, d, 1)?)
        } else {
            let f = iperf3_tcp(wbed, ws, wc, wa, d, 1)?;
            (iperf3_tcp(bed, base.0, base.1, base.2, d, 1)?, f)
        };
        let r = f.bits_per_second / b.bits_per_second;
        println!("pair {}: kernel VXLAN {:.2} Gbit/s, weft fast path {:.2} Gbit/s: {r:.2}", i + 1, b.bits_per_second / 1e9, f.bits_per_second / 1e9);
        ratios.push(r);
    }
    Ok(ratios)
}

/// The results as a table: one column per path, each figure with its ratio to kernel VXLAN.
fn table(rs: &[PathResult], d: Duration, mtu: u32, load: &str, load_after: &str) -> String {
    let vx = rs.iter().position(|r| r.label == "kernel VXLAN").unwrap_or(0);
    let mut s = String::new();
    let _ = writeln!(s, "weft e2e: {} s per iperf3 run, 2 hosts on one 2-core machine shared with other work; every pod's MTU {mtu}", d.as_secs());
    let _ = writeln!(s, "load average before: {load}; after: {load_after}");
    let _ = writeln!(s, "(x) = ratio to kernel VXLAN in this run (for RTT and CPU, lower is better)");
    let _ = write!(s, "{:<34}", "");
    for r in rs {
        let _ = write!(s, "{:>20}", r.label);
    }
    s.push('\n');
    let mut row = |name: &str, ratio: bool, f: &dyn Fn(&PathResult) -> Option<f64>, fmt: &dyn Fn(f64) -> String| {
        if rs.iter().all(|r| f(r).is_none()) {
            return; // not measured in this run (WEFT_E2E_QUICK)
        }
        let _ = write!(s, "{name:<34}");
        let base = f(&rs[vx]);
        for r in rs {
            let cell = match (f(r), base) {
                (Some(v), Some(b)) if ratio && b != 0.0 => format!("{} ({:.2})", fmt(v), v / b),
                (Some(v), _) => fmt(v),
                (None, _) => "-".into(),
            };
            let _ = write!(s, "{cell:>20}");
        }
        s.push('\n');
    };
    let gbps = |x: f64| format!("{:.2}", x / 1e9);
    let cores = |x: f64| format!("{x:.2}");
    let pct = |x: f64| format!("{x:.1}%");
    let kpps = |x: f64| format!("{:.1}", x / 1e3);
    let us = |x: f64| format!("{x:.0}");
    for (name, pick) in [("TCP, 1 stream", 0usize), ("TCP, 4 streams", 1)] {
        let get = move |r: &PathResult| if pick == 0 { Some(r.tcp1) } else { r.tcp4 };
        row(&format!("{name}: Gbit/s"), true, &|r| get(r).map(|t| t.0.bits_per_second), &gbps);
        row("  retransmits", false, &|r| get(r).map(|t| t.0.retransmits as f64), &|x| format!("{x:.0}"));
        row("  routers' CPU, cores (A+B)", true, &|r| get(r).and_then(|t| t.1.routers).map(|c| c[0] + c[1]), &cores);
        row("  machine CPU, cores per Gbit/s", true, &|r| get(r).map(|t| t.1.machine / (t.0.bits_per_second / 1e9)), &cores);
    }
    let bitrate = udp_bitrate();
    for (i, payload) in UDP_PAYLOADS.iter().enumerate() {
        row(&format!("UDP {payload} B, -b {bitrate}: kpackets/s"), true, &|r| r.udp.get(i).map(|u| u.0.packets_per_second), &kpps);
        row("  loss", false, &|r| r.udp.get(i).map(|u| u.0.loss_percent), &pct);
        row("  of it at the server's socket", false, &|r| r.udp.get(i).map(|u| u.0.socket_drops as f64 * 100.0 / u.0.sent.max(1) as f64), &pct);
        row("  routers' CPU, cores (A+B)", true, &|r| r.udp.get(i).and_then(|u| u.1.routers).map(|c| c[0] + c[1]), &cores);
        row("  machine CPU, cores per Gbit/s", true, &|r| r.udp.get(i).map(|u| u.1.machine / (u.0.bits_per_second / 1e9)), &cores);
    }
    row(&format!("ping RTT ({PINGS} x {} ms): avg µs", PING_INTERVAL.as_millis()), true, &|r| Some(r.rtt.avg.as_secs_f64() * 1e6), &us);
    row("  median µs", true, &|r| Some(r.rtt.p50.as_secs_f64() * 1e6), &us);
    row("  p99 µs", true, &|r| Some(r.rtt.p99.as_secs_f64() * 1e6), &us);
    row("  data plane sleeps per echo (A+B)", false, &|r| r.wakeups, &|x| format!("{x:.2}"));
    row("  replies", false, &|r| Some(f64::from(r.rtt.received)), &|x| format!("{x:.0}/{PINGS}"));
    row(&format!("ping RTT ({BUSY_PINGS} x {} ms): avg µs", BUSY_PING_INTERVAL.as_secs_f64() * 1e3), true, &|r| Some(r.busy_rtt.avg.as_secs_f64() * 1e6), &us);
    row("  median µs", true, &|r| Some(r.busy_rtt.p50.as_secs_f64() * 1e6), &us);
    row("  p99 µs", true, &|r| Some(r.busy_rtt.p99.as_secs_f64() * 1e6), &us);
    row("  replies", false, &|r| Some(f64::from(r.busy_rtt.received)), &|x| format!("{x:.0}/{BUSY_PINGS}"));
    row(&format!("UDP 64 B request/answer RTT ({PINGS} x {} ms): avg µs", PING_INTERVAL.as_millis()), true, &|r| Some(r.udp_rtt.avg.as_secs_f64() * 1e6), &us);
    row("  median µs", true, &|r| Some(r.udp_rtt.p50.as_secs_f64() * 1e6), &us);
    row("  p99 µs", true, &|r| Some(r.udp_rtt.p99.as_secs_f64() * 1e6), &us);
    row("  answers", false, &|r| Some(f64::from(r.udp_rtt.received)), &|x| format!("{x:.0}/{PINGS}"));
    let idle_s = IDLE.as_secs();
    row(&format!("routers idle {idle_s} s: % of a core (A+B)"), false, &|r| r.idle.map(|i| i.0 * 100.0), &|x| format!("{x:.2}%"));
    row(&format!("  with 1 ping/s for {idle_s} s"), false, &|r| r.idle.map(|i| i.1 * 100.0), &|x| format!("{x:.2}%"));
    s
}

/// Where `perf record` puts the routers' samples during the encrypted single-stream TCP run.
struct Profile {
    dir: std::path::PathBuf,
}

/// `perf record` processes running, one per router.
struct Recording(Vec<std::process::Child>);

impl Profile {
    /// Starts sampling each of `pids` (sender first) for a little longer than `d`.
    fn start(&self, pids: &[u32], d: Duration) -> Result<Recording, String> {
        let mut children = Vec::new();
        for (pid, name) in pids.iter().zip(["sender", "receiver"]) {
            let out = self.dir.join(format!("{name}.data"));
            let child = Command::new("perf")
                .args(["record", "-q", "-e", "cpu-clock", "-F", "499", "--call-graph", "dwarf,16384", "-p", &pid.to_string(), "-o"])
                .arg(&out)
                .args(["--", "sleep", &(d.as_secs() + 1).to_string()])
                .stdout(Stdio::null())
                .spawn()
                .map_err(|e| format!("start perf record (install Debian's linux-perf): {e}"))?;
            children.push(child);
        }
        // perf attaches within a few milliseconds; the iperf3 server takes longer to start.
        Ok(Recording(children))
    }
}

impl Recording {
    /// Waits for the recordings to end (their `sleep` bounds them).
    fn finish(self) -> Result<(), String> {
        for mut c in self.0 {
            let st = c.wait().map_err(|e| format!("wait for perf record: {e}"))?;
            if !st.success() {
                return Err(format!("perf record failed: {st}"));
            }
        }
        Ok(())
    }
}

/// Two routers on one segment, run as `mode` says, with pods of MTU `mtu`, a pod on each; runs
/// `f` with the server's pod, the client's pod, the server pod's address and the routers' PIDs
/// (the client's router first: it sends the data).
fn weft<T>(mode: Mode, mtu: u32, f: impl FnOnce(&mut TestBed, NodeId, NodeId, Ipv4Addr, &[u32]) -> Result<T, String>) -> Result<T, String> {
    let binary = std::env::current_exe().map_err(|e| weft_kernel::chain(&e))?.with_file_name("weft");
    if !binary.exists() {
        return Err(format!("{} is missing: run `cargo build --release -p weft-router` first", binary.display()));
    }
    let mut bed = TestBed::new().map_err(|e| chain(&e))?;
    let run = RunDir::new(bed.id()).map_err(|e| chain(&e))?;
    let lan = topology::shared_segment(&mut bed, 2).map_err(|e| chain(&e))?;
    let mut extra_args: Vec<String> = ["--ipalloc-init", "consensus=2", "--mtu"].map(str::to_owned).into();
    extra_args.push(mtu.to_string());
    if mode == Mode::PlainSleeve {
        extra_args.push("--no-fastpath".into());
    }
    extra_args.extend(std::env::var("WEFT_E2E_ROUTER_ARGS").unwrap_or_default().split_whitespace().map(str::to_owned));
    let password = (mode == Mode::Encrypted).then(|| "weft-bench-password".to_owned());
    let opts = RouterOptions { binary, password, extra_args };
    let r1 = routers::start_router(&mut bed, &run, lan.hosts[0], "h1", &[lan.links[1].addr], &opts)?;
    let r2 = routers::start_router(&mut bed, &run, lan.hosts[1], "h2", &[], &opts)?;
    for r in [&r1, &r2] {
        routers::wait_for(r, Duration::from_secs(30), |s| s.connections.established == 1 && s.ipam.state == "ready")?;
    }
    let mut pods = Vec::new();
    for (i, r) in [&r1, &r2].into_iter().enumerate() {
        let req = AllocateRequest { attachment: Attachment { container_id: format!("bench-{i}"), ifname: "eth0".into() } };
        let deadline = Instant::now() + Duration::from_secs(20);
        let a = loop {
            match r.client().post::<_, Allocation>("/ipam/allocate", &req) {
                Ok(a) if a.gateway.is_some() => break a,
                _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
                other => return Err(format!("allocate: {other:?}")),
            }
        };
        if a.mtu != mtu {
            return Err(format!("the router handed out pod MTU {}, not the {mtu} it was given", a.mtu));
        }
        let (addr, prefix) = a.address.split_once('/').ok_or("bad address")?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| "bad address")?;
        let gw: Ipv4Addr = a.gateway.as_deref().unwrap_or_default().parse().map_err(|_| "bad gateway")?;
        let pod = bed.add_pod(lan.hosts[i], &format!("pod{i}"), POD_BRIDGE, "vp0", addr, prefix.parse().map_err(|_| "bad prefix")?, Some(gw)).map_err(|e| chain(&e))?;
        // The host end as weft-cni leaves it: what the router writes into the CNI configuration.
        let coalesce = match (std::env::var_os("WEFT_E2E_NO_POD_GRO"), std::env::var("WEFT_E2E_POD_GRO_FLUSH_US")) {
            (Some(_), _) => None,
            (None, Ok(v)) => Some(Duration::from_micros(v.parse().map_err(|_| format!("WEFT_E2E_POD_GRO_FLUSH_US={v:?}: not a number of µs"))?)),
            (None, Err(_)) => {
                let status: weft_api::types::Status = r.client().get("/status").map_err(|e| format!("status: {e}"))?;
                status.pod_udp_coalesce_at_attach()
            }
        };
        bed.netlink(lan.hosts[i]).set_pod_udp_coalescing("vp0", coalesce).map_err(|e| chain(&e))?;
        bed.netlink(pod).set_mtu("eth0", a.mtu).map_err(|e| chain(&e))?;
        pods.push((pod, addr));
    }
    // Warm up: ARP and the switch learn both pods.
    for _ in 0..3 {
        let _ = bed.ping(pods[0].0, pods[1].1);
    }
    if mode == Mode::FastPath {
        wait_fastpath(&mut bed, [&r1, &r2], [lan.hosts[0], lan.hosts[1]], [pods[0].0, pods[1].0], pods[1].1)?;
    }
    hold(&bed, [pods[0], pods[1]], [r1.pid, r2.pid])?;
    let result = f(&mut bed, pods[1].0, pods[0].0, pods[1].1, &[r1.pid, r2.pid])?;
    // How often each router held a pod's UDP for a flood, and let go (`--pod-udp-coalesce-above`).
    for r in [&r1, &r2] {
        let log = r.log_text();
        let (held, let_go) = (log.matches("coalescing: holding the pod's datagrams").count(), log.matches("no longer holding the pod's datagrams").count());
        eprintln!("e2e: {}: router {} held its pod's UDP {held} time(s), let go {let_go} time(s)", mode.label(), r.pid);
    }
    if mode == Mode::FastPath {
        // Still on the fast path after the measurements (a path on hold would have put the
        // traffic back on the sleeve midway).
        for (r, peer) in [(&r1, "h2"), (&r2, "h1")] {
            let overlay = overlay_to(r, peer);
            if overlay.as_deref() != Some("fastpath") {
                return Err(format!("after the measurements {peer} is reached over {overlay:?}, not the fast path; log:\n{}", r.log_text()));
            }
        }
    }
    bed.teardown().map_err(|e| chain(&e))?;
    drop(run);
    Ok(result)
}

/// With `WEFT_E2E_HOLD=SECONDS`, keeps a weft bed up, idle and ready, for that long (at most
/// 600 s) before it is measured, and prints its namespaces, pods and router PIDs: to look at it
/// from outside (`ip netns exec`, `perf record -a` around a few pings; `benches/trace-ping.sh`
/// does that).
fn hold(bed: &TestBed, pods: [(NodeId, Ipv4Addr); 2], routers: [u32; 2]) -> Result<(), String> {
    let Ok(v) = std::env::var("WEFT_E2E_HOLD") else { return Ok(()) };
    let secs: u64 = v.parse().ok().filter(|&s| s <= 600).ok_or_else(|| format!("WEFT_E2E_HOLD={v:?}: not a number of seconds up to 600"))?;
    eprintln!(
        "e2e: holding for {secs} s: client pod {} ({}), server pod {} ({}), routers {} and {}",
        bed.ns(pods[0].0).name(),
        pods[0].1,
        bed.ns(pods[1].0).name(),
        pods[1].1,
        routers[0],
        routers[1]
    );
    std::thread::sleep(Duration::from_secs(secs));
    Ok(())
}

/// The overlay of `r`'s established connection to the peer nicknamed `peer`, as
/// `weft status connections --json` shows it.
fn overlay_to(r: &routers::RouterProc, peer: &str) -> Option<String> {
    let conns: Vec<Connection> = r.client().get("/connections").ok()?;
    conns.into_iter().find(|c| c.state == ConnectionState::Established && c.nickname.as_deref() == Some(peer)).map(|c| c.overlay)
}

/// Waits until each router reports its connection to the other on the fast path and each
/// host's `weft-vxlan` carries an entry for the other host's pod MAC (the pods' unicast then
/// takes the kernel path from the first packet measured); fails after [`FASTPATH_WAIT`].
fn wait_fastpath(bed: &mut TestBed, routers: [&routers::RouterProc; 2], hosts: [NodeId; 2], pods: [NodeId; 2], server_addr: Ipv4Addr) -> Result<(), String> {
    let mut macs = [[0u8; 6]; 2];
    for (i, &pod) in pods.iter().enumerate() {
        macs[i] = bed.netlink(pod).link("eth0").map_err(|e| chain(&e))?.mac.ok_or("a pod's eth0 has no MAC")?;
    }
    let t0 = Instant::now();
    let names = ["h1", "h2"];
    loop {
        // Unicast between the pods keeps both MACs fresh in the switches until programmed.
        let _ = bed.ping(pods[0], server_addr);
        let mut missing = Vec::new();
        for i in 0..2 {
            let overlay = overlay_to(routers[i], names[1 - i]);
            if overlay.as_deref() != Some("fastpath") {
                missing.push(format!("{} reaches {} over {overlay:?}", names[i], names[1 - i]));
                continue;
            }
            let fdb = bed.netlink(hosts[i]).fdb_entries("weft-vxlan").map_err(|e| chain(&e))?;
            if !fdb.iter().any(|e| e.mac == macs[1 - i]) {
                missing.push(format!("{}'s weft-vxlan has no entry for the pod on {}", names[i], names[1 - i]));
            }
        }
        if missing.is_empty() {
            eprintln!("e2e: fast path established and programmed after {:.1} s", t0.elapsed().as_secs_f64());
            return Ok(());
        }
        if t0.elapsed() >= FASTPATH_WAIT {
            return Err(format!("the fast path is not in use after {FASTPATH_WAIT:?}: {}; logs:\n{}\n{}", missing.join("; "), routers[0].log_text(), routers[1].log_text()));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

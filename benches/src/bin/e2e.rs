//! End-to-end comparison between two hosts of a test bed, over each path, as ratios to kernel
//! VXLAN measured in the same run: raw veth (host to host across the segment), the kernel's
//! VXLAN (pod to pod over the same segment), and weft's sleeve, encrypted and plain (pod to pod
//! through two `weft router` processes).
//!
//! Usage, as root: `benches/e2e.sh [SECONDS]` (builds the release binaries and runs this one).
//! Per path: TCP with one stream and with 4 parallel streams; UDP packet rate with 1348-byte and
//! 64-byte payloads offered as fast as the sender can (`iperf3 -u -b 0`: packets per second
//! received, and loss); ping round-trip time (200 echoes 10 ms apart, mean and 99th percentile).
//! Each iperf3 run lasts SECONDS (default 5). Around each run: the machine's CPU use from
//! `/proc/stat` (all processes, so other work on the machine counts too) and, on weft's paths,
//! each router's from `/proc/PID/stat`.
//!
//! Environment: `WEFT_E2E_ONLY_WEFT=1` runs only the encrypted single-stream TCP over weft;
//! `WEFT_E2E_PERF_DIR=DIR` records `perf` samples of each router during the encrypted
//! single-stream TCP run (`perf record -e cpu-clock --call-graph dwarf`: this VM has no hardware
//! counters) into `DIR/sender.data` (the client's host: its `weft-tap` thread carries the data
//! out) and `DIR/receiver.data` (its `weft-sleeve` thread carries the data in);
//! `benches/profile.sh` runs this and reports them.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use weft_api::types::{AllocateRequest, Allocation, Attachment};
use weft_benches::{MachineCpu, cpu_time};
use weft_kernel::netlink::{FdbEntry, LinkKind, VxlanConfig};
use weft_testbed::routers::{self, RouterOptions, RunDir};
use weft_testbed::topology::{self, POD_BRIDGE};
use weft_testbed::{NodeId, Rtt, TestBed, Throughput, UdpRate, iperf3_tcp, iperf3_udp};

/// UDP payloads: the largest that crosses every path unfragmented (pods on kernel VXLAN have
/// an MTU of 1450; 1348 + 28 bytes of IP and UDP header fits weft's too), and a small one.
const UDP_PAYLOADS: [usize; 2] = [1348, 64];
const PINGS: u32 = 200;
const PING_INTERVAL: Duration = Duration::from_millis(10);

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
    tcp4: (Throughput, Cpu),
    udp: Vec<(UdpRate, Cpu)>,
    rtt: Rtt,
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

/// Single-stream TCP, with `perf` recording `pids` meanwhile when asked.
fn tcp1_profiled(bed: &mut TestBed, server: NodeId, client: NodeId, server_addr: Ipv4Addr, d: Duration, pids: &[u32], perf: Option<&Profile>) -> Result<Throughput, String> {
    let recording = perf.map(|p| p.start(pids, d)).transpose()?;
    let t = iperf3_tcp(bed, server, client, server_addr, d, 1);
    if let Some(r) = recording {
        r.finish()?;
    }
    t
}

/// The measurements over one path: from `client` to `server_addr` (on `server`).
#[allow(clippy::too_many_arguments)]
fn measure(label: &'static str, bed: &mut TestBed, server: NodeId, client: NodeId, server_addr: Ipv4Addr, d: Duration, pids: &[u32], perf: Option<&Profile>) -> Result<PathResult, String> {
    eprintln!("e2e: {label} ...");
    let tcp1 = with_cpu(pids, || tcp1_profiled(bed, server, client, server_addr, d, pids, perf))?;
    let tcp4 = with_cpu(pids, || iperf3_tcp(bed, server, client, server_addr, d, 4))?;
    let mut udp = Vec::new();
    for payload in UDP_PAYLOADS {
        udp.push(with_cpu(pids, || iperf3_udp(bed, server, client, server_addr, d, payload, "0"))?);
    }
    let rtt = bed.ping_rtt(client, server_addr, PINGS, PING_INTERVAL)?;
    Ok(PathResult { label, tcp1, tcp4, udp, rtt })
}

fn run(d: Duration) -> Result<(), String> {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let perf = std::env::var_os("WEFT_E2E_PERF_DIR").map(|dir| Profile { dir: dir.into() });
    if std::env::var_os("WEFT_E2E_ONLY_WEFT").is_some() {
        let perf = perf.as_ref();
        let (t, cpu) = weft(Some("weft-bench-password"), |bed, server, client, addr, pids| {
            eprintln!("e2e: weft encrypted, single-stream TCP ...");
            with_cpu(pids, || tcp1_profiled(bed, server, client, addr, d, pids, perf))
        })?;
        let [a, b] = cpu.routers.unwrap_or_default();
        println!("weft sleeve, encrypted, single-stream TCP: {:.2} Gbit/s, retransmits {}; routers' CPU {:.0}% + {:.0}% of a core", t.bits_per_second / 1e9, t.retransmits, a * 100.0, b * 100.0);
        return Ok(());
    }

    let mut bed = TestBed::new().map_err(|e| chain(&e))?;
    let lan = topology::shared_segment(&mut bed, 2).map_err(|e| chain(&e))?;
    let (h1, h2) = (lan.hosts[0], lan.hosts[1]);
    // Kernel VXLAN between the hosts, with a pod on each host's bridge.
    let mut pods = Vec::new();
    for (i, (&h, link)) in lan.hosts.iter().zip(&lan.links).enumerate() {
        let other = lan.links[1 - i].addr;
        let nl = bed.netlink(h);
        let r: Result<(), weft_kernel::Error> = (|| {
            nl.add_link(POD_BRIDGE, &LinkKind::Bridge)?;
            nl.set_up(POD_BRIDGE)?;
            let cfg = VxlanConfig { vni: 7, port: 6785, local: Some(link.addr.into()), underlay: Some(link.iface.clone()), learning: false };
            nl.add_link("vx-base", &LinkKind::Vxlan(cfg))?;
            nl.set_mtu("vx-base", 1450)?;
            nl.set_master("vx-base", POD_BRIDGE)?;
            nl.set_up("vx-base")?;
            nl.fdb_append("vx-base", &FdbEntry { mac: [0; 6], dst: Some(IpAddr::V4(other)) })?;
            Ok(())
        })();
        r.map_err(|e| chain(&e))?;
        let addr = Ipv4Addr::new(10, 32, 0, 10 + i as u8);
        let pod = bed.add_pod(h, &format!("pod{i}"), POD_BRIDGE, "vp0", addr, 12, None).map_err(|e| chain(&e))?;
        bed.netlink(pod).set_mtu("eth0", 1450).map_err(|e| chain(&e))?;
        pods.push((pod, addr));
    }
    for _ in 0..3 {
        let _ = bed.ping(pods[0].0, pods[1].1);
    }
    let mut results = vec![
        measure("raw veth", &mut bed, h2, h1, lan.links[1].addr, d, &[], None)?,
        measure("kernel VXLAN", &mut bed, pods[1].0, pods[0].0, pods[1].1, d, &[], None)?,
    ];
    bed.teardown().map_err(|e| chain(&e))?;
    results.push(weft(Some("weft-bench-password"), |bed, server, client, addr, pids| measure("weft encrypted", bed, server, client, addr, d, pids, perf.as_ref()))?);
    results.push(weft(None, |bed, server, client, addr, pids| measure("weft plain", bed, server, client, addr, d, pids, None))?);
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    print!("{}", table(&results, d, load.trim(), load_after.trim()));
    Ok(())
}

/// The results as a table: one column per path, each figure with its ratio to kernel VXLAN.
fn table(rs: &[PathResult], d: Duration, load: &str, load_after: &str) -> String {
    let vx = rs.iter().position(|r| r.label == "kernel VXLAN").unwrap_or(0);
    let mut s = String::new();
    let _ = writeln!(s, "weft e2e: {} s per iperf3 run, 2 hosts on one 2-core machine shared with other work", d.as_secs());
    let _ = writeln!(s, "load average before: {load}; after: {load_after}");
    let _ = writeln!(s, "(x) = ratio to kernel VXLAN in this run (for RTT and CPU, lower is better)");
    let _ = write!(s, "{:<34}", "");
    for r in rs {
        let _ = write!(s, "{:>22}", r.label);
    }
    s.push('\n');
    let mut row = |name: &str, ratio: bool, f: &dyn Fn(&PathResult) -> Option<f64>, fmt: &dyn Fn(f64) -> String| {
        let _ = write!(s, "{name:<34}");
        let base = f(&rs[vx]);
        for r in rs {
            let cell = match (f(r), base) {
                (Some(v), Some(b)) if ratio && b != 0.0 => format!("{} ({:.2})", fmt(v), v / b),
                (Some(v), _) => fmt(v),
                (None, _) => "-".into(),
            };
            let _ = write!(s, "{cell:>22}");
        }
        s.push('\n');
    };
    let gbps = |x: f64| format!("{:.2}", x / 1e9);
    let cores = |x: f64| format!("{x:.2}");
    let pct = |x: f64| format!("{x:.1}%");
    let kpps = |x: f64| format!("{:.1}", x / 1e3);
    let us = |x: f64| format!("{x:.0}");
    for (name, pick) in [("TCP, 1 stream", 0usize), ("TCP, 4 streams", 1)] {
        let get = move |r: &PathResult| if pick == 0 { r.tcp1 } else { r.tcp4 };
        row(&format!("{name}: Gbit/s"), true, &|r| Some(get(r).0.bits_per_second), &gbps);
        row("  retransmits", false, &|r| Some(get(r).0.retransmits as f64), &|x| format!("{x:.0}"));
        row("  routers' CPU, cores (A+B)", true, &|r| get(r).1.routers.map(|c| c[0] + c[1]), &cores);
        row("  machine CPU, cores per Gbit/s", true, &|r| Some(get(r).1.machine / (get(r).0.bits_per_second / 1e9)), &cores);
    }
    for (i, payload) in UDP_PAYLOADS.iter().enumerate() {
        row(&format!("UDP {payload} B, -b 0: kpackets/s"), true, &|r| Some(r.udp[i].0.packets_per_second), &kpps);
        row("  loss", false, &|r| Some(r.udp[i].0.loss_percent), &pct);
        row("  routers' CPU, cores (A+B)", true, &|r| r.udp[i].1.routers.map(|c| c[0] + c[1]), &cores);
        row("  machine CPU, cores per Gbit/s", true, &|r| Some(r.udp[i].1.machine / (r.udp[i].0.bits_per_second / 1e9)), &cores);
    }
    row(&format!("ping RTT ({PINGS} x {} ms): avg µs", PING_INTERVAL.as_millis()), true, &|r| Some(r.rtt.avg.as_secs_f64() * 1e6), &us);
    row("  p99 µs", true, &|r| Some(r.rtt.p99.as_secs_f64() * 1e6), &us);
    row("  replies", false, &|r| Some(f64::from(r.rtt.received)), &|x| format!("{x:.0}/{PINGS}"));
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

/// Two routers on one segment (sealed with `password`, or plain), a pod on each; runs `f` with
/// the server's pod, the client's pod, the server pod's address and the routers' PIDs (the
/// client's router first: it sends the data).
fn weft<T>(password: Option<&str>, f: impl FnOnce(&mut TestBed, NodeId, NodeId, Ipv4Addr, &[u32]) -> Result<T, String>) -> Result<T, String> {
    let binary = std::env::current_exe().map_err(|e| weft_kernel::chain(&e))?.with_file_name("weft");
    if !binary.exists() {
        return Err(format!("{} is missing: run `cargo build --release -p weft-router` first", binary.display()));
    }
    let mut bed = TestBed::new().map_err(|e| chain(&e))?;
    let run = RunDir::new(bed.id()).map_err(|e| chain(&e))?;
    let lan = topology::shared_segment(&mut bed, 2).map_err(|e| chain(&e))?;
    let opts = RouterOptions { binary, password: password.map(str::to_owned), extra_args: vec!["--ipalloc-init".into(), "consensus=2".into()] };
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
        let (addr, prefix) = a.address.split_once('/').ok_or("bad address")?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| "bad address")?;
        let gw: Ipv4Addr = a.gateway.as_deref().unwrap_or_default().parse().map_err(|_| "bad gateway")?;
        let pod = bed.add_pod(lan.hosts[i], &format!("pod{i}"), POD_BRIDGE, "vp0", addr, prefix.parse().map_err(|_| "bad prefix")?, Some(gw)).map_err(|e| chain(&e))?;
        bed.netlink(pod).set_mtu("eth0", a.mtu).map_err(|e| chain(&e))?;
        pods.push((pod, addr));
    }
    // Warm up: ARP and the switch learn both pods.
    for _ in 0..3 {
        let _ = bed.ping(pods[0].0, pods[1].1);
    }
    let result = f(&mut bed, pods[1].0, pods[0].0, pods[1].1, &[r1.pid, r2.pid])?;
    bed.teardown().map_err(|e| chain(&e))?;
    drop(run);
    Ok(result)
}

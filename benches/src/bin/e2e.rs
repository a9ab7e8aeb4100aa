//! End-to-end TCP throughput between two hosts of a test bed, over each path, as ratios to the
//! baselines measured in the same run: raw veth (host to host across the segment) and the
//! kernel's VXLAN (pod to pod over the same segment).
//!
//! Usage, as root: `cargo build --release -p weft-router && cargo run --release -p weft-benches
//! --bin e2e [SECONDS]` (or `benches/e2e.sh`). Each measurement is one bounded iperf3 run of
//! SECONDS (default 5). The weft rows run two `weft router` processes (the release binary beside
//! this one) on a second bed with the same segment, pods attached to their bridges with
//! addresses from their IPAM, and report the routers' CPU use over the run.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use weft_api::types::{AllocateRequest, Allocation, Attachment};
use weft_benches::{Throughput, cpu_time, iperf3};
use weft_testbed::routers::{self, RouterOptions, RunDir};
use weft_kernel::netlink::{FdbEntry, LinkKind, VxlanConfig};
use weft_testbed::topology::{self, POD_BRIDGE};
use weft_testbed::TestBed;

fn main() {
    let secs: u64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    if let Err(e) = run(Duration::from_secs(secs)) {
        eprintln!("e2e: {e}");
        std::process::exit(1);
    }
}

fn gbps(t: &Throughput) -> f64 {
    t.bits_per_second / 1e9
}

fn run(d: Duration) -> Result<(), String> {
    let mut bed = TestBed::new().map_err(|e| weft_kernel::chain(&e))?;
    let lan = topology::shared_segment(&mut bed, 2).map_err(|e| weft_kernel::chain(&e))?;
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
        r.map_err(|e| weft_kernel::chain(&e))?;
        let addr = Ipv4Addr::new(10, 32, 0, 10 + i as u8);
        let pod = bed.add_pod(h, &format!("pod{i}"), POD_BRIDGE, "vp0", addr, 12, None).map_err(|e| weft_kernel::chain(&e))?;
        bed.netlink(pod).set_mtu("eth0", 1450).map_err(|e| weft_kernel::chain(&e))?;
        pods.push((pod, addr));
    }

    println!("single-stream TCP, {} s per run, 2 cores shared by both ends", d.as_secs());
    if std::env::var_os("WEFT_E2E_ONLY_WEFT").is_some() {
        bed.teardown().map_err(|e| weft_kernel::chain(&e))?;
        let (t, cpu) = weft(d, Some("weft-bench-password"))?;
        println!("  weft sleeve, encrypted      {:6.2} Gbit/s  retransmits {}; routers' CPU {:.0}% + {:.0}%", gbps(&t), t.retransmits, cpu[0] * 100.0, cpu[1] * 100.0);
        return Ok(());
    }
    let raw = iperf3(&mut bed, h2, h1, lan.links[1].addr, d)?;
    println!("  raw veth (host to host)     {:6.2} Gbit/s  retransmits {}", gbps(&raw), raw.retransmits);
    let vx = iperf3(&mut bed, pods[1].0, pods[0].0, pods[1].1, d)?;
    println!("  kernel VXLAN (pod to pod)   {:6.2} Gbit/s  retransmits {}  = {:.2} of raw veth", gbps(&vx), vx.retransmits, vx.bits_per_second / raw.bits_per_second);
    bed.teardown().map_err(|e| weft_kernel::chain(&e))?;
    for (label, password) in [("weft sleeve, encrypted", Some("weft-bench-password")), ("weft sleeve, plain", None)] {
        let (t, cpu) = weft(d, password)?;
        println!(
            "  {label:<27} {:6.2} Gbit/s  retransmits {}  = {:.2} of kernel VXLAN, {:.2} of raw veth; routers' CPU {:.0}% + {:.0}% of a core",
            gbps(&t),
            t.retransmits,
            t.bits_per_second / vx.bits_per_second,
            t.bits_per_second / raw.bits_per_second,
            cpu[0] * 100.0,
            cpu[1] * 100.0
        );
    }
    Ok(())
}

/// Two routers on one segment, a pod on each, one iperf3 run pod to pod over the sleeve.
/// Returns the throughput and each router's CPU use (cores) during the run.
fn weft(d: Duration, password: Option<&str>) -> Result<(Throughput, [f64; 2]), String> {
    let binary = std::env::current_exe().map_err(|e| weft_kernel::chain(&e))?.with_file_name("weft");
    if !binary.exists() {
        return Err(format!("{} is missing: run `cargo build --release -p weft-router` first", binary.display()));
    }
    let mut bed = TestBed::new().map_err(|e| weft_kernel::chain(&e))?;
    let run = RunDir::new(bed.id()).map_err(|e| weft_kernel::chain(&e))?;
    let lan = topology::shared_segment(&mut bed, 2).map_err(|e| weft_kernel::chain(&e))?;
    let opts = RouterOptions { binary, password: password.map(str::to_owned), extra_args: vec!["--ipalloc-init".into(), "consensus=2".into()] };
    let r1 = routers::start_router(&mut bed, &run, lan.hosts[0], "h1", &[lan.links[1].addr], &opts)?;
    let r2 = routers::start_router(&mut bed, &run, lan.hosts[1], "h2", &[], &opts)?;
    for r in [&r1, &r2] {
        routers::wait_for(r, Duration::from_secs(30), |s| s.connections.established == 1 && s.ipam.state == "ready")?;
    }
    let mut pods = Vec::new();
    for (i, r) in [&r1, &r2].into_iter().enumerate() {
        let req = AllocateRequest { attachment: Attachment { container_id: format!("bench-{i}"), ifname: "eth0".into() } };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let a = loop {
            match r.client().post::<_, Allocation>("/ipam/allocate", &req) {
                Ok(a) if a.gateway.is_some() => break a,
                _ if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
                other => return Err(format!("allocate: {other:?}")),
            }
        };
        let (addr, prefix) = a.address.split_once('/').ok_or("bad address")?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| "bad address")?;
        let gw: Ipv4Addr = a.gateway.as_deref().unwrap_or_default().parse().map_err(|_| "bad gateway")?;
        let pod = bed.add_pod(lan.hosts[i], &format!("pod{i}"), POD_BRIDGE, "vp0", addr, prefix.parse().map_err(|_| "bad prefix")?, Some(gw)).map_err(|e| weft_kernel::chain(&e))?;
        bed.netlink(pod).set_mtu("eth0", a.mtu).map_err(|e| weft_kernel::chain(&e))?;
        pods.push((pod, addr));
    }
    // Warm up: ARP and the switch learn both pods.
    for _ in 0..3 {
        let _ = bed.ping(pods[0].0, pods[1].1);
    }
    let before = [cpu_time(r1.pid)?, cpu_time(r2.pid)?];
    let t0 = std::time::Instant::now();
    let t = iperf3(&mut bed, pods[1].0, pods[0].0, pods[1].1, d)?;
    let wall = t0.elapsed().as_secs_f64();
    let after = [cpu_time(r1.pid)?, cpu_time(r2.pid)?];
    let cpu = [(after[0] - before[0]).as_secs_f64() / wall, (after[1] - before[1]).as_secs_f64() / wall];
    bed.teardown().map_err(|e| weft_kernel::chain(&e))?;
    drop(run);
    Ok((t, cpu))
}

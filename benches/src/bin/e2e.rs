//! End-to-end TCP throughput between two hosts of a test bed, over each path, as ratios to the
//! baselines measured in the same run: raw veth (host to host across the segment) and the
//! kernel's VXLAN (pod to pod over the same segment).
//!
//! Usage: `cargo run --release -p weft-benches --bin e2e [SECONDS]` as root. Each measurement is
//! one bounded iperf3 run of SECONDS (default 5).

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use weft_benches::{Throughput, iperf3};
use weft_fastpath::netlink::{FdbEntry, LinkKind, VxlanConfig};
use weft_fastpath::testbed::topology::{self, POD_BRIDGE};
use weft_fastpath::testbed::TestBed;

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
    let mut bed = TestBed::new().map_err(|e| e.to_string())?;
    let lan = topology::shared_segment(&mut bed, 2).map_err(|e| e.to_string())?;
    let (h1, h2) = (lan.hosts[0], lan.hosts[1]);

    // Kernel VXLAN between the hosts, with a pod on each host's bridge.
    let mut pods = Vec::new();
    for (i, (&h, link)) in lan.hosts.iter().zip(&lan.links).enumerate() {
        let other = lan.links[1 - i].addr;
        let nl = bed.netlink(h);
        let r: Result<(), weft_fastpath::Error> = (|| {
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
        r.map_err(|e| e.to_string())?;
        let addr = Ipv4Addr::new(10, 32, 0, 10 + i as u8);
        let pod = bed.add_pod(h, &format!("pod{i}"), POD_BRIDGE, "vp0", addr, 12, None).map_err(|e| e.to_string())?;
        bed.netlink(pod).set_mtu("eth0", 1450).map_err(|e| e.to_string())?;
        pods.push((pod, addr));
    }

    println!("single-stream TCP, {} s per run, 2 cores shared by both ends", d.as_secs());
    let raw = iperf3(&mut bed, h2, h1, lan.links[1].addr, d)?;
    println!("  raw veth (host to host)     {:6.2} Gbit/s  retransmits {}", gbps(&raw), raw.retransmits);
    let vx = iperf3(&mut bed, pods[1].0, pods[0].0, pods[1].1, d)?;
    println!("  kernel VXLAN (pod to pod)   {:6.2} Gbit/s  retransmits {}  = {:.2} of raw veth", gbps(&vx), vx.retransmits, vx.bits_per_second / raw.bits_per_second);
    println!("  weft sleeve                 not measured: the router does not exist yet");
    bed.teardown().map_err(|e| e.to_string())
}

//! Ready-made topologies. Underlay addresses come from the documentation ranges
//! 192.0.2.0/24, 198.51.100.0/24 and 203.0.113.0/24; pods from 10.32.0.0/12.

use std::net::{IpAddr, Ipv4Addr};

use super::{Attachment, NodeId, TestBed};
use weft_kernel::Result;
use weft_kernel::netlink::{FdbEntry, LinkKind, Route, VxlanConfig};

/// First segment: 192.0.2.0/24.
pub const SEGMENT_1: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 0);
/// Second segment: 198.51.100.0/24.
pub const SEGMENT_2: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 0);
/// Private segment behind a NAT: 203.0.113.0/24.
pub const SEGMENT_NAT: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 0);

/// Hosts on one shared segment (192.0.2.0/24).
#[derive(Debug)]
pub struct SharedSegment {
    /// The hosts, `h1`, `h2`, ...
    pub hosts: Vec<NodeId>,
    /// Their attachments (address 192.0.2.11, .12, ...).
    pub links: Vec<Attachment>,
}

/// `n` hosts on one segment.
pub fn shared_segment(bed: &mut TestBed, n: u8) -> Result<SharedSegment> {
    let seg = bed.add_segment("lan", SEGMENT_1, 24)?;
    let mut hosts = Vec::new();
    let mut links = Vec::new();
    for i in 1..=n {
        let h = bed.add_node(&format!("h{i}"))?;
        links.push(bed.attach(h, seg, 10 + i)?);
        hosts.push(h);
    }
    Ok(SharedSegment { hosts, links })
}

/// Gives every host of `lan` a permanent neighbour entry for every other host: no ARP, and
/// nothing counted against the kernel's neighbour table, which all namespaces share (capped at
/// 1024 entries here), so many hosts fit on one segment.
pub fn static_neighbours(bed: &mut TestBed, lan: &SharedSegment) -> Result<()> {
    let mut macs = Vec::with_capacity(lan.hosts.len());
    for (&h, link) in lan.hosts.iter().zip(&lan.links) {
        let mac = bed.netlink(h).link(&link.iface)?.mac;
        macs.push(mac.ok_or_else(|| weft_kernel::Error::TestBed(format!("{} has no MAC address", link.iface)))?);
    }
    for (i, (&h, link)) in lan.hosts.iter().zip(&lan.links).enumerate() {
        for (j, other) in lan.links.iter().enumerate().filter(|(j, _)| *j != i) {
            bed.netlink(h).set_neighbour(&link.iface, other.addr.into(), macs[j])?;
        }
    }
    Ok(())
}

/// Gives each of the two hosts of `lan` a pod bridge `weft` joined to the other's by the kernel's
/// VXLAN (device `dev` on the bridge, VNI 7, UDP 6785, learning off, every frame to the other
/// host), with MTU `mtu`: the bare kernel path the benchmarks compare weft with.
pub fn vxlan_bridges(bed: &mut TestBed, lan: &SharedSegment, dev: &str, mtu: u32) -> Result<()> {
    for (i, (&h, link)) in lan.hosts.iter().zip(&lan.links).enumerate().take(2) {
        let other = lan.links[1 - i].addr;
        let nl = bed.netlink(h);
        nl.add_link(POD_BRIDGE, &LinkKind::Bridge)?;
        nl.set_up(POD_BRIDGE)?;
        let cfg = VxlanConfig { vni: 7, port: 6785, local: Some(link.addr.into()), underlay: Some(link.iface.clone()), learning: false };
        nl.add_link(dev, &LinkKind::Vxlan(cfg))?;
        nl.set_mtu(dev, mtu)?;
        nl.set_master(dev, POD_BRIDGE)?;
        nl.set_up(dev)?;
        nl.fdb_append(dev, &FdbEntry { mac: [0; 6], dst: Some(IpAddr::V4(other)) })?;
    }
    Ok(())
}

/// Two hosts on different segments joined only through a middle host: A on 192.0.2.0/24, C on
/// 198.51.100.0/24, M on both (.1 on each). There is no L2 adjacency between A and C.
#[derive(Debug)]
pub struct NoAdjacency {
    /// End host A.
    pub a: NodeId,
    /// The middle host, on both segments.
    pub middle: NodeId,
    /// End host C.
    pub c: NodeId,
    /// A's attachment (192.0.2.11).
    pub a_link: Attachment,
    /// M's attachment to A's segment (192.0.2.1).
    pub middle_a: Attachment,
    /// M's attachment to C's segment (198.51.100.1).
    pub middle_c: Attachment,
    /// C's attachment (198.51.100.13).
    pub c_link: Attachment,
}

/// Builds [`NoAdjacency`]. With `routing`, M forwards IPv4 and A and C route each other's
/// segment through it; without, A and C cannot reach each other at all (weft must relay).
pub fn no_adjacency(bed: &mut TestBed, routing: bool) -> Result<NoAdjacency> {
    let s1 = bed.add_segment("ab", SEGMENT_1, 24)?;
    let s2 = bed.add_segment("bc", SEGMENT_2, 24)?;
    let a = bed.add_node("a")?;
    let middle = bed.add_node("m")?;
    let c = bed.add_node("c")?;
    let a_link = bed.attach(a, s1, 11)?;
    let middle_a = bed.attach(middle, s1, 1)?;
    let middle_c = bed.attach(middle, s2, 1)?;
    let c_link = bed.attach(c, s2, 13)?;
    if routing {
        bed.enable_forwarding(middle)?;
        bed.add_route(a, &Route { dest: SEGMENT_2.into(), prefix_len: 24, via: Some(middle_a.addr.into()), dev: None })?;
        bed.add_route(c, &Route { dest: SEGMENT_1.into(), prefix_len: 24, via: Some(middle_c.addr.into()), dev: None })?;
    }
    Ok(NoAdjacency { a, middle, c, a_link, middle_a, middle_c, c_link })
}

/// A host behind a NAT: D on the private 203.0.113.0/24, N the NAT (203.0.113.1 inside,
/// 198.51.100.254 outside), B outside (198.51.100.12). D reaches B, seen as N's address; B cannot
/// reach D.
#[derive(Debug)]
pub struct BehindNat {
    /// The host behind the NAT.
    pub inside: NodeId,
    /// The NAT host.
    pub nat: NodeId,
    /// A host outside.
    pub outside: NodeId,
    /// D's attachment (203.0.113.14).
    pub inside_link: Attachment,
    /// N's inside attachment (203.0.113.1).
    pub nat_inside: Attachment,
    /// N's outside attachment (198.51.100.254).
    pub nat_outside: Attachment,
    /// B's attachment (198.51.100.12).
    pub outside_link: Attachment,
}

/// Builds [`BehindNat`].
pub fn behind_nat(bed: &mut TestBed) -> Result<BehindNat> {
    let public = bed.add_segment("pub", SEGMENT_2, 24)?;
    let private = bed.add_segment("priv", SEGMENT_NAT, 24)?;
    let outside = bed.add_node("b")?;
    let nat = bed.add_node("n")?;
    let inside = bed.add_node("d")?;
    let outside_link = bed.attach(outside, public, 12)?;
    let nat_outside = bed.attach(nat, public, 254)?;
    let nat_inside = bed.attach(nat, private, 1)?;
    let inside_link = bed.attach(inside, private, 14)?;
    bed.masquerade(nat, &nat_outside.iface)?;
    bed.add_route(inside, &Route::default_via(nat_inside.addr.into()))?;
    Ok(BehindNat { inside, nat, outside, inside_link, nat_inside, nat_outside, outside_link })
}

/// The bridge weft plugs pods into on every host.
pub const POD_BRIDGE: &str = "weft";

/// Creates the pod bridge on `host` with `gateway/prefix_len` on it, up.
pub fn add_pod_bridge(bed: &mut TestBed, host: NodeId, gateway: Ipv4Addr, prefix_len: u8) -> Result<()> {
    let nl = bed.netlink(host);
    nl.add_link(POD_BRIDGE, &LinkKind::Bridge)?;
    nl.add_address(POD_BRIDGE, IpAddr::V4(gateway), prefix_len)?;
    nl.set_up(POD_BRIDGE)
}

/// The cluster `weft demo` and the router tests run: A and B on one segment, B and C on another
/// (A and C have no path to each other except through B), and D behind a NAT whose outside is on
/// B and C's segment. Each host has the pod bridge `weft` and `pods_per_host` pods.
#[derive(Debug)]
pub struct Cluster {
    /// Hosts A, B, C, D.
    pub hosts: Vec<NodeId>,
    /// Each host's underlay address (the one its peers dial).
    pub host_addrs: Vec<Ipv4Addr>,
    /// Every underlay address of each host (B has one on each segment).
    pub all_addrs: Vec<Vec<Ipv4Addr>>,
    /// The NAT host in front of D.
    pub nat: NodeId,
    /// Pods per host, in host order, with their addresses.
    pub pods: Vec<Vec<(NodeId, Ipv4Addr)>>,
    /// The A–B cable (A's side), to cut and restore.
    pub a_cable: Attachment,
}

/// The pod range 10.32.0.0/12.
pub const POD_RANGE: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 32, 0, 0), 12);

/// Builds [`Cluster`]. With `pods_per_host` 0 there are no pods and no pod bridge. Pod `j` of
/// host `i` gets 10.32.`i`.`10 + j`/12; host `i`'s bridge gets
/// 10.32.`i`.1 as the pods' gateway.
pub fn cluster(bed: &mut TestBed, pods_per_host: u8) -> Result<Cluster> {
    let s1 = bed.add_segment("ab", SEGMENT_1, 24)?;
    let s2 = bed.add_segment("bc", SEGMENT_2, 24)?;
    let private = bed.add_segment("priv", SEGMENT_NAT, 24)?;
    let a = bed.add_node("a")?;
    let b = bed.add_node("b")?;
    let c = bed.add_node("c")?;
    let nat = bed.add_node("n")?;
    let d = bed.add_node("d")?;
    let a_cable = bed.attach(a, s1, 11)?;
    let b1 = bed.attach(b, s1, 12)?;
    let b2 = bed.attach(b, s2, 12)?;
    let c_link = bed.attach(c, s2, 13)?;
    let nat_out = bed.attach(nat, s2, 254)?;
    let nat_in = bed.attach(nat, private, 1)?;
    let d_link = bed.attach(d, private, 14)?;
    bed.masquerade(nat, &nat_out.iface)?;
    bed.add_route(d, &Route::default_via(nat_in.addr.into()))?;

    let hosts = vec![a, b, c, d];
    let host_addrs = vec![a_cable.addr, b1.addr, c_link.addr, d_link.addr];
    let all_addrs = vec![vec![a_cable.addr], vec![b1.addr, b2.addr], vec![c_link.addr], vec![d_link.addr]];
    let mut pods = Vec::new();
    for (i, &h) in hosts.iter().enumerate() {
        let i = i as u8 + 1;
        let gw = Ipv4Addr::new(10, 32, i, 1);
        let mut list = Vec::new();
        if pods_per_host == 0 {
            pods.push(list);
            continue; // no pods: the bridge is left to whoever attaches them (the router)
        }
        add_pod_bridge(bed, h, gw, POD_RANGE.1)?;
        for j in 0..pods_per_host {
            let addr = Ipv4Addr::new(10, 32, i, 10 + j);
            let name = format!("{}-pod{}", bed.name(h), j + 1);
            let pod = bed.add_pod(h, &name, POD_BRIDGE, &format!("vp{}", j + 1), addr, POD_RANGE.1, Some(gw))?;
            list.push((pod, addr));
        }
        pods.push(list);
    }
    Ok(Cluster { hosts, host_addrs, all_addrs, nat, pods, a_cable })
}

//! The kernel layer against the real kernel, inside namespaces a test bed makes (root needed).

use std::net::{IpAddr, Ipv4Addr};

use weft_kernel::netlink::{BridgeFdbKind, FdbEntry, LinkKind, PortFlags, Route, VxlanConfig};
use weft_kernel::packet::PacketSocket;
use weft_kernel::tap::{TUN_F_TSO4, Tap};
use weft_testbed::TestBed;
use weft_testbed::topology::{self, POD_BRIDGE};
use weft_kernel::{Error, Handle};

fn bed() -> TestBed {
    TestBed::new().expect("cannot build a test bed")
}

#[test]
fn links_are_created_changed_and_deleted() {
    let mut bed = bed();
    let n = bed.add_node("n").unwrap();
    let nl = bed.netlink(n);
    nl.add_link("br-t", &LinkKind::Bridge).unwrap();
    nl.add_link("va", &LinkKind::Veth { peer: "vb".into() }).unwrap();
    nl.set_master("va", "br-t").unwrap();
    nl.set_mtu("va", 1400).unwrap();
    nl.set_up("va").unwrap();
    nl.set_hairpin("va", true).unwrap();
    nl.set_isolated("va", true).unwrap();
    nl.set_mac("vb", [0x02, 0, 0, 0, 0, 0x42]).unwrap();

    let br = nl.link("br-t").unwrap();
    let va = nl.link("va").unwrap();
    assert_eq!(br.kind.as_deref(), Some("bridge"));
    assert_eq!(va.kind.as_deref(), Some("veth"));
    assert_eq!(va.master, Some(br.index));
    assert_eq!(va.mtu, 1400);
    assert!(va.up);
    assert_eq!(va.hairpin, Some(true));
    assert_eq!(va.isolated, Some(true));
    assert_eq!(nl.link("vb").unwrap().mac, Some([0x02, 0, 0, 0, 0, 0x42]));

    nl.set_isolated("va", false).unwrap();
    nl.set_nomaster("va").unwrap();
    nl.set_down("va").unwrap();
    let va = nl.link("va").unwrap();
    assert_eq!((va.master, va.up, va.isolated), (None, false, None));

    nl.rename("vb", "vb-renamed").unwrap();
    assert!(nl.find_link("vb").unwrap().is_none());
    nl.delete_link("va").unwrap();
    assert!(nl.find_link("vb-renamed").unwrap().is_none(), "deleting one veth end removes both");
    assert!(!nl.delete_link_if_exists("va").unwrap());
    bed.teardown().unwrap();
}

#[test]
fn errors_name_the_operation_link_and_namespace() {
    let mut bed = bed();
    let n = bed.add_node("n").unwrap();
    let ns = bed.ns(n).name().to_owned();
    let nl = bed.netlink(n);
    nl.add_link("br-t", &LinkKind::Bridge).unwrap();
    let dup = nl.add_link("br-t", &LinkKind::Bridge).unwrap_err();
    assert!(dup.is_exists(), "{dup}");
    let text = dup.to_string();
    assert!(text.contains("create link") && text.contains("br-t") && text.contains(&ns), "{text}");
    assert!(std::error::Error::source(&dup).is_some(), "the kernel's errno is kept as the source");

    let missing = nl.set_up("nope0").unwrap_err();
    assert!(matches!(missing, Error::NoSuchLink { ref name, .. } if name == "nope0"), "{missing}");
    assert!(missing.to_string().contains(&ns));

    let bad = nl.add_route(&Route { dest: Ipv4Addr::new(10, 1, 0, 0).into(), prefix_len: 16, via: None, dev: None });
    assert!(matches!(bad, Err(Error::Invalid(_))));
}

#[test]
fn addresses_and_routes() {
    let mut bed = bed();
    let n = bed.add_node("n").unwrap();
    let nl = bed.netlink(n);
    nl.add_link("d0", &LinkKind::Veth { peer: "d1".into() }).unwrap();
    nl.set_up("d0").unwrap();
    nl.set_up("d1").unwrap();
    let a: IpAddr = Ipv4Addr::new(192, 0, 2, 5).into();
    nl.add_address("d0", a, 24).unwrap();
    assert!(nl.addresses("d0").unwrap().contains(&(a, 24)));
    assert!(nl.add_address("d0", a, 24).unwrap_err().is_exists());

    let r = Route { dest: Ipv4Addr::new(198, 51, 100, 0).into(), prefix_len: 24, via: Some(Ipv4Addr::new(192, 0, 2, 1).into()), dev: None };
    nl.add_route(&r).unwrap();
    let dflt = Route::default_via(Ipv4Addr::new(192, 0, 2, 1).into());
    nl.add_route(&dflt).unwrap();
    let routes = nl.routes().unwrap();
    let has = |dest: IpAddr, len: u8| routes.iter().any(|x| x.dest == dest && x.prefix_len == len && x.via == Some(Ipv4Addr::new(192, 0, 2, 1).into()) && x.dev.as_deref() == Some("d0"));
    assert!(has(r.dest, 24), "{routes:?}");
    assert!(has(Ipv4Addr::UNSPECIFIED.into(), 0), "{routes:?}");
    nl.delete_route(&r).unwrap();
    assert!(!nl.routes().unwrap().iter().any(|x| x.dest == r.dest));
    nl.delete_address("d0", a, 24).unwrap();
    assert!(!nl.addresses("d0").unwrap().contains(&(a, 24)));
}

#[test]
fn links_move_between_namespaces() {
    let mut bed = bed();
    let x = bed.add_node("x").unwrap();
    let y = bed.add_node("y").unwrap();
    bed.netlink(x).add_link("m0", &LinkKind::Veth { peer: "m1".into() }).unwrap();
    let y_ns = weft_kernel::NetNs::open(bed.ns(y).name()).unwrap();
    bed.netlink(x).set_netns("m1", &y_ns).unwrap();
    assert!(bed.netlink(x).find_link("m1").unwrap().is_none());
    assert_eq!(bed.netlink(y).link("m1").unwrap().kind.as_deref(), Some("veth"));

    bed.netlink(x).add_veth_pair_into("k0", "k1", &y_ns).unwrap();
    assert!(bed.netlink(x).find_link("k1").unwrap().is_none());
    assert!(bed.netlink(y).find_link("k1").unwrap().is_some());
    drop(y_ns);
    bed.teardown().unwrap();
}

#[test]
fn vxlan_with_programmed_fdb_carries_pod_frames() {
    let mut bed = bed();
    let lan = topology::shared_segment(&mut bed, 2).unwrap();
    let mut pods = Vec::new();
    for (i, (&h, link)) in lan.hosts.iter().zip(&lan.links).enumerate() {
        let nl = bed.netlink(h);
        nl.add_link(POD_BRIDGE, &LinkKind::Bridge).unwrap();
        nl.set_up(POD_BRIDGE).unwrap();
        let cfg = VxlanConfig { vni: 42, port: 6785, local: Some(link.addr.into()), underlay: Some(link.iface.clone()), learning: false };
        nl.add_link("weft-vxlan", &LinkKind::Vxlan(cfg)).unwrap();
        nl.set_mtu("weft-vxlan", 1450).unwrap();
        nl.set_master("weft-vxlan", POD_BRIDGE).unwrap();
        nl.set_up("weft-vxlan").unwrap();
        let addr = Ipv4Addr::new(10, 32, 0, 10 + i as u8);
        let pod = bed.add_pod(h, &format!("pod{i}"), POD_BRIDGE, "vp0", addr, 12, None).unwrap();
        bed.netlink(pod).set_mtu("eth0", 1450).unwrap();
        pods.push((pod, addr));
    }
    let flood = |to: Ipv4Addr| FdbEntry { mac: [0; 6], dst: Some(to.into()) };
    // Without FDB entries the VXLAN device has nowhere to send: the pods cannot talk.
    assert!(!bed.ping(pods[0].0, pods[1].1).unwrap());
    let (h0, h1) = (lan.hosts[0], lan.hosts[1]);
    let (a0, a1) = (lan.links[0].addr, lan.links[1].addr);
    bed.netlink(h0).fdb_append("weft-vxlan", &flood(a1)).unwrap();
    bed.netlink(h1).fdb_append("weft-vxlan", &flood(a0)).unwrap();
    assert!(bed.netlink(h0).fdb_entries("weft-vxlan").unwrap().contains(&flood(a1)));
    assert!(bed.ping(pods[0].0, pods[1].1).unwrap(), "pods reach each other through kernel VXLAN");
    assert!(bed.udp_probe(pods[1].0, pods[0].0, pods[0].1).unwrap().is_some());

    bed.netlink(h0).fdb_delete("weft-vxlan", &flood(a1)).unwrap();
    assert!(!bed.netlink(h0).fdb_entries("weft-vxlan").unwrap().contains(&flood(a1)));
    bed.teardown().unwrap();
}

/// The fast path's kernel state: a quiet VXLAN port, per-MAC remote entries, static sticky
/// bridge entries, a local entry that hands a frame up to the bridge, where a raw socket reads it.
#[test]
fn per_mac_vxlan_entries_bridge_entries_and_raw_frames_cross() {
    let mut bed = bed();
    let lan = topology::shared_segment(&mut bed, 2).unwrap();
    for (h, link) in lan.hosts.iter().zip(&lan.links) {
        let nl = bed.netlink(*h);
        nl.add_link(POD_BRIDGE, &LinkKind::Bridge).unwrap();
        nl.set_up(POD_BRIDGE).unwrap();
        let cfg = VxlanConfig { vni: 0x7766, port: 6785, local: Some(link.addr.into()), underlay: None, learning: false };
        nl.add_link("weft-vxlan", &LinkKind::Vxlan(cfg)).unwrap();
        nl.set_master("weft-vxlan", POD_BRIDGE).unwrap();
        nl.set_port_flags("weft-vxlan", PortFlags::QUIET).unwrap();
        nl.set_up("weft-vxlan").unwrap();
        assert_eq!(nl.link("weft-vxlan").unwrap().port, Some(PortFlags::QUIET));
    }
    let (h0, h1) = (lan.hosts[0], lan.hosts[1]);
    let a1: IpAddr = lan.links[1].addr.into();
    let (mac, other) = ([0x02, 0, 0, 0, 0x77, 1], [0x02, 0, 0, 0, 0x77, 2]);
    // One destination per MAC: replacing moves it, it never duplicates.
    let nl = bed.netlink(h0);
    nl.fdb_replace("weft-vxlan", &FdbEntry { mac, dst: Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 99))) }).unwrap();
    nl.fdb_replace("weft-vxlan", &FdbEntry { mac, dst: Some(a1) }).unwrap();
    let mine: Vec<FdbEntry> = nl.fdb_entries("weft-vxlan").unwrap().into_iter().filter(|e| e.mac == mac).collect();
    assert_eq!(mine, vec![FdbEntry { mac, dst: Some(a1) }]);
    nl.bridge_fdb_add("weft-vxlan", other, BridgeFdbKind::StaticSticky).unwrap();
    let bridge = nl.bridge_fdb_entries("weft-vxlan").unwrap();
    let e = bridge.iter().find(|e| e.mac == other).expect("bridge entry listed");
    assert!(e.is_static && e.sticky && !e.local, "{e:?}");
    assert!(nl.fdb_entries("weft-vxlan").unwrap().iter().all(|e| e.mac != other), "bridge entries are not the device's");
    nl.bridge_fdb_delete("weft-vxlan", other).unwrap();
    assert!(nl.bridge_fdb_entries("weft-vxlan").unwrap().iter().all(|e| e.mac != other));

    // A frame sent into h0's VXLAN device for `mac` arrives on h1, where a local bridge entry
    // hands it up to the bridge and a raw socket on the bridge reads it.
    bed.netlink(h1).bridge_fdb_add("weft-vxlan", mac, BridgeFdbKind::Local).unwrap();
    let bridge_index = bed.netlink(h1).index(POD_BRIDGE).unwrap();
    let vx_index = bed.netlink(h0).index("weft-vxlan").unwrap();
    let rx = bed.ns(h1).run(|| PacketSocket::open(bridge_index, 0x88b5)).unwrap().unwrap();
    let tx = bed.ns(h0).run(|| PacketSocket::open(vx_index, 0)).unwrap().unwrap();
    let mut frame = vec![0u8; 60];
    frame[..6].copy_from_slice(&mac);
    frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0x77, 3]);
    frame[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    frame[14..18].copy_from_slice(b"test");
    let mut buf = [0u8; 256];
    let mut got = None;
    for _ in 0..50 {
        tx.send(&frame).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        if let Ok(n) = rx.recv(&mut buf) {
            got = Some(n);
            break;
        }
    }
    let n = got.expect("the frame crossed the VXLAN path");
    assert_eq!(&buf[14..18], b"test");
    assert!(n >= 18);
    bed.teardown().unwrap();
}

#[test]
fn isolated_bridge_ports_do_not_talk_to_each_other() {
    let mut bed = bed();
    let h = bed.add_node("h").unwrap();
    topology::add_pod_bridge(&mut bed, h, Ipv4Addr::new(10, 32, 0, 1), 24).unwrap();
    let mut pods = Vec::new();
    for i in 0..3u8 {
        let addr = Ipv4Addr::new(10, 32, 0, 10 + i);
        pods.push((bed.add_pod(h, &format!("p{i}"), POD_BRIDGE, &format!("vp{i}"), addr, 24, None).unwrap(), addr));
    }
    assert!(bed.udp_probe(pods[0].0, pods[1].0, pods[1].1).unwrap().is_some());
    bed.netlink(h).set_isolated("vp0", true).unwrap();
    bed.netlink(h).set_isolated("vp1", true).unwrap();
    // Let the pods forget each other's MACs is not needed: isolation filters at the bridge.
    assert!(bed.udp_probe(pods[0].0, pods[1].0, pods[1].1).unwrap().is_none(), "isolated ports are cut off");
    assert!(bed.udp_probe(pods[0].0, pods[2].0, pods[2].1).unwrap().is_some(), "isolated to open port works");
    assert!(bed.udp_probe(pods[1].0, pods[2].0, pods[2].1).unwrap().is_some());
}

#[test]
fn tap_opens_with_offloads_and_attaches_to_a_bridge() {
    let mut bed = bed();
    let h = bed.add_node("h").unwrap();
    bed.netlink(h).add_link(POD_BRIDGE, &LinkKind::Bridge).unwrap();
    let tap = bed.ns(h).run(|| Tap::open("weft-tap")).unwrap().unwrap();
    assert_eq!(tap.name(), "weft-tap");
    assert!(tap.offloads() & TUN_F_TSO4 != 0, "TSO accepted: {:#x}", tap.offloads());
    let nl = bed.netlink(h);
    nl.set_master("weft-tap", POD_BRIDGE).unwrap();
    nl.set_up("weft-tap").unwrap();
    let br = nl.index(POD_BRIDGE).unwrap();
    let link = nl.link("weft-tap").unwrap();
    assert_eq!((link.kind.as_deref(), link.master), (Some("tun"), Some(br)));
    drop(tap);
    assert!(bed.netlink(h).find_link("weft-tap").unwrap().is_none(), "a non-persistent TAP goes with its descriptor");
}

#[test]
fn tap_opens_with_several_queues_of_one_device() {
    let mut bed = bed();
    let h = bed.add_node("h").unwrap();
    let zero = bed.ns(h).run(|| Tap::open_queues("weft-tap", 0)).unwrap().unwrap_err();
    assert!(weft_kernel::chain(&zero).contains("at least one queue"), "{}", weft_kernel::chain(&zero));
    let queues = bed.ns(h).run(|| Tap::open_queues("weft-tap", 3)).unwrap().unwrap();
    assert_eq!(queues.len(), 3);
    assert!(queues.iter().all(|q| q.name() == "weft-tap" && q.offloads() == queues[0].offloads()), "one device, one offload set: {queues:?}");
    assert!(queues[0].offloads() & TUN_F_TSO4 != 0, "TSO accepted: {:#x}", queues[0].offloads());
    assert_eq!(bed.netlink(h).link("weft-tap").unwrap().kind.as_deref(), Some("tun"));
    // A multi-queue device refuses a single-queue attach: these are its queues, not copies.
    let single = bed.ns(h).run(|| Tap::open("weft-tap")).unwrap();
    assert!(single.is_err(), "a single-queue open attached to the multi-queue device");
    let mut queues = queues;
    queues.truncate(1);
    assert!(bed.netlink(h).find_link("weft-tap").unwrap().is_some(), "the device lives while a queue is open");
    drop(queues);
    assert!(bed.netlink(h).find_link("weft-tap").unwrap().is_none(), "the device goes with its last queue");
    // One queue is the single-queue device, as before.
    let one = bed.ns(h).run(|| Tap::open_queues("weft-tap", 1)).unwrap().unwrap();
    let again = bed.ns(h).run(|| Tap::open_queues("weft-tap", 2)).unwrap();
    assert!(again.is_err(), "one queue made a multi-queue device");
    drop(one);
}

#[test]
fn a_handle_in_a_namespace_never_touches_another() {
    let mut bed = bed();
    let n = bed.add_node("n").unwrap();
    let before = Handle::open().unwrap().links().unwrap();
    bed.netlink(n).add_link("only-here", &LinkKind::Bridge).unwrap();
    let after = Handle::open().unwrap().links().unwrap();
    assert!(after.iter().all(|l| l.name != "only-here"));
    assert_eq!(before.len(), after.len());
}

/// `ip netns add` (run by anyone, any time) bind-mounts `/run/netns` over itself when it is not a
/// mount point yet; a namespace made here before that must still be deletable afterwards.
#[test]
fn a_namespace_made_here_is_deleted_cleanly_after_ip_netns_add_ran() {
    weft_testbed::require_privileges().unwrap();
    let ours = format!("{}{}-share-ours", weft_testbed::NS_PREFIX, std::process::id());
    let theirs = format!("{}{}-share-ip", weft_testbed::NS_PREFIX, std::process::id());
    drop(weft_kernel::NetNs::create(&ours).unwrap());
    let added = std::process::Command::new("ip").args(["netns", "add", &theirs]).status().expect("run ip netns add");
    let deleted = weft_kernel::netns::delete(&ours);
    let _ = std::process::Command::new("ip").args(["netns", "delete", &theirs]).status();
    assert!(added.success(), "ip netns add {theirs} failed");
    deleted.unwrap_or_else(|e| panic!("deleting {ours} after ip netns add: {}", weft_kernel::chain(&e)));
    assert!(!std::path::Path::new(weft_kernel::netns::NETNS_DIR).join(&ours).exists(), "{ours} is still mounted");
}

#[test]
fn a_pod_port_coalesces_udp_in_its_own_namespace_only() {
    let mut bed = bed();
    let (h1, h2) = (bed.add_node("h1").unwrap(), bed.add_node("h2").unwrap());
    for (i, h) in [h1, h2].into_iter().enumerate() {
        bed.netlink(h).add_link(POD_BRIDGE, &LinkKind::Bridge).unwrap();
        bed.add_pod(h, &format!("p{i}"), POD_BRIDGE, "vp0", Ipv4Addr::new(10, 32, 0, 2 + i as u8), 12, None).unwrap();
    }
    let on = |nl: &mut Handle, name: &str| nl.features("vp0").unwrap().into_iter().find(|(n, _)| n == name).map(|(_, a)| a);
    assert_eq!(on(bed.netlink(h1), "rx-udp-gro-forwarding"), Some(false), "off until asked");
    assert_eq!(bed.netlink(h1).gro_flush_timeout("vp0").unwrap(), std::time::Duration::ZERO);

    bed.netlink(h1).set_pod_udp_coalescing("vp0", Some(weft_kernel::offload::POD_GRO_FLUSH_TIMEOUT)).unwrap();
    assert!(bed.netlink(h1).pod_udp_coalescing_is("vp0", Some(weft_kernel::offload::POD_GRO_FLUSH_TIMEOUT)).unwrap());
    for f in weft_kernel::offload::POD_FEATURES {
        assert_eq!(on(bed.netlink(h1), f), Some(true), "{f} on h1");
    }
    assert_eq!(bed.netlink(h1).gro_flush_timeout("vp0").unwrap(), weft_kernel::offload::POD_GRO_FLUSH_TIMEOUT);
    // The other host's link of the same name is untouched: each handle sees its own sysfs.
    assert_eq!(on(bed.netlink(h2), "rx-udp-gro-forwarding"), Some(false));
    assert_eq!(bed.netlink(h2).gro_flush_timeout("vp0").unwrap(), std::time::Duration::ZERO);

    // Off again, and errors that say what and where.
    bed.netlink(h1).set_pod_udp_coalescing("vp0", None).unwrap();
    assert_eq!(on(bed.netlink(h1), "rx-udp-gro-forwarding"), Some(false));
    assert_eq!(bed.netlink(h1).gro_flush_timeout("vp0").unwrap(), std::time::Duration::ZERO);
    assert!(bed.netlink(h1).pod_udp_coalescing_is("vp0", None).unwrap());
    let missing = bed.netlink(h1).set_pod_udp_coalescing("vp9", None).unwrap_err();
    assert!(matches!(missing, Error::NoSuchLink { ref name, .. } if name == "vp9"), "{missing}");
    let unknown = bed.netlink(h1).set_features("vp0", &[("rx-teleport", true)]).unwrap_err();
    assert!(unknown.to_string().contains("rx-teleport") && unknown.to_string().contains("vp0"), "{unknown}");
}

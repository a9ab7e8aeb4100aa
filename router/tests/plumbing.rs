//! Host plumbing against the real kernel, in a test-bed namespace (root needed).

use weft_kernel::tap::Tap;
use weft_testbed::{NodeId, TestBed};
use weft_router::daemon::plumbing::{self, Devices};

/// A host with the router's TAP open (kept by the caller), and the default device names.
fn host_with_tap() -> (TestBed, NodeId, Devices, Tap) {
    let mut bed = TestBed::new().expect("cannot build a test bed");
    let h = bed.add_node("h").unwrap();
    let dev = Devices::default();
    let tap = bed.ns(h).run(|| Tap::open(&dev.tap)).unwrap().unwrap();
    (bed, h, dev, tap)
}

#[test]
fn plumbing_is_idempotent_and_repairs_what_was_changed() {
    let (mut bed, h, dev, tap) = host_with_tap();
    let nl = bed.netlink(h);

    let first = plumbing::ensure(nl, &dev).unwrap();
    assert!(first.0.iter().any(|r| r.contains("created bridge weft")), "{first:?}");
    let br = nl.link("weft").unwrap();
    let t = nl.link("weft-tap").unwrap();
    assert_eq!((t.master, t.isolated, t.up, t.mtu), (Some(br.index), Some(true), true, dev.mtu));
    assert!(br.up);
    assert_eq!(plumbing::ensure(nl, &dev).unwrap().0, Vec::<String>::new(), "second run changes nothing");

    // Someone deletes the bridge: it comes back with the TAP on it.
    nl.delete_link("weft").unwrap();
    let again = plumbing::ensure(nl, &dev).unwrap();
    assert!(again.0.iter().any(|r| r.contains("created bridge")) && again.0.iter().any(|r| r.contains("attached")), "{again:?}");
    // Someone takes the TAP down and changes its MTU.
    nl.set_down("weft-tap").unwrap();
    nl.set_mtu("weft-tap", 1200).unwrap();
    let fixed = plumbing::ensure(nl, &dev).unwrap();
    assert_eq!(fixed.0.len(), 2, "{fixed:?}");
    let t = nl.link("weft-tap").unwrap();
    assert_eq!((t.up, t.mtu), (true, dev.mtu));

    drop(tap);
    let gone = plumbing::ensure(bed.netlink(h), &dev).unwrap_err();
    assert!(gone.is_not_found(), "a deleted TAP is reported so the router reopens it: {gone}");
}

#[test]
fn pod_ports_of_an_earlier_version_get_udp_coalescing_once() {
    let (mut bed, h, dev, tap) = host_with_tap();
    plumbing::ensure(bed.netlink(h), &dev).unwrap();
    // Two pods with plain veths, as an earlier weft-cni left them.
    for (i, port) in ["vp1", "vp2"].into_iter().enumerate() {
        bed.add_pod(h, &format!("p{i}"), &dev.bridge, port, std::net::Ipv4Addr::new(10, 32, 0, 2 + i as u8), 12, None).unwrap();
    }
    let nl = bed.netlink(h);
    let on = Some(weft_kernel::offload::POD_GRO_FLUSH_TIMEOUT);
    let (done, failed) = plumbing::coalesce_pod_ports(nl, &dev.bridge, on).unwrap();
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(done.0, ["pod port vp1: UDP coalescing set (20 µs)", "pod port vp2: UDP coalescing set (20 µs)"]);
    for port in ["vp1", "vp2"] {
        let f = nl.features(port).unwrap();
        assert!(f.iter().any(|(n, on)| n == "rx-udp-gro-forwarding" && *on), "{port}: {f:?}");
        assert_eq!(nl.gro_flush_timeout(port).unwrap(), weft_kernel::offload::POD_GRO_FLUSH_TIMEOUT);
    }
    assert_eq!(plumbing::coalesce_pod_ports(nl, &dev.bridge, on).unwrap().0.0, Vec::<String>::new(), "second run changes nothing");
    // Restarted with --pod-udp-coalesce-us 0: taken off again.
    let (off, _) = plumbing::coalesce_pod_ports(nl, &dev.bridge, None).unwrap();
    assert_eq!(off.0, ["pod port vp1: UDP coalescing turned off", "pod port vp2: UDP coalescing turned off"]);
    assert!(nl.pod_udp_coalescing_is("vp1", None).unwrap());
    // The TAP (not a veth) is left alone.
    let t = nl.features(&dev.tap).unwrap();
    assert!(t.iter().any(|(n, on)| n == "rx-udp-gro-forwarding" && !*on), "{t:?}");
    drop(tap);
}

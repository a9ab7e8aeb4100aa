//! The test bed's topologies against the real kernel: packets cross where they should and do
//! not where they should not, and teardown leaves nothing behind (root needed).

use std::net::Ipv4Addr;
use std::process::Command;

use weft_kernel::netns;
use weft_testbed::TestBed;
use weft_testbed::topology;

fn bed() -> TestBed {
    TestBed::new().expect("cannot build a test bed")
}

fn bed_namespaces(id: &str) -> Vec<String> {
    netns::list().unwrap().into_iter().filter(|n| n.starts_with(&format!("{id}-"))).collect()
}

#[test]
fn hosts_on_a_shared_segment_reach_each_other() {
    let mut bed = bed();
    let lan = topology::shared_segment(&mut bed, 3).unwrap();
    for (i, &from) in lan.hosts.iter().enumerate() {
        for (j, &to) in lan.hosts.iter().enumerate() {
            if i != j {
                let seen = bed.udp_probe(from, to, lan.links[j].addr).unwrap();
                assert_eq!(seen.map(|s| s.ip()), Some(lan.links[i].addr.into()), "h{} -> h{}", i + 1, j + 1);
            }
        }
    }
    assert!(bed.ping(lan.hosts[0], lan.links[2].addr).unwrap());
    bed.teardown().unwrap();
}

#[test]
fn ends_without_adjacency_reach_only_the_middle_host() {
    let mut bed = bed();
    let t = topology::no_adjacency(&mut bed, false).unwrap();
    assert!(bed.udp_probe(t.a, t.middle, t.middle_a.addr).unwrap().is_some(), "A reaches M");
    assert!(bed.udp_probe(t.c, t.middle, t.middle_c.addr).unwrap().is_some(), "C reaches M");
    assert!(bed.udp_probe(t.a, t.c, t.c_link.addr).unwrap().is_none(), "A must not reach C");
    assert!(bed.udp_probe(t.c, t.a, t.a_link.addr).unwrap().is_none(), "C must not reach A");
    assert!(!bed.ping(t.a, t.c_link.addr).unwrap());
    // A has no address of C's segment, and M does not forward: no L2 or L3 path.
    assert!(bed.udp_probe(t.a, t.middle, t.middle_c.addr).unwrap().is_none(), "M's other side is off A's segment");
    bed.teardown().unwrap();
}

#[test]
fn a_routing_middle_host_joins_the_ends_at_layer_3() {
    let mut bed = bed();
    let t = topology::no_adjacency(&mut bed, true).unwrap();
    assert_eq!(bed.udp_probe(t.a, t.c, t.c_link.addr).unwrap().map(|s| s.ip()), Some(t.a_link.addr.into()));
    assert!(bed.ping(t.c, t.a_link.addr).unwrap());
}

#[test]
fn a_host_behind_nat_reaches_out_but_cannot_be_reached() {
    let mut bed = bed();
    let t = topology::behind_nat(&mut bed).unwrap();
    let seen = bed.udp_probe(t.inside, t.outside, t.outside_link.addr).unwrap();
    assert_eq!(seen.map(|s| s.ip()), Some(t.nat_outside.addr.into()), "the outside sees the NAT's address");
    assert!(bed.udp_probe(t.outside, t.inside, t.inside_link.addr).unwrap().is_none(), "no way in");
    assert!(bed.ping(t.inside, t.outside_link.addr).unwrap());
    bed.teardown().unwrap();
}

#[test]
fn a_cut_cable_stops_traffic_until_restored() {
    let mut bed = bed();
    let lan = topology::shared_segment(&mut bed, 2).unwrap();
    let (h1, h2, a2) = (lan.hosts[0], lan.hosts[1], lan.links[1].addr);
    assert!(bed.udp_probe(h1, h2, a2).unwrap().is_some());
    bed.cut(lan.links[0].cable).unwrap();
    assert!(bed.udp_probe(h1, h2, a2).unwrap().is_none(), "cut");
    bed.restore(lan.links[0].cable).unwrap();
    assert!(bed.udp_probe(h1, h2, a2).unwrap().is_some(), "restored");
    bed.teardown().unwrap();
}

#[test]
fn pods_on_a_host_share_its_bridge() {
    let mut bed = bed();
    let c = topology::cluster(&mut bed, 2).unwrap();
    assert_eq!(c.pods.len(), 4);
    for host_pods in &c.pods {
        let (p1, a1) = host_pods[0];
        let (p2, a2) = host_pods[1];
        assert!(bed.udp_probe(p1, p2, a2).unwrap().is_some());
        assert!(bed.udp_probe(p2, p1, a1).unwrap().is_some());
    }
    // D is behind the NAT and reaches B's outside address; A and C are not adjacent.
    let (a, b, cc, d) = (c.hosts[0], c.hosts[1], c.hosts[2], c.hosts[3]);
    assert!(bed.udp_probe(d, b, Ipv4Addr::new(198, 51, 100, 12)).unwrap().is_some());
    assert!(bed.udp_probe(a, cc, c.host_addrs[2]).unwrap().is_none());
    bed.teardown().unwrap();
}

#[test]
fn teardown_removes_namespaces_links_and_processes() {
    let mut bed = bed();
    let id = bed.id().to_owned();
    let lan = topology::shared_segment(&mut bed, 2).unwrap();
    let pid = bed.spawn(lan.hosts[0], Command::new("sleep").arg("30")).unwrap();
    assert!(bed_namespaces(&id).len() >= 3);
    bed.teardown().unwrap();
    assert_eq!(bed_namespaces(&id), Vec::<String>::new());
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "the process the bed started is gone");
}

#[test]
fn teardown_also_happens_when_a_test_panics() {
    let mut id = String::new();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut bed = bed();
        id = bed.id().to_owned();
        topology::no_adjacency(&mut bed, false).unwrap();
        assert!(!bed_namespaces(&id).is_empty());
        panic!("a test failing half-way");
    }));
    assert!(result.is_err());
    assert!(!id.is_empty());
    assert_eq!(bed_namespaces(&id), Vec::<String>::new(), "drop during unwinding removed everything");
}

#[test]
fn leftovers_of_a_killed_run_are_swept() {
    // A namespace named as a bed of a process that no longer exists (PIDs stay below 2^22).
    let stale = format!("{}4999999-0-h1", weft_testbed::NS_PREFIX);
    netns::NetNs::create(&stale).unwrap();
    let bed = bed();
    assert!(!netns::list().unwrap().contains(&stale));
    bed.teardown().unwrap();
}

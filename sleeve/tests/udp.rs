//! Sleeve socket groups against the real kernel, inside a namespace a test bed makes (root
//! needed; without it the test bed fails and says why).

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use weft_sleeve::udp::{BindError, MAX_GROUP, RecvBatch, SleeveSocket};
use weft_testbed::{NodeId, TestBed};

fn bed() -> (TestBed, NodeId) {
    let mut bed = TestBed::new().expect("cannot build a test bed");
    let n = bed.add_node("n").unwrap();
    bed.netlink(n).set_up("lo").unwrap();
    (bed, n)
}

const SENDERS: usize = 16;
const PER_SENDER: u32 = 20;

#[test]
fn a_group_shares_one_port_and_keeps_each_sender_on_one_socket() {
    let (bed, n) = bed();
    let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let group = bed.ns(n).run(|| SleeveSocket::bind_group(any, 4)).unwrap().unwrap();
    let addr = group[0].local_addr().unwrap();
    assert!(group.iter().all(|s| s.local_addr().unwrap() == addr), "one port for all");
    assert!(
        group.iter().all(|s| s.max_gso_segments() == group[0].max_gso_segments() && s.gro_segments() == group[0].gro_segments()),
        "GSO and GRO set on each"
    );
    let senders: Vec<UdpSocket> = bed.ns(n).run(|| (0..SENDERS).map(|_| UdpSocket::bind(any).unwrap()).collect()).unwrap();
    for seq in 0..PER_SENDER {
        for s in &senders {
            s.send_to(&seq.to_be_bytes(), addr).unwrap();
        }
    }
    // sender port -> (socket of the group, sequence numbers in arrival order)
    let mut got: HashMap<u16, (usize, Vec<u32>)> = HashMap::new();
    let mut batch = RecvBatch::new(32);
    let mut total = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    for s in &group {
        s.set_read_timeout(Duration::from_millis(20));
    }
    while total < SENDERS * PER_SENDER as usize && Instant::now() < deadline {
        for (i, s) in group.iter().enumerate() {
            let k = s.recv(&mut batch).unwrap();
            for j in 0..k {
                let (src, data, stride) = batch.get_mut(j);
                for d in data.chunks(stride) {
                    let seq = u32::from_be_bytes(d.try_into().expect("4-byte datagrams"));
                    let e = got.entry(src.port()).or_insert((i, Vec::new()));
                    assert_eq!(e.0, i, "sender {src} reached two sockets of the group");
                    e.1.push(seq);
                    total += 1;
                }
            }
        }
    }
    assert_eq!(total, SENDERS * PER_SENDER as usize, "every datagram arrived (loopback, small burst)");
    let want: Vec<u32> = (0..PER_SENDER).collect();
    assert!(got.values().all(|(_, seqs)| *seqs == want), "each sender's datagrams in order: {got:?}");
    let used: HashSet<usize> = got.values().map(|(i, _)| *i).collect();
    assert!(used.len() >= 2, "{SENDERS} senders all hashed to one socket of 4: {used:?}");
    let counted: u64 = group.iter().map(|s| s.stats().datagrams_received.load(Ordering::Relaxed)).sum();
    assert_eq!(counted, total as u64, "the per-socket counters sum to what arrived");
}

#[test]
fn a_group_is_refused_where_another_socket_holds_its_port() {
    let (bed, n) = bed();
    let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let other = bed.ns(n).run(|| SleeveSocket::bind_group(any, 2)).unwrap().unwrap();
    let port = other[0].local_addr().unwrap().port();
    let taken = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    match bed.ns(n).run(|| SleeveSocket::bind_group(taken, 3)).unwrap() {
        Err(BindError::Shared { port: p, others: 2 }) => assert_eq!(p, port),
        r => panic!("joined a group it did not make: {:?}", r.map(|g| g.len())),
    }
    // The wildcard address on the same port is refused too.
    let wild = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
    let e = bed.ns(n).run(|| SleeveSocket::bind_group(wild, 2)).unwrap().unwrap_err();
    assert!(matches!(e, BindError::Shared { others: 2, .. }), "{e}");
    // A single socket binds exclusively: the port in use is an error, not a shared port.
    let e = bed.ns(n).run(|| SleeveSocket::bind_group(taken, 1)).unwrap().unwrap_err();
    assert!(matches!(&e, BindError::Io { what: "bind", .. }), "{e}");
    drop(other);
    let g = bed.ns(n).run(|| SleeveSocket::bind_group(taken, 3)).unwrap().unwrap();
    assert_eq!(g.len(), 3, "the port is free again");
    drop(g);
    // A single exclusive socket keeps a group out.
    let one = bed.ns(n).run(|| SleeveSocket::bind_group(taken, 1)).unwrap().unwrap();
    assert!(bed.ns(n).run(|| SleeveSocket::bind_group(taken, 2)).unwrap().is_err(), "a group joined an exclusive socket");
    drop(one);
}

#[test]
fn a_group_of_no_socket_or_too_many_is_refused() {
    let any = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    for n in [0, MAX_GROUP + 1] {
        let e = SleeveSocket::bind_group(any, n).unwrap_err();
        assert!(matches!(e, BindError::Size(m) if m == n), "{e}");
        assert!(e.to_string().contains("1 to 64"), "{e}");
    }
}

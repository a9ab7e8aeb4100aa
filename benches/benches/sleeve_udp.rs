//! Sleeve UDP I/O over loopback, in a network namespace of its own (root needed): a 64 KB
//! train of 1472-byte datagrams (one super-frame's worth) sent and received
//! - by the sleeve's socket: one `sendmsg` with UDP GSO, `recvmmsg` with UDP GRO;
//! - one datagram per system call (`send_to` / `recv_from`), the baseline.
//!
//! `Throughput::Bytes` is the datagram payload bytes moved. After the runs, the datagrams per
//! system call each side achieved are printed.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;

use criterion::{Criterion, Throughput};
use weft_kernel::Handle;
use weft_kernel::netns::{self, NetNs};
use weft_sleeve::udp::{RecvBatch, SleeveSocket};

const SEGMENT: usize = 1472;
const SEGMENTS: usize = 44;

fn main() {
    let name = format!("wt-bench-udp-{}", std::process::id());
    let ns = match NetNs::create(&name) {
        Ok(ns) => ns,
        Err(e) => {
            eprintln!("sleeve_udp needs root to make its network namespace: {e}");
            std::process::exit(1);
        }
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&ns)));
    drop(ns);
    let _ = netns::delete(&name);
    if let Err(p) = result {
        std::panic::resume_unwind(p);
    }
}

fn run(ns: &NetNs) {
    Handle::open_in(ns).and_then(|mut h| h.set_up("lo")).expect("loopback up");
    let bind = |port: u16| ns.run(|| UdpSocket::bind((Ipv4Addr::LOCALHOST, port))).expect("enter namespace").expect("bind");
    let rx = SleeveSocket::from_std(bind(0)).expect("sleeve socket");
    let tx = SleeveSocket::from_std(bind(0)).expect("sleeve socket");
    let dst = rx.local_addr().unwrap();
    let plain_rx = bind(0);
    let plain_tx = bind(0);
    let plain_dst: SocketAddr = plain_rx.local_addr().unwrap();
    println!("GSO segments per send: {}, GRO segments per receive buffer: {}", tx.max_gso_segments(), rx.gro_segments());

    let train = vec![0x5au8; SEGMENT * SEGMENTS];
    let mut batch = RecvBatch::new(64);
    let mut buf = vec![0u8; 65536];
    let mut c = Criterion::default().configure_from_args();
    let mut g = c.benchmark_group("sleeve_udp");
    g.throughput(Throughput::Bytes(train.len() as u64));
    g.bench_function("gso_send_gro_receive_64k_train", |b| {
        b.iter(|| {
            tx.send(dst, &train, Some(SEGMENT)).expect("send");
            let mut got = 0;
            while got < train.len() {
                let n = rx.recv(&mut batch).expect("receive");
                assert!(n > 0, "the train did not arrive");
                for i in 0..n {
                    got += batch.get_mut(i).1.len();
                }
            }
        })
    });
    g.bench_function("one_datagram_per_syscall_64k_train", |b| {
        b.iter(|| {
            for seg in train.chunks(SEGMENT) {
                plain_tx.send_to(seg, plain_dst).expect("send");
            }
            for _ in 0..SEGMENTS {
                plain_rx.recv_from(&mut buf).expect("receive");
            }
        })
    });
    g.finish();
    c.final_summary();
    let (s, r) = (tx.stats(), rx.stats());
    let per = |d: u64, calls: u64| d as f64 / calls.max(1) as f64;
    println!(
        "datagrams per system call with GSO/GRO: send {:.1}, receive {:.1} (without: 1 and 1)",
        per(s.datagrams_sent.load(Ordering::Relaxed), s.send_calls.load(Ordering::Relaxed)),
        per(r.datagrams_received.load(Ordering::Relaxed), r.recv_calls.load(Ordering::Relaxed)),
    );
}

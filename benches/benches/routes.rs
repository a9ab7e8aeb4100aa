//! Route computation over a realistic mesh: N peers, each connected to about 8 others (a random
//! spanning tree plus random extra links), every connection established on both sides.
//!
//! `graph+routes` is what a peer does after a topology change: build the symmetric graph from
//! the gossiped entries, then unicast next hops and its broadcast children for every source.
//! `routes` is the second half alone.

use std::collections::BTreeSet;
use std::hint::black_box;
use std::net::SocketAddr;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use weft_mesh::peer::PeerName;
use weft_mesh::routes::{Graph, Routes};
use weft_mesh::sim::SimRng;
use weft_mesh::topology::{Capabilities, Connection, Direction, PeerEntry};

fn mesh(n: usize, degree: usize, seed: u64) -> Vec<PeerEntry> {
    let mut rng = SimRng::new(seed);
    let names: Vec<PeerName> = (0..n).map(|_| PeerName::from_u64(rng.next_u64())).collect();
    let mut links = BTreeSet::new();
    for i in 1..n {
        let j = rng.below(i as u64) as usize;
        links.insert((j.min(i), j.max(i)));
    }
    while links.len() < n * degree / 2 {
        let (a, b) = (rng.below(n as u64) as usize, rng.below(n as u64) as usize);
        if a != b {
            links.insert((a.min(b), a.max(b)));
        }
    }
    let mut entries: Vec<PeerEntry> = names
        .iter()
        .enumerate()
        .map(|(i, &name)| PeerEntry {
            name,
            nickname: format!("host-{i}"),
            incarnation: 1,
            version: 1,
            capabilities: Capabilities {
                sleeve: true,
                fastpath: true,
                encryption: false,
            },
            connections: Vec::new(),
        })
        .collect();
    let addr = |i: usize| SocketAddr::from(([10, 1, (i >> 8) as u8, i as u8], 6783));
    for &(a, b) in &links {
        let conn = |remote, direction, at| Connection {
            remote,
            addr: addr(at),
            direction,
            established: true,
        };
        entries[a]
            .connections
            .push(conn(names[b], Direction::Outbound, b));
        entries[b]
            .connections
            .push(conn(names[a], Direction::Inbound, a));
    }
    entries
}

fn routes(c: &mut Criterion) {
    let mut group = c.benchmark_group("routes");
    for n in [100usize, 1000, 5000] {
        let entries = mesh(n, 8, n as u64);
        let me = entries[n / 2].name;
        group.bench_with_input(
            BenchmarkId::new("graph+routes", n),
            &entries,
            |b, entries| b.iter(|| Routes::compute(me, &Graph::from_entries(black_box(entries)))),
        );
        let graph = Graph::from_entries(&entries);
        group.bench_with_input(BenchmarkId::new("routes", n), &graph, |b, graph| {
            b.iter(|| Routes::compute(me, black_box(graph)))
        });
        let r = Routes::compute(me, &graph);
        assert_eq!(r.reachable().len(), n - 1, "the mesh is connected");
        group.bench_with_input(BenchmarkId::new("next_hop lookup", n), &r, |b, r| {
            let dest = entries[n / 3].name;
            b.iter(|| black_box(r).next_hop(black_box(dest)))
        });
    }
    group.finish();
}

criterion_group!(benches, routes);
criterion_main!(benches);

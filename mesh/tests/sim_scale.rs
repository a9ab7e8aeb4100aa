//! Gossip at scale: 1000 peers converge with correct routes; the steady-state gossip per peer is
//! flat from 100 to 1000 to 5000 peers in bounded-degree mode, where 5000 peers started at once
//! with empty tables converge within
//! 14 gossip rounds and one peer computes its routes in under 20 ms; the memory of one router's
//! topology and routes with 100 peers.
//!
//! The 5000-peer figures and the time bound need an optimised build:
//! `cargo test -p weft-mesh --release --test sim_scale -- --nocapture`. A debug build runs 100
//! and 1000 peers and says so.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use weft_mesh::routes::{Graph, Routes};
use weft_mesh::sim::{Sim, SimConfig, SteadyState};
use weft_mesh::topology::Config;

fn distances(adj: &[Vec<usize>], s: usize) -> Vec<u32> {
    let mut d = vec![u32::MAX; adj.len()];
    d[s] = 0;
    let mut q = VecDeque::from([s]);
    while let Some(u) = q.pop_front() {
        for &v in &adj[u] {
            if d[v] == u32::MAX {
                d[v] = d[u] + 1;
                q.push_back(v);
            }
        }
    }
    d
}

#[test]
fn thousand_peers_converge() {
    const N: usize = 1000;
    // Route engines off in the simulation (1000 of them would dominate the run time); routes are
    // computed below for a sample of peers from their converged tables.
    let mut sim = Sim::new(SimConfig {
        seed: 1000,
        route_interval: None,
        ..SimConfig::default()
    });
    sim.add_peers(N);
    sim.random_connected_graph(4);
    let wall = Instant::now();
    let c = sim
        .run_until_converged(Duration::from_secs(30))
        .expect("1000 peers converge");
    let wall = wall.elapsed();
    let bytes: Vec<u64> = (0..N).map(|i| sim.bytes_sent(i)).collect();
    let msgs: u64 = (0..N).map(|i| sim.messages_sent(i)).sum();
    let mut sorted = bytes.clone();
    sorted.sort_unstable();
    println!(
        "1000 peers, {} links: converged in {} gossip rounds, {:?} virtual time ({wall:?} wall)",
        sim.links_up().len(),
        c.rounds,
        c.time
    );
    println!(
        "gossip bytes per peer: mean {} median {} max {}; {} messages in total",
        bytes.iter().sum::<u64>() / N as u64,
        sorted[N / 2],
        sorted[N - 1],
        msgs
    );
    assert!(c.rounds <= 60, "too many rounds: {}", c.rounds);
    assert!(sim.tables_identical());
    assert_eq!(sim.malformed(), 0);

    let mut adj = vec![Vec::new(); N];
    for (a, b) in sim.links_up() {
        adj[a].push(b);
        adj[b].push(a);
    }
    for i in (0..N).step_by(97) {
        let routes = Routes::compute(sim.name(i), &sim.topology(i).graph());
        let from_i = distances(&adj, i);
        for j in 0..N {
            let hop = routes.next_hop(sim.name(j));
            if j == i {
                assert_eq!(hop, None);
                continue;
            }
            let h = sim.index_of(hop.expect("route")).unwrap();
            assert!(adj[i].contains(&h));
            // `h` is on a shortest path: one hop, then the rest of i's distance.
            let from_h = distances(&adj, h);
            assert_eq!(from_h[j] + 1, from_i[j], "peer {i} towards {j} via {h}");
        }
    }
}

/// What one bounded-degree run measured.
#[derive(Debug)]
struct Figures {
    peers: usize,
    links: usize,
    diameter: u32,
    isolated: usize,
    /// Rounds and virtual time of a cold start of all peers at once (empty tables, all links up).
    cold: (u32, Duration),
    /// Gossip bytes all peers sent during the cold start.
    cold_bytes: u64,
    /// Rounds and virtual time until a new peer joining the converged mesh is known everywhere
    /// and knows everyone.
    join: (u32, Duration),
    steady: SteadyState,
    /// Building the graph from the table and computing the routes, median of 5 (one peer).
    route_time: Duration,
    wall: Duration,
}

/// The connection limit of the bounded-degree runs: 4 rings.
const LIMIT: usize = 8;

fn bounded(n: usize) -> Figures {
    let wall = Instant::now();
    let mut sim = Sim::new(SimConfig {
        seed: n as u64,
        route_interval: None,
        // Reachability checks only matter for garbage collection, which this run does not
        // exercise; at 5000 peers each costs milliseconds, so they are kept rare.
        topology: Config {
            recheck_interval: Duration::from_secs(5),
            ..Config::default()
        },
        ..SimConfig::default()
    });
    sim.add_peers(n);
    sim.bounded_degree_graph(LIMIT);
    let (diameter, isolated) = sim.diameter();
    let c = sim
        .run_until_converged(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("{n} peers do not converge"));
    assert!(sim.tables_identical(), "{n} peers: tables differ");
    let cold = (c.rounds, c.time);
    let cold_bytes = (0..n).map(|i| sim.bytes_sent(i)).sum();
    // Quiet from here: let the last exchanges settle, then measure a minute.
    sim.run_for(Duration::from_secs(10));
    let steady = sim.steady_state(Duration::from_secs(60));
    assert!(
        sim.converged(),
        "{n} peers: still converged after a quiet minute"
    );

    // A new peer joins, connecting to the peers it chooses (the others keep their choices).
    let j = sim.add_peer();
    let names: Vec<_> = (0..sim.len()).map(|i| sim.name(i)).collect();
    for p in weft_mesh::degree::choose(sim.name(j), &names, LIMIT) {
        sim.connect(j, sim.index_of(p).unwrap());
    }
    let c = sim
        .run_until_converged(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("{n} peers: the join does not converge"));
    assert!(
        sim.tables_identical(),
        "{n} peers: tables differ after the join"
    );
    assert_eq!(sim.malformed(), 0);

    let me = sim.name(n / 2);
    let table = sim.topology(n / 2);
    let mut times: Vec<Duration> = (0..5)
        .map(|_| {
            let t = Instant::now();
            let r = Routes::compute(me, &Graph::from_entries(table.entries()));
            let t = t.elapsed();
            assert_eq!(r.reachable().len(), n);
            t
        })
        .collect();
    times.sort_unstable();
    Figures {
        peers: n,
        links: sim.links_up().len(),
        diameter: diameter.expect("the bounded-degree mesh is connected"),
        isolated,
        cold,
        cold_bytes,
        join: (c.rounds, c.time),
        steady,
        route_time: times[2],
        wall: wall.elapsed(),
    }
}

#[test]
fn gossip_cost_is_flat_in_the_cluster_size_in_bounded_degree_mode() {
    let sizes: &[usize] = if cfg!(debug_assertions) {
        println!(
            "debug build: 100 and 1000 peers only; 5000 peers and the route time bound need --release"
        );
        &[100, 1000]
    } else {
        &[100, 1000, 5000]
    };
    println!(
        "bounded degree (limit {LIMIT}), 10 ms links: rounds and virtual time to converge from a cold \
         start of all and after one peer joins; steady-state gossip per peer: bytes/s (mean, max), \
         messages/s; one peer's graph + routes"
    );
    let mut all = Vec::new();
    for &n in sizes {
        let f = bounded(n);
        let cold = format!(
            "{:>2} rounds {:>6.1?} ({:.1} MB sent)",
            f.cold.0,
            f.cold.1,
            f.cold_bytes as f64 / 1e6
        );
        println!(
            "{:>5} peers {:>6} links  diameter {:>2}  isolated {}  cold start: {cold}  join: {:>2} \
             rounds {:>6.1?}  steady {:>5.1} B/s (max {:>5.1}) {:.2} msg/s  routes {:>8.2?}  ({:.1?} wall)",
            f.peers,
            f.links,
            f.diameter,
            f.isolated,
            f.join.0,
            f.join.1,
            f.steady.bytes_per_peer_per_sec,
            f.steady.max_bytes_per_peer_per_sec,
            f.steady.messages_per_peer_per_sec,
            f.route_time,
            f.wall,
        );
        assert_eq!(f.isolated, 0);
        assert!(f.steady.bytes_per_peer_per_sec > 0.0, "digests go out");
        assert!(
            f.join.0 <= 14,
            "{n} peers: the join took {} rounds",
            f.join.0
        );
        assert!(
            f.cold.0 <= 14,
            "{n} peers: cold start took {} rounds",
            f.cold.0
        );
        all.push(f);
    }
    let base = all[0].steady.bytes_per_peer_per_sec;
    for f in &all {
        let ratio = f.steady.bytes_per_peer_per_sec / base;
        println!(
            "{:>5} peers: steady-state bytes per peer per second {ratio:.2}× that at {} peers",
            f.peers, all[0].peers
        );
        assert!(
            ratio <= 2.0,
            "{} peers: {ratio:.2}× the bytes of {}",
            f.peers,
            all[0].peers
        );
    }
    if let Some(f) = all.iter().find(|f| f.peers == 5000) {
        assert!(
            f.route_time < Duration::from_millis(20),
            "5000 peers: routes in {:?}",
            f.route_time
        );
    }
}

#[test]
fn memory_of_one_router_with_100_peers() {
    // A full mesh of 100 (every entry lists 99 connections) and a bounded-degree mesh.
    for (what, limit) in [("full mesh", None), ("bounded degree", Some(LIMIT))] {
        let mut sim = Sim::new(SimConfig {
            seed: 5,
            ..SimConfig::default()
        });
        sim.add_peers(100);
        match limit {
            None => {
                for a in 0..100 {
                    for b in a + 1..100 {
                        sim.connect(a, b);
                    }
                }
            }
            Some(l) => sim.bounded_degree_graph(l),
        }
        sim.run_until_converged(Duration::from_secs(30))
            .expect("converges");
        sim.run_for(Duration::from_secs(5));
        let topo = sim.topology_heap_bytes(0);
        let graph = sim.topology(0).graph();
        let routes = sim.routes(0).expect("route engines on");
        assert_eq!(routes.reachable().len(), 99);
        let total = topo + graph.heap_bytes() + routes.heap_bytes();
        println!(
            "100 peers, {what}: topology {} KiB, graph {} KiB, routes {} KiB: {} KiB in all",
            topo / 1024,
            graph.heap_bytes() / 1024,
            routes.heap_bytes() / 1024,
            total / 1024
        );
        // The budget is 32 MiB of router RSS with 100 peers; the gossip side must be a
        // small part of it.
        assert!(total < 2 << 20, "{total} bytes");
    }
}

//! 1000 peers: topology gossip converges, with the gossip bytes per peer reported; routes of a
//! sample of peers are checked against an independent BFS.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use weft_mesh::routes::Routes;
use weft_mesh::sim::{Sim, SimConfig};

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

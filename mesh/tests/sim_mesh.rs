//! Simulator tests of topology gossip and routes with 100 peers: convergence, routes checked
//! against an independent BFS, broadcast exactly once, partition and heal, garbage collection,
//! malformed gossip.

use std::time::{Duration, Instant};

use weft_mesh::routes::Routes;
use weft_mesh::sim::{Sim, SimConfig, SimRng};
use weft_mesh::topology::{Capabilities, Config, GossipRepr, Topology};

/// Hop counts between all pairs over the links that are up (independent of `weft_mesh::routes`).
fn all_pairs(sim: &Sim) -> (Vec<Vec<usize>>, Vec<Vec<u32>>) {
    let n = sim.len();
    let mut adj = vec![Vec::new(); n];
    for (a, b) in sim.links_up() {
        adj[a].push(b);
        adj[b].push(a);
    }
    let dist = (0..n)
        .map(|s| {
            let mut d = vec![u32::MAX; n];
            d[s] = 0;
            let mut q = std::collections::VecDeque::from([s]);
            while let Some(u) = q.pop_front() {
                for &v in &adj[u] {
                    if d[v] == u32::MAX {
                        d[v] = d[u] + 1;
                        q.push_back(v);
                    }
                }
            }
            d
        })
        .collect();
    (adj, dist)
}

/// Every next hop of peer `i` is a live neighbour one step closer to the destination, and
/// exactly the peers of `i`'s component have a route.
fn check_routes(sim: &Sim, i: usize, routes: &Routes, adj: &[Vec<usize>], dist: &[Vec<u32>]) {
    for (j, &dij) in dist[i].iter().enumerate() {
        let hop = routes.next_hop(sim.name(j));
        if j == i || dij == u32::MAX {
            assert_eq!(hop, None, "peer {i} must have no route to {j}");
            continue;
        }
        let h = sim
            .index_of(hop.unwrap_or_else(|| panic!("peer {i} has no route to {j}")))
            .unwrap();
        assert!(
            adj[i].contains(&h),
            "next hop {h} of {i} is not a neighbour"
        );
        assert_eq!(
            dist[j][h] + 1,
            dist[j][i],
            "next hop {h} of {i} towards {j} is not closer"
        );
    }
}

fn check_all_routes(sim: &Sim) {
    let (adj, dist) = all_pairs(sim);
    for i in 0..sim.len() {
        check_routes(sim, i, &sim.routes(i).unwrap(), &adj, &dist);
    }
}

/// A broadcast from every source reaches every peer of its component exactly once.
fn check_broadcasts(sim: &Sim) {
    let comp = sim.components();
    for s in 0..sim.len() {
        let got = sim.broadcast_receipts(s);
        for (p, &g) in got.iter().enumerate() {
            let want = u32::from(comp[p] == comp[s]);
            assert_eq!(g, want, "broadcast from {s}: peer {p} got {g} copies");
        }
    }
}

fn converge(sim: &mut Sim, what: &str) {
    let c = sim
        .run_until_converged(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("{what}: no convergence"));
    println!(
        "{what}: converged in {} gossip rounds, {:?} virtual time",
        c.rounds, c.time
    );
    assert!(
        sim.tables_identical(),
        "{what}: digests agree but tables differ"
    );
    // Let the coalesced route recomputation run.
    sim.run_for(Duration::from_millis(200));
}

#[test]
fn hundred_peers_converge_with_correct_routes_and_broadcast_trees() {
    let mut sim = Sim::new(SimConfig {
        seed: 100,
        ..SimConfig::default()
    });
    sim.add_peers(100);
    sim.random_connected_graph(4);
    assert_eq!(
        sim.components()
            .iter()
            .filter(|&&c| c == sim.components()[0])
            .count(),
        100
    );
    let c = sim
        .run_until_converged(Duration::from_secs(10))
        .expect("converges");
    println!(
        "100 peers, {} links: converged in {} gossip rounds, {:?} virtual time",
        sim.links_up().len(),
        c.rounds,
        c.time
    );
    assert!(c.rounds <= 40, "too many rounds: {}", c.rounds);
    assert!(sim.tables_identical());
    sim.run_for(Duration::from_millis(200));
    check_all_routes(&sim);
    check_broadcasts(&sim);
    let bytes: Vec<u64> = (0..100).map(|i| sim.bytes_sent(i)).collect();
    println!(
        "gossip bytes per peer: mean {} max {}",
        bytes.iter().sum::<u64>() / 100,
        bytes.iter().max().unwrap()
    );
    assert_eq!(sim.malformed(), 0);
}

#[test]
fn converges_despite_loss_and_jitter() {
    let config = SimConfig {
        seed: 7,
        loss: 0.2,
        jitter: Duration::from_millis(20),
        ..SimConfig::default()
    };
    let mut sim = Sim::new(config);
    sim.add_peers(100);
    sim.random_connected_graph(4);
    converge(&mut sim, "100 peers, 20% loss, 20 ms jitter");
    check_all_routes(&sim);
    check_broadcasts(&sim);
}

#[test]
fn partition_and_heal_reconverge_and_unreachable_peers_are_collected() {
    let topology = Config {
        gc_after: Duration::from_secs(2),
        ..Config::default()
    };
    let mut sim = Sim::new(SimConfig {
        seed: 42,
        topology,
        ..SimConfig::default()
    });
    sim.add_peers(100);
    sim.random_connected_graph(4);
    converge(&mut sim, "before partition");

    let side: Vec<usize> = (0..40).collect();
    sim.partition(&side);
    let comps = sim.components();
    let groups = {
        let mut c = comps.clone();
        c.sort_unstable();
        c.dedup();
        c.len()
    };
    assert!(groups >= 2);
    converge(&mut sim, &format!("partitioned into {groups} components"));
    // Every peer forgot the peers it cannot reach.
    for i in 0..sim.len() {
        let t = sim.topology(i);
        for j in 0..sim.len() {
            assert_eq!(
                t.entry(sim.name(j)).is_some(),
                comps[i] == comps[j],
                "peer {i} about {j}"
            );
        }
        if comps.iter().filter(|&&c| c != comps[i]).count() > 0 {
            assert!(t.stats().collected > 0, "peer {i} collected nothing");
        }
    }
    check_all_routes(&sim);
    check_broadcasts(&sim);

    sim.heal_all();
    assert!(sim.components().iter().all(|&c| c == sim.components()[0]));
    converge(&mut sim, "healed");
    check_all_routes(&sim);
    check_broadcasts(&sim);
}

#[test]
fn a_peer_that_leaves_is_collected_everywhere() {
    let topology = Config {
        gc_after: Duration::from_secs(1),
        ..Config::default()
    };
    let mut sim = Sim::new(SimConfig {
        seed: 9,
        topology,
        ..SimConfig::default()
    });
    sim.add_peers(30);
    sim.random_connected_graph(3);
    converge(&mut sim, "30 peers");
    let gone = sim.name(5);
    sim.partition(&[5]);
    sim.run_for(Duration::from_millis(1500));
    assert!(
        (0..30)
            .filter(|&i| i != 5)
            .all(|i| sim.topology(i).entry(gone).is_some()),
        "kept during grace"
    );
    converge(&mut sim, "after peer 5 left");
    assert!(
        (0..30)
            .filter(|&i| i != 5)
            .all(|i| sim.topology(i).entry(gone).is_none())
    );
    assert_eq!(sim.topology(5).len(), 1, "the lone peer knows only itself");
    check_all_routes(&sim);
}

#[test]
fn malformed_gossip_never_panics_and_is_counted() {
    // Real messages from a converged simulation, then many random mutations of them.
    let mut sim = Sim::new(SimConfig {
        seed: 3,
        route_interval: None,
        ..SimConfig::default()
    });
    sim.add_peers(10);
    sim.random_connected_graph(3);
    sim.run_until_converged(Duration::from_secs(5)).unwrap();
    let now = Instant::now();
    let me = weft_mesh::peer::PeerName([0x0e, 0, 0, 0, 0, 0xee]);
    // An update with peer 0's whole table, one with one entry, a repair of two buckets, a
    // digest and bucket sums.
    let mut entries = sim.topology(0).entries().cloned().collect::<Vec<_>>();
    entries.sort_by_key(|e| e.name);
    let mut samples = Vec::new();
    for repr in [
        GossipRepr::Update(entries.clone()),
        GossipRepr::Update(entries[..1].to_vec()),
        GossipRepr::Repair {
            order: 1,
            buckets: vec![0, 1],
            entries: entries[..3].to_vec(),
        },
        GossipRepr::Digest {
            peers: 10,
            digest: sim.topology(0).digest(),
        },
        GossipRepr::Buckets {
            peers: 10,
            order: 2,
            sums: vec![1, 2, 3, 4],
        },
    ] {
        let mut b = Vec::new();
        repr.emit(&mut b);
        samples.push(b);
    }
    let mut victim = Topology::new(
        now,
        Config::default(),
        me,
        "victim".into(),
        1,
        Capabilities::default(),
    );
    let mut rng = SimRng::new(11);
    let (mut refused, mut accepted) = (0u64, 0u64);
    for round in 0..20_000 {
        let base = &samples[round % samples.len()];
        let mut b = base.clone();
        match rng.below(4) {
            0 => {
                let i = rng.below(b.len() as u64) as usize;
                b[i] = rng.next_u64() as u8;
            }
            1 => b.truncate(rng.below(b.len() as u64) as usize),
            2 => b.push(rng.next_u64() as u8),
            _ => b = (0..rng.below(64)).map(|_| rng.next_u64() as u8).collect(),
        }
        match victim.handle(now, sim.name(0), &b) {
            Ok(_) => accepted += 1,
            Err(_) => refused += 1,
        }
    }
    println!("mutated gossip: {refused} refused, {accepted} accepted");
    assert!(refused > 10_000);
    assert_eq!(victim.stats().malformed, refused);
    // Still a working core afterwards.
    while victim.poll_transmit(now).is_some() {}
    victim.handle_timeout(now + Duration::from_secs(60));
}

//! Many-peer IPAM simulations: the invariant "no address is usable by two peers nor allocated
//! twice, and no answered allocation is lost" is checked after every step.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use weft_mesh::ipam::sim::{Action, Sim, SimConfig};
use weft_mesh::ipam::{Status, ring::Cidr};

fn run(cfg: SimConfig, steps: u64) -> Sim {
    let seed = cfg.seed;
    let mut sim = Sim::new(cfg);
    if let Err(v) = sim.run_random(steps) {
        panic!("seed {seed}: {v}");
    }
    sim.settle(Duration::from_secs(5));
    sim.check()
        .unwrap_or_else(|v| panic!("seed {seed} after settling: {v}"));
    sim
}

#[test]
fn random_schedules_thousands_of_steps() {
    let t = Instant::now();
    let mut total = weft_mesh::ipam::sim::SimStats::default();
    let seeds = [1u64, 2, 3, 4, 5, 6, 7, 8];
    for &seed in &seeds {
        let cfg = SimConfig {
            seed,
            peers: 4 + (seed as usize % 4),
            consensus: seed % 2 == 0,
            ..SimConfig::default()
        };
        let sim = run(cfg, 10_000);
        let s = sim.stats();
        println!("seed {seed}: {s:?}");
        total.steps += s.steps;
        total.allocated += s.allocated;
        total.donations += s.donations;
        total.crashes += s.crashes;
        total.restarts += s.restarts;
        total.reclaims += s.reclaims;
        total.shutdowns += s.shutdowns;
        total.checks += s.checks;
        total.claimed += s.claimed;
    }
    println!(
        "seeds {seeds:?}: {} steps, {} checks, in {:?}",
        total.steps,
        total.checks,
        t.elapsed()
    );
    // The schedules really exercised what they claim to.
    assert!(total.allocated > 1000, "{total:?}");
    assert!(total.donations > 10, "{total:?}");
    assert!(total.crashes > 10 && total.restarts > 10, "{total:?}");
    assert!(total.reclaims > 0, "{total:?}");
    assert!(total.shutdowns > 0, "{total:?}");
    assert!(total.claimed > 0, "{total:?}");
}

#[test]
fn consensus_then_everyone_gets_space() {
    let cfg = SimConfig {
        seed: 11,
        peers: 5,
        loss: 0.0,
        range: Cidr::DEFAULT,
        ..SimConfig::default()
    };
    let mut sim = Sim::new(cfg);
    assert!(matches!(
        sim.core(0).unwrap().status(),
        Status::AwaitingConsensus {
            quorum: 3,
            known: 1,
            ..
        }
    ));
    assert_eq!(
        sim.core(0).unwrap().status().to_string(),
        "awaiting consensus: quorum 3, known 1 (1 of 5 expected peers named)"
    );
    sim.advance(Duration::from_millis(100));
    for i in 0..5 {
        let core = sim.core(i).unwrap();
        assert_eq!(core.status(), Status::Ready);
        assert_eq!(
            core.ring(),
            sim.core(0).unwrap().ring(),
            "identical division"
        );
        assert!(
            core.free_count() >= (1 << 20) / 5 - 2,
            "{}",
            core.free_count()
        );
    }
    for k in 0..50 {
        sim.apply(Action::Allocate(k % 5));
        sim.check().unwrap();
    }
    assert_eq!(sim.stats().allocated, 50);
}

#[test]
fn peer_that_runs_out_gets_a_donation() {
    // Seed list of the first half (3 of 5): peers 3 and 4 start with nothing.
    let cfg = SimConfig {
        seed: 7,
        peers: 5,
        consensus: false,
        loss: 0.0,
        ..SimConfig::default()
    };
    let mut sim = Sim::new(cfg);
    assert_eq!(sim.core(4).unwrap().usable(), &[]);
    sim.apply(Action::Allocate(4));
    assert!(matches!(
        sim.core(4).unwrap().status(),
        Status::WaitingForSpace { asked: Some(_) }
    ));
    assert!(
        sim.core(4)
            .unwrap()
            .status()
            .to_string()
            .starts_with("waiting for space: asked ")
    );
    sim.advance(Duration::from_millis(100));
    sim.check().unwrap();
    assert!(
        !sim.core(4).unwrap().usable().is_empty(),
        "donation arrived"
    );
    sim.apply(Action::Allocate(4));
    assert_eq!(sim.stats().allocated, 1);
    assert_eq!(sim.core(4).unwrap().status(), Status::Ready);
}

#[test]
fn concurrent_rmpeer_in_two_partitions_is_safe() {
    let cfg = SimConfig {
        seed: 3,
        peers: 4,
        loss: 0.0,
        range: "10.32.0.0/22".parse().unwrap(),
        ..SimConfig::default()
    };
    let mut sim = Sim::new(cfg);
    sim.advance(Duration::from_millis(200));
    let dead = sim.core(3).unwrap().name();
    sim.apply(Action::Crash(3));
    // Peers 0 and 1 in one group, 2 in the other (peer 3 is down anyway).
    sim.apply(Action::Partition(0b1100));
    sim.apply(Action::Rmpeer(0, 3));
    sim.apply(Action::Rmpeer(2, 3));
    sim.apply(Action::Rmpeer(2, 3)); // issued twice: nothing more happens
    for _ in 0..200 {
        sim.apply(Action::Allocate(0));
        sim.apply(Action::Allocate(2));
        sim.apply(Action::Advance(Duration::from_millis(10)));
        sim.check().unwrap();
    }
    // Neither could use the reclaimed space while the other side was unreachable.
    assert!(!sim.core(0).unwrap().pending_reclaims().is_empty());
    assert!(!sim.core(2).unwrap().pending_reclaims().is_empty());
    sim.apply(Action::Heal);
    sim.advance(Duration::from_secs(2));
    sim.check().unwrap();
    let pending: usize = (0..3)
        .map(|i| sim.core(i).unwrap().pending_reclaims().len())
        .sum();
    assert_eq!(pending, 0, "exactly one reclaim won and was confirmed");
    let shares = sim.core(0).unwrap().ring().shares();
    assert!(!shares.contains_key(&dead), "{shares:?}");
    assert_eq!(shares.values().sum::<u64>(), 1024);
    assert_eq!(shares.len(), 3, "{shares:?}");
    for i in 0..3 {
        assert_eq!(sim.core(i).unwrap().ring(), sim.core(0).unwrap().ring());
    }
    for _ in 0..200 {
        sim.apply(Action::Allocate(1));
        sim.apply(Action::Advance(Duration::from_millis(5)));
        sim.check().unwrap();
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_schedules_never_double_allocate(
        seed in any::<u64>(),
        peers in 2usize..7,
        consensus in any::<bool>(),
        loss in 0.0f64..0.3,
        ops in prop::collection::vec((0u8..10, any::<u8>(), any::<u64>()), 100..400),
    ) {
        let cfg = SimConfig { seed, peers, consensus, loss, ..SimConfig::default() };
        let mut sim = Sim::new(cfg);
        for &(kind, p, x) in &ops {
            let p = p as usize;
            let action = match kind {
                0..=2 => Action::Allocate(p),
                3 => Action::Release(p, x as usize),
                4 => Action::Claim(p, x),
                5 => if x % 2 == 0 { Action::Crash(p) } else { Action::Restart(p) },
                6 => if x % 3 == 0 { Action::Partition(x >> 8) } else { Action::Heal },
                7 => if x % 8 == 0 { Action::Shutdown(p) } else { Action::Rmpeer(p, (x >> 8) as usize) },
                _ => Action::Advance(Duration::from_millis(x % 100)),
            };
            sim.apply(action);
            if let Err(v) = sim.check() {
                prop_assert!(false, "seed {seed}: {v}");
            }
        }
        sim.settle(Duration::from_secs(3));
        if let Err(v) = sim.check() {
            prop_assert!(false, "seed {seed} after settling: {v}");
        }
        println!("proptest case: seed {seed}, {peers} peers, {} steps, {:?}", ops.len(), sim.stats());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Arbitrary bytes, and valid messages with bytes flipped, are errors or valid input: never a
    /// panic, in every parser of untrusted bytes and in the core.
    #[test]
    fn malformed_input_never_panics(
        bytes in prop::collection::vec(any::<u8>(), 0..200),
        flip in any::<(usize, u8)>(),
    ) {
        use weft_mesh::ipam::{Bootstrap, Config, Ipam, Ring, msg::Message, persist::decode_state};
        use weft_mesh::peer::PeerName;
        let _ = Ring::parse(&bytes);
        let _ = decode_state(&bytes);
        let me = PeerName::from_u64(1);
        let mut cfg = Config::new(Bootstrap::Seeds(vec![me, PeerName::from_u64(2)]));
        cfg.range = "10.0.0.0/24".parse().unwrap();
        let now = Instant::now();
        let mut ipam = Ipam::new(me, cfg, now).unwrap();
        let _ = ipam.handle(now, PeerName::from_u64(2), &bytes);
        let mut valid = Message::Gossip(ipam.ring().clone()).to_bytes();
        let i = flip.0 % valid.len();
        valid[i] ^= flip.1;
        let _ = Message::parse(&valid);
        let _ = ipam.handle(now, PeerName::from_u64(2), &valid);
        ipam.allocate(now, "c", "eth0").unwrap();
    }
}

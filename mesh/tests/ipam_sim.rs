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
        total.handovers_acknowledged += s.handovers_acknowledged;
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
    assert!(total.shutdowns > 0 && total.handovers_acknowledged > 0, "{total:?}");
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

#[test]
fn a_hand_over_its_receiver_never_got_is_sent_again_and_not_taken_as_acknowledged_meanwhile() {
    use weft_mesh::ipam::HandOver;
    // Two peers, the first the only seed: it owns the range and hands it to the second (with a
    // third, the receiver could learn the hand-over from it: also a valid acknowledgement).
    let mut sim = Sim::new(SimConfig { seed: 11, peers: 2, consensus: false, loss: 0.0, ..SimConfig::default() });
    sim.apply(Action::Advance(Duration::from_millis(500)));
    sim.check().unwrap();
    let (leaver, receiver) = (0, 1);
    let to = sim.core(receiver).unwrap().name();
    assert_eq!(sim.core(receiver).unwrap().ring().shares().get(&to), None, "the receiver owns nothing yet");
    // The receiver crashes while the hand-over is on its way (10-15 ms: it is lost), and
    // restarts before the hand-over is sent again (every 100 ms here): its first gossip, its
    // ring from before the hand-over, reaches the leaver first.
    sim.apply(Action::Shutdown(leaver));
    assert_eq!(sim.core(leaver).unwrap().hand_over(), Some(HandOver::Waiting(to)));
    sim.apply(Action::Crash(receiver));
    sim.apply(Action::Advance(Duration::from_millis(20)));
    sim.apply(Action::Restart(receiver));
    sim.apply(Action::Advance(Duration::from_millis(40)));
    sim.check().unwrap();
    assert_eq!(sim.core(leaver).unwrap().hand_over(), Some(HandOver::Waiting(to)), "a ring without the hand-over acknowledges nothing");
    // The hand-over is sent again, merged, persisted and answered.
    sim.apply(Action::Advance(Duration::from_secs(3)));
    sim.check().unwrap();
    assert_eq!(sim.core(leaver).unwrap().hand_over(), Some(HandOver::Acknowledged(to)));
    assert_eq!(sim.stats().handovers_acknowledged, 1);
    assert_eq!(sim.core(receiver).unwrap().ring().shares().get(&sim.core(leaver).unwrap().name()), None, "the leaver owns nothing");
}

/// The action a property-test triple stands for.
fn op(kind: u8, p: u8, x: u64) -> Action {
    let p = p as usize;
    match kind {
        0..=2 => Action::Allocate(p),
        3 => Action::Release(p, x as usize),
        4 => Action::Claim(p, x),
        5 => if x % 2 == 0 { Action::Crash(p) } else { Action::Restart(p) },
        6 => if x % 3 == 0 { Action::Partition(x >> 8) } else { Action::Heal },
        7 => if x % 8 == 0 { Action::Shutdown(p) } else { Action::Rmpeer(p, (x >> 8) as usize) },
        _ => Action::Advance(Duration::from_millis(x % 100)),
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
            let action = op(kind, p, x);
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

/// A schedule the property test found (seed 4483342199895536840): replayed step by step.
#[test]
fn regression_overlapping_usable_ranges_after_crashes_and_rmpeer() {
    let ops: &[(u8, u8, u64)] = &[(0,0,0),(5,115,1267489120048829144),(5,254,6178812561853418574),(7,220,136581824335090800),(8,160,16920966055368489843),(5,171,11763191776540319553),(5,144,6597744899306868682),(6,206,12906137820577044897),(7,23,8449782119114405044),(4,221,5123252386430610422),(8,129,86395623574529778),(8,93,13626262732102213036),(5,28,15532264979221754405),(5,43,2717250924074845191),(4,116,6074638560721239866),(5,76,3203975200852496542),(8,38,16140859857439329268),(4,14,9888529169682622635),(5,246,7951900229993080041),(7,211,13404640023310676230),(6,130,10652351405635884138),(3,234,11690309582222604993),(4,158,403297207174244419),(3,102,3105437100607773706),(2,204,7623552631068281255),(0,217,2166964860432311031),(6,224,15301511021428175008),(3,207,9747884736601096604),(3,198,175804975146879367),(6,252,6475427593799630154),(9,234,16594292716619705217),(7,66,147192204284175354),(2,211,6096393392194384075),(8,211,9874245387217240528),(8,21,16771124242814132834),(5,72,78278282549106501),(4,165,9074451002697428277),(0,20,13237500815083436196),(7,201,642116979246744885),(3,16,13318675650251206214),(3,172,9678840480996955656),(2,239,12357599018830790050),(7,3,7397287971738160376),(5,217,621255599511844533),(0,220,675711846276887733),(1,9,17905990257201371359),(1,98,430118835722550704),(8,142,11359478040019687830),(6,7,7087460064308716003),(4,176,7265417104673941038),(5,171,16978637310697131912),(4,147,18322475688309050985),(7,133,13703390865189457350),(2,67,4587207765732492755),(8,66,15752245220171553984),(9,0,14002703275752076095),(4,132,5583330516206856421),(5,17,11903475922055183389),(5,184,5352724172068452149),(3,155,4453842804098344235),(5,99,10316926275760287052),(0,65,8668097677980976095),(9,33,5254223708187832033),(8,224,1689090007059314307),(0,44,8875150771939484933),(6,227,10308124299113636521),(0,91,3653598026417109096),(3,46,10845258295157299338),(6,76,12642271499217773682),(1,30,17832844324403023140),(6,179,16795265438311922286),(8,225,16252138305813811635),(9,41,5883960052826322604),(6,225,6119116737273934818),(1,130,1102858379808689833),(2,17,11799506181251550310),(9,241,12915702742945737805),(0,224,2511802607670208815),(2,78,8752243336137075649),(9,224,11567090112933980459),(9,206,14129582783767521541),(3,34,8631354647434417265),(8,72,2233332642517239654),(0,46,2638562554119105781),(7,211,10363089933601351847),(5,142,16686940095976113865),(2,26,13687181955454842341),(3,194,13441643533240753182),(5,47,8772537690647780891),(8,146,6878050449924473625),(5,226,17498362603935922029),(1,27,13533817363294211712),(2,147,12020583048627243423),(6,43,9084617002649890169),(9,214,7679596232430110649),(5,40,7590805325364733757),(0,99,4627317447281484607),(2,79,7754788068525389262),(4,9,12204054717143027569),(5,98,6089813215147092604)];
    let cfg = SimConfig { seed: 4483342199895536840, peers: 4, consensus: false, loss: 0.0, ..SimConfig::default() };
    let mut sim = Sim::new(cfg);
    for (step, &(kind, p, x)) in ops.iter().enumerate() {
        let action = op(kind, p, x);
        if std::env::var_os("WEFT_SIM_TRACE").is_some() {
            println!("step {step}: {action:?}");
        }
        sim.apply(action);
        if std::env::var_os("WEFT_SIM_TRACE").is_some() {
            for i in 0..4 {
                match sim.core(i) {
                    Some(c) => println!("   peer {i} {}: left={} usable={:?} pending={:?} shares={:?}", c.name(), c.has_left(), c.usable(), c.pending_reclaims(), c.ring().shares()),
                    None => println!("   peer {i}: down"),
                }
            }
        }
        if let Err(v) = sim.check() {
            panic!("step {step}: {v}");
        }
    }
    sim.settle(Duration::from_secs(3));
    sim.check().unwrap();
}

//! IPAM across real routers on the four-host cluster: one range divided by consensus, parallel
//! allocations on three hosts, a router killed in the middle of allocating, `weft rmpeer` of a
//! stopped peer, and the hand-over of a leaving peer's range, also to a receiver that is slow to
//! acknowledge it. Root needed.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Mesh, NAMES, weft};
use weft_api::types::{AllocateRequest, Allocation, Attachment, IpamShare, Peer};
use weft_testbed::routers;

fn req(id: &str) -> AllocateRequest {
    AllocateRequest { attachment: Attachment { container_id: id.to_owned(), ifname: "eth0".into() } }
}

fn shares(m: &Mesh, host: usize) -> Vec<IpamShare> {
    m.routers[host].client().get("/ipam").unwrap()
}

#[test]
fn parallel_allocations_on_three_hosts_never_collide_and_survive_a_kill_9_mid_way() {
    let mut m = Mesh::up(None, 0);
    // 200 allocations, in parallel: 4 threads on each of A, B and C. C is killed -9 while its
    // threads allocate; what C answered before dying must still be C's after its restart.
    let c_pid = m.routers[2].pid;
    let c_answered = std::sync::atomic::AtomicUsize::new(0);
    let c_answered = &c_answered;
    let results: Vec<(usize, String, Result<Allocation, String>)> = std::thread::scope(|s| {
        let mut handles = Vec::new();
        for (host, name) in NAMES.iter().enumerate().take(3) {
            for t in 0..4 {
                let client = m.routers[host].client();
                handles.push(s.spawn(move || {
                    let mut out = Vec::new();
                    let n = if host == 2 { 16 } else { 17 };
                    for k in 0..n {
                        let id = format!("{name}-{t}-{k}");
                        let r = client.post::<_, Allocation>("/ipam/allocate", &req(&id)).map_err(|e| e.to_string());
                        if host == 2 && r.is_ok() {
                            c_answered.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        out.push((host, id, r));
                    }
                    out
                }));
            }
        }
        let t0 = Instant::now();
        while c_answered.load(std::sync::atomic::Ordering::SeqCst) < 10 && t0.elapsed() < Duration::from_secs(10) {
            std::thread::yield_now();
        }
        Command::new("kill").args(["-KILL", &c_pid.to_string()]).status().unwrap();
        handles.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(results.len(), 200);
    let answered: Vec<&(usize, String, Result<Allocation, String>)> = results.iter().filter(|r| r.2.is_ok()).collect();
    let refused = results.len() - answered.len();
    println!("200 parallel allocations on A, B, C with C killed -9 after its 10th answer: {} answered, {refused} refused (all on C)", answered.len());
    assert!(results.iter().filter(|r| r.2.is_err()).all(|r| r.0 == 2), "only the killed router may fail");
    let mut seen = BTreeMap::new();
    for (host, id, r) in &answered {
        let a = r.as_ref().unwrap().address.clone();
        if let Some(other) = seen.insert(a.clone(), id.clone()) {
            panic!("{a} given to both {other} and {id} (host {})", NAMES[*host]);
        }
    }

    // Restart C: every address it answered is still allocated to the same container.
    let _ = m.bed.kill(c_pid);
    m.routers[2] = routers::start_cluster_router(&mut m.bed, &m.run, &m.cluster, 2, &m.opts).unwrap();
    routers::wait_for(&m.routers[2], Duration::from_secs(30), |s| s.ipam.state == "ready" && s.connections.established >= 2).unwrap();
    for (host, id, r) in &answered {
        let got: Allocation = m.routers[*host].client().post("/ipam/lookup", &req(id)).unwrap();
        assert_eq!(got.address, r.as_ref().unwrap().address, "{id} on {}", NAMES[*host]);
    }
    // Each router lists what it holds: the answered allocations, the bridge's, and on C at most
    // the ones it persisted but could not answer before it died (CNI GC frees those), nothing else.
    let unanswered: BTreeSet<&str> = results.iter().filter(|r| r.2.is_err()).map(|r| r.1.as_str()).collect();
    let mut listed = 0;
    for (host, r) in m.routers.iter().enumerate().take(3) {
        let list: Vec<Allocation> = r.client().get("/ipam/allocations").unwrap();
        for a in &list {
            let known = seen.get(&a.address).is_some_and(|id| id == &a.attachment.container_id)
                || a.attachment.container_id == "weft:bridge"
                || (host == 2 && unanswered.contains(a.attachment.container_id.as_str()));
            assert!(known, "{} lists {a:?}, which it never answered", NAMES[host]);
        }
        listed += list.len();
    }
    assert!(listed >= answered.len() + 3, "every answered allocation and three bridges are listed");
    println!("listed: {listed} allocations on A, B and C (answered {}, bridges 3)", answered.len());
    // Allocating again after the restart hands out only fresh addresses.
    let mut all: BTreeSet<String> = seen.keys().cloned().collect();
    for k in 0..20 {
        let a: Allocation = m.routers[2].client().post("/ipam/allocate", &req(&format!("after-{k}"))).unwrap();
        assert!(all.insert(a.address.clone()), "{} handed out twice", a.address);
    }
    println!("after C's restart: {} allocations checked, 20 new ones distinct", answered.len());
    m.down();
}

#[test]
fn rmpeer_reclaims_a_stopped_peer_once_and_a_leaving_peer_hands_its_range_over() {
    let mut m = Mesh::up_with(None, 0, &["--handover-on-exit"]);
    let quarter = |s: &[IpamShare], nick: &str| s.iter().find(|x| x.nickname == nick).map(|x| x.size);
    assert_eq!(quarter(&shares(&m, 0), "d"), Some(1 << 18));

    // A live peer cannot be removed.
    let live = Command::new(weft()).args(["rmpeer", "c", "--api-socket"]).arg(&m.routers[0].api_socket).output().unwrap();
    assert!(!live.status.success(), "rmpeer of a live peer succeeded");
    println!("rmpeer of live c: {}", String::from_utf8_lossy(&live.stderr).trim());

    // Stop D hard; once A sees it unreachable, rmpeer reclaims its quarter, and a second rmpeer
    // (here on B) finds nothing left to take.
    let d = m.routers[3].pid;
    m.bed.kill(d).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let peers: Vec<Peer> = m.routers[0].client().get("/peers").unwrap();
        if peers.iter().all(|p| p.nickname != "d" || !p.reachable) {
            break;
        }
        assert!(Instant::now() < deadline, "A still sees D reachable 30 s after it died");
        std::thread::sleep(Duration::from_millis(300));
    }
    // The summary says who holds unreachable space and what to do about it.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s: weft_api::types::Status = m.routers[0].client().get("/status").unwrap();
        if s.ipam.detail.contains("held by unreachable peers: 262144 addresses on") && s.ipam.detail.contains("(d)") && s.ipam.detail.contains("weft rmpeer") {
            println!("status on a before rmpeer: IPAM {} — {}", s.ipam.state, s.ipam.detail);
            break;
        }
        assert!(Instant::now() < deadline, "the summary does not name D's unreachable space: {}", s.ipam.detail);
        std::thread::sleep(Duration::from_millis(300));
    }
    let out = Command::new(weft()).args(["rmpeer", "d", "--api-socket"]).arg(&m.routers[0].api_socket).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}\n{}", m.logs());
    println!("rmpeer d on a: {}", text.trim());
    assert!(text.contains("262144"), "{text}");
    // The same rmpeer on B at about the same time (Weave's known hole): both may claim the space,
    // but once their rings have met, exactly one of them holds it.
    let again = Command::new(weft()).args(["rmpeer", "d", "--api-socket"]).arg(&m.routers[1].api_socket).output().unwrap();
    println!("rmpeer d again on b: {}", (String::from_utf8_lossy(&again.stdout).into_owned() + &String::from_utf8_lossy(&again.stderr)).trim());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (sa, sb) = (shares(&m, 0), shares(&m, 1));
        let view = |s: &[IpamShare]| s.iter().map(|x| (x.nickname.clone(), x.size)).collect::<BTreeMap<_, _>>();
        let (va, vb) = (view(&sa), view(&sb));
        let total: u64 = va.values().sum();
        let holders = ["a", "b"].iter().filter(|n| va.get(**n) == Some(&(2 << 18))).count();
        if va == vb && total == 1 << 20 && va.get("d").is_none_or(|n| *n == 0) && holders == 1 {
            println!("after both rmpeers, A and B agree: {va:?}");
            break;
        }
        assert!(Instant::now() < deadline, "rings did not settle: a {va:?} b {vb:?}\n{}", m.logs());
        std::thread::sleep(Duration::from_millis(300));
    }

    // C leaves for good (SIGTERM with --handover-on-exit): its quarter goes to a live peer.
    Command::new("kill").args(["-TERM", &m.routers[2].pid.to_string()]).status().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = shares(&m, 1);
        if quarter(&s, "c").is_none_or(|n| n == 0) && s.iter().map(|x| x.size).sum::<u64>() == 1 << 20 {
            println!("after c left: {:?}", s.iter().map(|x| (x.nickname.clone(), x.size)).collect::<Vec<_>>());
            break;
        }
        assert!(Instant::now() < deadline, "C's range was not handed over: {s:?}\n{}", m.logs());
        std::thread::sleep(Duration::from_millis(300));
    }
    m.down();
}

#[test]
fn a_leaving_router_waits_for_a_slow_receiver_to_acknowledge_its_range() {
    let m = Mesh::up_with(None, 0, &["--handover-on-exit"]);
    // C leaves; its range goes to the live peer with the smallest name (names are fixed-width
    // lowercase hex, so they order as strings do).
    let leaving = 2;
    let names: Vec<String> = m.routers.iter().map(|r| r.client().get::<weft_api::types::Status>("/status").unwrap().name).collect();
    let receiver = (0..4).filter(|i| *i != leaving).min_by_key(|i| names[*i].clone()).unwrap();
    println!("{} leaves, {} ({}) receives", NAMES[leaving], NAMES[receiver], names[receiver]);
    // Something allocated on C is released when it leaves: the whole quarter moves.
    let _: Allocation = m.routers[leaving].client().post("/ipam/allocate", &req("leaving-pod")).unwrap();
    let sizes = |host: usize| shares(&m, host).into_iter().map(|x| (x.nickname, x.size)).collect::<BTreeMap<String, u64>>();
    assert_eq!(sizes(receiver)[NAMES[receiver]], 1 << 18);

    // The receiver is stopped (its connections stay up: 1.5 s is well inside the idle timeout),
    // then C is told to leave.
    let (c_pid, r_pid) = (m.routers[leaving].pid, m.routers[receiver].pid);
    let signal = |sig: &str, pid: u32| assert!(Command::new("kill").args([sig, &pid.to_string()]).status().unwrap().success());
    signal("-STOP", r_pid);
    let t0 = Instant::now();
    signal("-TERM", c_pid);
    std::thread::sleep(Duration::from_millis(1500));
    let waited = routers::alive(c_pid);
    let during = m.routers[leaving].client().get::<weft_api::types::Status>("/status");
    signal("-CONT", r_pid);
    assert!(waited, "C left without the receiver's acknowledgement:\n{}", m.routers[leaving].log_text());
    // Meanwhile C does not call the hand-over done.
    let during = during.unwrap().ipam;
    println!("C's IPAM while the receiver is stopped: {} — {}", during.state, during.detail);
    assert!(during.state == "left" && during.detail.contains("not yet acknowledged"), "{during:?}");
    let deadline = Instant::now() + Duration::from_secs(15);
    while routers::alive(c_pid) {
        assert!(Instant::now() < deadline, "C still running 15 s after the receiver resumed:\n{}", m.routers[leaving].log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = t0.elapsed();
    let log = m.routers[leaving].log_text();
    let ack = log.lines().find(|l| l.contains("acknowledged the hand-over")).unwrap_or_else(|| panic!("no acknowledgement in C's log:\n{log}"));
    println!("C exited {took:?} after SIGTERM; its log: {}", ack.trim());
    for l in log.lines().skip_while(|l| !l.contains("SIGTERM")) {
        println!("  c: {l}");
    }
    assert!(ack.contains(&names[receiver]), "{ack}");
    assert!(!log.contains("did not acknowledge"), "{log}");
    assert!(took >= Duration::from_millis(1500), "C exited after {took:?}, before the receiver could answer");

    // The receiver owns C's quarter besides its own, and everyone agrees: nothing was lost.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let views: Vec<BTreeMap<String, u64>> = (0..4).filter(|i| *i != leaving).map(sizes).collect();
        let r = &views[0];
        let settled = views.iter().all(|v| v == r)
            && r.values().sum::<u64>() == 1 << 20
            && r.get(NAMES[leaving]).is_none_or(|n| *n == 0)
            && r.get(NAMES[receiver]) == Some(&(2 << 18));
        if settled {
            println!("after C left, every live peer sees {r:?}");
            break;
        }
        assert!(Instant::now() < deadline, "rings did not settle: {views:?}\n{}", m.logs());
        std::thread::sleep(Duration::from_millis(300));
    }
    m.down();
}

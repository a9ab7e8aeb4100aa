//! Bounded-degree mode with real routers: 8 routers on one segment with `--conn-limit 3`, each
//! given only the next one as `--peer` (a ring in start order, which is not the ring the
//! choice function picks). Every router must end with at most the limit plus one connection,
//! exactly the pairs `weft_mesh::degree` chooses, the connections it no longer chooses closed;
//! every router must see every peer reachable (the rest through relays), a pod on each host
//! must ping the pods on all the others, and over a 10 s idle window no connection may be
//! opened or closed. Then one router is killed: once the others have forgotten it they must
//! re-form the chosen partial mesh of the seven, pods still reaching each other, and again stay
//! idle without churn. Root needed; hosts get permanent neighbour entries (the kernel's neighbour
//! table is shared by all namespaces and capped).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use common::weft;
use weft_api::types::{Connection, ConnectionState, Peer, Status};
use weft_mesh::peer::PeerName;
use weft_testbed::routers::{self, RouterOptions, RouterProc, RunDir};
use weft_testbed::topology;
use weft_testbed::{NodeId, TestBed};

const ROUTERS: usize = 8;
const LIMIT: usize = 3;
/// Connections beyond the limit a router may hold at the end.
const SLACK: usize = 1;
const IDLE: Duration = Duration::from_secs(10);

/// Name, established peers and the peers it sees reachable, of one router.
fn view(r: &RouterProc) -> Result<(Status, BTreeSet<String>, usize), String> {
    let c = r.client();
    let s: Status = c.get("/status").map_err(|e| weft_kernel::chain(&e))?;
    let l: Vec<Connection> = c.get("/connections").map_err(|e| weft_kernel::chain(&e))?;
    let p: Vec<Peer> = c.get("/peers").map_err(|e| weft_kernel::chain(&e))?;
    let est = l.iter().filter(|c| c.state == ConnectionState::Established).filter_map(|c| c.peer.clone()).collect();
    let reachable = p.iter().filter(|p| p.reachable).count();
    Ok((s, est, reachable))
}

/// Connections the routers closed as not chosen, and log lines about such closes at either end.
fn closes(routers: &[&RouterProc]) -> (usize, usize) {
    let logs: String = routers.iter().map(|r| r.log_text()).collect();
    (logs.matches("closing the connection to a peer not chosen").count(), logs.matches("not chosen under the connection limit").count())
}

/// Waits until `procs` agree on the chosen partial mesh of themselves (everyone known and
/// reachable, at most limit + slack connections each, the established pairs symmetric and
/// exactly the chosen ones); returns their names and the established pairs.
fn converge(procs: &[&RouterProc], t0: Instant, limit: Duration) -> (Vec<String>, BTreeSet<(String, String)>) {
    let n = procs.len();
    let mut last = String::new();
    loop {
        assert!(t0.elapsed() < limit, "not converged within {limit:?}: {last}\n{}", procs.iter().map(|r| r.log_text()).collect::<String>());
        std::thread::sleep(Duration::from_millis(500));
        let views: Result<Vec<_>, String> = procs.iter().map(|r| view(r)).collect();
        let views = match views {
            Ok(v) => v,
            Err(e) => {
                last = e;
                continue;
            }
        };
        let names: Vec<String> = views.iter().map(|v| v.0.name.clone()).collect();
        let peer_names: Vec<PeerName> = names.iter().map(|n| n.parse().expect("a peer name")).collect();
        let chosen: BTreeSet<(String, String)> = weft_mesh::degree::links(&peer_names, LIMIT).into_iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
        let mut pairs = BTreeSet::new();
        for (s, est, _) in &views {
            for p in est {
                pairs.insert((s.name.clone().min(p.clone()), s.name.clone().max(p.clone())));
            }
        }
        let symmetric = views.iter().all(|(s, est, _)| est.iter().all(|p| views.iter().any(|(o, theirs, _)| &o.name == p && theirs.contains(&s.name))));
        let ok = views.iter().all(|(s, est, reach)| s.peers == n && *reach == n && est.len() <= LIMIT + SLACK && s.ipam.state == "ready");
        last = format!(
            "{:?}; symmetric {symmetric}; pairs {pairs:?} chosen {chosen:?}",
            views.iter().map(|(s, est, reach)| (s.nickname.clone(), s.peers, est.len(), *reach, s.ipam.state.clone())).collect::<Vec<_>>()
        );
        if ok && symmetric && pairs == chosen {
            return (names, pairs);
        }
    }
}

/// Pings every pod from every other; returns the pairs that failed twice.
fn ping_all(bed: &TestBed, pods: &[(usize, NodeId, Ipv4Addr)]) -> Vec<String> {
    let mut failed = Vec::new();
    for (i, from, _) in pods {
        for (j, _, to) in pods.iter().filter(|(j, _, _)| j != i) {
            if !bed.ping(*from, *to).unwrap() && !bed.ping(*from, *to).unwrap() {
                failed.push(format!("h{} -> h{}", i + 1, j + 1));
            }
        }
    }
    failed
}

/// Watches `procs` for [`IDLE`]: panics if any router's established connections change or a
/// close of a connection not chosen is logged.
fn idle(procs: &[&RouterProc]) {
    let before: Vec<BTreeSet<String>> = procs.iter().map(|r| view(r).unwrap().1).collect();
    let closes_before = closes(procs);
    std::thread::sleep(IDLE);
    let after: Vec<BTreeSet<String>> = procs.iter().map(|r| view(r).unwrap().1).collect();
    let closes_after = closes(procs);
    let changed: BTreeMap<usize, (BTreeSet<String>, BTreeSet<String>)> =
        before.iter().zip(&after).enumerate().filter(|(_, (b, a))| b != a).map(|(i, (b, a))| (i, (b.clone(), a.clone()))).collect();
    println!("idle {IDLE:?}: {} routers changed connections, {} closes logged", changed.len(), closes_after.1 - closes_before.1);
    assert!(changed.is_empty() && closes_after == closes_before, "churn while idle: {changed:?}, {} closes", closes_after.1 - closes_before.1);
}

#[test]
fn routers_under_a_connection_limit_keep_the_chosen_partial_mesh_and_drop_the_rest() {
    let mut bed = TestBed::new().expect("namespace tests need root (CI runs as root)");
    let run = RunDir::new(bed.id()).unwrap();
    let lan = topology::shared_segment(&mut bed, ROUTERS as u8).unwrap();
    topology::static_neighbours(&mut bed, &lan).unwrap();
    let opts = RouterOptions {
        binary: weft(),
        password: Some("a-degree-test-password".into()),
        extra_args: vec!["--conn-limit".into(), LIMIT.to_string(), "--ipalloc-init".into(), format!("consensus={ROUTERS}")],
    };
    let mut procs = Vec::new();
    for i in 0..ROUTERS {
        let peers: Vec<Ipv4Addr> = vec![lan.links[(i + 1) % ROUTERS].addr];
        procs.push(routers::start_router(&mut bed, &run, lan.hosts[i], &format!("h{}", i + 1), &peers, &opts).unwrap());
    }
    let t0 = Instant::now();

    let (names, pairs) = converge(&procs.iter().collect::<Vec<_>>(), t0, Duration::from_secs(90));
    let converged = t0.elapsed();
    let counts: Vec<usize> = names.iter().map(|n| pairs.iter().filter(|(a, b)| a == n || b == n).count()).collect();
    println!(
        "{ROUTERS} routers, --conn-limit {LIMIT}: converged to the chosen partial mesh in {converged:.1?}: {} connections, per router {counts:?}, every peer reachable from every router; {} connections not chosen closed",
        pairs.len(),
        closes(&procs.iter().collect::<Vec<_>>()).0
    );

    // Pods: one per host, each pings the others (most of them through relays).
    let mut pods = Vec::new();
    for (i, r) in procs.iter().enumerate() {
        let (pod, addr) = routers::add_allocated_pod(&mut bed, r, lan.hosts[i], &format!("pod-h{}", i + 1), &format!("h{}-pod", i + 1), "vp1").unwrap();
        pods.push((i, pod, addr));
    }
    let failed = ping_all(&bed, &pods);
    println!("{} pod pairs pinged, {} failed", ROUTERS * (ROUTERS - 1), failed.len());
    assert!(failed.is_empty(), "pings failed: {failed:?}");
    idle(&procs.iter().collect::<Vec<_>>());

    // A router departs (kill -9): once the others have forgotten it, they re-form the chosen
    // partial mesh of the seven (new pairs dialled, pairs no longer chosen closed), and the
    // pods still reach each other.
    const GONE: usize = 3;
    bed.kill(procs[GONE].pid).unwrap();
    let t1 = Instant::now();
    let rest: Vec<&RouterProc> = procs.iter().enumerate().filter(|(i, _)| *i != GONE).map(|(_, r)| r).collect();
    let closed_before = closes(&rest).0;
    let (_, pairs) = converge(&rest, t1, Duration::from_secs(90));
    println!(
        "h{} killed: the other {} re-formed their chosen partial mesh in {:.1?} ({} connections); {} connections no longer chosen closed",
        GONE + 1,
        rest.len(),
        t1.elapsed(),
        pairs.len(),
        closes(&rest).0 - closed_before
    );
    pods.retain(|(i, _, _)| *i != GONE);
    let failed = ping_all(&bed, &pods);
    println!("{} pod pairs pinged, {} failed", pods.len() * (pods.len() - 1), failed.len());
    assert!(failed.is_empty(), "pings failed after h{} left: {failed:?}", GONE + 1);
    idle(&rest);
    let duplicates: usize = procs.iter().map(|r| r.log_text().matches("duplicate connection: ").count()).sum();
    println!("{duplicates} duplicate connections closed in the logs");
    bed.teardown().unwrap();
    drop(run);
}

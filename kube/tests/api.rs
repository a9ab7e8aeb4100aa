//! The real `kube` client layer against a stand-in of the API server's HTTP protocol
//! (`standin/`, on 127.0.0.1): lists and watches, relists after 410 Gone (as a status and as an
//! ERROR event), discovery and reclaim driven by Nodes added, deleted and re-added, and the
//! compare-and-swap on the registry ConfigMap under a real race.

mod standin;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use standin::StandIn;
use weft_kube::client::{ApiSource, ConfigMapRegistry};
use weft_kube::controller::{Controller, Mesh, Settings};
use weft_kube::informer::{Backoff, Informer};
use weft_kube::reclaim::Reclaimer;
use weft_kube::registry::{self, Registry};

const NS: &str = "kube-system";
const CM: &str = "weft-peers";

fn client(s: &StandIn) -> kube::Client {
    let config = kube::Config::new(s.url().parse().unwrap());
    kube::Client::try_from(config).unwrap()
}

/// The router's side, faked: targets and rmpeer calls recorded, reachability set by the test.
#[derive(Default)]
struct FakeMesh {
    live: Mutex<BTreeSet<String>>,
    targets: Mutex<Vec<BTreeSet<String>>>,
    rmpeers: Mutex<Vec<String>>,
}

impl FakeMesh {
    fn with_live(live: &[&str]) -> Arc<FakeMesh> {
        let m = FakeMesh::default();
        *m.live.lock().unwrap() = live.iter().map(|s| (*s).to_owned()).collect();
        Arc::new(m)
    }
    fn set_live(&self, live: &[&str]) {
        *self.live.lock().unwrap() = live.iter().map(|s| (*s).to_owned()).collect();
    }
    fn targets(&self) -> BTreeSet<String> {
        self.targets.lock().unwrap().last().cloned().unwrap_or_default()
    }
    fn rmpeers(&self) -> Vec<String> {
        self.rmpeers.lock().unwrap().clone()
    }
}

impl Mesh for FakeMesh {
    fn set_targets(&self, targets: BTreeSet<String>) {
        self.targets.lock().unwrap().push(targets);
    }
    fn live_peers(&self) -> BTreeSet<String> {
        self.live.lock().unwrap().clone()
    }
    fn rmpeer(&self, peer: &str, _node: &str) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
        self.rmpeers.lock().unwrap().push(peer.to_owned());
        Ok(1024)
    }
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// Polls `cond` every 20 ms for up to `secs` seconds.
async fn eventually(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn names(store: &weft_kube::informer::Store<Node>) -> Vec<String> {
    store.read(|r| r.objects().map(|n| weft_kube::nodes::name(n).to_owned()).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_informer_lists_watches_and_lists_again_after_410_gone() {
    let s = StandIn::start();
    s.add_node("n1", "192.0.2.1");
    s.add_node("n2", "192.0.2.2");
    let source: ApiSource<Node> = ApiSource::all(client(&s), "nodes");
    let (informer, mut store) = Informer::new(source, Backoff { min: Duration::from_millis(50), max: Duration::from_millis(200) });
    let task = tokio::spawn(informer.run());
    eventually(10, "the first list", || store.synced()).await;
    assert_eq!(names(&store), ["n1", "n2"]);

    // Changes arrive through the watch, not through lists.
    let lists = || s.requests().iter().filter(|r| r.starts_with("GET /api/v1/nodes?") && !r.contains("watch=true")).count();
    assert_eq!(lists(), 1);
    s.add_node("n3", "192.0.2.3");
    s.delete_node("n1");
    eventually(10, "n3 added and n1 deleted by watch events", || names(&store) == ["n2", "n3"]).await;
    assert!(store.changed().await);
    assert_eq!(lists(), 1, "no list for watch events");
    let watch = s.requests().into_iter().find(|r| r.contains("watch=true")).unwrap();
    assert!(watch.contains("resourceVersion=2"), "the first watch starts at the list's version: {watch}");

    // The log is compacted under a running watch: an ERROR event with 410, then a new list.
    s.compact();
    s.add_node("n4", "192.0.2.4");
    eventually(10, "a list after the ERROR 410 event", || lists() == 2).await;
    assert_eq!(s.gones(), (0, 1), "an ERROR event, not a 410 answer");
    eventually(10, "n4, seen by the new list or the watch after it", || names(&store) == ["n2", "n3", "n4"]).await;

    // The watch ends (server timeout) and the log is compacted before the next watch starts:
    // the new watch's request is answered 410, and the informer lists again.
    s.end_watches_and_compact();
    s.delete_node("n2");
    eventually(10, "a third list after the 410 answer", || lists() == 3).await;
    assert_eq!(s.gones(), (1, 1), "this time a 410 answer to the watch request");
    eventually(10, "n2's deletion, which happened while no watch ran", || names(&store) == ["n3", "n4"]).await;
    task.abort();
}

fn settings(peer: &str, node: &str, grace: Duration) -> Settings {
    Settings {
        peer: peer.into(),
        node: node.into(),
        address_type: "InternalIP".into(),
        mesh_port: 6783,
        reclaim_interval: Duration::from_millis(100),
        grace,
        backoff: Backoff { min: Duration::from_millis(50), max: Duration::from_millis(200) },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_added_deleted_and_readded_drive_targets_and_reclaim() {
    let s = StandIn::start();
    for (n, a) in [("n1", "192.0.2.1"), ("n2", "192.0.2.2"), ("n3", "192.0.2.3")] {
        s.add_node(n, a);
    }
    // b and c registered when they started.
    let reg = ConfigMapRegistry::new(client(&s), NS, CM);
    registry::register(&reg, "b", "n2").await.unwrap();
    registry::register(&reg, "c", "n3").await.unwrap();

    let mesh = FakeMesh::with_live(&["a", "b", "c"]);
    let grace = Duration::from_millis(300);
    let mut ctl = Controller::new(ApiSource::all(client(&s), "nodes"), ConfigMapRegistry::new(client(&s), NS, CM), mesh.clone(), settings("a", "n1", grace));
    assert_eq!(ctl.list().await.unwrap(), 3, "three Nodes: the first consensus expects three peers");
    assert_eq!(mesh.targets(), set(&["192.0.2.2:6783", "192.0.2.3:6783"]), "every Node but our own");
    ctl.register().await.unwrap();
    let peers = s.configmap_json(NS, CM, "peers").unwrap();
    assert_eq!(peers, serde_json::json!({"a": "n1", "b": "n2", "c": "n3"}));
    let task = tokio::spawn(ctl.run());

    // A Node joins: it is dialled.
    s.add_node("n4", "192.0.2.4");
    eventually(10, "n4 dialled", || mesh.targets().contains("192.0.2.4:6783")).await;

    // n3's Node is deleted but its peer c is still reachable: not dialled any more, never reclaimed.
    let writes = s.writes().len();
    s.delete_node("n3");
    eventually(10, "n3 no longer dialled", || !mesh.targets().contains("192.0.2.3:6783")).await;
    tokio::time::sleep(grace * 4).await;
    assert!(mesh.rmpeers().is_empty(), "c is reachable: not reclaimed");
    assert_eq!(s.writes().len(), writes, "not even claimed: {:?}", s.writes());

    // c becomes unreachable: after the grace, a reclaims it, once, and the registry forgets c.
    mesh.set_live(&["a", "b"]);
    eventually(10, "c reclaimed", || mesh.rmpeers() == ["c"]).await;
    eventually(10, "c's entry and claim removed", || {
        s.configmap_json(NS, CM, "peers") == Some(serde_json::json!({"a": "n1", "b": "n2"})) && s.configmap_json(NS, CM, "claims") == Some(serde_json::json!({}))
    })
    .await;
    tokio::time::sleep(grace * 3).await;
    assert_eq!(mesh.rmpeers(), ["c"], "reclaimed exactly once");

    // n3 comes back (a new router, peer c2, registers): dialled again, nothing reclaimed.
    s.add_node("n3", "192.0.2.30");
    registry::register(&reg, "c2", "n3").await.unwrap();
    eventually(10, "n3 dialled again at its new address", || mesh.targets().contains("192.0.2.30:6783")).await;
    tokio::time::sleep(grace * 3).await;
    assert_eq!(mesh.rmpeers(), ["c"]);
    assert_eq!(mesh.targets(), set(&["192.0.2.2:6783", "192.0.2.30:6783", "192.0.2.4:6783"]));
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_routers_racing_to_reclaim_one_peer_exactly_one_wins() {
    let s = StandIn::start();
    let reg = ConfigMapRegistry::new(client(&s), NS, CM);
    for (p, n) in [("a", "n1"), ("b", "n2")] {
        registry::register(&reg, p, n).await.unwrap();
    }
    let nodes = set(&["n1", "n2"]);
    for round in 0..5 {
        // A peer whose Node is gone, unreachable from both a and b.
        let dead = format!("dead{round}");
        registry::register(&reg, &dead, &format!("gone{round}")).await.unwrap();
        let (ma, mb) = (FakeMesh::with_live(&["a", "b"]), FakeMesh::with_live(&["a", "b"]));
        let (mut ra, mut rb) = (Reclaimer::new("a", Duration::ZERO), Reclaimer::new("b", Duration::ZERO));
        let (ca, cb) = (ConfigMapRegistry::new(client(&s), NS, CM), ConfigMapRegistry::new(client(&s), NS, CM));
        let conflicts_before = s.writes().iter().filter(|(_, c)| *c == 409).count();
        // Both read the same version before either writes.
        s.hold_configmap_gets(2);
        let (x, y) = tokio::join!(ra.round(&ca, &ma, &nodes), rb.round(&cb, &mb, &nodes));
        let (x, y) = (x.unwrap(), y.unwrap());
        assert_eq!(x.len() + y.len(), 1, "round {round}: exactly one reclaimed: {x:?} {y:?}");
        assert_eq!(ma.rmpeers().len() + mb.rmpeers().len(), 1, "round {round}: one rmpeer in all");
        assert!(s.writes().iter().filter(|(_, c)| *c == 409).count() > conflicts_before, "round {round}: the loser's claim met a 409: {:?}", s.writes());
        let doc = reg.read().await.unwrap().unwrap().value;
        assert!(!doc.peers.contains_key(&dead) && doc.claims.is_empty(), "round {round}: {doc:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_peer_is_never_reclaimed_even_without_its_node() {
    let s = StandIn::start();
    let reg = ConfigMapRegistry::new(client(&s), NS, CM);
    for (p, n) in [("a", "n1"), ("b", "gone")] {
        registry::register(&reg, p, n).await.unwrap();
    }
    let mesh = FakeMesh::with_live(&["a", "b"]);
    let mut r = Reclaimer::new("a", Duration::ZERO);
    let writes = s.writes().len();
    for _ in 0..20 {
        assert!(r.round(&reg, &mesh, &set(&["n1"])).await.unwrap().is_empty());
    }
    assert!(mesh.rmpeers().is_empty());
    assert_eq!(s.writes().len(), writes, "no claim written for a reachable peer");
    // Unreachable: reclaimed by the next round.
    mesh.set_live(&["a"]);
    let done = r.round(&reg, &mesh, &set(&["n1"])).await.unwrap();
    assert_eq!((done.len(), done[0].peer.as_str(), done[0].node.as_str(), done[0].addresses), (1, "b", "gone", 1024));
}

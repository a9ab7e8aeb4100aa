//! The policy loop over the real `kube` client against the stand-in of the API server
//! (`standin/`): Pods, Namespaces and NetworkPolicies listed and watched, converted, and the
//! updates the loop asks for — the whole table for a new policy, set elements for a pod — in
//! order, with a recording enforcer in place of nftables (the router's nftables one is tested by
//! `router/tests/policy.rs`).

mod standin;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::json;
use standin::StandIn;
use weft_kube::client::ApiSource;
use weft_kube::informer::{Backoff, Informer};
use weft_kube::policy::{Enforce, PolicyStores, Rejected, Settings, run};
use weft_policy::controller::{Controller, Update};
use weft_policy::model::Objects;
use weft_policy::render;

/// What the loop last reported as enforced.
type Enforced = Option<(Arc<Objects>, Vec<Rejected>)>;

#[derive(Clone, Default)]
struct Recorder {
    /// (full?, script) of every update, in order.
    scripts: Arc<Mutex<Vec<(bool, String)>>>,
    enforced: Arc<Mutex<Enforced>>,
}

impl Enforce for Recorder {
    async fn apply(&mut self, update: &Update) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let full = matches!(update, Update::Full(_));
        self.scripts.lock().unwrap().push((full, update.script(&render::CounterValues::new())));
        Ok(())
    }
    fn enforced(&mut self, objects: Arc<Objects>, rejected: &[Rejected]) {
        *self.enforced.lock().unwrap() = Some((objects, rejected.to_vec()));
    }
}

impl Recorder {
    fn scripts(&self) -> Vec<(bool, String)> {
        self.scripts.lock().unwrap().clone()
    }
}

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_loop_applies_a_policy_then_a_pod_change_over_the_api() {
    let s = StandIn::start();
    s.put(standin::namespace("a", &[("team", "x")]));
    s.put(standin::pod("a", "web", &[("app", "web")], "n1", "10.32.0.2", &[("http", 8080, "TCP")]));
    s.put(standin::pod("a", "db", &[("app", "db")], "n2", "10.32.0.3", &[]));
    let client = kube::Client::try_from(kube::Config::new(s.url().parse().unwrap())).unwrap();
    let backoff = Backoff { min: Duration::from_millis(50), max: Duration::from_millis(200) };
    let (pods, pod_store) = Informer::new(ApiSource::<Pod>::all(client.clone(), "pods"), backoff);
    let (nss, ns_store) = Informer::new(ApiSource::<Namespace>::all(client.clone(), "namespaces"), backoff);
    let (nps, np_store) = Informer::new(ApiSource::<NetworkPolicy>::all(client, "networkpolicies"), backoff);
    let tasks = [tokio::spawn(pods.run()), tokio::spawn(nss.run()), tokio::spawn(nps.run())];
    let stores = PolicyStores { pods: pod_store, namespaces: ns_store, policies: np_store };
    let rec = Recorder::default();
    let node = weft_policy::Node { name: "n1".into(), bridge: "weft".into() };
    let lp = tokio::spawn(run(stores, Controller::new(node), rec.clone(), Settings::default()));

    // No policy: a full table that isolates nothing.
    eventually("the first table", || rec.scripts().len() == 1).await;
    let (full, first) = rec.scripts()[0].clone();
    assert!(full && first.contains("table inet weft-policy {") && !first.contains("counter name"), "{first}");

    // A policy allowing web's named port from pods of namespaces labelled team=x: a full table.
    s.put(standin::network_policy(
        "a",
        "web-in",
        json!({"podSelector": {"matchLabels": {"app": "web"}},
               "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {"team": "x"}}, "podSelector": {"matchLabels": {"app": "db"}}}],
                            "ports": [{"port": "http"}]}]}),
    ));
    eventually("the policy's table", || rec.scripts().len() == 2).await;
    let (full, t) = rec.scripts()[1].clone();
    assert!(full, "a new policy is a full update:\n{t}");
    assert!(t.contains("counter ingress/a/web-in"), "{t}");
    assert!(t.contains("set p0 { type ipv4_addr; elements = { 10.32.0.2 }; }"), "web (on n1) is selected:\n{t}");
    assert!(t.contains("elements = { 10.32.0.3 }"), "db is a peer though on n2:\n{t}");
    assert!(t.contains("10.32.0.2 . tcp . 8080"), "the named port resolved:\n{t}");

    // A second db pod on another node: set elements only.
    s.put(standin::pod("a", "db-2", &[("app", "db")], "n2", "10.32.0.4", &[]));
    eventually("the pod's delta", || rec.scripts().len() == 3).await;
    let (full, d) = rec.scripts()[2].clone();
    assert!(!full && d.trim() == "add element inet weft-policy p0_in_0_0 { 10.32.0.4 }", "{d}");
    // It goes: the element goes.
    s.remove("Pod", "a", "db-2");
    eventually("the pod's removal", || rec.scripts().len() == 4).await;
    assert_eq!(rec.scripts()[3], (false, "delete element inet weft-policy p0_in_0_0 { 10.32.0.4 }\n".to_owned()));
    // The namespace loses its label: db no longer a peer, again elements only.
    s.put(standin::namespace("a", &[]));
    eventually("the namespace's delta", || rec.scripts().len() == 5).await;
    assert_eq!(rec.scripts()[4], (false, "delete element inet weft-policy p0_in_0_0 { 10.32.0.3 }\n".to_owned()));

    // A policy the model cannot take is enforced closed and reported.
    s.put(standin::network_policy("a", "odd", json!({"podSelector": {}, "ingress": [{"ports": [{"protocol": "ICMP", "port": 1}]}]})));
    eventually("the odd policy's table", || rec.scripts().len() == 6).await;
    let (objects, rejected) = rec.enforced.lock().unwrap().clone().unwrap();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].policy, "a/odd");
    assert!(rejected[0].reason.contains("ICMP"), "{:?}", rejected[0]);
    let odd = objects.policies.iter().find(|p| p.name == "odd").unwrap();
    assert!(odd.ingress.is_empty(), "nothing allowed: {odd:?}");
    assert_eq!(objects.pods.len(), 2);
    lp.abort();
    for t in tasks {
        t.abort();
    }
}

/// The same loop fed from memory sources, without an API server: what tests of other crates use.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_loop_runs_on_memory_sources_too() {
    use weft_kube::memory::MemorySource;
    let pods: MemorySource<Pod> = MemorySource::new("pods");
    let namespaces: MemorySource<Namespace> = MemorySource::new("namespaces");
    let policies: MemorySource<NetworkPolicy> = MemorySource::new("networkpolicies");
    namespaces.apply(from_json(standin::namespace("a", &[])));
    pods.apply(from_json(standin::pod("a", "web", &[("app", "web")], "n1", "10.32.0.2", &[])));
    policies.apply(from_json(standin::network_policy("a", "deny", json!({"podSelector": {}}))));
    let backoff = Backoff { min: Duration::from_millis(10), max: Duration::from_millis(50) };
    let (pi, ps) = Informer::new(pods.clone(), backoff);
    let (ni, ns) = Informer::new(namespaces, backoff);
    let (qi, qs) = Informer::new(policies.clone(), backoff);
    let tasks = [tokio::spawn(pi.run()), tokio::spawn(ni.run()), tokio::spawn(qi.run())];
    let rec = Recorder::default();
    let node = weft_policy::Node { name: "n1".into(), bridge: "weft".into() };
    let lp = tokio::spawn(run(PolicyStores { pods: ps, namespaces: ns, policies: qs }, Controller::new(node), rec.clone(), Settings::default()));
    eventually("the first table", || rec.scripts().len() == 1).await;
    let (full, t) = rec.scripts()[0].clone();
    assert!(full && t.contains("counter ingress/a/deny") && t.contains("elements = { 10.32.0.2 }"), "{t}");
    pods.apply(from_json(standin::pod("a", "web-2", &[("app", "web")], "n1", "10.32.0.3", &[])));
    eventually("the pod's delta", || rec.scripts().len() == 2).await;
    assert_eq!(rec.scripts()[1], (false, "add element inet weft-policy isolated_ingress { 10.32.0.3 }\nadd element inet weft-policy p0 { 10.32.0.3 }\n".to_owned()));
    policies.delete_in("a", "deny");
    eventually("the policy's removal", || rec.scripts().len() == 3).await;
    let (full, t) = rec.scripts()[2].clone();
    assert!(full && !t.contains("counter "), "{t}");
    lp.abort();
    for t in tasks {
        t.abort();
    }
}

fn from_json<K: serde::de::DeserializeOwned>(v: serde_json::Value) -> K {
    serde_json::from_value(v).unwrap()
}

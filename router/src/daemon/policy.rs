//! NetworkPolicy in the router (`--network-policy`, on by default with Kubernetes): three
//! informers (Pods, Namespaces, NetworkPolicies of the whole cluster) on the router's Kubernetes
//! client feed [`weft_kube::policy::run`], which applies the updates of the controller core
//! ([`weft_policy::controller`]) to the table `inet weft-policy` with `nft` (one transaction each,
//! on the blocking pool).
//!
//! In the router rather than a second container (as Weave Net's weave-npc): the router already
//! holds the API client and knows the bridge its pods hang on, there is no second image or process
//! to ship, upgrade and keep in step, and `weft status policy` and the metrics come from the same
//! process. The loop is a task of its own: a slow or failing API or `nft` delays policy updates
//! and nothing else (the data plane has its own threads).
//!
//! Restarts: the router never removes the table (not on exit, not at start). A new router waits
//! until all three kinds are listed, then replaces the table left by the last one in one
//! transaction (the table deleted and defined again in one `nft -f`), its drop counters carried
//! over: the old rules stay in force until the new ones take over, so there is no moment without
//! policy. `weft reset` removes the table.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use weft_api::types::{PolicyEntry, PolicyStatus};
use weft_kube::client::ApiSource;
use weft_kube::informer::{Backoff, Informer};
use weft_kube::k8s_openapi::api::core::v1::{Namespace, Pod};
use weft_kube::k8s_openapi::api::networking::v1::NetworkPolicy;
use weft_kube::policy::{Enforce, PolicyStores, Rejected, Settings};
use weft_policy::controller::{Controller, Update};
use weft_policy::model::{Direction, Objects};
use weft_policy::{Node, TABLE, nft, render};

/// What the policy loop last did, for `weft status policy` and the metrics.
#[derive(Debug, Default)]
pub struct PolicyShared {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    node: String,
    objects: Option<Arc<Objects>>,
    rejected: Vec<Rejected>,
    full: u64,
    delta: u64,
    error: Option<String>,
}

impl PolicyShared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The status, with the drop counters read from the table (runs `nft`: call it off the async
    /// workers).
    pub fn status(&self) -> PolicyStatus {
        let drops = nft::read_drops(TABLE);
        let s = self.lock();
        let Some(objects) = &s.objects else {
            return PolicyStatus {
                state: if s.error.is_some() { "failing" } else { "waiting" }.into(),
                detail: s.error.clone().unwrap_or_else(|| "Pods, Namespaces and NetworkPolicies not all listed yet".into()),
                full_updates: s.full,
                delta_updates: s.delta,
                ..PolicyStatus::default()
            };
        };
        let drops = drops.unwrap_or_default();
        let dropped = |d: Direction, ns: &str, name: &str| {
            drops.iter().filter(|x| x.direction == d && x.namespace == ns && x.name == name).map(|x| x.packets).sum()
        };
        let local: Vec<_> = objects.pods.iter().filter(|p| p.node == s.node && p.ip.is_some()).collect();
        let policies = objects
            .policies
            .iter()
            .filter_map(|p| {
                let pods: Vec<String> = local.iter().filter(|pod| p.selects(pod)).map(|pod| format!("{}/{}", pod.namespace, pod.name)).collect();
                (!pods.is_empty()).then(|| PolicyEntry {
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                    types: [Direction::Ingress, Direction::Egress].into_iter().filter(|d| p.applies(*d)).map(|d| d.name().to_owned()).collect(),
                    pods,
                    dropped_ingress: dropped(Direction::Ingress, &p.namespace, &p.name),
                    dropped_egress: dropped(Direction::Egress, &p.namespace, &p.name),
                })
            })
            .collect();
        PolicyStatus {
            state: if s.error.is_some() { "failing" } else { "enforcing" }.into(),
            detail: s.error.clone().unwrap_or_default(),
            full_updates: s.full,
            delta_updates: s.delta,
            cluster_policies: objects.policies.len(),
            local_pods: local.len(),
            policies,
            rejected: s.rejected.iter().map(|r| format!("{}: {}", r.policy, r.reason)).collect(),
        }
    }
}

/// The status when policy is off.
pub fn off() -> PolicyStatus {
    PolicyStatus { state: "off".into(), detail: "--network-policy is off".into(), ..PolicyStatus::default() }
}

/// Applies updates with `nft`, reading the counters a full update carries over just before.
struct Nft {
    shared: Arc<PolicyShared>,
    options: render::Options,
}

impl Enforce for Nft {
    async fn apply(&mut self, update: &Update) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let full = matches!(update, Update::Full(_));
        let (update, options) = (update.clone(), self.options);
        let done = tokio::task::spawn_blocking(move || -> Result<(), nft::Error> {
            let counters = if full { nft::read_counters(TABLE)? } else { render::CounterValues::new() };
            nft::apply(&update.script_with(&counters, &options))
        })
        .await
        .map_err(|e| format!("the nft task failed: {e}"))?;
        let mut s = self.shared.lock();
        match done {
            Ok(()) => {
                *if full { &mut s.full } else { &mut s.delta } += 1;
                s.error = None;
                Ok(())
            }
            Err(e) => {
                s.error = Some(weft_kernel::chain(&e));
                Err(e.into())
            }
        }
    }

    fn enforced(&mut self, objects: Arc<Objects>, rejected: &[Rejected]) {
        let mut s = self.shared.lock();
        s.objects = Some(objects);
        s.rejected = rejected.to_vec();
    }
}

/// Starts the informers and the loop on `client` for Node `node` (pods on bridge `bridge`);
/// returns the loop's tasks and its shared state.
pub fn start(client: weft_kube::kube::Client, node: &str, bridge: &str, log_drops_per_second: Option<u32>) -> (Vec<tokio::task::JoinHandle<()>>, Arc<PolicyShared>) {
    let backoff = Backoff::default();
    let (pods, pod_store) = Informer::new(ApiSource::<Pod>::all(client.clone(), "pods"), backoff);
    let (namespaces, ns_store) = Informer::new(ApiSource::<Namespace>::all(client.clone(), "namespaces"), backoff);
    let (policies, np_store) = Informer::new(ApiSource::<NetworkPolicy>::all(client, "networkpolicies"), backoff);
    let shared = Arc::new(PolicyShared::default());
    shared.lock().node = node.to_owned();
    let stores = PolicyStores { pods: pod_store, namespaces: ns_store, policies: np_store };
    let enforce = Nft { shared: shared.clone(), options: render::Options { log_drops_per_second } };
    let controller = Controller::new(Node { name: node.to_owned(), bridge: bridge.to_owned() });
    tracing::info!(node, logging = ?log_drops_per_second, "network policy: following Pods, Namespaces and NetworkPolicies; table inet {TABLE}");
    let tasks = vec![
        tokio::spawn(pods.run()),
        tokio::spawn(namespaces.run()),
        tokio::spawn(policies.run()),
        tokio::spawn(weft_kube::policy::run(stores, controller, enforce, Settings::default())),
    ];
    (tasks, shared)
}

/// Per-policy drop counters in the Prometheus text format (runs `nft`: off the async workers).
pub fn metrics(out: &mut String) {
    use std::fmt::Write as _;
    let Ok(drops) = nft::read_drops(TABLE) else { return };
    let _ = writeln!(out, "# HELP weft_policy_dropped_packets_total Packets dropped by NetworkPolicy, by the first policy selecting the pod.\n# TYPE weft_policy_dropped_packets_total counter");
    let seen: BTreeSet<_> = drops.iter().map(|d| (d.direction.name(), d.namespace.as_str(), d.name.as_str())).collect();
    for (direction, namespace, name) in &seen {
        let n: u64 = drops.iter().filter(|d| d.direction.name() == *direction && d.namespace == *namespace && d.name == *name).map(|d| d.packets).sum();
        let _ = writeln!(out, "weft_policy_dropped_packets_total{{direction=\"{direction}\",namespace=\"{namespace}\",policy=\"{name}\"}} {n}");
    }
    let _ = writeln!(out, "# HELP weft_policy_dropped_bytes_total Bytes dropped by NetworkPolicy.\n# TYPE weft_policy_dropped_bytes_total counter");
    for (direction, namespace, name) in &seen {
        let n: u64 = drops.iter().filter(|d| d.direction.name() == *direction && d.namespace == *namespace && d.name == *name).map(|d| d.bytes).sum();
        let _ = writeln!(out, "weft_policy_dropped_bytes_total{{direction=\"{direction}\",namespace=\"{namespace}\",policy=\"{name}\"}} {n}");
    }
}

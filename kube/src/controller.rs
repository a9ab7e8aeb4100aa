//! Peer discovery and reclaim, run together: the Node informer feeds the store; every change of
//! the store sets the mesh's Node targets (reconciled from the whole store) and runs a reclaim
//! round; a timer runs reclaim rounds too (peers become unreachable without any Node event) and
//! retries registering this peer until it succeeds.
//!
//! The router provides a [`Mesh`]: where the targets go, who is reachable, and `rmpeer`.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::core::v1::Node;

use crate::informer::{chain, Backoff, Informer, Store};
use crate::nodes;
use crate::reclaim::{Reclaimed, Reclaimer};
use crate::registry::{self, Registry, RegistryError};
use crate::source::{ObjectSource, SourceError};

/// What the controller needs from the router.
pub trait Mesh: Send + Sync + 'static {
    /// Replaces the dial targets that come from Nodes (`ADDR:PORT` each).
    fn set_targets(&self, targets: BTreeSet<String>);
    /// The peers reachable now over the mesh, this one included.
    fn live_peers(&self) -> BTreeSet<String>;
    /// Reclaims the space of `peer` (dead), whose Node was `node`; returns how many addresses
    /// moved to this peer.
    fn rmpeer(&self, peer: &str, node: &str) -> Result<u64, Box<dyn std::error::Error + Send + Sync>>;
}

impl<M: Mesh> Mesh for std::sync::Arc<M> {
    fn set_targets(&self, targets: BTreeSet<String>) {
        (**self).set_targets(targets)
    }
    fn live_peers(&self) -> BTreeSet<String> {
        (**self).live_peers()
    }
    fn rmpeer(&self, peer: &str, node: &str) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
        (**self).rmpeer(peer, node)
    }
}

/// The controller's settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// This router's peer name.
    pub peer: String,
    /// This router's Node name (never dialled).
    pub node: String,
    /// The Node address type dialled (`InternalIP`, `ExternalIP`, ...).
    pub address_type: String,
    /// The mesh port dialled.
    pub mesh_port: u16,
    /// How often reclaim runs without Node events.
    pub reclaim_interval: Duration,
    /// How long a peer must be unreachable before it is reclaimed.
    pub grace: Duration,
    /// Retry delays of the informer.
    pub backoff: Backoff,
}

/// Discovery and reclaim over a Node source, a registry and the router's mesh.
pub struct Controller<S, R, M> {
    /// Taken by [`Controller::run`], which drives it beside the rest.
    informer: Option<Informer<Node, S>>,
    store: Store<Node>,
    registry: R,
    mesh: M,
    settings: Settings,
    reclaimer: Reclaimer,
    registered: bool,
    targets: Option<BTreeSet<String>>,
}

impl<S: ObjectSource<Node>, R: Registry, M: Mesh> Controller<S, R, M> {
    /// A controller; nothing runs until [`Controller::list`] or [`Controller::run`].
    pub fn new(source: S, registry: R, mesh: M, settings: Settings) -> Controller<S, R, M> {
        let (informer, store) = Informer::new(source, settings.backoff);
        let reclaimer = Reclaimer::new(&settings.peer, settings.grace);
        Controller { informer: Some(informer), store, registry, mesh, settings, reclaimer, registered: false, targets: None }
    }

    /// A reader of the Node store.
    pub fn store(&self) -> Store<Node> {
        self.store.clone()
    }

    /// Lists the Nodes once and sets the targets; returns how many Nodes there are (this one
    /// included): the number of peers of the first IPAM consensus.
    pub async fn list(&mut self) -> Result<usize, SourceError> {
        if let Some(i) = self.informer.as_mut() {
            i.list().await?;
        }
        self.reconcile_targets();
        Ok(self.store.read(|r| r.len()))
    }

    /// Records this peer's node in the registry.
    pub async fn register(&mut self) -> Result<(), RegistryError> {
        registry::register(&self.registry, &self.settings.peer, &self.settings.node).await?;
        if !self.registered {
            tracing::info!(peer = %self.settings.peer, node = %self.settings.node, "registered in the peer registry");
        }
        self.registered = true;
        Ok(())
    }

    fn reconcile_targets(&mut self) {
        let s = &self.settings;
        let t = self.store.read(|r| nodes::targets(r.objects().map(|n| n.as_ref()), &s.node, &s.address_type, s.mesh_port));
        if self.targets.as_ref() != Some(&t) {
            tracing::info!(targets = ?t, "Node targets");
            self.mesh.set_targets(t.clone());
            self.targets = Some(t);
        }
    }

    /// One reclaim round, if the store holds a list (else nothing is known to be deleted).
    pub async fn reclaim(&mut self) -> Result<Vec<Reclaimed>, crate::reclaim::ReclaimError> {
        let Some(names) = self.store.read(|r| r.synced().then(|| r.objects().map(|n| nodes::name(n).to_owned()).collect::<BTreeSet<_>>())) else {
            return Ok(Vec::new());
        };
        self.reclaimer.round(&self.registry, &self.mesh, &names).await
    }

    async fn upkeep(&mut self) {
        if !self.registered
            && let Err(e) = self.register().await
        {
            tracing::warn!("{}; trying again in {:?}", chain(&e), self.settings.reclaim_interval);
        }
        if let Err(e) = self.reclaim().await {
            tracing::warn!("reclaim: {}", chain(&e));
        }
    }

    /// Runs for ever (until the task is dropped): the informer, targets, registration and
    /// reclaim.
    pub async fn run(mut self) {
        let Some(informer) = self.informer.take() else { return };
        let informer = informer.run();
        tokio::pin!(informer);
        let mut tick = tokio::time::interval(self.settings.reclaim_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = &mut informer => return,
                changed = self.store.changed() => {
                    if !changed {
                        return;
                    }
                    self.reconcile_targets();
                    self.upkeep().await;
                }
                _ = tick.tick() => self.upkeep().await,
            }
        }
    }
}

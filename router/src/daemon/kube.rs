//! Kubernetes in the router (`--kube-peers`): the Nodes are the dial targets, the first Node list
//! sizes the first IPAM consensus, and the space of deleted nodes' peers is reclaimed (see
//! [`weft_kube`] for the protocol).
//!
//! [`start`] runs before IPAM opens: it lists the Nodes (retrying for up to [`FIRST_LIST`]) and
//! registers this peer; [`run`] then follows the Nodes for ever. What the controller asks of the
//! router ([`RouterMesh`]) goes through the daemon: targets as [`Command::Kubernetes`] to peering,
//! reachability from the routes, `rmpeer` exactly as `weft rmpeer` does it.

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock, Weak};
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;
use weft_kube::client::{ApiSource, ConfigMapRegistry};
use weft_kube::controller::{Controller, Mesh, Settings};
use weft_kube::informer::{Backoff, chain};
use weft_kube::k8s_openapi::api::core::v1::Node;
use weft_mesh::peer::PeerName;

use super::config::KubeConfig;
use super::peering::Command;
use super::Daemon;

/// How long [`start`] keeps trying to list the Nodes before the router gives up.
pub const FIRST_LIST: Duration = Duration::from_secs(120);
/// How often reclaim runs without Node events.
const RECLAIM_INTERVAL: Duration = Duration::from_secs(10);
/// Reclaims remembered for `weft status`.
const REMEMBERED: usize = 5;

/// Why Kubernetes discovery could not start.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// No configuration for a client (neither in a pod nor a kubeconfig).
    #[error("--kube-peers: no Kubernetes client configuration (not in a pod, no usable kubeconfig); or turn it off with --kube-peers=false")]
    Config(#[source] weft_kube::kube::Error),
    /// The kubeconfig given could not be used.
    #[error("--kubeconfig {0}")]
    Kubeconfig(std::path::PathBuf, #[source] Box<dyn std::error::Error + Send + Sync>),
    /// The Nodes could not be listed in time.
    #[error("--kube-peers: cannot list the Nodes within {0:?} (RBAC: list and watch nodes)")]
    List(Duration, #[source] weft_kube::source::SourceError),
}

/// The router's side of the controller.
pub struct RouterMesh {
    commands: UnboundedSender<Command>,
    daemon: Arc<OnceLock<Weak<Daemon>>>,
}

impl RouterMesh {
    fn daemon(&self) -> Option<Arc<Daemon>> {
        self.daemon.get().and_then(Weak::upgrade)
    }
}

impl Mesh for RouterMesh {
    fn set_targets(&self, targets: BTreeSet<String>) {
        let _ = self.commands.send(Command::Kubernetes(targets));
    }

    fn live_peers(&self) -> BTreeSet<String> {
        self.daemon().map(|d| d.live_peers().into_iter().map(|p| p.to_string()).collect()).unwrap_or_default()
    }

    fn rmpeer(&self, peer: &str, node: &str) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
        let d = self.daemon().ok_or("the router is not running")?;
        let name: PeerName = peer.parse().map_err(|_| format!("{peer:?} is not a peer name"))?;
        let n = d.rmpeer(Instant::now(), name)?;
        let mut notes = d.reclaims.lock().unwrap_or_else(|p| p.into_inner());
        notes.push(format!("{n} addresses of {name} (on Node {node}, deleted)"));
        let excess = notes.len().saturating_sub(REMEMBERED);
        notes.drain(..excess);
        Ok(n)
    }
}

/// The controller, listed once and registered (or trying to be), waiting for the daemon.
pub struct Started {
    controller: Controller<ApiSource<Node>, ConfigMapRegistry, RouterMesh>,
    daemon: Arc<OnceLock<Weak<Daemon>>>,
    /// How many Nodes the first list found (this one's included).
    pub nodes: usize,
    /// The API client (network policy uses it too).
    pub client: weft_kube::kube::Client,
}

/// Connects to the API server, lists the Nodes (the targets go to `commands` at once) and
/// registers peer `me` on this node.
pub async fn start(k: &KubeConfig, me: PeerName, mesh_port: u16, commands: UnboundedSender<Command>) -> Result<Started, KubeError> {
    let client = match &k.kubeconfig {
        None => weft_kube::kube::Client::try_default().await.map_err(KubeError::Config)?,
        Some(path) => {
            use weft_kube::kube::config::{Config, KubeConfigOptions, Kubeconfig};
            let bad = |e: Box<dyn std::error::Error + Send + Sync>| KubeError::Kubeconfig(path.clone(), e);
            let file = Kubeconfig::read_from(path).map_err(|e| bad(e.into()))?;
            let config = Config::from_custom_kubeconfig(file, &KubeConfigOptions::default()).await.map_err(|e| bad(e.into()))?;
            weft_kube::kube::Client::try_from(config).map_err(KubeError::Config)?
        }
    };
    let namespace = k.namespace.clone().unwrap_or_else(|| client.default_namespace().to_owned());
    tracing::info!(node = %k.node_name, address = %k.address_type, registry = %format!("{namespace}/{}", k.configmap), "Kubernetes: dialling the cluster's Nodes");
    let daemon = Arc::new(OnceLock::new());
    let settings = Settings {
        peer: me.to_string(),
        node: k.node_name.clone(),
        address_type: k.address_type.clone(),
        mesh_port,
        reclaim_interval: RECLAIM_INTERVAL,
        grace: k.reclaim_grace,
        backoff: Backoff::default(),
    };
    let mut controller = Controller::new(
        ApiSource::all(client.clone(), "nodes"),
        ConfigMapRegistry::new(client.clone(), &namespace, &k.configmap),
        RouterMesh { commands, daemon: daemon.clone() },
        settings,
    );
    let deadline = Instant::now() + FIRST_LIST;
    let mut delay = Duration::from_millis(500);
    let nodes = loop {
        match controller.list().await {
            Ok(n) => break n,
            Err(e) if Instant::now() + delay < deadline => {
                tracing::warn!("Kubernetes: {}; again in {delay:?}", chain(&e));
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            Err(e) => return Err(KubeError::List(FIRST_LIST, e)),
        }
    };
    tracing::info!(nodes, "Kubernetes: Nodes listed");
    let me = weft_kube::source::Key { namespace: String::new(), name: k.node_name.clone() };
    if !controller.store().read(|r| r.get(&me).is_some()) {
        tracing::warn!(node = %k.node_name, "Kubernetes: no Node has this host's name: set --node-name (WEFT_NODE_NAME, from spec.nodeName) so it is told from the others");
    }
    if let Err(e) = controller.register().await {
        tracing::warn!("Kubernetes: {} (RBAC: get, create and update configmaps); trying again", chain(&e));
    }
    Ok(Started { controller, daemon, nodes, client })
}

/// Follows the Nodes and reclaims, for ever (until the task is dropped).
pub fn run(started: Started, daemon: &Arc<Daemon>) -> impl std::future::Future<Output = ()> + Send + 'static {
    let _ = started.daemon.set(Arc::downgrade(daemon));
    started.controller.run()
}

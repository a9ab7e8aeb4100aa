//! `weft router`: the per-host daemon and its control plane.
//!
//! This module ([`run`], [`Daemon`]) starts and stops everything and routes local API requests;
//! the parts it runs are its submodules:
//! - [`config`]: flags and environment variables, checked into a [`config::Config`];
//! - [`plumbing`]: the bridge `weft` and the isolated `weft-tap` on it, repaired every few seconds;
//! - [`hostnet`]: IPv4 forwarding, masquerade of pod traffic leaving the pod range (nftables
//!   table `ip weft`) and the bridge setting kube-proxy needs, checked as often;
//! - [`plumbing`]: the bridge `weft`, the isolated `weft-tap` and `weft-vxlan` on it, repaired
//!   every few seconds;
//! - [`fastpath`]: the kernel VXLAN fast path: candidates, heartbeats, the MAC entries it
//!   programs (its own thread);
//! - [`peering`]: the mesh (QUIC on the mesh port: authenticated connections, dial targets) and
//!   what its events change: [`control`] (topology gossip, routes, connection records for
//!   `status`), IPAM messages, the sleeve links of the data plane ([`crate::dataplane`]);
//! - [`ipam`]: IPAM with its state persisted before every answer; [`health`]: the gateway on the
//!   bridge before any ADD returns it, `/healthz` and `/readyz`, and [`cniconf`]: the CNI
//!   configuration written once ready;
//! - [`kube`]: Kubernetes Nodes as dial targets and the first consensus, reclaim of deleted ones;
//! - [`policy`]: NetworkPolicy enforced with nftables, fed by Pod, Namespace and NetworkPolicy
//!   informers;
//! - [`api`]: the local API's server on its unix socket; [`metrics`]: Prometheus metrics;
//!   [`guard`]: their connection budgets, deadlines and accept backoff, and the file limit;
//! - [`logging`]: the log subscriber.
//!
//! SIGTERM or SIGINT stops it cleanly: with `--handover-on-exit` its range is first handed to a
//! live peer, which acknowledges having saved it (waited for at most
//! [`peering::HANDOVER_TIMEOUT`]); peers are told (`Bye`, and each acknowledges by closing its
//! connection, waited for a bounded time), the data plane threads stop, the API socket is
//! removed; IPAM state is already on disk. The fast path's kernel entries stay, so pods keep
//! talking over it while the router is down.

pub mod api;
pub mod cniconf;
pub mod config;
pub mod control;
pub mod fastpath;
pub mod guard;
pub mod health;
pub mod hostnet;
pub mod ipam;
pub mod kube;
pub mod logging;
pub mod metrics;
pub mod peering;
pub mod plumbing;
pub mod policy;
pub mod udphold;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use weft_api::types::{AllocateRequest, ClaimRequest, GcRequest, ReleaseRequest, RmpeerRequest, RmpeerResponse, Status, TargetRequest};
use weft_kernel::Handle;
use weft_kernel::tap::Tap;
use weft_mesh::identity::Identity;
use weft_mesh::transport::auth::PasswordKey;
use weft_mesh::transport::tls::Credentials;
use weft_mesh::transport::{MeshConfig, MeshEndpoint};
use weft_sleeve::udp::SleeveSocket;
use weft_mesh::ipam::Bootstrap;
use weft_mesh::peer::PeerName;

use self::api::{Request, Response};
use self::config::Config;
use self::control::Control;
use crate::dataplane::tapio::TapIo;
use crate::dataplane::{Dataplane, Queue, Shared};
use self::peering::{Command, Peering};
use self::ipam::IpamService;
use self::plumbing::Devices;

/// Pod MTU when `--mtu` is not given, fixed (not measured): it fits a 1500-byte underlay path
/// with the encrypted sleeve's 106 bytes of headers (outer IPv4 and UDP 28, sleeve header and
/// tag 36, record 4, envelope 14, virtio-net header 10, inner Ethernet 14) and 18 bytes to spare,
/// the same value as Weave Net's default. Smaller paths are found per link by the sleeve's path
/// MTU discovery, and a pod sending too much is told by ICMP.
pub const DEFAULT_MTU: u32 = 1376;
/// How often plumbing is checked and repaired.
const REPAIR_INTERVAL: Duration = Duration::from_secs(3);
/// How often the mesh dials due targets and runs its timers.
const MESH_TICK: Duration = Duration::from_millis(200);
/// The shortest wait for the control plane's timers (a timer already due does not spin).
const CONTROL_MIN_WAIT: Duration = Duration::from_millis(5);

/// Why the daemon could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The identity could not be loaded.
    #[error(transparent)]
    Identity(#[from] weft_mesh::identity::IdentityError),
    /// The kernel refused the host plumbing.
    #[error("host plumbing")]
    Plumbing(#[from] weft_kernel::Error),
    /// IPAM state could not be opened.
    #[error(transparent)]
    Ipam(#[from] weft_mesh::ipam::PersistError),
    /// The pod range overlaps the host's addresses or routes.
    #[error(transparent)]
    Range(#[from] plumbing::RangeError),
    /// Forwarding or masquerade could not be set up.
    #[error(transparent)]
    HostNet(#[from] hostnet::HostNetError),
    /// The mesh endpoint could not start.
    #[error("start the mesh")]
    Mesh(#[from] weft_mesh::transport::endpoint::EndpointError),
    /// The mesh key pair could not be loaded.
    #[error(transparent)]
    Tls(#[from] weft_mesh::transport::tls::TlsError),
    /// Kubernetes discovery could not start.
    #[error(transparent)]
    Kube(#[from] kube::KubeError),
    /// The sleeve port could not be bound.
    #[error("bind the sleeve port")]
    Sleeve(#[from] weft_sleeve::udp::BindError),
    /// An I/O failure (API socket, runtime, signals).
    #[error("cannot {what}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

fn io(what: &'static str) -> impl Fn(std::io::Error) -> DaemonError {
    move |source| DaemonError::Io { what, source }
}

/// The state the API, the mesh and the upkeep read and change.
pub struct Daemon {
    config: Config,
    identity: Identity,
    control: Mutex<Control>,
    pub(crate) ipam: IpamService,
    pub(crate) targets: Mutex<BTreeSet<String>>,
    commands: mpsc::UnboundedSender<Command>,
    dp: Arc<Shared>,
    mtu: u32,
    pub(crate) budgets: guard::Budgets,
    pub(crate) health: health::Health,
    /// The last reclaims of deleted Nodes' peers, for `weft status`.
    pub(crate) reclaims: Mutex<Vec<String>>,
    hostnet: hostnet::HostNet,
    fast: Option<Arc<fastpath::FastShared>>,
    /// The pod ports whose UDP is held now (with `--pod-udp-coalesce-above`).
    udp_held: Option<Arc<Mutex<Vec<String>>>>,
    /// NetworkPolicy's state, when it is on.
    pub(crate) policy: Option<Arc<policy::PolicyShared>>,
}

impl Daemon {
    pub(crate) fn control(&self) -> std::sync::MutexGuard<'_, Control> {
        self.control.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The MTU pods get.
    pub(crate) fn pod_mtu(&self) -> u32 {
        self.mtu
    }

    /// Sleeve heartbeat timing: dead after `--peer-timeout`, a heartbeat every fifth of it.
    pub(crate) fn liveness(&self) -> weft_sleeve::liveness::LivenessConfig {
        let t = self.config.peer_timeout;
        weft_sleeve::liveness::LivenessConfig { interval: t / 5, dead_after: t }
    }

    /// Whether a cluster password is set (mesh authenticated, sleeve encrypted).
    pub(crate) fn encrypted(&self) -> bool {
        self.config.password.is_some()
    }

    /// The data plane's shared state.
    pub(crate) fn dataplane(&self) -> &Shared {
        &self.dp
    }

    /// The fast path's shared state, when it is on.
    pub(crate) fn fastpath(&self) -> Option<&fastpath::FastShared> {
        self.fast.as_deref()
    }

    /// Our connections for `status`, with the overlay each uses (the fast path once its
    /// heartbeats cross, the sleeve otherwise) and why the fast path is not in use.
    fn connections(&self, now: Instant) -> Vec<weft_api::types::Connection> {
        let mut conns = self.control().connections(now);
        let Some(fast) = &self.fast else { return conns };
        for c in conns.iter_mut().filter(|c| c.state == weft_api::types::ConnectionState::Established) {
            let Some(st) = c.peer.as_deref().and_then(|p| p.parse::<PeerName>().ok()).and_then(|p| fast.status(p)) else { continue };
            if st.state == Some(weft_fastpath::path::State::Established) {
                c.overlay = "fastpath".into();
                c.encrypted = false;
            } else if c.reason.is_none()
                && let Some(r) = st.reason
            {
                c.reason = Some(format!("fastpath: {r}"));
            }
        }
        conns
    }

    fn status(&self) -> Status {
        let connections = self.control().counts();
        let targets: Vec<String> = self.targets.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect();
        // Each lock is taken and released on its own line: temporaries in the struct expression
        // below would live to its end, and `ipam_summary` takes the control lock again.
        let peers = self.control().topology().len();
        let ipam = self.ipam_summary();
        Status {
            version: env!("CARGO_PKG_VERSION").into(),
            name: self.identity.name.to_string(),
            nickname: self.identity.nickname.clone(),
            encryption: self.config.password.is_some(),
            peer_discovery: true,
            targets,
            connections,
            peers,
            ipam,
            pod_udp_coalesce_us: weft_kernel::offload::pod_gro_flush_micros(self.config.pod_udp_coalesce),
            pod_udp_coalesce_above: self.config.pod_udp_coalesce_above,
            pod_udp_coalesce_ports: self.udp_held.as_ref().map(|h| h.lock().unwrap_or_else(|p| p.into_inner()).clone()).unwrap_or_default(),
        }
    }

    /// IPAM's summary, plus the space held by peers this one cannot reach, and what to do.
    fn ipam_summary(&self) -> weft_api::types::IpamSummary {
        let mut sum = self.ipam.summary();
        let shares = self.ipam_shares();
        let lost: Vec<String> = shares.iter().filter(|s| !s.reachable && s.size > 0).map(|s| format!("{} addresses on {}({})", s.size, s.peer, s.nickname)).collect();
        if !lost.is_empty() {
            sum.detail.push_str(&format!(
                "; held by unreachable peers: {} (if a peer is gone for good, `weft rmpeer` it to reclaim its space)",
                lost.join(", ")
            ));
        }
        let reclaims = self.reclaims.lock().unwrap_or_else(|p| p.into_inner()).join(", ");
        if !reclaims.is_empty() {
            sum.detail.push_str(&format!("; reclaimed {reclaims}"));
        }
        sum
    }

    /// The peers reachable now, this one included.
    pub(crate) fn live_peers(&self) -> Vec<PeerName> {
        let c = self.control();
        let routes = c.routes().load_full();
        c.topology().entries().map(|e| e.name).filter(|p| *p == self.identity.name || routes.next_hop(*p).is_some()).collect()
    }

    /// Reclaims the space of `dead` (refused if it is reachable); returns the addresses reclaimed.
    pub(crate) fn rmpeer(&self, now: Instant, dead: PeerName) -> Result<u64, weft_mesh::ipam::IpamError> {
        let known: Vec<PeerName> = self.control().topology().entries().map(|e| e.name).collect();
        let live = self.live_peers();
        self.ipam.with(|i| i.rmpeer(now, dead, &known, &live))
    }

    fn ipam_shares(&self) -> Vec<weft_api::types::IpamShare> {
        let c = self.control();
        let routes = c.routes().load_full();
        let me = self.identity.name;
        self.ipam.shares(|p| c.topology().entry(p).map(|e| e.nickname.clone()).unwrap_or_default(), |p| p == me || routes.next_hop(p).is_some())
    }

    fn find_peer(&self, text: &str) -> Option<PeerName> {
        if let Ok(n) = text.parse::<PeerName>() {
            return Some(n);
        }
        self.control().topology().entries().find(|e| e.nickname == text).map(|e| e.name)
    }
}

impl api::Handler for Daemon {
    async fn handle(&self, req: Request) -> Response {
        // The gateway an answer names is on the bridge before the answer leaves.
        if req.method == "POST"
            && (req.path == "/ipam/allocate" || req.path == "/ipam/claim")
            && let Err(r) = health::ensure_gateway(self).await
        {
            return r;
        }
        let now = Instant::now();
        if (req.method.as_str(), req.path.as_str()) == ("GET", "/policy") {
            let Some(p) = self.policy.clone() else { return Response::ok(&policy::off()) };
            return match tokio::task::spawn_blocking(move || p.status()).await {
                Ok(s) => Response::ok(&s),
                Err(e) => Response::error(500, format!("policy status: {e}")),
            };
        }
        let result: Result<Response, Response> = (|| {
            Ok(match (req.method.as_str(), req.path.as_str()) {
                ("GET", "/status") => Response::ok(&self.status()),
                ("GET", "/peers") => Response::ok(&self.control().peers()),
                ("GET", "/connections") => Response::ok(&self.connections(now)),
                ("GET", "/targets") => Response::ok(&self.status().targets),
                ("GET", "/ipam") => Response::ok(&self.ipam_shares()),
                ("GET", "/ipam/allocations") => Response::ok(&self.ipam.list()),
                ("POST", "/ipam/allocate") => Response::ok(&self.ipam.allocate(now, &Response::decode::<AllocateRequest>(&req)?.attachment)?),
                ("POST", "/ipam/claim") => {
                    let r: ClaimRequest = Response::decode(&req)?;
                    Response::ok(&self.ipam.claim(&r.attachment, &r.address)?)
                }
                ("POST", "/ipam/release") => Response::ok(&self.ipam.release(&Response::decode::<ReleaseRequest>(&req)?.attachment)?),
                ("POST", "/ipam/lookup") => Response::ok(&self.ipam.lookup(&Response::decode::<AllocateRequest>(&req)?.attachment)?),
                ("POST", "/ipam/gc") => Response::ok(&self.ipam.gc(&Response::decode::<GcRequest>(&req)?.keep)?),
                ("POST", "/connect") => {
                    let r: TargetRequest = Response::decode(&req)?;
                    let addr = config::parse_peer(&r.address, self.config.mesh_port).map_err(|e| Response::error(400, e.to_string()))?;
                    let target = format!("{}:{}", addr.host, addr.port);
                    self.targets.lock().unwrap_or_else(|p| p.into_inner()).insert(target.clone());
                    let _ = self.commands.send(Command::Connect(target));
                    Response::ok(&serde_json::json!({}))
                }
                ("POST", "/forget") => {
                    let r: TargetRequest = Response::decode(&req)?;
                    let addr = config::parse_peer(&r.address, self.config.mesh_port).map_err(|e| Response::error(400, e.to_string()))?;
                    let target = format!("{}:{}", addr.host, addr.port);
                    self.targets.lock().unwrap_or_else(|p| p.into_inner()).remove(&target);
                    let _ = self.commands.send(Command::Forget(target));
                    Response::ok(&serde_json::json!({}))
                }
                ("POST", "/rmpeer") => {
                    let r: RmpeerRequest = Response::decode(&req)?;
                    let dead = self.find_peer(&r.peer).ok_or_else(|| Response::error(404, format!("no peer named {:?}", r.peer)))?;
                    let reclaimed = self.rmpeer(now, dead).map_err(|e| Response::error(409, weft_kernel::chain(&e)))?;
                    Response::ok(&RmpeerResponse { reclaimed })
                }
                (m, p) => Response::error(404, format!("no endpoint {m} {p}")),
            })
        })();
        result.unwrap_or_else(|r| r)
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(config: Config) -> Result<(), DaemonError> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().map_err(io("start the runtime"))?;
    rt.block_on(main(config))
}

async fn main(config: Config) -> Result<(), DaemonError> {
    let now = Instant::now();
    let budgets = file_budgets();
    let mut devices = Devices { mtu: config.mtu.unwrap_or(DEFAULT_MTU), ..Devices::default() };
    let mut nl = Handle::open()?;
    plumbing::check_range(&mut nl, config.ipalloc_range, &devices.bridge)?;
    let identity = Identity::load_or_create(&config.state_dir, &config.nickname)?;
    let creds = Credentials::load_or_create(&config.state_dir)?;
    tracing::info!(name = %identity.name, nickname = %identity.nickname, incarnation = identity.incarnation, "weft router starting");
    if config.password.is_none() {
        tracing::warn!("no cluster password: the mesh is open to any peer and the sleeve is not encrypted");
    } else {
        tracing::info!("cluster password set: peers must prove it, and the sleeve is encrypted");
    }
    devices.fastpath = config.fastpath.then(|| weft_fastpath::wire::heartbeat_mac(identity.name.0));
    match (config.fastpath, config.password.is_some()) {
        (false, _) => tracing::info!("fast path off (--no-fastpath): every frame crosses the sleeve"),
        (true, false) => tracing::info!("fast path on: kernel VXLAN (UDP {}) towards directly reachable peers whose heartbeats cross it", fastpath::PORT),
        (true, true) if config.trusted_subnets.is_empty() => tracing::info!("fast path unused: a cluster password is set and no --trusted-subnets"),
        (true, true) => tracing::info!(trusted = ?config.trusted_subnets.iter().map(ToString::to_string).collect::<Vec<_>>(), "fast path (unencrypted) only towards peers in the trusted subnets"),
    }
    let taps = Tap::open_queues(&devices.tap, config.dataplane_threads)?;
    let mut repairs = plumbing::ensure(&mut nl, &devices)?;
    repairs.0.extend(plumbing::prune_bridge_addresses(&mut nl, &devices.bridge, config.ipalloc_range)?.0);
    let (coalesced, not_coalesced) = plumbing::coalesce_pod_ports(&mut nl, &devices.bridge, config.pod_udp_coalesce_at_attach())?;
    repairs.0.extend(coalesced.0);
    for r in &repairs.0 {
        tracing::info!("plumbing: {r}");
    }
    not_coalesced.iter().for_each(|w| tracing::warn!("plumbing: {w}"));
    let hostnet = hostnet::HostNet::new(config.ipalloc_range, config.masquerade, hostnet::Tools::default());
    let set = hostnet.start()?;
    set.repairs.iter().for_each(|r| tracing::info!("host networking: {r}"));
    set.warnings.iter().for_each(|w| tracing::warn!("host networking: {w}"));

    let (commands, mut command_rx) = mpsc::unbounded_channel();
    // With Kubernetes, the Nodes are listed first: their number is the first consensus's.
    let kube = match &config.kube {
        Some(k) => Some(kube::start(k, identity.name, config.mesh_port, commands.clone()).await?),
        None => None,
    };

    // Alone, this peer is the whole cluster: it seeds the ring itself. With peers, the first
    // division is agreed among the expected number of them (as Weave Net's default); with
    // Kubernetes, among the Nodes of the first list, unless --ipalloc-init says otherwise.
    let consensus = match &kube {
        Some(k) if !config.ipalloc_init_given => Some(k.nodes.max(1)),
        _ => config.ipalloc_consensus,
    };
    let bootstrap = match consensus {
        None => Bootstrap::Seeds(vec![identity.name]),
        Some(expected) => Bootstrap::Consensus { expected },
    };
    let ipam = IpamService::open(identity.name, config.ipalloc_range, bootstrap, &config.state_dir, &devices.bridge, devices.mtu, now)?;
    let mut control = Control::new(now, identity.name, identity.nickname.clone(), identity.incarnation, config.password.is_some());
    control.set_fastpath(now, config.fastpath);

    let mut mesh_config = MeshConfig::new(
        identity.name,
        identity.nickname.clone(),
        identity.incarnation,
        std::net::SocketAddr::from(([0, 0, 0, 0], config.mesh_port)),
        config.sleeve_port,
    );
    mesh_config.password = config.password.as_deref().map(PasswordKey::new);
    mesh_config.rekey_interval = config.rekey_interval;
    mesh_config.idle_timeout = config.peer_timeout;
    mesh_config.keep_alive = config.peer_timeout / 5;
    // Every socket of the sleeve port is bound (and the port checked to be this group's alone)
    // before the mesh starts and peers can learn the port from it.
    let sleeve_addr = std::net::SocketAddr::from(([0, 0, 0, 0], config.sleeve_port));
    let socks = SleeveSocket::bind_group(sleeve_addr, config.dataplane_threads)?;
    let (endpoint, mut events) = MeshEndpoint::start(mesh_config, &creds)?;
    tracing::info!(mesh = %endpoint.local_addr().map_err(io("read the mesh socket's address"))?, sleeve = %sleeve_addr, gso_segments = socks[0].max_gso_segments(), gro_segments = socks[0].gro_segments(), queues = socks.len(), "listening");
    let mut queues = Vec::with_capacity(taps.len());
    for (sock, tap) in socks.into_iter().zip(taps) {
        queues.push(Queue::new(sock, TapIo::new(tap).map_err(io("set up the TAP"))?));
    }
    let dp = Arc::new(Shared::new(identity.name, control.routes(), queues));
    let dataplane = Dataplane::start(dp.clone()).map_err(io("start the data plane threads"))?;
    let udp_hold = match config.pod_udp_coalesce {
        Some(hold) if config.pod_udp_coalesce_above > 0 => {
            tracing::info!(hold_us = hold.as_micros() as u64, above = config.pod_udp_coalesce_above, "pod UDP coalescing: a pod's datagrams are held while it sends at least {} packets/s", config.pod_udp_coalesce_above);
            let dp = dp.clone();
            let tap_frames = move || dp.stats.tap_frames_in.load(std::sync::atomic::Ordering::Relaxed);
            Some(udphold::UdpHold::start(devices.bridge.clone(), hold, config.pod_udp_coalesce_above, tap_frames).map_err(io("start the pod UDP coalescing thread"))?)
        }
        _ => None,
    };
    let fast = if config.fastpath { Some(fastpath::FastPath::start(identity.name, devices.bridge.clone(), dp.clone()).map_err(io("start the fast-path thread"))?) } else { None };
    let mut selector = fastpath::Selector::new(config.password.is_some(), config.trusted_subnets.clone());

    let initial: Vec<String> = config.peers.iter().map(|p| format!("{}:{}", p.host, p.port)).collect();
    // NetworkPolicy: its informers and loop run from here on; the table a previous router left
    // stays in force until the first full update replaces it.
    let (policy_tasks, policy) = match (&kube, daemon_policy_config(&config)) {
        (Some(k), Some((node, log))) => {
            let (tasks, shared) = policy::start(k.client.clone(), &node, &devices.bridge, log);
            (tasks, Some(shared))
        }
        _ => (Vec::new(), None),
    };
    let mut peering = Peering::new(now, identity.name, endpoint, dp.clone(), config.password.is_some(), config.conn_limit, config.mesh_port, &initial, commands.clone());
    let listener = api::bind(&config.api_socket).map_err(io("bind the API socket"))?;
    let api_socket = config.api_socket.clone();
    let config_prefix = config.ipalloc_range.prefix();
    let daemon = Arc::new(Daemon {
        config,
        identity,
        control: Mutex::new(control),
        ipam,
        targets: Mutex::new(initial.into_iter().collect()),
        commands,
        dp,
        mtu: devices.mtu,
        budgets: budgets.clone(),
        health: health::Health::new(now, &devices.bridge, config_prefix),
        reclaims: Mutex::new(Vec::new()),
        hostnet,
        fast: fast.as_ref().map(|f| f.shared().clone()),
        udp_held: udp_hold.as_ref().map(|u| u.held()),
        policy,
    });
    let readiness = tokio::spawn(health::become_ready(daemon.clone()));
    let kube_task = kube.map(|k| tokio::spawn(kube::run(k, &daemon)));
    let server = tokio::spawn(api::serve(listener, daemon.clone(), budgets.api.clone()));
    let metrics_addr = daemon.config.metrics_addr;
    let metrics = tokio::spawn({
        let d = daemon.clone();
        async move {
            if let Err(e) = metrics::serve(metrics_addr, d, budgets.metrics.clone()).await {
                tracing::warn!("metrics on {metrics_addr}: {e}");
            }
        }
    });
    tracing::info!("API listening on {}", api_socket.display());

    let mut term = signal(SignalKind::terminate()).map_err(io("install the SIGTERM handler"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(io("install the SIGINT handler"))?;
    let mut repair = tokio::time::interval(REPAIR_INTERVAL);
    let mut tick = tokio::time::interval(MESH_TICK);
    loop {
        // The control plane's own timers (a route recomputation deferred by its coalescing
        // interval, gossip) run when due, not at the next tick: routes follow a connection that
        // comes up within tens of milliseconds.
        let control_due = daemon.control().poll_timeout().map(tokio::time::Instant::from_std);
        let control_due = control_due.unwrap_or_else(|| tokio::time::Instant::now() + MESH_TICK).max(tokio::time::Instant::now() + CONTROL_MIN_WAIT);
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = tokio::time::sleep_until(control_due) => {
                let now = Instant::now();
                daemon.control().handle_timeout(now);
                peering.flush(now, &daemon);
            }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); break; }
            Some(ev) = events.recv() => peering.event(Instant::now(), &daemon, ev),
            Some(cmd) = command_rx.recv() => peering.command(Instant::now(), &daemon, cmd),
            _ = tick.tick() => {
                daemon.health.tick(Instant::now(), dataplane.alive());
                peering.tick(Instant::now(), &daemon);
                let rtts = peering.rtts();
                let mut c = daemon.control();
                for (p, rtt) in rtts {
                    c.set_rtt(p, rtt);
                }
                if let Some(f) = &fast {
                    let topo = c.topology();
                    f.shared().set_candidates(selector.candidates(Instant::now(), &daemon.dp, |p| topo.entry(p).is_none_or(|e| e.capabilities.fastpath)));
                }
            }
            _ = repair.tick() => {
                let d = daemon.clone();
                let dev = devices.clone();
                let _ = tokio::task::spawn_blocking(move || maintain(&d, &dev)).await;
            }
        }
    }
    if daemon.config.handover_on_exit {
        peering.hand_over(&daemon, &mut events, peering::HANDOVER_TIMEOUT).await;
    }
    peering.shutdown().await;
    readiness.abort();
    if let Some(t) = kube_task {
        t.abort();
    }
    policy_tasks.iter().for_each(|t| t.abort());
    server.abort();
    metrics.abort();
    api::unbind(&api_socket);
    dataplane.stop();
    if let Some(f) = fast {
        f.stop();
    }
    if let Some(u) = udp_hold {
        u.stop();
    }
    tracing::info!("stopped");
    Ok(())
}

/// With NetworkPolicy on: this host's Node name and the drop logging rate.
fn daemon_policy_config(config: &Config) -> Option<(String, Option<u32>)> {
    let k = config.kube.as_ref().filter(|_| config.network_policy)?;
    Some((k.node_name.clone(), config.policy_log_drops))
}

/// Raises the file limit to the hard limit and sizes the local servers' budgets by it.
fn file_budgets() -> guard::Budgets {
    let files = match guard::raise_file_limit() {
        Ok(l) if l.soft > l.was => {
            tracing::info!("file limit raised from {} to {} (the hard limit)", l.was, l.soft);
            l.soft
        }
        Ok(l) => {
            tracing::info!("file limit is {} (the hard limit)", l.soft);
            l.soft
        }
        Err(e) => {
            let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).map_or(1024, |(s, _)| s);
            tracing::warn!("cannot raise the file limit from {soft}: {e}");
            soft
        }
    };
    let b = guard::Budgets::for_limit(files);
    if files < guard::RESERVED_FILES + (b.api.limit() + b.metrics.limit()) as u64 {
        tracing::warn!("file limit {files} is low: raise the hard limit (LimitNOFILE=, ulimit -Hn) to at least 1024");
    }
    tracing::info!(api = b.api.limit(), metrics = b.metrics.limit(), reserved = guard::RESERVED_FILES, "local server connection budgets");
    b
}

/// Periodic upkeep: repair the plumbing (recreating and reopening the TAP if it was deleted)
/// and the host networking, and give the bridge its address once IPAM can.
fn maintain(d: &Daemon, dev: &Devices) {
    let now = Instant::now();
    let mut nl = match Handle::open() {
        Ok(nl) => nl,
        Err(e) => {
            tracing::warn!("plumbing check: {}", weft_kernel::chain(&e));
            return;
        }
    };
    let checked = match plumbing::ensure(&mut nl, dev) {
        Err(e) if e.is_not_found() => {
            tracing::warn!("{} was deleted ({}): recreating it", dev.tap, weft_kernel::chain(&e));
            let reopened = Tap::open_queues(&dev.tap, d.dp.queues.len())
                .map_err(|e| weft_kernel::chain(&e))
                .and_then(|taps| taps.into_iter().map(|t| TapIo::new(t).map_err(|e| e.to_string())).collect::<Result<Vec<_>, _>>());
            match reopened {
                Ok(taps) => {
                    for (q, t) in d.dp.queues.iter().zip(taps) {
                        q.tap.store(Arc::new(t));
                    }
                    plumbing::ensure(&mut nl, dev)
                }
                Err(e) => {
                    tracing::warn!("reopen {}: {e}", dev.tap);
                    return;
                }
            }
        }
        r => r,
    };
    match checked {
        Ok(r) => r.0.iter().for_each(|r| tracing::info!("plumbing repaired: {r}")),
        Err(e) => tracing::warn!("plumbing check: {}", weft_kernel::chain(&e)),
    }
    let host = d.hostnet.repair();
    host.repairs.iter().for_each(|r| tracing::info!("host networking repaired: {r}"));
    host.warnings.iter().for_each(|w| tracing::warn!("host networking: {w}"));
    if let Some(gw) = d.ipam.bridge_address(now) {
        let prefix = d.config.ipalloc_range.prefix();
        match plumbing::ensure_bridge_address(&mut nl, &dev.bridge, gw, prefix) {
            Ok(true) => tracing::info!("bridge {} has address {gw}/{prefix}", dev.bridge),
            Ok(false) => {}
            Err(e) => tracing::warn!("address for bridge {}: {}", dev.bridge, weft_kernel::chain(&e)),
        }
    }
}

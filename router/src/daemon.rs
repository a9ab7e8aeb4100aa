//! `weft router`: the per-host daemon.
//!
//! What runs today: the peer identity, the host plumbing (bridge `weft`, isolated `weft-tap`,
//! repaired every few seconds), IPAM with its state persisted before every answer and the bridge
//! holding an address of the pod range (the pods' gateway), the control plane's status views, and
//! the local API on its unix socket. What does not run yet: the mesh transport and the sleeve data
//! plane — so this router serves the pods of its own host only; `--peer` targets are listed but
//! not dialled, and the daemon says so at start and in `weft status`.
//!
//! SIGTERM or SIGINT stops it cleanly: the API socket is removed; IPAM state is already on disk.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::signal::unix::{SignalKind, signal};
use weft_api::types::{AllocateRequest, ClaimRequest, ConnectionCounts, GcRequest, ReleaseRequest, RmpeerRequest, RmpeerResponse, Status, TargetRequest};
use weft_fastpath::Handle;
use weft_fastpath::tap::Tap;
use weft_mesh::identity::Identity;
use weft_mesh::ipam::Bootstrap;
use weft_mesh::peer::PeerName;

use crate::api::{self, Request, Response};
use crate::config::Config;
use crate::control::Control;
use crate::ipam::IpamService;
use crate::plumbing::{self, Devices};

/// Pod MTU when `--mtu` is not given: a 1500-byte underlay less the sleeve's overhead.
pub const DEFAULT_MTU: u32 = 1376;
/// How often plumbing is checked and repaired.
const REPAIR_INTERVAL: Duration = Duration::from_secs(3);

/// Why the daemon could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The identity could not be loaded.
    #[error(transparent)]
    Identity(#[from] weft_mesh::identity::IdentityError),
    /// The kernel refused the host plumbing.
    #[error("host plumbing: {0}")]
    Plumbing(#[from] weft_fastpath::Error),
    /// IPAM state could not be opened.
    #[error("IPAM state in {dir}: {detail}")]
    Ipam {
        /// The state directory.
        dir: String,
        /// What failed.
        detail: String,
    },
    /// An I/O failure (API socket, runtime, signals).
    #[error("{what}: {source}")]
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

/// The state the API reads and changes.
struct Daemon {
    config: Config,
    identity: Identity,
    control: Mutex<Control>,
    ipam: IpamService,
    targets: Mutex<BTreeSet<String>>,
}

impl Daemon {
    fn control(&self) -> std::sync::MutexGuard<'_, Control> {
        self.control.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn status(&self) -> Status {
        let (established, pending, failed) = self.control().counts();
        let targets: Vec<String> = self.targets.lock().unwrap_or_else(|p| p.into_inner()).iter().cloned().collect();
        Status {
            version: env!("CARGO_PKG_VERSION").into(),
            name: self.identity.name.to_string(),
            nickname: self.identity.nickname.clone(),
            encryption: self.config.password.is_some(),
            peer_discovery: false,
            targets,
            connections: ConnectionCounts { established, pending, failed },
            peers: self.control().topology().len(),
            ipam: self.ipam.summary(),
        }
    }

    fn find_peer(&self, text: &str) -> Option<PeerName> {
        if let Ok(n) = text.parse::<PeerName>() {
            return Some(n);
        }
        let c = self.control();
        let by_nick = c.topology().entries().find(|e| e.nickname == text).map(|e| e.name);
        by_nick
    }
}

impl api::Handler for Daemon {
    async fn handle(&self, req: Request) -> Response {
        let now = Instant::now();
        let result: Result<Response, Response> = (|| {
            Ok(match (req.method.as_str(), req.path.as_str()) {
                ("GET", "/status") => Response::ok(&self.status()),
                ("GET", "/peers") => Response::ok(&self.control().peers()),
                ("GET", "/connections") => Response::ok(&self.control().connections(now)),
                ("GET", "/targets") => Response::ok(&self.status().targets),
                ("GET", "/ipam") => {
                    let c = self.control();
                    let routes = c.routes().load_full();
                    let me = self.identity.name;
                    let shares = self.ipam.shares(
                        |p| c.topology().entry(p).map(|e| e.nickname.clone()).unwrap_or_default(),
                        |p| p == me || routes.next_hop(p).is_some(),
                    );
                    Response::ok(&shares)
                }
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
                    Response::error(501, format!("cannot dial {}: this build of weft has no mesh transport yet", r.address))
                }
                ("POST", "/forget") => {
                    let r: TargetRequest = Response::decode(&req)?;
                    self.targets.lock().unwrap_or_else(|p| p.into_inner()).remove(&r.address);
                    Response::ok(&serde_json::json!({}))
                }
                ("POST", "/rmpeer") => {
                    let r: RmpeerRequest = Response::decode(&req)?;
                    let dead = self.find_peer(&r.peer).ok_or_else(|| Response::error(404, format!("no peer named {:?}", r.peer)))?;
                    let (known, live): (Vec<PeerName>, Vec<PeerName>) = {
                        let c = self.control();
                        let routes = c.routes().load_full();
                        let known: Vec<PeerName> = c.topology().entries().map(|e| e.name).collect();
                        let live = known.iter().copied().filter(|p| *p == self.identity.name || routes.next_hop(*p).is_some()).collect();
                        (known, live)
                    };
                    let reclaimed = self
                        .ipam
                        .with(|i| i.rmpeer(now, dead, &known, &live))
                        .map_err(|e| Response::error(409, e.to_string()))?;
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
    let identity = Identity::load_or_create(&config.state_dir, &config.nickname)?;
    tracing::info!(name = %identity.name, nickname = %identity.nickname, incarnation = identity.incarnation, "weft router starting");
    if config.password.is_none() {
        tracing::warn!("no cluster password: the mesh is open and the sleeve is not encrypted");
    }
    let devices = Devices { mtu: config.mtu.unwrap_or(DEFAULT_MTU), ..Devices::default() };
    let tap = Tap::open(&devices.tap)?;
    let mut nl = Handle::open()?;
    let repairs = plumbing::ensure(&mut nl, &devices)?;
    for r in &repairs.0 {
        tracing::info!("plumbing: {r}");
    }

    // Alone, this peer is the whole cluster: it seeds the ring itself. With initial peers, the
    // first division is agreed among them (as Weave Net's default).
    let bootstrap = if config.peers.is_empty() {
        Bootstrap::Seeds(vec![identity.name])
    } else {
        Bootstrap::Consensus { expected: config.peers.len() + 1 }
    };
    let ipam = IpamService::open(identity.name, config.ipalloc_range, bootstrap, &config.state_dir, &devices.bridge, devices.mtu, now)
        .map_err(|detail| DaemonError::Ipam { dir: config.state_dir.display().to_string(), detail })?;
    let control = Control::new(now, identity.name, identity.nickname.clone(), identity.incarnation, config.password.is_some());
    let targets: BTreeSet<String> = config.peers.iter().map(|p| format!("{}:{}", p.host, p.port)).collect();
    if !targets.is_empty() {
        tracing::warn!("this build has no mesh transport yet: peers {targets:?} are listed, not dialled");
    }
    let listener = api::bind(&config.api_socket).map_err(io("bind the API socket"))?;
    let api_socket = config.api_socket.clone();
    let daemon = Arc::new(Daemon { config, identity, control: Mutex::new(control), ipam, targets: Mutex::new(targets) });
    let server = tokio::spawn(api::serve(listener, daemon.clone()));
    tracing::info!("API listening on {}", api_socket.display());

    let mut term = signal(SignalKind::terminate()).map_err(io("install the SIGTERM handler"))?;
    let mut int = signal(SignalKind::interrupt()).map_err(io("install the SIGINT handler"))?;
    let mut tick = tokio::time::interval(REPAIR_INTERVAL);
    let mut tap = Some(tap);
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); break; }
            _ = tick.tick() => {
                let d = daemon.clone();
                let dev = devices.clone();
                let t = tap.take();
                tap = tokio::task::spawn_blocking(move || maintain(&d, &dev, t)).await.unwrap_or(None);
            }
        }
    }
    server.abort();
    api::unbind(&api_socket);
    drop(tap);
    tracing::info!("stopped");
    Ok(())
}

/// Periodic upkeep: repair the plumbing (reopening the TAP if it was deleted), give the bridge
/// its address once IPAM can, and run the control plane's and IPAM's timers.
fn maintain(d: &Daemon, dev: &Devices, mut tap: Option<Tap>) -> Option<Tap> {
    let now = Instant::now();
    let mut nl = match Handle::open() {
        Ok(nl) => nl,
        Err(e) => {
            tracing::warn!("plumbing check: {e}");
            return tap;
        }
    };
    if tap.is_none() {
        tap = Tap::open(&dev.tap).map_err(|e| tracing::warn!("reopen {}: {e}", dev.tap)).ok();
    }
    match plumbing::ensure(&mut nl, dev) {
        Ok(r) => r.0.iter().for_each(|r| tracing::info!("plumbing repaired: {r}")),
        Err(e) if e.is_not_found() => {
            tracing::warn!("{} was deleted: reopening it", dev.tap);
            tap = None;
        }
        Err(e) => tracing::warn!("plumbing check: {e}"),
    }
    if let Some(gw) = d.ipam.bridge_address(now) {
        let prefix = d.config.ipalloc_range.prefix();
        let want = (IpAddr::V4(gw), prefix);
        match nl.addresses(&dev.bridge) {
            Ok(have) if have.contains(&want) => {}
            Ok(_) => match nl.add_address(&dev.bridge, want.0, prefix) {
                Ok(()) => tracing::info!("bridge {} has address {gw}/{prefix}", dev.bridge),
                Err(e) => tracing::warn!("address for bridge {}: {e}", dev.bridge),
            },
            Err(e) => tracing::warn!("addresses of bridge {}: {e}", dev.bridge),
        }
    }
    let ipam = d.ipam.with(|i| -> Result<(), weft_mesh::ipam::IpamError> {
        i.handle_timeout(now)?;
        // No mesh transport yet: IPAM messages have no one to go to.
        while i.poll_transmit(now)?.is_some() {}
        Ok(())
    });
    if let Err(e) = ipam {
        tracing::warn!("IPAM: {e}");
    }
    d.control().handle_timeout(now);
    tap
}

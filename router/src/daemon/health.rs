//! Liveness and readiness: `/healthz` and `/readyz` on the metrics address, and the gateway on
//! the bridge before any CNI ADD can return it.
//!
//! - Healthy ([`Health::healthz`]): both data plane threads are running and the daemon's event
//!   loop ticked within [`STALL`] (so the runtime is alive and not stuck).
//! - Ready ([`readyz`]): IPAM is ready, the bridge has the gateway address, and when peers are
//!   known (dial targets or peers in the topology) at least one connection is established.
//! - [`ensure_gateway`]: the bridge address is allocated and put on the bridge (synchronously,
//!   serialized) before an ADD or claim is answered, so a pod can reach its gateway the moment
//!   its ADD returns. The plumbing repair keeps it there afterwards.
//! - [`become_ready`]: once IPAM has space and the gateway is on the bridge, the CNI
//!   configuration is written (if asked, see [`super::cniconf`]): the kubelet only starts sending
//!   ADDs once it sees it.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::daemon::Daemon;
use crate::daemon::api::Response;
use crate::daemon::plumbing;

/// The event loop must tick at least this often to be healthy.
pub const STALL: Duration = Duration::from_secs(10);
/// How often [`become_ready`] looks.
const READY_POLL: Duration = Duration::from_millis(100);

/// What health and readiness are judged from.
#[derive(Debug)]
pub struct Health {
    started: Instant,
    /// Milliseconds from `started` to the event loop's last tick.
    last_tick: AtomicU64,
    dataplane: AtomicBool,
    /// The gateway known to be on the bridge (set by [`ensure_gateway`]).
    gateway: tokio::sync::Mutex<Option<Ipv4Addr>>,
    /// Cheap copy of `gateway` for readiness.
    gateway_set: AtomicBool,
    bridge: String,
    prefix: u8,
}

impl Health {
    /// Health for the bridge `bridge` with pod prefix length `prefix`, as of `now`.
    pub fn new(now: Instant, bridge: &str, prefix: u8) -> Health {
        Health {
            started: now,
            last_tick: AtomicU64::new(0),
            dataplane: AtomicBool::new(true),
            gateway: tokio::sync::Mutex::new(None),
            gateway_set: AtomicBool::new(false),
            bridge: bridge.to_owned(),
            prefix,
        }
    }

    /// The event loop ticked at `now`; `dataplane` says whether its threads run.
    pub fn tick(&self, now: Instant, dataplane: bool) {
        self.last_tick.store(now.saturating_duration_since(self.started).as_millis() as u64, Ordering::Relaxed);
        self.dataplane.store(dataplane, Ordering::Relaxed);
    }

    /// Whether the gateway is on the bridge.
    pub fn gateway_on_bridge(&self) -> bool {
        self.gateway_set.load(Ordering::Relaxed)
    }

    /// `Ok` if healthy, else why not.
    pub fn healthz(&self, now: Instant) -> Result<(), Vec<String>> {
        let mut why = Vec::new();
        if !self.dataplane.load(Ordering::Relaxed) {
            why.push("a data plane thread has stopped".to_owned());
        }
        let last = self.started + Duration::from_millis(self.last_tick.load(Ordering::Relaxed));
        let idle = now.saturating_duration_since(last);
        if idle > STALL {
            why.push(format!("the event loop has not run for {idle:?}"));
        }
        if why.is_empty() { Ok(()) } else { Err(why) }
    }
}

/// What readiness is judged from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadyInputs {
    /// IPAM's state (`ready`, `awaiting-consensus`, ...) and detail.
    pub ipam: (String, String),
    /// Whether the gateway is on the bridge.
    pub gateway: bool,
    /// Dial targets plus other peers in the topology.
    pub peers_known: usize,
    /// Established connections.
    pub established: usize,
}

/// `Ok` if ready, else why not.
pub fn judge(i: &ReadyInputs) -> Result<(), Vec<String>> {
    let mut why = Vec::new();
    if i.ipam.0 != "ready" {
        why.push(format!("IPAM is {}: {}", i.ipam.0, i.ipam.1));
    }
    if !i.gateway {
        why.push("the bridge has no gateway address yet".to_owned());
    }
    if i.peers_known > 0 && i.established == 0 {
        why.push(format!("no connection established yet ({} peers known)", i.peers_known));
    }
    if why.is_empty() { Ok(()) } else { Err(why) }
}

/// Readiness of the daemon.
pub fn readyz(d: &Daemon) -> Result<(), Vec<String>> {
    let ipam = d.ipam.summary();
    let established = d.control().counts().established;
    let others = d.control().topology().len().saturating_sub(1);
    let targets = d.targets.lock().unwrap_or_else(|p| p.into_inner()).len();
    judge(&ReadyInputs { ipam: (ipam.state, ipam.detail), gateway: d.health.gateway_on_bridge(), peers_known: targets + others, established })
}

/// Allocates the bridge's address if needed and makes sure it is on the bridge; returns it.
/// Concurrent callers wait for the first (one netlink change, on the blocking pool).
pub async fn ensure_gateway(d: &Daemon) -> Result<Ipv4Addr, Response> {
    let gw = d.ipam.gateway_address(Instant::now())?;
    let h = &d.health;
    let mut on = h.gateway.lock().await;
    if *on == Some(gw) {
        return Ok(gw);
    }
    let (bridge, prefix) = (h.bridge.clone(), h.prefix);
    let added = tokio::task::spawn_blocking(move || {
        let mut nl = weft_kernel::Handle::open()?;
        plumbing::ensure_bridge_address(&mut nl, &bridge, gw, prefix)
    })
    .await
    .map_err(|e| Response::error(500, format!("put the gateway on the bridge: {e}")))?
    .map_err(|e| Response::error(500, format!("put the gateway {gw}/{prefix} on the bridge {}: {e}", h.bridge)))?;
    if added {
        tracing::info!("bridge {} has address {gw}/{prefix} (the pods' gateway)", h.bridge);
    }
    *on = Some(gw);
    h.gateway_set.store(true, Ordering::Relaxed);
    Ok(gw)
}

/// Waits until IPAM has space and the gateway is on the bridge, then writes the CNI
/// configuration if asked. Runs until done (or the task is dropped).
pub async fn become_ready(d: Arc<Daemon>) {
    let mut last_error = String::new();
    loop {
        match ensure_gateway(&d).await {
            Ok(gw) => {
                match d.config.cni_conf.as_deref() {
                    Some(path) => {
                        let (path, socket, coalesce) = (path.to_owned(), d.config.api_socket.clone(), d.config.pod_udp_coalesce_at_attach());
                        let written = tokio::task::spawn_blocking(move || super::cniconf::write(&path, &socket, coalesce).map(|w| (w, path))).await;
                        match written {
                            Ok(Ok((w, path))) => {
                                let what = if w { "written" } else { "already in place" };
                                tracing::info!(gateway = %gw, "ready to serve CNI ADDs; CNI configuration {} {what}", path.display());
                                return;
                            }
                            Ok(Err(e)) => tracing::warn!("{}", weft_kube::informer::chain(&e)),
                            Err(e) => tracing::warn!("write the CNI configuration: {e}"),
                        }
                    }
                    None => {
                        tracing::info!(gateway = %gw, "ready to serve CNI ADDs");
                        return;
                    }
                }
            }
            Err(r) => {
                let e = serde_json::from_slice::<weft_api::types::ErrorBody>(&r.body).map(|b| b.error).unwrap_or_default();
                if e != last_error {
                    tracing::debug!("not ready yet: {e}");
                    last_error = e;
                }
            }
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_needs_ipam_the_gateway_and_a_connection_when_peers_are_known() {
        let mut i = ReadyInputs { ipam: ("ready".into(), "allocating".into()), gateway: true, peers_known: 0, established: 0 };
        assert_eq!(judge(&i), Ok(()), "alone: no connection needed");
        i.peers_known = 3;
        let why = judge(&i).unwrap_err();
        assert!(why[0].contains("no connection") && why[0].contains("3 peers"), "{why:?}");
        i.established = 1;
        assert_eq!(judge(&i), Ok(()));
        i.ipam = ("awaiting-consensus".into(), "2 of 3 peers known".into());
        i.gateway = false;
        let why = judge(&i).unwrap_err();
        assert_eq!(why.len(), 2);
        assert!(why[0].contains("awaiting-consensus: 2 of 3") && why[1].contains("gateway"), "{why:?}");
    }

    #[test]
    fn healthy_needs_the_data_plane_and_a_recent_tick() {
        let t0 = Instant::now();
        let h = Health::new(t0, "weft", 12);
        h.tick(t0 + Duration::from_secs(1), true);
        assert_eq!(h.healthz(t0 + Duration::from_secs(5)), Ok(()));
        let why = h.healthz(t0 + Duration::from_secs(1) + STALL + Duration::from_secs(1)).unwrap_err();
        assert!(why[0].contains("event loop"), "{why:?}");
        h.tick(t0 + Duration::from_secs(30), false);
        let why = h.healthz(t0 + Duration::from_secs(31)).unwrap_err();
        assert!(why[0].contains("data plane"), "{why:?}");
    }
}

//! The router's IPAM service: the mesh's persistent IPAM core behind the local API.
//!
//! Every answer is given only after the state is on disk (`PersistentIpam`), and a change that
//! cannot be saved is undone before its error (500, with the cause) is answered: an allocation
//! refused so is not listed or looked up afterwards, and a release refused so leaves the
//! allocation. The bridge gets an address of its own from the same range (held by the
//! pseudo-container [`BRIDGE_HOLDER`]), which pods use as their gateway.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use weft_api::types::{Allocation, Attachment, IpamShare, IpamSummary};
use weft_mesh::ipam::{self, AllocError, Bootstrap, Cidr, HandOver, IpamError, PersistError, PersistentIpam, Status, Store};
use weft_mesh::peer::PeerName;

use crate::daemon::api::Response;

/// The holder of the bridge's own address.
pub const BRIDGE_HOLDER: &str = "weft:bridge";

/// The IPAM core, locked for each (short, cold-path) operation.
pub struct IpamService {
    inner: Mutex<PersistentIpam>,
    range: Cidr,
    mtu: u32,
    bridge: String,
}

fn to_response(e: IpamError) -> Response {
    let text = weft_kernel::chain(&e);
    match &e {
        IpamError::Alloc(AllocError::NotReady(_) | AllocError::WaitingForSpace(_) | AllocError::Left) => Response::error(503, text),
        IpamError::Alloc(AllocError::InUse { .. } | AllocError::HolderHasAddress { .. }) => Response::error(409, text),
        IpamError::Alloc(_) | IpamError::Shrink(_) => Response::error(400, text),
        IpamError::Persist(_) | IpamError::Handle(_) => Response::error(500, format!("{text}; nothing was changed")),
    }
}

impl IpamService {
    /// Opens (or creates) the IPAM state under `state_dir` for peer `me`.
    pub fn open(me: PeerName, range: Cidr, bootstrap: Bootstrap, state_dir: &Path, bridge: &str, mtu: u32, now: Instant) -> Result<IpamService, PersistError> {
        let mut config = ipam::Config::new(bootstrap);
        config.range = range;
        let store = Store::open(state_dir)?;
        let inner = PersistentIpam::open(me, config, store, now)?;
        Ok(IpamService { inner: Mutex::new(inner), range, mtu, bridge: bridge.to_owned() })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, PersistentIpam> {
        // A panic while holding the lock cannot leave the persisted state inconsistent (it is
        // written before answers), so a poisoned lock is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn cidr(&self, a: Ipv4Addr) -> String {
        format!("{a}/{}", self.range.prefix())
    }

    /// The bridge's address (allocating it the first time), once the ring allows.
    pub fn bridge_address(&self, now: Instant) -> Option<Ipv4Addr> {
        self.lock().allocate(now, BRIDGE_HOLDER, &self.bridge).ok()
    }

    /// The bridge's address, allocated the first time: 503 while IPAM has no space for it, 500
    /// (with the cause) when it cannot be saved.
    pub fn gateway_address(&self, now: Instant) -> Result<Ipv4Addr, Response> {
        let bridge = self.lock().allocate(now, BRIDGE_HOLDER, &self.bridge);
        bridge.map_err(|e| match e {
            IpamError::Alloc(_) => Response::error(503, format!("IPAM is not ready: {}", self.lock().core().status())),
            e => to_response(e),
        })
    }

    fn gateway(&self) -> Option<String> {
        self.lock().core().lookup(BRIDGE_HOLDER, &self.bridge).map(|a| a.to_string())
    }

    fn answer(&self, att: &Attachment, a: Ipv4Addr) -> Allocation {
        Allocation { attachment: att.clone(), address: self.cidr(a), gateway: self.gateway(), mtu: self.mtu }
    }

    /// `POST /ipam/allocate`.
    pub fn allocate(&self, now: Instant, att: &Attachment) -> Result<Allocation, Response> {
        if self.gateway().is_none() {
            let bridge = self.lock().allocate(now, BRIDGE_HOLDER, &self.bridge);
            bridge.map_err(|e| match e {
                IpamError::Alloc(_) => Response::error(503, format!("IPAM is not ready: {}", self.lock().core().status())),
                e => to_response(e),
            })?;
        }
        let a = self.lock().allocate(now, &att.container_id, &att.ifname).map_err(to_response)?;
        Ok(self.answer(att, a))
    }

    /// `POST /ipam/claim`.
    pub fn claim(&self, att: &Attachment, addr: &str) -> Result<Allocation, Response> {
        let a: Ipv4Addr = addr
            .split('/')
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Response::error(400, format!("{addr:?} is not an IPv4 address")))?;
        self.lock().claim(&att.container_id, &att.ifname, a).map_err(to_response)?;
        Ok(self.answer(att, a))
    }

    /// `POST /ipam/release`: succeeds when there is nothing to release.
    pub fn release(&self, att: &Attachment) -> Result<Vec<String>, Response> {
        let freed = self.lock().release(&att.container_id, Some(&att.ifname)).map_err(to_response)?;
        Ok(freed.into_iter().map(|a| self.cidr(a)).collect())
    }

    /// `POST /ipam/lookup`.
    pub fn lookup(&self, att: &Attachment) -> Result<Allocation, Response> {
        let a = self.lock().core().lookup(&att.container_id, &att.ifname);
        a.map(|a| self.answer(att, a)).ok_or_else(|| Response::error(404, format!("no address is allocated to {} {}", att.container_id, att.ifname)))
    }

    /// `GET /ipam/allocations`: every allocation of this peer, the bridge's included, by address.
    pub fn list(&self) -> Vec<Allocation> {
        let held: Vec<(Ipv4Addr, Attachment)> = self
            .lock()
            .core()
            .allocations()
            .map(|(a, h)| (a, Attachment { container_id: h.container.clone(), ifname: h.iface.clone() }))
            .collect();
        let mut out: Vec<Allocation> = held.into_iter().map(|(a, att)| self.answer(&att, a)).collect();
        out.sort_by_key(|a| a.address.split('/').next().and_then(|s| s.parse::<Ipv4Addr>().ok()));
        out
    }

    /// `POST /ipam/gc`: releases the allocations of containers not in `keep` (never the bridge's).
    pub fn gc(&self, keep: &[Attachment]) -> Result<Vec<Allocation>, Response> {
        let ids: Vec<&str> = keep.iter().map(|a| a.container_id.as_str()).chain([BRIDGE_HOLDER]).collect();
        let freed = self.lock().gc(ids).map_err(to_response)?;
        Ok(freed
            .into_iter()
            .map(|(a, h)| self.answer(&Attachment { container_id: h.container, ifname: h.iface }, a))
            .collect())
    }

    /// The status line of `weft status`.
    pub fn summary(&self) -> IpamSummary {
        let g = self.lock();
        let core = g.core();
        let (state, detail) = match core.status() {
            Status::Ready => ("ready", format!("allocating from {} owned ranges", core.usable().len())),
            s @ Status::AwaitingConsensus { .. } => ("awaiting-consensus", format!("{s}: start the other initial peers, or correct --ipalloc-init consensus=N")),
            s @ Status::WaitingForSpace { .. } => ("waiting-for-space", format!("{s}: free addresses on other peers, or `weft rmpeer` dead ones")),
            s @ Status::Left => (
                "left",
                match core.hand_over() {
                    Some(HandOver::Waiting(p)) => format!("{s}: range handed to {p}, not yet acknowledged"),
                    Some(HandOver::Acknowledged(p)) => format!("{s}: range handed to {p}, which acknowledged it"),
                    None => s.to_string(),
                },
            ),
        };
        let owned = core.ring().shares().get(&core.name()).copied().unwrap_or(0);
        IpamSummary { state: state.into(), detail, range: self.range.to_string(), owned, allocated: core.allocations().count() as u64 }
    }

    /// Each peer's share, for `weft status ipam`; `nickname` and `reachable` come from the mesh.
    pub fn shares(&self, nickname: impl Fn(PeerName) -> String, reachable: impl Fn(PeerName) -> bool) -> Vec<IpamShare> {
        let g = self.lock();
        let core = g.core();
        let total = self.range.size() as f64;
        core.ring()
            .shares()
            .into_iter()
            .map(|(p, size)| IpamShare {
                peer: p.to_string(),
                nickname: nickname(p),
                reachable: reachable(p),
                size,
                percent: size as f64 * 100.0 / total,
                allocated: (p == core.name()).then(|| core.allocations().count() as u64),
            })
            .collect()
    }

    /// Runs `f` on the persistent core (message handling, timers, rmpeer).
    pub fn with<T>(&self, f: impl FnOnce(&mut PersistentIpam) -> T) -> T {
        f(&mut self.lock())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_api::types::ErrorBody;

    fn att(c: &str) -> Attachment {
        Attachment { container_id: c.into(), ifname: "eth0".into() }
    }

    fn message(r: &Response) -> String {
        serde_json::from_slice::<ErrorBody>(&r.body).unwrap().error
    }

    #[test]
    fn a_change_that_cannot_be_saved_is_answered_500_and_not_kept() {
        let dir = std::env::temp_dir().join(format!("weft-ipamsvc-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let me = PeerName::from_u64(0x0e01);
        let now = Instant::now();
        let svc = IpamService::open(me, "10.32.0.0/24".parse().unwrap(), Bootstrap::Seeds(vec![me]), &dir, "weft", 1376, now).unwrap();
        let kept = svc.allocate(now, &att("c1")).unwrap();
        // Every save fails from here: the temp file's path is a directory (which stops root too).
        let blocker = dir.join("ipam.state.tmp");
        std::fs::create_dir(&blocker).unwrap();

        let r = svc.allocate(now, &att("c2")).unwrap_err();
        assert_eq!(r.status, 500);
        let m = message(&r);
        assert!(m.contains("ipam.state.tmp") && m.contains("nothing was changed"), "{m}");
        assert!(m.contains("Is a directory"), "the cause is in the answer: {m}");
        assert_eq!(svc.lookup(&att("c2")).unwrap_err().status, 404, "refused, so not held");
        assert!(svc.list().iter().all(|a| a.attachment.container_id != "c2"));

        let r = svc.release(&att("c1")).unwrap_err();
        assert_eq!(r.status, 500);
        assert_eq!(svc.lookup(&att("c1")).unwrap().address, kept.address, "a failed release keeps the allocation");
        assert_eq!(svc.gc(&[]).unwrap_err().status, 500);
        assert_eq!(svc.list().len(), 2, "the bridge and c1, as before");
        assert_eq!(svc.summary().allocated, 2);

        std::fs::remove_dir(&blocker).unwrap();
        assert_eq!(svc.release(&att("c1")).unwrap(), vec![kept.address.clone()]);
        let c2 = svc.allocate(now, &att("c2")).unwrap();
        assert_eq!(svc.lookup(&att("c2")).unwrap().address, c2.address);
        assert_eq!(svc.summary().allocated, 2, "the bridge and c2");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

//! Crash-safe persistence of one peer's IPAM state, and [`PersistentIpam`], the core wrapped so
//! that nothing leaves it before its state is on disk.
//!
//! One file, `ipam.state` in the state directory, holds the ring, the allocations, pending
//! reclaims and whether the peer left, so they change atomically together. A save writes
//! `ipam.state.tmp`, fsyncs it, renames it over `ipam.state` and fsyncs the directory: after a
//! crash at any point, `ipam.state` is either the old or the new state, whole. A leftover temp
//! file is ignored and removed on load. The file ends with an FNV-1a 64 checksum; a corrupt or
//! truncated file is a [`PersistError::Corrupt`] naming it, never a panic.
//!
//! A change that cannot be saved is not made: [`PersistentIpam`] snapshots the core before each
//! operation and restores the snapshot when the save fails, before the error is returned. So an
//! allocation answered with an error is not held in memory, a release that failed leaves the
//! allocation, and a message whose effect could not be saved is as if never received (its sender
//! repeats it). When the save failed after the rename (only the directory's fsync), the disk may
//! hold the refused change: the restored state is then written again before anything else leaves.
//!
//! Cost: every save rewrites the whole state (tens of bytes per allocation), and every change
//! clones the core once; fine for the few hundred pods of a host.
//!
//! ```text
//! file    = magic:"WEFTIPAM" format:u8 (=1) me:[6] left:u8 ring_len:u32 ring
//!           alloc_count:u32 alloc* pending_count:u32 pending* checksum:u64
//! alloc   = addr:u32 container_len:u16 container iface_len:u8 iface      (UTF-8)
//! pending = start:u32 end:u64 version:u32 waiting_count:u16 name:[6]*waiting_count
//! ```

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Instant;

use super::alloc::{
    AllocError, Config, HandleError, Holder, Ipam, PendingReclaim, SetupError, ShrinkError, State,
    Transmit,
};
use super::ring::{Ring, Span};
use super::{DecodeError, Reader};
use crate::peer::PeerName;

const MAGIC: &[u8; 8] = b"WEFTIPAM";
/// The only state file format this code speaks.
pub const STATE_FORMAT: u8 = 1;
/// The state file's name in the state directory.
pub const STATE_FILE: &str = "ipam.state";
const TMP_FILE: &str = "ipam.state.tmp";

/// Why state could not be loaded or saved.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// A file system operation failed.
    #[error("IPAM state: cannot {op} {}", path.display())]
    Io {
        /// What was attempted.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The state file is corrupt or truncated.
    #[error(
        "IPAM state file {} is corrupt; move it away only if this peer's pods are gone (its addresses would be forgotten)",
        path.display()
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: DecodeError,
    },
    /// The state file belongs to another peer name.
    #[error("IPAM state file {} belongs to peer {found}, not to this peer {expected}", path.display())]
    WrongPeer {
        /// The file.
        path: PathBuf,
        /// The name in the file.
        found: PeerName,
        /// This peer's name.
        expected: PeerName,
    },
    /// The loaded state does not fit the configuration.
    #[error("IPAM state file {} does not fit the configuration", path.display())]
    Setup {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: SetupError,
    },
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    /// Tests: the step of the next save that fails.
    #[cfg(test)]
    fault: std::sync::Arc<std::sync::Mutex<Option<Step>>>,
}

/// The steps of a save, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Create,
    Write,
    Fsync,
    Rename,
    FsyncDir,
}

/// A failed save, and whether the new file had already replaced the old one.
struct SaveFailure {
    error: PersistError,
    renamed: bool,
}

impl Store {
    /// The store in `dir`, created if missing.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Store, PersistError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|source| PersistError::Io {
            op: "create",
            path: dir.clone(),
            source,
        })?;
        Ok(Store {
            dir,
            #[cfg(test)]
            fault: Default::default(),
        })
    }

    /// The state file's path.
    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// The persisted state, or `None` when nothing was ever saved. Removes a leftover temp file.
    pub fn load(&self) -> Result<Option<(PeerName, State)>, PersistError> {
        let tmp = self.dir.join(TMP_FILE);
        if tmp.exists() {
            fs::remove_file(&tmp).map_err(|source| PersistError::Io {
                op: "remove",
                path: tmp.clone(),
                source,
            })?;
        }
        let path = self.path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(PersistError::Io {
                    op: "read",
                    path,
                    source,
                });
            }
        };
        decode_state(&bytes)
            .map(Some)
            .map_err(|source| PersistError::Corrupt { path, source })
    }

    /// Writes `bytes` crash-safely: temp file, fsync, rename, fsync of the directory.
    pub fn save_bytes(&self, bytes: &[u8]) -> Result<(), PersistError> {
        self.write(bytes).map_err(|f| f.error)
    }

    fn write(&self, bytes: &[u8]) -> Result<(), SaveFailure> {
        let tmp = self.dir.join(TMP_FILE);
        let path = self.path();
        let fail = |step: Step, p: &Path, source: std::io::Error| SaveFailure {
            error: PersistError::Io {
                op: match step {
                    Step::Create => "create",
                    Step::Write => "write",
                    Step::Fsync | Step::FsyncDir => "fsync",
                    Step::Rename => "rename over",
                },
                path: p.to_owned(),
                source,
            },
            renamed: step == Step::FsyncDir,
        };
        let mut f = self
            .fault(Step::Create)
            .and_then(|()| {
                OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&tmp)
            })
            .map_err(|e| fail(Step::Create, &tmp, e))?;
        self.fault(Step::Write)
            .and_then(|()| f.write_all(bytes))
            .map_err(|e| fail(Step::Write, &tmp, e))?;
        self.fault(Step::Fsync)
            .and_then(|()| f.sync_all())
            .map_err(|e| fail(Step::Fsync, &tmp, e))?;
        drop(f);
        self.fault(Step::Rename)
            .and_then(|()| fs::rename(&tmp, &path))
            .map_err(|e| fail(Step::Rename, &path, e))?;
        self.fault(Step::FsyncDir)
            .and_then(|()| File::open(&self.dir))
            .and_then(|d| d.sync_all())
            .map_err(|e| fail(Step::FsyncDir, &self.dir, e))
    }

    #[cfg(test)]
    fn fault(&self, step: Step) -> std::io::Result<()> {
        let mut fault = self.fault.lock().unwrap();
        if *fault == Some(step) {
            *fault = None;
            return Err(std::io::Error::from_raw_os_error(28)); // ENOSPC
        }
        Ok(())
    }

    #[cfg(not(test))]
    fn fault(&self, _step: Step) -> std::io::Result<()> {
        Ok(())
    }

    /// Saves `ipam`'s state.
    pub fn save(&self, ipam: &Ipam) -> Result<(), PersistError> {
        self.save_bytes(&encode_state(ipam))
    }
}

/// The state file contents for `ipam`.
pub fn encode_state(ipam: &Ipam) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + ipam.ring().buffer_len());
    out.extend_from_slice(MAGIC);
    out.push(STATE_FORMAT);
    out.extend_from_slice(&ipam.name().0);
    out.push(u8::from(ipam.has_left()));
    let ring = ipam.ring().to_bytes();
    out.extend_from_slice(&(ring.len() as u32).to_be_bytes());
    out.extend_from_slice(&ring);
    let n = ipam.allocations().count();
    out.extend_from_slice(&(n as u32).to_be_bytes());
    for (a, h) in ipam.allocations() {
        out.extend_from_slice(&u32::from(a).to_be_bytes());
        // Holder fields are bounded by the API (container IDs and interface names are short);
        // longer ones are cut at a character boundary rather than corrupting the file.
        let c = truncate(&h.container, u16::MAX as usize);
        out.extend_from_slice(&(c.len() as u16).to_be_bytes());
        out.extend_from_slice(c.as_bytes());
        let i = truncate(&h.iface, u8::MAX as usize);
        out.push(i.len() as u8);
        out.extend_from_slice(i.as_bytes());
    }
    let pending = ipam.pending_reclaims();
    out.extend_from_slice(&(pending.len() as u32).to_be_bytes());
    for p in pending {
        out.extend_from_slice(&p.span.start.to_be_bytes());
        out.extend_from_slice(&p.span.end.to_be_bytes());
        out.extend_from_slice(&p.version.to_be_bytes());
        let n = p.waiting.len().min(u16::MAX as usize);
        out.extend_from_slice(&(n as u16).to_be_bytes());
        for w in p.waiting.iter().take(n) {
            out.extend_from_slice(&w.0);
        }
    }
    let sum = fnv1a(&out);
    out.extend_from_slice(&sum.to_be_bytes());
    out
}

fn truncate(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Parses a state file: the peer it belongs to and its state.
pub fn decode_state(bytes: &[u8]) -> Result<(PeerName, State), DecodeError> {
    if bytes.len() < MAGIC.len() + 8 {
        return Err(DecodeError::Truncated {
            offset: 0,
            needed: MAGIC.len() + 8,
            len: bytes.len(),
        });
    }
    let (body, sum) = bytes.split_at(bytes.len() - 8);
    if &body[..MAGIC.len()] != MAGIC {
        return Err(DecodeError::Invalid("not an IPAM state file (bad magic)"));
    }
    let mut s = [0u8; 8];
    s.copy_from_slice(sum);
    if u64::from_be_bytes(s) != fnv1a(body) {
        return Err(DecodeError::Invalid(
            "checksum mismatch (truncated or damaged)",
        ));
    }
    let mut r = Reader::new(&body[MAGIC.len()..]);
    let format = r.u8()?;
    if format != STATE_FORMAT {
        return Err(DecodeError::UnknownVersion {
            found: format,
            supported: STATE_FORMAT,
        });
    }
    let me = r.peer()?;
    let left = match r.u8()? {
        0 => false,
        1 => true,
        _ => return Err(DecodeError::Invalid("left flag is not 0 or 1")),
    };
    let ring_len = r.u32()? as usize;
    let ring = Ring::parse(r.bytes(ring_len)?)?;
    let n = r.u32()?;
    let mut allocations = BTreeMap::new();
    for _ in 0..n {
        let a = r.u32()?;
        let clen = r.u16()? as usize;
        let container = std::str::from_utf8(r.bytes(clen)?)
            .map_err(|_| DecodeError::Invalid("container not UTF-8"))?;
        let ilen = r.u8()? as usize;
        let iface = std::str::from_utf8(r.bytes(ilen)?)
            .map_err(|_| DecodeError::Invalid("iface not UTF-8"))?;
        if !ring.range().contains(a) {
            return Err(DecodeError::Invalid("allocation outside the ring's range"));
        }
        if allocations
            .insert(a, Holder::new(container, iface))
            .is_some()
        {
            return Err(DecodeError::Invalid("address allocated twice"));
        }
    }
    let n = r.u32()?;
    let mut pending = Vec::new();
    for _ in 0..n {
        let start = r.u32()?;
        let end = r.u64()?;
        let version = r.u32()?;
        if end <= start as u64 || !ring.range().contains(start) || end > ring.range().end() {
            return Err(DecodeError::Invalid("pending reclaim outside the range"));
        }
        let k = r.u16()?;
        let mut waiting = std::collections::BTreeSet::new();
        for _ in 0..k {
            waiting.insert(r.peer()?);
        }
        pending.push(PendingReclaim {
            span: Span { start, end },
            version,
            waiting,
        });
    }
    r.finish()?;
    Ok((
        me,
        State {
            ring,
            allocations,
            pending,
            left,
        },
    ))
}

/// FNV-1a, 64 bit: detects truncation and damage (not an adversary's edits).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Why an operation of [`PersistentIpam`] failed.
#[derive(Debug, thiserror::Error)]
pub enum IpamError {
    /// The allocation or claim was refused.
    #[error(transparent)]
    Alloc(#[from] AllocError),
    /// The shutdown or reclaim was refused.
    #[error(transparent)]
    Shrink(#[from] ShrinkError),
    /// The message was not used.
    #[error(transparent)]
    Handle(#[from] HandleError),
    /// The state could not be persisted: the change was undone, nothing was answered or sent.
    #[error(transparent)]
    Persist(#[from] PersistError),
}

/// An [`Ipam`] core plus its [`Store`]: every change is on disk before an answer or a message
/// leaves, and a change that cannot be saved is undone before its error is returned. Same API
/// as the core; see [`Ipam`] for each operation.
#[derive(Debug)]
pub struct PersistentIpam {
    core: Ipam,
    store: Store,
}

impl PersistentIpam {
    /// Resumes from the state in `store`, or starts fresh when there is none.
    pub fn open(
        me: PeerName,
        config: Config,
        store: Store,
        now: Instant,
    ) -> Result<PersistentIpam, PersistError> {
        let path = store.path();
        let core = match store.load()? {
            Some((found, _)) if found != me => {
                return Err(PersistError::WrongPeer {
                    path,
                    found,
                    expected: me,
                });
            }
            Some((_, state)) => Ipam::from_state(me, config, state, now),
            None => Ipam::new(me, config, now),
        }
        .map_err(|source| PersistError::Setup { path, source })?;
        let mut this = PersistentIpam { core, store };
        this.persist().map_err(|f| f.error)?;
        Ok(this)
    }

    /// The core (read-only: changes go through this wrapper).
    pub fn core(&self) -> &Ipam {
        &self.core
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Saves the core if it changed. On failure it stays marked as changed; the caller restores
    /// its snapshot.
    fn persist(&mut self) -> Result<(), SaveFailure> {
        if self.core.take_dirty() {
            if let Err(e) = self.store.write(&encode_state(&self.core)) {
                self.core.mark_dirty();
                return Err(e);
            }
        }
        Ok(())
    }

    /// Runs `op` on the core and saves what it changed; when the save fails the core is put
    /// back as it was before `op` and the save's error returned, so the change is not made.
    fn change<T>(&mut self, op: impl FnOnce(&mut Ipam) -> T) -> Result<T, PersistError> {
        let before = self.core.clone();
        let r = op(&mut self.core);
        match self.persist() {
            Ok(()) => Ok(r),
            Err(SaveFailure { error, renamed }) => {
                self.core = before;
                if renamed {
                    // The disk may hold the change just undone: write the restored state before
                    // anything else is answered or sent.
                    self.core.mark_dirty();
                }
                Err(error)
            }
        }
    }

    /// [`Ipam::allocate`], answered only once persisted.
    pub fn allocate(
        &mut self,
        now: Instant,
        container: &str,
        iface: &str,
    ) -> Result<Ipv4Addr, IpamError> {
        Ok(self.change(|c| c.allocate(now, container, iface))??)
    }

    /// [`Ipam::claim`], answered only once persisted.
    pub fn claim(&mut self, container: &str, iface: &str, addr: Ipv4Addr) -> Result<(), IpamError> {
        Ok(self.change(|c| c.claim(container, iface, addr))??)
    }

    /// [`Ipam::release`], answered only once persisted.
    pub fn release(
        &mut self,
        container: &str,
        iface: Option<&str>,
    ) -> Result<Vec<Ipv4Addr>, IpamError> {
        Ok(self.change(|c| c.release(container, iface))?)
    }

    /// [`Ipam::gc`], answered only once persisted.
    pub fn gc<'a>(
        &mut self,
        keep: impl IntoIterator<Item = &'a str>,
    ) -> Result<Vec<(Ipv4Addr, Holder)>, IpamError> {
        Ok(self.change(|c| c.gc(keep))?)
    }

    /// [`Ipam::shutdown`], persisted; flush [`PersistentIpam::poll_transmit`] afterwards.
    pub fn shutdown(
        &mut self,
        now: Instant,
        live: &[PeerName],
    ) -> Result<Option<PeerName>, IpamError> {
        Ok(self.change(|c| c.shutdown(now, live))??)
    }

    /// [`Ipam::rmpeer`], persisted.
    pub fn rmpeer(
        &mut self,
        now: Instant,
        dead: PeerName,
        known: &[PeerName],
        live: &[PeerName],
    ) -> Result<u64, IpamError> {
        Ok(self.change(|c| c.rmpeer(now, dead, known, live))??)
    }

    /// [`Ipam::handle`], persisted.
    pub fn handle(&mut self, now: Instant, from: PeerName, bytes: &[u8]) -> Result<(), IpamError> {
        Ok(self.change(|c| c.handle(now, from, bytes))??)
    }

    /// [`Ipam::poll_transmit`], after persisting any pending change.
    pub fn poll_transmit(&mut self, now: Instant) -> Result<Option<Transmit>, IpamError> {
        self.persist().map_err(|f| f.error)?;
        Ok(self.core.poll_transmit(now))
    }

    /// [`Ipam::poll_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.core.poll_timeout()
    }

    /// [`Ipam::handle_timeout`], persisted.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), IpamError> {
        Ok(self.change(|c| c.handle_timeout(now))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::alloc::Bootstrap;

    fn tempdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("weft-ipam-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    fn config() -> Config {
        let mut c = Config::new(Bootstrap::Seeds(vec![
            PeerName::from_u64(1),
            PeerName::from_u64(2),
        ]));
        c.range = "10.9.0.0/24".parse().unwrap();
        c
    }

    #[test]
    fn restart_resumes_exactly() {
        let dir = tempdir("resume");
        let now = Instant::now();
        let me = PeerName::from_u64(1);
        let mut ipam = PersistentIpam::open(me, config(), Store::open(&dir).unwrap(), now).unwrap();
        let a = ipam.allocate(now, "c1", "eth0").unwrap();
        let b = ipam.allocate(now, "c2", "net1").unwrap();
        ipam.rmpeer(now, PeerName::from_u64(2), &[PeerName::from_u64(3)], &[])
            .unwrap();
        let before = encode_state(ipam.core());
        drop(ipam);
        let again = PersistentIpam::open(me, config(), Store::open(&dir).unwrap(), now).unwrap();
        assert_eq!(encode_state(again.core()), before);
        assert_eq!(again.core().lookup("c1", "eth0"), Some(a));
        assert_eq!(again.core().lookup("c2", "net1"), Some(b));
        assert_eq!(again.core().pending_reclaims().len(), 1);
        let other = PersistentIpam::open(
            PeerName::from_u64(2),
            config(),
            Store::open(&dir).unwrap(),
            now,
        );
        assert!(matches!(other, Err(PersistError::WrongPeer { .. })));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_hand_over_is_answered_only_after_the_receiver_persisted_it() {
        let (da, db) = (tempdir("handover-a"), tempdir("handover-b"));
        let now = Instant::now();
        let (pa, pb) = (PeerName::from_u64(1), PeerName::from_u64(2));
        let mut a = PersistentIpam::open(pa, config(), Store::open(&da).unwrap(), now).unwrap();
        let store_b = Store::open(&db).unwrap();
        let mut b = PersistentIpam::open(pb, config(), store_b.clone(), now).unwrap();
        assert_eq!(a.shutdown(now, &[pb]).unwrap(), Some(pb));
        while let Some(t) = a.poll_transmit(now).unwrap() {
            if t.to == crate::ipam::Destination::Peer(pb) {
                b.handle(now, pa, &t.payload).unwrap();
            }
        }
        let answer = b.poll_transmit(now).unwrap().expect("b answers the hand-over");
        // What b answers is already on b's disk: a's half is b's there.
        let (_, on_disk) = store_b.load().unwrap().unwrap();
        assert_eq!(on_disk.ring.shares()[&pb], 256);
        a.handle(now, pb, &answer.payload).unwrap();
        assert_eq!(a.core().hand_over(), Some(crate::ipam::HandOver::Acknowledged(pb)));
        fs::remove_dir_all(&da).unwrap();
        fs::remove_dir_all(&db).unwrap();
    }

    #[test]
    fn interrupted_write_loses_nothing() {
        let dir = tempdir("interrupted");
        let now = Instant::now();
        let me = PeerName::from_u64(1);
        let store = Store::open(&dir).unwrap();
        let mut ipam = PersistentIpam::open(me, config(), store.clone(), now).unwrap();
        let a = ipam.allocate(now, "c1", "eth0").unwrap();
        // A crash in the middle of the next save leaves a truncated temp file behind.
        let mut next = ipam.core().allocations().count();
        let full = encode_state(ipam.core());
        fs::write(dir.join(TMP_FILE), &full[..full.len() / 2]).unwrap();
        drop(ipam);
        let ipam = PersistentIpam::open(me, config(), store, now).unwrap();
        assert_eq!(ipam.core().lookup("c1", "eth0"), Some(a));
        next -= ipam.core().allocations().count();
        assert_eq!(next, 0);
        assert!(!dir.join(TMP_FILE).exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_files_name_the_file() {
        let dir = tempdir("corrupt");
        let now = Instant::now();
        let me = PeerName::from_u64(1);
        let store = Store::open(&dir).unwrap();
        let mut ipam = PersistentIpam::open(me, config(), store.clone(), now).unwrap();
        ipam.allocate(now, "c1", "eth0").unwrap();
        let good = fs::read(store.path()).unwrap();
        for len in [0, 5, good.len() / 2, good.len() - 1] {
            fs::write(store.path(), &good[..len]).unwrap();
            let err = PersistentIpam::open(me, config(), store.clone(), now).unwrap_err();
            assert!(matches!(err, PersistError::Corrupt { .. }), "{err}");
            assert!(err.to_string().contains("ipam.state"), "{err}");
        }
        let mut bad = good.clone();
        bad[20] ^= 1;
        fs::write(store.path(), &bad).unwrap();
        assert!(matches!(store.load(), Err(PersistError::Corrupt { .. })));
        fs::write(store.path(), &good).unwrap();
        assert!(store.load().unwrap().is_some());
        fs::remove_dir_all(&dir).unwrap();
    }

    fn on_disk(store: &Store) -> State {
        store.load().unwrap().unwrap().1
    }

    #[test]
    fn a_change_that_cannot_be_saved_is_not_made() {
        let dir = tempdir("rollback");
        let now = Instant::now();
        let me = PeerName::from_u64(1);
        let store = Store::open(&dir).unwrap();
        let mut ipam = PersistentIpam::open(me, config(), store.clone(), now).unwrap();
        let a = ipam.allocate(now, "c1", "eth0").unwrap();
        for step in [Step::Create, Step::Write, Step::Fsync, Step::Rename] {
            let before = encode_state(ipam.core());
            *store.fault.lock().unwrap() = Some(step);
            let e = ipam.allocate(now, "c2", "eth0").unwrap_err();
            assert!(
                matches!(e, IpamError::Persist(PersistError::Io { .. })),
                "{step:?}: {e}"
            );
            assert_eq!(
                ipam.core().lookup("c2", "eth0"),
                None,
                "{step:?}: refused, not held"
            );
            assert_eq!(encode_state(ipam.core()), before, "{step:?}");
            assert_eq!(on_disk(&store).allocations.len(), 1, "{step:?}");

            *store.fault.lock().unwrap() = Some(step);
            assert!(ipam.release("c1", Some("eth0")).is_err(), "{step:?}");
            assert_eq!(
                ipam.core().lookup("c1", "eth0"),
                Some(a),
                "{step:?}: a failed release keeps the address"
            );
            *store.fault.lock().unwrap() = Some(step);
            assert!(ipam.gc([]).is_err());
            assert_eq!(
                ipam.core().lookup("c1", "eth0"),
                Some(a),
                "{step:?}: a failed GC keeps the address"
            );
            *store.fault.lock().unwrap() = Some(step);
            assert!(
                ipam.claim("c3", "eth0", "10.9.0.9".parse().unwrap())
                    .is_err()
            );
            assert_eq!(ipam.core().lookup("c3", "eth0"), None, "{step:?}");
            assert_eq!(encode_state(ipam.core()), before, "{step:?}");
        }
        // With the disk back, the same calls succeed.
        let b = ipam.allocate(now, "c2", "eth0").unwrap();
        assert_eq!(
            on_disk(&store).allocations.get(&u32::from(b)),
            Some(&Holder::new("c2", "eth0"))
        );
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failure_after_the_rename_writes_the_restored_state_again() {
        let dir = tempdir("renamed");
        let now = Instant::now();
        let me = PeerName::from_u64(1);
        let store = Store::open(&dir).unwrap();
        let mut ipam = PersistentIpam::open(me, config(), store.clone(), now).unwrap();
        *store.fault.lock().unwrap() = Some(Step::FsyncDir);
        assert!(ipam.allocate(now, "c1", "eth0").is_err());
        assert_eq!(ipam.core().lookup("c1", "eth0"), None);
        // The file may hold the refused allocation (it was renamed into place) ...
        assert_eq!(on_disk(&store).allocations.len(), 1);
        // ... until the next save, which comes before any message leaves.
        ipam.poll_transmit(now).unwrap();
        assert_eq!(on_disk(&store).allocations.len(), 0);
        assert_eq!(encode_state(ipam.core()), fs::read(store.path()).unwrap());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_real_write_failure_leaves_memory_as_on_disk() {
        // No hook: the temp file's path is taken by a directory, which no open for writing
        // gets past, not even root's.
        let dir = tempdir("blocked");
        let now = Instant::now();
        let me = PeerName::from_u64(1);
        let store = Store::open(&dir).unwrap();
        let mut ipam = PersistentIpam::open(me, config(), store.clone(), now).unwrap();
        let a = ipam.allocate(now, "c1", "eth0").unwrap();
        fs::create_dir(dir.join(TMP_FILE)).unwrap();
        let e = ipam.allocate(now, "c2", "eth0").unwrap_err();
        assert!(e.to_string().contains("ipam.state.tmp"), "{e}");
        assert_eq!(ipam.core().lookup("c2", "eth0"), None);
        assert!(ipam.release("c1", None).is_err());
        assert_eq!(ipam.core().lookup("c1", "eth0"), Some(a));
        assert_eq!(encode_state(ipam.core()), fs::read(store.path()).unwrap());
        fs::remove_dir(dir.join(TMP_FILE)).unwrap();
        assert_eq!(ipam.release("c1", None).unwrap(), vec![a]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn state_round_trips_on_fixed_bytes() {
        let now = Instant::now();
        let mut c = Config::new(Bootstrap::Seeds(vec![PeerName::from_u64(1)]));
        c.range = "10.0.0.0/30".parse().unwrap();
        let mut ipam = Ipam::new(PeerName::from_u64(1), c, now).unwrap();
        ipam.allocate(now, "c", "e").unwrap();
        #[rustfmt::skip]
        let body: &[u8] = &[
            b'W', b'E', b'F', b'T', b'I', b'P', b'A', b'M', 1, 0, 0, 0, 0, 0, 1, 0,
            0, 0, 0, 27, // ring length
            1, 10, 0, 0, 0, 30, 0, 0, 0, 0, 0, 1, 10, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 1, 0,
            0, 0, 0, 1, 10, 0, 0, 1, 0, 1, b'c', 1, b'e', // one allocation
            0, 0, 0, 0, // no pending reclaims
        ];
        let mut expected = body.to_vec();
        expected.extend_from_slice(&fnv1a(body).to_be_bytes());
        assert_eq!(encode_state(&ipam), expected);
        let (me, state) = decode_state(&expected).unwrap();
        assert_eq!(me, PeerName::from_u64(1));
        assert_eq!(
            state.allocations.get(&0x0a00_0001),
            Some(&Holder::new("c", "e"))
        );
        assert_eq!(state.ring, *ipam.ring());
    }
}

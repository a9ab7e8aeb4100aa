//! Named network namespaces, made the way `ip netns add` makes them (a bind mount of the
//! namespace under `/run/netns/NAME`), so `ip netns exec` and CNI runtimes see them too.
//!
//! Code runs inside a namespace on a dedicated thread ([`NetNs::run`]): `setns` changes only the
//! calling thread, and the thread ends afterwards, so no other code ever runs in the wrong
//! namespace. Sockets opened there stay in that namespace for their whole life, and processes
//! spawned from there start in it.

use std::fs::{self, File};
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

use crate::error::{Error, Result};

/// Where named namespaces are mounted.
pub const NETNS_DIR: &str = "/run/netns";

/// A network namespace, held open by a file descriptor.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    file: File,
}

impl NetNs {
    /// Creates a new, empty namespace mounted at `/run/netns/NAME`. Fails if the name exists.
    pub fn create(name: &str) -> Result<NetNs> {
        validate_name(name)?;
        let err = |op, e: io::Error| Error::Namespace { op, ns: name.to_owned(), source: e };
        fs::create_dir_all(NETNS_DIR).map_err(|e| err("create directory for", e))?;
        share_netns_dir().map_err(|e| err("make /run/netns a shared mount point for", e))?;
        let path = path_of(name);
        // Create the mount point exclusively so two callers cannot take the same name.
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| err("create mount point for", e))?;
        let mounted = std::thread::scope(|s| {
            s.spawn(|| -> io::Result<()> {
                nix::sched::unshare(CloneFlags::CLONE_NEWNET)?;
                let own = format!("/proc/self/task/{}/ns/net", nix::unistd::gettid());
                nix::mount::mount(
                    Some(own.as_str()),
                    &path,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )?;
                Ok(())
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("namespace thread panicked")))
        });
        if let Err(e) = mounted {
            let _ = fs::remove_file(&path);
            return Err(err("create", e));
        }
        let file = File::open(&path).map_err(|e| err("open", e))?;
        // Bring loopback up, as any host has it.
        let ns = NetNs { name: name.to_owned(), file };
        crate::netlink::Handle::open_in(&ns)?.set_up("lo")?;
        Ok(ns)
    }

    /// Opens an existing named namespace.
    pub fn open(name: &str) -> Result<NetNs> {
        validate_name(name)?;
        Self::open_path(&path_of(name), name)
    }

    /// Opens a namespace by path (e.g. a CNI runtime's `CNI_NETNS`, or `/proc/PID/ns/net`).
    pub fn open_path(path: &Path, name: &str) -> Result<NetNs> {
        let file = File::open(path).map_err(|e| Error::Namespace {
            op: "open",
            ns: name.to_owned(),
            source: e,
        })?;
        Ok(NetNs { name: name.to_owned(), file })
    }

    /// The namespace's name (for messages; for a path-opened one, what the caller called it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `f` on a new thread that has entered this namespace, and returns its result.
    /// Sockets `f` opens stay in this namespace; processes it spawns start in it.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|e| {
                    Error::Namespace { op: "enter", ns: self.name.clone(), source: e.into() }
                })?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }

    /// Writes a sysctl under `/proc/sys` as seen from this namespace
    /// (e.g. `net/ipv4/ip_forward`).
    pub fn set_sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = Path::new("/proc/sys").join(key);
        self.run(|| fs::write(&path, value))?.map_err(|e| Error::Namespace {
            op: "set sysctl in",
            ns: self.name.clone(),
            source: io::Error::new(e.kind(), format!("{}: {e}", path.display())),
        })
    }

    /// The descriptor, for moving links into this namespace.
    pub(crate) fn file(&self) -> &File {
        &self.file
    }
}

/// Makes `/run/netns` a shared mount point of its own, as `ip netns add` does before its first
/// namespace. Without it, an `ip netns add` run later (by anyone) would bind-mount the directory
/// over itself, hiding the namespaces mounted here beneath a copy: unmounting one then unmounts
/// the copy, and the original stays busy. Done once per process.
fn share_netns_dir() -> io::Result<()> {
    static DONE: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut done = DONE.lock().unwrap_or_else(|p| p.into_inner());
    if *done {
        return Ok(());
    }
    let shared = || nix::mount::mount(None::<&str>, NETNS_DIR, None::<&str>, MsFlags::MS_SHARED | MsFlags::MS_REC, None::<&str>);
    match shared() {
        Ok(()) => {}
        // Not a mount point yet: make it one (recursively, keeping what is mounted there), then share it.
        Err(nix::errno::Errno::EINVAL) => {
            nix::mount::mount(Some(NETNS_DIR), NETNS_DIR, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)?;
            shared()?;
        }
        Err(e) => return Err(e.into()),
    }
    *done = true;
    Ok(())
}

/// Removes the named namespace's mount. The kernel destroys the namespace (and every link in it)
/// once no process, socket or descriptor holds it any more. Removing a name that is not there
/// succeeds.
pub fn delete(name: &str) -> Result<()> {
    validate_name(name)?;
    let path = path_of(name);
    if !path.exists() {
        return Ok(());
    }
    let err = |op, e: io::Error| Error::Namespace { op, ns: name.to_owned(), source: e };
    match nix::mount::umount2(&path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) => {}
        Err(e) => return Err(err("unmount", e.into())),
    }
    match fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(err("remove", e)),
    }
}

/// The names of all namespaces under `/run/netns`.
pub fn list() -> Result<Vec<String>> {
    match fs::read_dir(NETNS_DIR) {
        Ok(dir) => Ok(dir
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::Namespace { op: "list", ns: NETNS_DIR.into(), source: e }),
    }
}

fn path_of(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() || name.len() > 200 || name.contains('/') || name.starts_with('.') {
        return Err(Error::Invalid(format!(
            "namespace name {name:?}: must be 1-200 characters, no '/', not starting with '.'"
        )));
    }
    Ok(())
}

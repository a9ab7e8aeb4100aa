//! Receive offloads of a link: device features by their ethtool names (`rx-gro`,
//! `rx-udp-gro-forwarding`, as `ethtool -K` sets them) and the GRO flush timeout of its NAPI
//! contexts (`/sys/class/net/LINK/gro_flush_timeout`), each in the namespace of the [`Handle`].
//!
//! weft gives a pod's host-side veth [`Handle::set_pod_udp_coalescing`] where only the sleeve
//! carries the pods' traffic (the router's `--pod-udp-coalesce-us`; by default not where the
//! kernel fast path may carry it, which needs no help and would only make datagrams wait), and by
//! default only while the pod sends fast (the router's `--pod-udp-coalesce-above`): a
//! pod's UDP datagrams
//! towards another host are coalesced by the kernel (GRO) into UDP super-frames of up to 64
//! segments before they reach the bridge, so the router reads, seals and sends a burst of them
//! as one frame, and the receiving kernel segments them again only at the pod's socket (the
//! TAP takes UDP super-frames: USO). TCP from pods is already a super-frame (TSO) and does not
//! take this path.
//!
//! The flush timeout is what makes the coalescing happen: without it, the veth's NAPI poll runs
//! right after each datagram the pod sends and finds just that one. With it, datagrams of a
//! flow wait in GRO until 64 are held, a jiffy has passed, or the pod has sent nothing for the
//! timeout: a lone UDP datagram from a pod leaves up to [`POD_GRO_FLUSH_TIMEOUT`] later (what
//! interrupt coalescing costs on a NIC). Packets GRO does not merge (ICMP, ARP) are not held.

use std::io;
use std::path::Path;
use std::time::Duration;

use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, setns, unshare};

use crate::error::{Error, Result};
use crate::netlink::Handle;
use crate::sys;

/// How long GRO holds a pod's datagrams on its host-side veth while more may come, where it is on
/// by default.
/// Shorter is worse on the VMs measured: at 5 or 10 µs the timer fires between a fast sender's
/// datagrams, nothing is merged, and the timers cost more than GRO saves.
pub const POD_GRO_FLUSH_TIMEOUT: Duration = Duration::from_micros(20);

/// The longest GRO flush timeout weft sets on a pod's veth (`--pod-udp-coalesce-us`,
/// `udpCoalesceMicros`), in µs: a longer hold would only delay lone datagrams.
pub const MAX_POD_GRO_FLUSH_MICROS: u64 = 1000;

/// A pod GRO flush timeout as it is configured, in µs (`--pod-udp-coalesce-us`,
/// `udpCoalesceMicros`): 0 is `None`, not coalesced.
pub fn pod_gro_flush_from_micros(micros: u64) -> Option<Duration> {
    (micros > 0).then(|| Duration::from_micros(micros))
}

/// The other way: the µs to configure for `timeout` (0 for `None`).
pub fn pod_gro_flush_micros(timeout: Option<Duration>) -> u64 {
    timeout.map_or(0, |t| t.as_micros() as u64)
}

/// The features [`Handle::set_pod_udp_coalescing`] turns on.
pub const POD_FEATURES: [&str; 2] = ["rx-gro", "rx-udp-gro-forwarding"];

impl Handle {
    /// Gives the host end `link` of a pod's veth what coalesces the pod's UDP: GRO, UDP GRO
    /// forwarding and the GRO flush timeout `timeout` ([`POD_GRO_FLUSH_TIMEOUT`] by default);
    /// with `None`, takes them away again (a veth's own defaults: no GRO, no timeout). When the
    /// timeout cannot be set, the features are put back as they were.
    pub fn set_pod_udp_coalescing(&mut self, link: &str, timeout: Option<Duration>) -> Result<()> {
        let before = self.features(link)?;
        self.set_features(link, &POD_FEATURES.map(|f| (f, timeout.is_some())))?;
        self.set_gro_flush_timeout(link, timeout.unwrap_or_default()).inspect_err(|_| {
            let was = POD_FEATURES.map(|f| (f, before.iter().any(|(n, on)| n == f && *on)));
            let _ = self.set_features(link, &was);
        })
    }

    /// Whether `link` coalesces as [`set_pod_udp_coalescing`](Self::set_pod_udp_coalescing)
    /// with `timeout` left it.
    pub fn pod_udp_coalescing_is(&mut self, link: &str, timeout: Option<Duration>) -> Result<bool> {
        let features = self.features(link)?;
        let on = POD_FEATURES.iter().all(|want| features.iter().any(|(n, a)| n == want && *a == timeout.is_some()));
        Ok(on && self.gro_flush_timeout(link)? == timeout.unwrap_or_default())
    }

    /// Turns each named feature of `link` on or off; an error if the kernel knows no feature
    /// of that name or leaves one as it was.
    pub fn set_features(&mut self, link: &str, wanted: &[(&str, bool)]) -> Result<()> {
        let names = self.feature_names(link)?;
        let words = names.len().div_ceil(32);
        let (mut valid, mut requested) = (vec![0u32; words], vec![0u32; words]);
        for &(name, on) in wanted {
            let bit = names.iter().position(|n| n == name).ok_or_else(|| Error::Invalid(format!("no feature named {name:?} on {link} in namespace {}", self.namespace())))?;
            valid[bit / 32] |= 1 << (bit % 32);
            if on {
                requested[bit / 32] |= 1 << (bit % 32);
            }
        }
        sys::ethtool_set_features(self.fd(), link, &valid, &requested).map_err(|e| self.kernel_error("set features of", link, e))?;
        let active = self.active_features(link, names)?;
        for &(name, on) in wanted {
            if active.iter().any(|(n, a)| n == name && *a != on) {
                let state = if on { "on" } else { "off" };
                return Err(Error::Invalid(format!("the kernel did not turn {name} {state} on {link} in namespace {}", self.namespace())));
            }
        }
        Ok(())
    }

    /// Every feature of `link` by name, and whether it is active.
    pub fn features(&mut self, link: &str) -> Result<Vec<(String, bool)>> {
        let names = self.feature_names(link)?;
        self.active_features(link, names)
    }

    /// `names` (the kernel's, by bit) each with whether it is active on `link`.
    fn active_features(&self, link: &str, names: Vec<String>) -> Result<Vec<(String, bool)>> {
        let active = sys::ethtool_active_features(self.fd(), link, names.len().div_ceil(32)).map_err(|e| self.kernel_error("read features of", link, e))?;
        Ok(names.into_iter().enumerate().map(|(bit, n)| (n, active[bit / 32] & (1 << (bit % 32)) != 0)).collect())
    }

    fn feature_names(&mut self, link: &str) -> Result<Vec<String>> {
        self.link(link)?; // a missing link is reported as such
        sys::ethtool_feature_names(self.fd(), link).map_err(|e| self.kernel_error("read feature names of", link, e))
    }

    /// Sets the GRO flush timeout of `link`'s NAPI contexts (nanosecond resolution).
    pub fn set_gro_flush_timeout(&mut self, link: &str, timeout: Duration) -> Result<()> {
        self.link(link)?;
        let value = timeout.as_nanos().to_string();
        self.in_own_sysfs(link, |sys| std::fs::write(sys.join("class/net").join(link).join("gro_flush_timeout"), &value))
            .map_err(|e| self.kernel_error("set the GRO flush timeout of", link, e))
    }

    /// The GRO flush timeout of `link`.
    pub fn gro_flush_timeout(&mut self, link: &str) -> Result<Duration> {
        self.link(link)?;
        let text = self
            .in_own_sysfs(link, |sys| std::fs::read_to_string(sys.join("class/net").join(link).join("gro_flush_timeout")))
            .map_err(|e| self.kernel_error("read the GRO flush timeout of", link, e))?;
        let ns: u64 = text.trim().parse().map_err(|_| Error::Invalid(format!("gro_flush_timeout of {link} reads {text:?}")))?;
        Ok(Duration::from_nanos(ns))
    }

    /// Runs `f` with the path of a sysfs that shows this handle's namespace: on a thread that
    /// enters the namespace of the handle's socket, with a private mount namespace and a sysfs
    /// mounted there (as `ip netns exec` does); both go with the thread. The calling process's
    /// own `/sys` may show another namespace's devices, even ones of the same name.
    fn in_own_sysfs<T: Send>(&self, link: &str, f: impl FnOnce(&Path) -> io::Result<T> + Send) -> io::Result<T> {
        if link.contains('/') || link.starts_with('.') {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a link name"));
        }
        let netns = sys::socket_netns(self.fd())?;
        std::thread::scope(|s| {
            s.spawn(move || {
                setns(&netns, CloneFlags::CLONE_NEWNET)?;
                unshare(CloneFlags::CLONE_NEWNS)?;
                mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_SLAVE, None::<&str>)?;
                mount(Some("sysfs"), "/sys", Some("sysfs"), MsFlags::empty(), None::<&str>)?;
                f(Path::new("/sys"))
            })
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })
    }
}

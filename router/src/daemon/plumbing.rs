//! Host plumbing: the bridge `weft`, the TAP `weft-tap` on it and, with the fast path, the VXLAN
//! device `weft-vxlan` on it, created idempotently and repaired when someone changes or deletes
//! them.
//!
//! The TAP port and the VXLAN port are isolated on the bridge: frames never pass between the two
//! overlays, so they cannot loop between hosts. The VXLAN port learns nothing and floods nothing
//! (broadcast, multicast and unknown unicast go to `weft-tap` only): the bridge sends it only
//! the MACs the router programs, and a local entry of this peer's heartbeat MAC on it hands
//! heartbeats up to the bridge device. With the fast path off, `weft-vxlan` is removed.
//!
//! At start, [`coalesce_pod_ports`] gives the pods already there the UDP coalescing weft-cni
//! sets on their veths under this `--pod-udp-coalesce-us`, [`check_range`] refuses a pod range
//! that overlaps an address or a route of the host other than the bridge's own (the default
//! route aside), and [`prune_bridge_addresses`]
//! removes from the bridge the IPv4 addresses of an earlier pod range (their routes go with
//! them).

use std::net::IpAddr;
use std::time::Duration;

use weft_kernel::netlink::{BridgeFdbKind, LinkKind, PortFlags, VxlanConfig};
use weft_kernel::{Error, Handle};
use weft_mesh::ipam::Cidr;

use super::config::overlaps;
use super::fastpath::{PORT, VNI, VXLAN};

/// Names and sizes of the host's devices.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Devices {
    /// The pod bridge (`weft`).
    pub bridge: String,
    /// The router's TAP (`weft-tap`).
    pub tap: String,
    /// The MTU pods get (`--mtu`, by default [`DEFAULT_MTU`](crate::daemon::DEFAULT_MTU)), set
    /// on the bridge, the TAP and the VXLAN device.
    pub mtu: u32,
    /// With the fast path: this peer's heartbeat MAC (the VXLAN device exists); without: `None`
    /// (it does not).
    pub fastpath: Option<[u8; 6]>,
}

impl Default for Devices {
    fn default() -> Self {
        Devices { bridge: "weft".into(), tap: "weft-tap".into(), mtu: crate::daemon::DEFAULT_MTU, fastpath: None }
    }
}

/// What [`ensure`] had to change; empty when everything was already right.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Repairs(pub Vec<String>);

/// Makes the bridge exist and be up, and the TAP (which the caller keeps open) be attached to
/// it, isolated, up, with the configured MTU. Fails with [`Error::NoSuchLink`] for the TAP if it
/// is gone (someone deleted it): the caller reopens it and calls again.
pub fn ensure(nl: &mut Handle, dev: &Devices) -> Result<Repairs, Error> {
    let mut done = Vec::new();
    let bridge = match nl.find_link(&dev.bridge)? {
        Some(b) => b,
        None => {
            nl.add_link(&dev.bridge, &LinkKind::Bridge)?;
            done.push(format!("created bridge {}", dev.bridge));
            nl.link(&dev.bridge)?
        }
    };
    if !bridge.up {
        nl.set_up(&dev.bridge)?;
        done.push(format!("set bridge {} up", dev.bridge));
    }
    let tap = nl.link(&dev.tap)?;
    if tap.mtu != dev.mtu {
        nl.set_mtu(&dev.tap, dev.mtu)?;
        done.push(format!("set MTU of {} to {}", dev.tap, dev.mtu));
    }
    if tap.master != Some(bridge.index) {
        nl.set_master(&dev.tap, &dev.bridge)?;
        done.push(format!("attached {} to {}", dev.tap, dev.bridge));
    }
    // The kernel reports port flags only for attached ports; read them again after attaching.
    let tap = nl.link(&dev.tap)?;
    if tap.isolated != Some(true) {
        nl.set_isolated(&dev.tap, true)?;
        done.push(format!("isolated {} on {}", dev.tap, dev.bridge));
    }
    if !tap.up {
        nl.set_up(&dev.tap)?;
        done.push(format!("set {} up", dev.tap));
    }
    match dev.fastpath {
        Some(mac) => ensure_vxlan(nl, dev, bridge.index, mac, &mut done)?,
        None => {
            if nl.delete_link_if_exists(VXLAN)? {
                done.push(format!("removed {VXLAN}: the fast path is off"));
            }
        }
    }
    Ok(Repairs(done))
}

/// Gives every veth port of `bridge` (a pod's host end) the UDP coalescing `coalesce` says
/// (`weft_kernel::offload`; `None`: none), where it differs: pods attached by an earlier version,
/// or under another `--pod-udp-coalesce-us`, keep their veths across a restart. Returns what was
/// changed, and the ports it could not change with why (the pod still works).
pub fn coalesce_pod_ports(nl: &mut Handle, bridge: &str, coalesce: Option<Duration>) -> Result<(Repairs, Vec<String>), Error> {
    let Some(br) = nl.find_link(bridge)? else { return Ok((Repairs::default(), Vec::new())) };
    let (mut done, mut failed) = (Vec::new(), Vec::new());
    let what = match coalesce {
        Some(t) => format!("UDP coalescing set ({} µs)", t.as_micros()),
        None => "UDP coalescing turned off".to_owned(),
    };
    for port in nl.links()?.into_iter().filter(|l| l.master == Some(br.index) && l.kind.as_deref() == Some("veth")) {
        let r = match nl.pod_udp_coalescing_is(&port.name, coalesce) {
            Ok(true) => continue,
            Ok(false) => nl.set_pod_udp_coalescing(&port.name, coalesce),
            Err(e) => Err(e),
        };
        match r {
            Ok(()) => done.push(format!("pod port {}: {what}", port.name)),
            // Gone meanwhile (its pod deleted): nothing to do.
            Err(e) if e.is_not_found() => {}
            Err(e) => failed.push(format!("pod port {}: {what} failed: {}", port.name, weft_kernel::chain(&e))),
        }
    }
    Ok((Repairs(done), failed))
}

/// The VXLAN device, as the module doc says.
fn ensure_vxlan(nl: &mut Handle, dev: &Devices, bridge: u32, heartbeat_mac: [u8; 6], done: &mut Vec<String>) -> Result<(), Error> {
    let vx = match nl.find_link(VXLAN)? {
        Some(l) if l.kind.as_deref() == Some("vxlan") => l,
        other => {
            if other.is_some() {
                nl.delete_link(VXLAN)?;
                done.push(format!("removed a {VXLAN} that is not a VXLAN device"));
            }
            let cfg = VxlanConfig { vni: VNI, port: PORT, local: None, underlay: None, learning: false };
            nl.add_link(VXLAN, &LinkKind::Vxlan(cfg))?;
            done.push(format!("created {VXLAN} (VNI {VNI:#x}, UDP {PORT})"));
            nl.link(VXLAN)?
        }
    };
    if vx.mtu != dev.mtu {
        nl.set_mtu(VXLAN, dev.mtu)?;
        done.push(format!("set MTU of {VXLAN} to {}", dev.mtu));
    }
    if vx.master != Some(bridge) {
        nl.set_master(VXLAN, &dev.bridge)?;
        done.push(format!("attached {VXLAN} to {}", dev.bridge));
    }
    let vx = nl.link(VXLAN)?;
    if vx.isolated != Some(true) {
        nl.set_isolated(VXLAN, true)?;
        done.push(format!("isolated {VXLAN} on {}", dev.bridge));
    }
    if vx.port != Some(PortFlags::QUIET) {
        nl.set_port_flags(VXLAN, PortFlags::QUIET)?;
        done.push(format!("turned learning and flooding off on {VXLAN}"));
    }
    if !nl.bridge_fdb_entries(VXLAN)?.iter().any(|e| e.mac == heartbeat_mac && e.local) {
        nl.bridge_fdb_add(VXLAN, heartbeat_mac, BridgeFdbKind::Local)?;
        done.push(format!("heartbeat address {} local on {}", mac_text(heartbeat_mac), dev.bridge));
    }
    if !vx.up {
        nl.set_up(VXLAN)?;
        done.push(format!("set {VXLAN} up"));
    }
    Ok(())
}

fn mac_text(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Why the pod range cannot be used on this host.
#[derive(Debug, thiserror::Error)]
pub enum RangeError {
    /// An interface other than the bridge has an address whose subnet overlaps the range.
    #[error(
        "--ipalloc-range {range} overlaps {addr}/{prefix} on {link} of this host: pods would take the host's addresses; choose a range no interface of the host uses"
    )]
    Address {
        /// The pod range.
        range: Cidr,
        /// The interface.
        link: String,
        /// Its address.
        addr: IpAddr,
        /// The address's prefix length.
        prefix: u8,
    },
    /// A route (other than the default route and the bridge's) overlaps the range.
    #[error(
        "--ipalloc-range {range} overlaps the route {route} of this host: pod traffic and that route would shadow each other; choose a range no route of the host covers"
    )]
    Route {
        /// The pod range.
        range: Cidr,
        /// The route.
        route: String,
    },
    /// The host's addresses or routes could not be listed.
    #[error("cannot check --ipalloc-range against the host's addresses and routes")]
    Kernel(#[source] Error),
}

/// Refuses `range` when an IPv4 address of an interface other than `bridge`, or an IPv4 route
/// (not the default route, not through `bridge`), overlaps it.
pub fn check_range(nl: &mut Handle, range: Cidr, bridge: &str) -> Result<(), RangeError> {
    for link in nl.links().map_err(RangeError::Kernel)? {
        if link.name == bridge {
            continue;
        }
        for (addr, prefix) in nl.addresses(&link.name).map_err(RangeError::Kernel)? {
            if let IpAddr::V4(a) = addr
                && overlaps(range, a.into(), prefix)
            {
                return Err(RangeError::Address { range, link: link.name, addr, prefix });
            }
        }
    }
    for route in nl.routes().map_err(RangeError::Kernel)? {
        if let IpAddr::V4(dest) = route.dest
            && route.prefix_len > 0
            && route.dev.as_deref() != Some(bridge)
            && overlaps(range, dest.into(), route.prefix_len)
        {
            return Err(RangeError::Route { range, route: route.to_string() });
        }
    }
    Ok(())
}

/// Removes from `bridge` every IPv4 address that is not of `range` (inside it, with its prefix
/// length): what an earlier pod range left. Returns what it removed; nothing when the bridge
/// does not exist.
pub fn prune_bridge_addresses(nl: &mut Handle, bridge: &str, range: Cidr) -> Result<Repairs, Error> {
    let mut done = Vec::new();
    if nl.find_link(bridge)?.is_none() {
        return Ok(Repairs(done));
    }
    for (addr, prefix) in nl.addresses(bridge)? {
        if let IpAddr::V4(a) = addr
            && !(range.contains(a.into()) && prefix == range.prefix())
        {
            nl.delete_address(bridge, addr, prefix)?;
            done.push(format!("removed {addr}/{prefix} from bridge {bridge}: not of the pod range {range}"));
        }
    }
    Ok(Repairs(done))
}

/// Puts `gw/prefix` on `bridge` unless it is there; returns whether it added it.
pub fn ensure_bridge_address(nl: &mut Handle, bridge: &str, gw: std::net::Ipv4Addr, prefix: u8) -> Result<bool, Error> {
    let want = (IpAddr::V4(gw), prefix);
    if nl.addresses(bridge)?.contains(&want) {
        return Ok(false);
    }
    nl.add_address(bridge, want.0, prefix)?;
    Ok(true)
}

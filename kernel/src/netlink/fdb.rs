//! Forwarding-database entries (bridge FDB, and the VXLAN device's remote table) and static
//! neighbour (ARP/NDP) entries.
//!
//! A device's own table (`bridge fdb ... self`: a VXLAN device's remote endpoints) is handled by
//! [`Handle::fdb_append`], [`Handle::fdb_replace`], [`Handle::fdb_delete`], [`Handle::fdb_entries`];
//! the table of the bridge a port is attached to (`bridge fdb ... master`) by
//! [`Handle::bridge_fdb_add`], [`Handle::bridge_fdb_delete`], [`Handle::bridge_fdb_entries`].

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_APPEND, NLM_F_CREATE, NLM_F_DUMP, NLM_F_REPLACE};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage as M};

use super::Handle;
use super::addr::family;
use crate::error::Result;

/// One FDB entry of a device: frames to `mac` go to the VXLAN endpoint `dst` (for a VXLAN device)
/// or out of the device (for a bridge port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FdbEntry {
    /// The destination MAC; all zeros is the flood entry of a VXLAN device.
    pub mac: [u8; 6],
    /// The remote VXLAN endpoint, for a VXLAN device's entries.
    pub dst: Option<IpAddr>,
}

/// The kinds of bridge FDB entry the router programs on a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BridgeFdbKind {
    /// `static sticky`: frames to the MAC leave by this port; never aged, never moved by
    /// learning on another port.
    StaticSticky,
    /// `permanent` (local): frames to the MAC are handed up to the bridge device itself.
    Local,
}

/// One entry of a bridge's FDB, on one port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeFdbEntry {
    /// The MAC.
    pub mac: [u8; 6],
    /// A local entry (delivered to the bridge itself).
    pub local: bool,
    /// A static entry (never aged).
    pub is_static: bool,
    /// A sticky entry (never moved by learning).
    pub sticky: bool,
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

impl Handle {
    fn fdb_message(&mut self, dev: &str, entry: &FdbEntry) -> Result<NeighbourMessage> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = self.index(dev)?;
        msg.header.state = NeighbourState::Permanent;
        msg.header.flags = NeighbourFlags::Own;
        msg.attributes.push(NeighbourAttribute::LinkLayerAddress(entry.mac.to_vec()));
        if let Some(dst) = entry.dst {
            msg.attributes.push(NeighbourAttribute::Destination(neigh_addr(dst)));
        }
        Ok(msg)
    }

    /// Appends an FDB entry to `dev` (several entries for one MAC may coexist, as the VXLAN flood
    /// entry needs one per remote endpoint). Appending an entry that exists succeeds.
    pub fn fdb_append(&mut self, dev: &str, entry: &FdbEntry) -> Result<()> {
        let msg = self.fdb_message(dev, entry)?;
        let target = format!("{} dst {:?} on {dev}", mac_text(entry.mac), entry.dst);
        self.request("append FDB entry", &target, M::NewNeighbour(msg), NLM_F_CREATE | NLM_F_APPEND)?;
        Ok(())
    }

    /// Sets the FDB entry of `dev` for `entry.mac` to `entry` alone (any other destination of
    /// that MAC is replaced), creating it if absent.
    pub fn fdb_replace(&mut self, dev: &str, entry: &FdbEntry) -> Result<()> {
        let msg = self.fdb_message(dev, entry)?;
        let target = format!("{} dst {:?} on {dev}", mac_text(entry.mac), entry.dst);
        self.request("replace FDB entry", &target, M::NewNeighbour(msg), NLM_F_CREATE | NLM_F_REPLACE)?;
        Ok(())
    }

    fn bridge_fdb_message(&mut self, port: &str, mac: [u8; 6], kind: BridgeFdbKind) -> Result<NeighbourMessage> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = self.index(port)?;
        (msg.header.state, msg.header.flags) = match kind {
            BridgeFdbKind::StaticSticky => (NeighbourState::Noarp, NeighbourFlags::Controller | NeighbourFlags::Sticky),
            BridgeFdbKind::Local => (NeighbourState::Permanent, NeighbourFlags::Controller),
        };
        msg.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        Ok(msg)
    }

    /// Adds (or replaces) an entry for `mac` on `port` in the FDB of the bridge `port` is
    /// attached to (`bridge fdb replace MAC dev PORT master ...`).
    pub fn bridge_fdb_add(&mut self, port: &str, mac: [u8; 6], kind: BridgeFdbKind) -> Result<()> {
        let msg = self.bridge_fdb_message(port, mac, kind)?;
        let target = format!("{} on {port} (bridge)", mac_text(mac));
        self.request("add bridge FDB entry", &target, M::NewNeighbour(msg), NLM_F_CREATE | NLM_F_REPLACE)?;
        Ok(())
    }

    /// Removes the bridge FDB entry for `mac` on `port`.
    pub fn bridge_fdb_delete(&mut self, port: &str, mac: [u8; 6]) -> Result<()> {
        let msg = self.bridge_fdb_message(port, mac, BridgeFdbKind::StaticSticky)?;
        let target = format!("{} on {port} (bridge)", mac_text(mac));
        self.request("delete bridge FDB entry", &target, M::DelNeighbour(msg), 0)?;
        Ok(())
    }

    /// The entries of the bridge's FDB on `port`.
    pub fn bridge_fdb_entries(&mut self, port: &str) -> Result<Vec<BridgeFdbEntry>> {
        let index = self.index(port)?;
        let mut q = NeighbourMessage::default();
        q.header.family = AddressFamily::Bridge;
        let answers = self.request("list bridge FDB of", port, M::GetNeighbour(q), NLM_F_DUMP)?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                M::NewNeighbour(n) if n.header.ifindex == index && of_bridge(&n) => {
                    let mac = n.attributes.iter().find_map(|a| match a {
                        NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => <[u8; 6]>::try_from(l.as_slice()).ok(),
                        _ => None,
                    })?;
                    let state = u16::from(n.header.state);
                    Some(BridgeFdbEntry {
                        mac,
                        local: state & NUD_PERMANENT != 0,
                        is_static: state & NUD_NOARP != 0,
                        sticky: n.header.flags.contains(NeighbourFlags::Sticky),
                    })
                }
                _ => None,
            })
            .collect())
    }

    /// Removes an FDB entry from `dev`.
    pub fn fdb_delete(&mut self, dev: &str, entry: &FdbEntry) -> Result<()> {
        let msg = self.fdb_message(dev, entry)?;
        let target = format!("{} dst {:?} on {dev}", mac_text(entry.mac), entry.dst);
        self.request("delete FDB entry", &target, M::DelNeighbour(msg), 0)?;
        Ok(())
    }

    /// The entries of `dev`'s own FDB (not those of the bridge it is attached to).
    pub fn fdb_entries(&mut self, dev: &str) -> Result<Vec<FdbEntry>> {
        let index = self.index(dev)?;
        let mut q = NeighbourMessage::default();
        q.header.family = AddressFamily::Bridge;
        let answers = self.request("list FDB of", dev, M::GetNeighbour(q), NLM_F_DUMP)?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                M::NewNeighbour(n) if n.header.ifindex == index && !of_bridge(&n) => {
                    let mut e = FdbEntry { mac: [0; 6], dst: None };
                    for a in n.attributes {
                        match a {
                            NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => e.mac.copy_from_slice(&l),
                            NeighbourAttribute::Destination(NeighbourAddress::Inet(v)) => e.dst = Some(v.into()),
                            NeighbourAttribute::Destination(NeighbourAddress::Inet6(v)) => e.dst = Some(v.into()),
                            // Bridge-family answers carry the address as raw bytes.
                            NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => e.dst = ip_from_bytes(&b),
                            _ => {}
                        }
                    }
                    Some(e)
                }
                _ => None,
            })
            .collect())
    }

    /// Sets a permanent neighbour (ARP/NDP) entry `ip -> mac` on `dev`, replacing any other.
    pub fn set_neighbour(&mut self, dev: &str, ip: IpAddr, mac: [u8; 6]) -> Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = family(ip);
        msg.header.ifindex = self.index(dev)?;
        msg.header.state = NeighbourState::Permanent;
        msg.attributes.push(NeighbourAttribute::Destination(neigh_addr(ip)));
        msg.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
        let target = format!("{ip} lladdr {} on {dev}", mac_text(mac));
        self.request("set neighbour", &target, M::NewNeighbour(msg), NLM_F_CREATE | NLM_F_REPLACE)?;
        Ok(())
    }
}

/// `NUD_PERMANENT`: a bridge FDB entry that is local.
const NUD_PERMANENT: u16 = 0x80;
/// `NUD_NOARP`: a bridge FDB entry that is static.
const NUD_NOARP: u16 = 0x40;

/// Whether a dumped entry is the bridge's (it names the bridge as its master), not the device's.
fn of_bridge(n: &NeighbourMessage) -> bool {
    n.attributes.iter().any(|a| matches!(a, NeighbourAttribute::Controller(_)))
}

fn neigh_addr(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(v) => NeighbourAddress::Inet(v),
        IpAddr::V6(v) => NeighbourAddress::Inet6(v),
    }
}

fn ip_from_bytes(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(b).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(b).ok()?)),
        _ => None,
    }
}

//! Links: veth pairs, bridges, VXLAN devices; state, MTU, bridge master, namespace moves, and the
//! bridge-port flags weft needs (hairpin, isolation, learning, flooding).

use std::net::IpAddr;
use std::os::fd::AsRawFd;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use netlink_packet_route::RouteNetlinkMessage as M;
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, InfoVxlan,
    LinkAttribute as A, LinkFlags, LinkInfo, LinkMessage,
};

use super::Handle;
use crate::error::{Error, Result};
use crate::netns::NetNs;

/// What the kernel says about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// The link's kind (`veth`, `bridge`, `vxlan`, `tun`, ...), `None` for physical or loopback.
    pub kind: Option<String>,
    /// MTU.
    pub mtu: u32,
    /// Administratively up.
    pub up: bool,
    /// Index of the bridge (or other master) it is attached to.
    pub master: Option<u32>,
    /// Hardware address.
    pub mac: Option<[u8; 6]>,
    /// For a bridge port: hairpin mode.
    pub hairpin: Option<bool>,
    /// For a bridge port: isolated from other isolated ports.
    pub isolated: Option<bool>,
    /// For a bridge port: its learning and flooding flags.
    pub port: Option<PortFlags>,
}

/// The learning and flooding flags of a bridge port (`bridge link set dev X learning off ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortFlags {
    /// The bridge learns source MACs of frames entering by this port.
    pub learning: bool,
    /// Unknown unicast is flooded out of this port.
    pub flood: bool,
    /// Multicast is flooded out of this port.
    pub mcast_flood: bool,
    /// Broadcast is flooded out of this port.
    pub bcast_flood: bool,
}

impl PortFlags {
    /// All off: a port that learns nothing and gets only frames the FDB sends it.
    pub const QUIET: PortFlags = PortFlags { learning: false, flood: false, mcast_flood: false, bcast_flood: false };
}

/// The kinds of link this layer creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkKind {
    /// A Linux bridge.
    Bridge,
    /// A veth pair: this end, and the peer's name (created in the same namespace unless
    /// [`Handle::add_veth_pair_into`] is used).
    Veth {
        /// The peer end's name.
        peer: String,
    },
    /// A VXLAN device.
    Vxlan(VxlanConfig),
}

/// Settings of a VXLAN device (the fast path).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanConfig {
    /// VXLAN network identifier.
    pub vni: u32,
    /// UDP destination port (weft's default is 6785).
    pub port: u16,
    /// Local underlay address to send from, if fixed.
    pub local: Option<IpAddr>,
    /// Underlay device to send through, if fixed.
    pub underlay: Option<String>,
    /// Whether the device learns remote MACs by itself (weft programs the FDB: off).
    pub learning: bool,
}

impl Handle {
    /// All links in this namespace.
    pub fn links(&mut self) -> Result<Vec<Link>> {
        let answers = self.request("list links", "", M::GetLink(LinkMessage::default()), NLM_F_DUMP)?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                M::NewLink(l) => Some(link_from(l)),
                _ => None,
            })
            .collect())
    }

    /// The link named `name`.
    pub fn link(&mut self, name: &str) -> Result<Link> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(A::IfName(name.to_owned()));
        match self.request("look up link", name, M::GetLink(msg), 0) {
            Ok(answers) => answers
                .into_iter()
                .find_map(|m| match m {
                    M::NewLink(l) => Some(link_from(l)),
                    _ => None,
                })
                .ok_or_else(|| self.no_such(name)),
            Err(e) if e.is_not_found() => Err(self.no_such(name)),
            Err(e) => Err(e),
        }
    }

    /// The link named `name`, or `None` if there is none.
    pub fn find_link(&mut self, name: &str) -> Result<Option<Link>> {
        match self.link(name) {
            Ok(l) => Ok(Some(l)),
            Err(Error::NoSuchLink { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The interface index of `name`.
    pub fn index(&mut self, name: &str) -> Result<u32> {
        Ok(self.link(name)?.index)
    }

    fn no_such(&self, name: &str) -> Error {
        Error::NoSuchLink { name: name.to_owned(), ns: self.ns.clone() }
    }

    /// Creates a link. Fails with an "exists" error (see [`Error::is_exists`]) if the name is taken.
    pub fn add_link(&mut self, name: &str, kind: &LinkKind) -> Result<()> {
        let data = match kind {
            LinkKind::Bridge => (InfoKind::Bridge, None),
            LinkKind::Veth { peer } => {
                let mut p = LinkMessage::default();
                p.attributes.push(A::IfName(peer.clone()));
                (InfoKind::Veth, Some(InfoData::Veth(InfoVeth::Peer(p))))
            }
            LinkKind::Vxlan(cfg) => {
                let mut v = vec![
                    InfoVxlan::Id(cfg.vni),
                    InfoVxlan::Port(cfg.port),
                    InfoVxlan::Learning(cfg.learning),
                ];
                match cfg.local {
                    Some(IpAddr::V4(a)) => v.push(InfoVxlan::Local(a)),
                    Some(IpAddr::V6(a)) => v.push(InfoVxlan::Local6(a)),
                    None => {}
                }
                if let Some(dev) = &cfg.underlay {
                    v.push(InfoVxlan::Link(self.index(dev)?));
                }
                (InfoKind::Vxlan, Some(InfoData::Vxlan(v)))
            }
        };
        self.create(name, data.0, data.1, "create link")
    }

    /// Creates a veth pair whose `peer` end is created directly inside `peer_ns`.
    pub fn add_veth_pair_into(&mut self, name: &str, peer: &str, peer_ns: &NetNs) -> Result<()> {
        let mut p = LinkMessage::default();
        p.attributes.push(A::IfName(peer.to_owned()));
        p.attributes.push(A::NetNsFd(peer_ns.file().as_raw_fd()));
        let target = format!("{name} (peer {peer} in namespace {})", peer_ns.name());
        let mut msg = LinkMessage::default();
        msg.attributes.push(A::IfName(name.to_owned()));
        msg.attributes.push(A::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))),
        ]));
        self.request("create veth pair", &target, M::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)?;
        Ok(())
    }

    fn create(&mut self, name: &str, kind: InfoKind, data: Option<InfoData>, op: &'static str) -> Result<()> {
        let mut info = vec![LinkInfo::Kind(kind)];
        info.extend(data.map(LinkInfo::Data));
        let mut msg = LinkMessage::default();
        msg.attributes.push(A::IfName(name.to_owned()));
        msg.attributes.push(A::LinkInfo(info));
        self.request(op, name, M::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL)?;
        Ok(())
    }

    /// Deletes a link (for a veth, both ends go).
    pub fn delete_link(&mut self, name: &str) -> Result<()> {
        let index = self.index(name)?;
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.request("delete link", name, M::DelLink(msg), 0)?;
        Ok(())
    }

    /// Deletes a link if it exists; returns whether it did.
    pub fn delete_link_if_exists(&mut self, name: &str) -> Result<bool> {
        match self.delete_link(name) {
            Ok(()) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Changes an existing link: `edit` fills in the message (index already set).
    fn change(&mut self, op: &'static str, name: &str, edit: impl FnOnce(&mut LinkMessage)) -> Result<()> {
        let index = self.index(name)?;
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        edit(&mut msg);
        self.request(op, name, M::NewLink(msg), 0)?;
        Ok(())
    }

    /// Sets the link administratively up.
    pub fn set_up(&mut self, name: &str) -> Result<()> {
        self.change("set up", name, |m| {
            m.header.flags = LinkFlags::Up;
            m.header.change_mask = LinkFlags::Up;
        })
    }

    /// Sets the link administratively down.
    pub fn set_down(&mut self, name: &str) -> Result<()> {
        self.change("set down", name, |m| {
            m.header.flags = LinkFlags::empty();
            m.header.change_mask = LinkFlags::Up;
        })
    }

    /// Sets the MTU.
    pub fn set_mtu(&mut self, name: &str, mtu: u32) -> Result<()> {
        self.change("set MTU of", name, |m| m.attributes.push(A::Mtu(mtu)))
    }

    /// Sets the hardware address.
    pub fn set_mac(&mut self, name: &str, mac: [u8; 6]) -> Result<()> {
        self.change("set address of", name, |m| m.attributes.push(A::Address(mac.to_vec())))
    }

    /// Renames a link (it must be down).
    pub fn rename(&mut self, name: &str, new_name: &str) -> Result<()> {
        self.change("rename", name, |m| m.attributes.push(A::IfName(new_name.to_owned())))
    }

    /// Attaches the link to the bridge `bridge`.
    pub fn set_master(&mut self, name: &str, bridge: &str) -> Result<()> {
        let master = self.index(bridge)?;
        self.change("attach to bridge", name, |m| m.attributes.push(A::Controller(master)))
    }

    /// Detaches the link from its bridge.
    pub fn set_nomaster(&mut self, name: &str) -> Result<()> {
        self.change("detach from bridge", name, |m| m.attributes.push(A::Controller(0)))
    }

    /// Moves the link into another namespace (it disappears from this one).
    pub fn set_netns(&mut self, name: &str, ns: &NetNs) -> Result<()> {
        let fd = ns.file().as_raw_fd();
        self.change("move to another namespace", name, |m| m.attributes.push(A::NetNsFd(fd)))
    }

    /// Sets bridge-port flags on a link attached to a bridge.
    pub fn set_bridge_port(&mut self, name: &str, flags: &[InfoBridgePort]) -> Result<()> {
        let flags = flags.to_vec();
        self.change("set bridge-port flags of", name, |m| {
            m.attributes.push(A::LinkInfo(vec![
                LinkInfo::PortKind(InfoPortKind::Bridge),
                LinkInfo::PortData(InfoPortData::BridgePort(flags)),
            ]))
        })
    }

    /// Hairpin mode on a bridge port: frames may leave by the port they came in on.
    pub fn set_hairpin(&mut self, name: &str, on: bool) -> Result<()> {
        self.set_bridge_port(name, &[InfoBridgePort::HairpinMode(on)])
    }

    /// Sets a bridge port's learning and flooding flags.
    pub fn set_port_flags(&mut self, name: &str, f: PortFlags) -> Result<()> {
        self.set_bridge_port(
            name,
            &[
                InfoBridgePort::Learning(f.learning),
                InfoBridgePort::UnicastFlood(f.flood),
                InfoBridgePort::MulticastFlood(f.mcast_flood),
                InfoBridgePort::BroadcastFlood(f.bcast_flood),
            ],
        )
    }

    /// Port isolation: isolated ports of a bridge cannot send frames to each other.
    pub fn set_isolated(&mut self, name: &str, on: bool) -> Result<()> {
        self.set_bridge_port(name, &[InfoBridgePort::Isolated(on)])
    }
}

fn link_from(l: LinkMessage) -> Link {
    let mut link = Link {
        index: l.header.index,
        name: String::new(),
        kind: None,
        mtu: 0,
        up: l.header.flags.contains(LinkFlags::Up),
        master: None,
        mac: None,
        hairpin: None,
        isolated: None,
        port: None,
    };
    for a in l.attributes {
        match a {
            A::IfName(n) => link.name = n,
            A::Mtu(m) => link.mtu = m,
            A::Controller(m) if m != 0 => link.master = Some(m),
            A::Address(a) if a.len() == 6 => {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(&a);
                link.mac = Some(mac);
            }
            A::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        LinkInfo::Kind(k) => link.kind = Some(k.to_string()),
                        LinkInfo::PortData(InfoPortData::BridgePort(ps)) => {
                            let mut f = PortFlags { learning: true, flood: true, mcast_flood: true, bcast_flood: true };
                            for p in &ps {
                                match *p {
                                    InfoBridgePort::Learning(v) => f.learning = v,
                                    InfoBridgePort::UnicastFlood(v) => f.flood = v,
                                    InfoBridgePort::MulticastFlood(v) => f.mcast_flood = v,
                                    InfoBridgePort::BroadcastFlood(v) => f.bcast_flood = v,
                                    _ => {}
                                }
                            }
                            link.port = Some(f);
                            for p in ps {
                                match p {
                                    InfoBridgePort::HairpinMode(h) => link.hairpin = Some(h),
                                    InfoBridgePort::Isolated(i) => link.isolated = Some(i),
                                    _ => {}
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    link
}

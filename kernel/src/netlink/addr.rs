//! Interface addresses.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage as M};

use super::Handle;
use crate::error::Result;

impl Handle {
    /// Adds `addr/prefix_len` to the link `name`.
    pub fn add_address(&mut self, name: &str, addr: IpAddr, prefix_len: u8) -> Result<()> {
        let msg = self.address_message(name, addr, prefix_len)?;
        let target = format!("{addr}/{prefix_len} on {name}");
        self.request("add address", &target, M::NewAddress(msg), NLM_F_CREATE | NLM_F_EXCL)?;
        Ok(())
    }

    /// Removes `addr/prefix_len` from the link `name`.
    pub fn delete_address(&mut self, name: &str, addr: IpAddr, prefix_len: u8) -> Result<()> {
        let msg = self.address_message(name, addr, prefix_len)?;
        let target = format!("{addr}/{prefix_len} on {name}");
        self.request("delete address", &target, M::DelAddress(msg), 0)?;
        Ok(())
    }

    /// The addresses (with prefix lengths) on the link `name`.
    pub fn addresses(&mut self, name: &str) -> Result<Vec<(IpAddr, u8)>> {
        let index = self.index(name)?;
        let answers = self.request("list addresses", name, M::GetAddress(AddressMessage::default()), NLM_F_DUMP)?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                M::NewAddress(a) if a.header.index == index => {
                    let prefix = a.header.prefix_len;
                    a.attributes.into_iter().find_map(|at| match at {
                        AddressAttribute::Address(ip) => Some((ip, prefix)),
                        _ => None,
                    })
                }
                _ => None,
            })
            .collect())
    }

    fn address_message(&mut self, name: &str, addr: IpAddr, prefix_len: u8) -> Result<AddressMessage> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix_len > max {
            return Err(crate::Error::Invalid(format!("prefix length {prefix_len} for {addr}")));
        }
        let mut msg = AddressMessage::default();
        msg.header.index = self.index(name)?;
        msg.header.prefix_len = prefix_len;
        msg.header.scope = AddressScope::Universe;
        msg.header.family = family(addr);
        msg.attributes.push(AddressAttribute::Local(addr));
        msg.attributes.push(AddressAttribute::Address(addr));
        if let IpAddr::V4(v4) = addr {
            if prefix_len < 31 {
                let host_bits = u32::MAX.checked_shr(u32::from(prefix_len)).unwrap_or(0);
                let brd = std::net::Ipv4Addr::from(u32::from(v4) | host_bits);
                msg.attributes.push(AddressAttribute::Broadcast(brd));
            }
        }
        Ok(msg)
    }
}

pub(super) fn family(addr: IpAddr) -> AddressFamily {
    if addr.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 }
}

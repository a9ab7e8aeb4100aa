//! Routes in the main table.

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL};
use netlink_packet_route::RouteNetlinkMessage as M;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};

use super::Handle;
use super::addr::family;
use crate::error::{Error, Result};

/// A route: `dest/prefix_len`, through gateway `via` and/or out of device `dev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Destination network address.
    pub dest: IpAddr,
    /// Destination prefix length (0 for a default route).
    pub prefix_len: u8,
    /// Next-hop gateway.
    pub via: Option<IpAddr>,
    /// Output device name.
    pub dev: Option<String>,
}

impl Route {
    /// A default route via `gw`.
    pub fn default_via(gw: IpAddr) -> Route {
        let dest = if gw.is_ipv4() { IpAddr::from([0u8; 4]) } else { IpAddr::from([0u16; 8]) };
        Route { dest, prefix_len: 0, via: Some(gw), dev: None }
    }
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.dest, self.prefix_len)?;
        if let Some(v) = self.via {
            write!(f, " via {v}")?;
        }
        if let Some(d) = &self.dev {
            write!(f, " dev {d}")?;
        }
        Ok(())
    }
}

impl Handle {
    /// Adds a route to the main table.
    pub fn add_route(&mut self, route: &Route) -> Result<()> {
        let msg = self.route_message(route)?;
        self.request("add route", &route.to_string(), M::NewRoute(msg), NLM_F_CREATE | NLM_F_EXCL)?;
        Ok(())
    }

    /// Removes a route from the main table.
    pub fn delete_route(&mut self, route: &Route) -> Result<()> {
        let msg = self.route_message(route)?;
        self.request("delete route", &route.to_string(), M::DelRoute(msg), 0)?;
        Ok(())
    }

    /// The unicast routes of the main table.
    pub fn routes(&mut self) -> Result<Vec<Route>> {
        let links = self.links()?;
        let answers = self.request("list routes", "", M::GetRoute(RouteMessage::default()), NLM_F_DUMP)?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                M::NewRoute(r)
                    if r.header.table == RouteHeader::RT_TABLE_MAIN && r.header.kind == RouteType::Unicast =>
                {
                    Some(r)
                }
                _ => None,
            })
            .map(|r| {
                let v4 = r.header.address_family == netlink_packet_route::AddressFamily::Inet;
                let mut route = Route {
                    dest: if v4 { IpAddr::from([0u8; 4]) } else { IpAddr::from([0u16; 8]) },
                    prefix_len: r.header.destination_prefix_length,
                    via: None,
                    dev: None,
                };
                for a in r.attributes {
                    match a {
                        RouteAttribute::Destination(d) => route.dest = addr_of(d).unwrap_or(route.dest),
                        RouteAttribute::Gateway(g) => route.via = addr_of(g),
                        RouteAttribute::Oif(i) => {
                            route.dev = links.iter().find(|l| l.index == i).map(|l| l.name.clone())
                        }
                        _ => {}
                    }
                }
                route
            })
            .collect())
    }

    fn route_message(&mut self, route: &Route) -> Result<RouteMessage> {
        if route.via.is_none() && route.dev.is_none() {
            return Err(Error::Invalid(format!("route {route}: needs a gateway or a device")));
        }
        if route.via.is_some_and(|v| v.is_ipv4() != route.dest.is_ipv4()) {
            return Err(Error::Invalid(format!("route {route}: gateway family differs from destination")));
        }
        let mut msg = RouteMessage::default();
        msg.header.address_family = family(route.dest);
        msg.header.destination_prefix_length = route.prefix_len;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        msg.header.protocol = RouteProtocol::Static;
        msg.header.kind = RouteType::Unicast;
        msg.header.scope = if route.via.is_some() { RouteScope::Universe } else { RouteScope::Link };
        if route.prefix_len > 0 {
            msg.attributes.push(RouteAttribute::Destination(route.dest.into()));
        }
        if let Some(v) = route.via {
            msg.attributes.push(RouteAttribute::Gateway(v.into()));
        }
        if let Some(d) = &route.dev {
            msg.attributes.push(RouteAttribute::Oif(self.index(d)?));
        }
        Ok(msg)
    }
}

fn addr_of(a: RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(v) => Some(v.into()),
        RouteAddress::Inet6(v) => Some(v.into()),
        _ => None,
    }
}

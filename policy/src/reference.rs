//! The reference evaluator: the NetworkPolicy semantics written as directly as possible, to check
//! the compiler against ([`allowed`] answers for one new connection). It shares nothing with the
//! compiler but the object model.
//!
//! A connection is allowed when its source may send it (egress) and its destination may receive
//! it (ingress). A pod selected by no policy that isolates it in a direction is unrestricted in
//! that direction; otherwise the union of the rules of every such policy decides. Traffic from a
//! node to a pod on that very node is always allowed (kubelet probes). Replies of allowed
//! connections are not new connections and are not asked about here.

use std::net::Ipv4Addr;

use crate::model::{Direction, NetworkPolicy, Objects, Peer, Pod, PolicyPort, PortSpec, Protocol};

/// One end of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// The pod at this index of [`Objects::pods`] (it must have an address).
    Pod(usize),
    /// The node named so, at this address (its own traffic to its own pods is always allowed).
    Node(&'static str, Ipv4Addr),
    /// An address that is neither a pod nor a node.
    External(Ipv4Addr),
}

/// A new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    /// Who opens it.
    pub src: Endpoint,
    /// Who it is for.
    pub dst: Endpoint,
    /// Its protocol.
    pub protocol: Protocol,
    /// Its destination port.
    pub port: u16,
}

/// Whether `objects` allow `flow`.
pub fn allowed(objects: &Objects, flow: &Flow) -> bool {
    if let (Endpoint::Node(node, _), Endpoint::Pod(d)) = (flow.src, flow.dst)
        && objects.pods[d].node == node
    {
        return true;
    }
    let egress_ok = match flow.src {
        Endpoint::Pod(s) => direction_allows(objects, &objects.pods[s], Direction::Egress, flow),
        _ => true,
    };
    let ingress_ok = match flow.dst {
        Endpoint::Pod(d) => direction_allows(objects, &objects.pods[d], Direction::Ingress, flow),
        _ => true,
    };
    egress_ok && ingress_ok
}

/// Whether `pod`'s policies of `direction` let `flow` through (it is the source for egress, the
/// destination for ingress).
fn direction_allows(objects: &Objects, pod: &Pod, direction: Direction, flow: &Flow) -> bool {
    let policies: Vec<&NetworkPolicy> =
        objects.policies.iter().filter(|p| p.selects(pod) && p.applies(direction)).collect();
    if policies.is_empty() {
        return true;
    }
    let remote = match direction {
        Direction::Ingress => flow.src,
        Direction::Egress => flow.dst,
    };
    policies.iter().any(|policy| {
        policy.rules(direction).iter().any(|rule| {
            (rule.peers.is_empty() || rule.peers.iter().any(|peer| peer_matches(objects, policy, peer, remote)))
                && (rule.ports.is_empty() || rule.ports.iter().any(|port| port_matches(objects, port, flow)))
        })
    })
}

fn address(objects: &Objects, end: Endpoint) -> Option<Ipv4Addr> {
    match end {
        Endpoint::Pod(i) => objects.pods[i].ip,
        Endpoint::Node(_, ip) | Endpoint::External(ip) => Some(ip),
    }
}

fn peer_matches(objects: &Objects, policy: &NetworkPolicy, peer: &Peer, remote: Endpoint) -> bool {
    match peer {
        Peer::IpBlock(block) => address(objects, remote).is_some_and(|ip| block.contains(ip)),
        Peer::Pods { pod_selector, namespace_selector } => {
            let Endpoint::Pod(i) = remote else { return false };
            let pod = &objects.pods[i];
            let namespace_ok = match namespace_selector {
                None => pod.namespace == policy.namespace,
                Some(sel) => {
                    let empty = Default::default();
                    sel.matches(objects.namespace_labels(&pod.namespace).unwrap_or(&empty))
                }
            };
            namespace_ok && pod_selector.as_ref().is_none_or(|sel| sel.matches(&pod.labels))
        }
    }
}

fn port_matches(objects: &Objects, port: &PolicyPort, flow: &Flow) -> bool {
    if port.protocol != flow.protocol {
        return false;
    }
    match &port.port {
        PortSpec::Any => true,
        PortSpec::Range { start, end } => (*start..=*end).contains(&flow.port),
        PortSpec::Named(name) => {
            let Endpoint::Pod(d) = flow.dst else { return false };
            objects.pods[d].ports.iter().any(|cp| {
                cp.name.as_deref() == Some(name.as_str()) && cp.protocol == flow.protocol && cp.port == flow.port
            })
        }
    }
}

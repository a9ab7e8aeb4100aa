//! The compiler: objects → the [`Ruleset`] one node enforces. Pure; no I/O.
//!
//! Where it enforces: an `inet` table whose `forward` chain sees every IPv4 packet that enters or
//! leaves the pod bridge — bridged between two pods of the node, bridged to or from the overlay
//! ports on the same bridge (`weft-tap` of the sleeve, `weft-vxlan` of the fast path; with bridge
//! netfilter on, bridged IPv4 passes the IP hooks with the bridge as both interfaces), or routed
//! between the bridge and the world — and whose `input` chain sees pods' packets to the node
//! itself. Each node checks egress for its own pods as sources and ingress for its own pods as
//! destinations, so a connection between nodes is checked once on each side. Traffic the node
//! itself sends to its pods (kubelet probes) never passes these hooks and is always allowed;
//! replies of allowed connections pass as conntrack `established,related`.
//!
//! What it promises: the packet interpreter of [`crate::ir`] run on the result agrees with
//! [`crate::reference::allowed`] for every new connection (the property test checks it), and the
//! rules depend only on the policies and the set of named ports they mention — pods and
//! namespaces coming, going or changing labels change set elements only, so
//! [`Ruleset::delta_to`] turns such changes into element updates.

use std::collections::{BTreeMap, BTreeSet};

use crate::ir::{Chain, Element, Hook, Match, Rule, Ruleset, Set, SetType, Side, Verdict};
use crate::model::{Cidr, Direction, NetworkPolicy, Objects, Peer, Pod, PortSpec};

/// The nftables table weft's policy lives in (family `inet`).
pub const TABLE: &str = "weft-policy";

/// The node a ruleset is compiled for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    /// The node's name, as pods' `node` fields say it.
    pub name: String,
    /// The bridge its pods (and the overlay ports) are attached to.
    pub bridge: String,
}

const ISOLATED_INGRESS: &str = "isolated_ingress";
const ISOLATED_EGRESS: &str = "isolated_egress";

/// The name of the named counter that counts drops of `policy` in `direction`:
/// `DIRECTION/NAMESPACE/NAME`.
pub fn counter_name(direction: Direction, policy: &NetworkPolicy) -> String {
    format!("{}/{}/{}", direction.name(), policy.namespace, policy.name)
}

/// Compiles `objects` into the ruleset `node` enforces.
pub fn compile(objects: &Objects, node: &Node) -> Ruleset {
    let mut policies: Vec<&NetworkPolicy> = objects.policies.iter().collect();
    policies.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let pods: Vec<&Pod> = objects.pods.iter().filter(|p| p.ip.is_some()).collect();
    let ip = |p: &Pod| p.ip.map(Element::Addr);

    let mut sets = BTreeMap::new();
    let mut counters = BTreeSet::new();
    let addr_set = |elements: BTreeSet<Element>| Set { kind: SetType::Addr, elements };

    // Named ports: one set per name any policy mentions, of every pod's (address, protocol, port)
    // under that name.
    let mut port_sets: BTreeMap<&str, String> = BTreeMap::new();
    for policy in &policies {
        for rule in policy.ingress.iter().chain(&policy.egress) {
            for port in &rule.ports {
                if let PortSpec::Named(name) = &port.port {
                    let next = format!("port_{}", port_sets.len());
                    port_sets.entry(name.as_str()).or_insert(next);
                }
            }
        }
    }
    for (name, set) in &port_sets {
        let elements = pods
            .iter()
            .flat_map(|p| {
                p.ports.iter().filter(|cp| cp.name.as_deref() == Some(*name)).filter_map(|cp| {
                    p.ip.map(|ip| Element::AddrProtoPort(ip, cp.protocol, cp.port))
                })
            })
            .collect();
        sets.insert(set.clone(), Set { kind: SetType::AddrProtoPort, elements });
    }

    let mut isolated = [BTreeSet::new(), BTreeSet::new()];
    let mut chains = BTreeMap::new();
    for direction in [Direction::Ingress, Direction::Egress] {
        let (local_side, remote_side, allow) = match direction {
            Direction::Ingress => (Side::Dst, Side::Src, Verdict::Accept),
            Direction::Egress => (Side::Src, Side::Dst, Verdict::Return),
        };
        let mut allows = Vec::new();
        let mut drops = Vec::new();
        for (i, policy) in policies.iter().enumerate() {
            if !policy.applies(direction) {
                continue;
            }
            let selected_name = format!("p{i}");
            let selected: BTreeSet<Element> =
                pods.iter().filter(|p| p.node == node.name && policy.selects(p)).filter_map(|p| ip(p)).collect();
            isolated[direction as usize].extend(selected.iter().copied());
            sets.insert(selected_name.clone(), addr_set(selected));

            for (r, rule) in policy.rules(direction).iter().enumerate() {
                let mut peer_alternatives = Vec::new();
                for (k, peer) in rule.peers.iter().enumerate() {
                    match peer {
                        Peer::Pods { pod_selector, namespace_selector } => {
                            let name = format!("p{i}_{}_{r}_{k}", &direction.name()[..2]);
                            let empty = Default::default();
                            let elements = pods
                                .iter()
                                .filter(|p| match namespace_selector {
                                    None => p.namespace == policy.namespace,
                                    Some(sel) => sel.matches(objects.namespace_labels(&p.namespace).unwrap_or(&empty)),
                                })
                                .filter(|p| pod_selector.as_ref().is_none_or(|sel| sel.matches(&p.labels)))
                                .filter_map(|p| ip(p))
                                .collect();
                            sets.insert(name.clone(), addr_set(elements));
                            peer_alternatives.push(vec![Match::InSet(remote_side, name)]);
                        }
                        Peer::IpBlock(block) => {
                            let mut m = vec![Match::InCidr(remote_side, block.cidr)];
                            let except = outermost(&block.except);
                            if !except.is_empty() {
                                m.push(Match::NotInCidrs(remote_side, except));
                            }
                            peer_alternatives.push(m);
                        }
                    }
                }
                if rule.peers.is_empty() {
                    peer_alternatives.push(Vec::new()); // every peer
                }
                let mut port_alternatives = Vec::new();
                for port in &rule.ports {
                    let proto = Match::Protocol(port.protocol);
                    match &port.port {
                        PortSpec::Any => port_alternatives.push(vec![proto]),
                        PortSpec::Range { start, end } if start <= end => {
                            port_alternatives.push(vec![proto, Match::DstPorts(*start, *end)])
                        }
                        PortSpec::Range { .. } => {} // an empty range: this entry matches nothing
                        PortSpec::Named(name) => {
                            port_alternatives.push(vec![proto, Match::DstAddrProtoPortInSet(port_sets[name.as_str()].clone())])
                        }
                    }
                }
                if rule.ports.is_empty() {
                    port_alternatives.push(Vec::new()); // every port
                }
                for peer in &peer_alternatives {
                    for port in &port_alternatives {
                        let mut matches = vec![Match::InSet(local_side, selected_name.clone())];
                        matches.extend(peer.iter().cloned());
                        matches.extend(port.iter().cloned());
                        allows.push(Rule { matches, counter: None, verdict: allow.clone() });
                    }
                }
            }
            let counter = counter_name(direction, policy);
            counters.insert(counter.clone());
            drops.push(Rule {
                matches: vec![Match::InSet(local_side, selected_name.clone())],
                counter: Some(counter),
                verdict: Verdict::Drop,
            });
        }
        allows.extend(drops);
        chains.insert(direction, Chain { name: direction.name().to_owned(), hook: None, rules: allows });
    }
    let [isolated_ingress, isolated_egress] = isolated;
    sets.insert(ISOLATED_INGRESS.to_owned(), addr_set(isolated_ingress));
    sets.insert(ISOLATED_EGRESS.to_owned(), addr_set(isolated_egress));

    let rule = |matches, verdict| Rule { matches, counter: None, verdict };
    let to_egress = rule(vec![Match::InSet(Side::Src, ISOLATED_EGRESS.into())], Verdict::Jump("egress".into()));
    let forward = Chain {
        name: "forward".into(),
        hook: Some(Hook::Forward),
        rules: vec![
            rule(vec![Match::NeitherInterface(node.bridge.clone())], Verdict::Accept),
            rule(vec![Match::EstablishedOrRelated], Verdict::Accept),
            to_egress.clone(),
            rule(vec![Match::InSet(Side::Dst, ISOLATED_INGRESS.into())], Verdict::Jump("ingress".into())),
        ],
    };
    let input = Chain {
        name: "input".into(),
        hook: Some(Hook::Input),
        rules: vec![
            rule(vec![Match::NotInInterface(node.bridge.clone())], Verdict::Accept),
            rule(vec![Match::EstablishedOrRelated], Verdict::Accept),
            to_egress,
        ],
    };
    let mut all = vec![forward, input];
    all.extend(chains.into_values());
    Ruleset { table: TABLE.to_owned(), sets, counters, chains: all }
}

/// The prefixes of `cidrs` that lie in no other one, sorted and without duplicates (nftables
/// rejects overlapping intervals in one anonymous set; the union is the same).
fn outermost(cidrs: &[Cidr]) -> Vec<Cidr> {
    let all: BTreeSet<Cidr> = cidrs.iter().copied().collect();
    all.iter()
        .filter(|c| !all.iter().any(|o| o != *c && o.prefix_len() <= c.prefix_len() && o.contains(c.addr())))
        .copied()
        .collect()
}

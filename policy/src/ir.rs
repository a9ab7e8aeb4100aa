//! The ruleset the compiler produces, before it is rendered as nftables text: one table of named
//! sets, named counters and chains of rules — exactly the subset of nftables weft uses — and an
//! interpreter of it ([`Ruleset::verdict`]) that decides a packet as the kernel would, so the
//! compiler can be checked without a kernel.
//!
//! The interpreter's contract: base chains are tried in hook order; a rule matches when all its
//! matches hold; `Accept`/`Drop` end the evaluation, `Jump` evaluates another chain and goes on
//! after the jump if that chain returns (by `Return` or by running out of rules); a base chain
//! that runs out of rules accepts (policy accept). A hook without a base chain accepts.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use crate::model::{Cidr, Protocol};

/// The elements a set holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SetType {
    /// `ipv4_addr`.
    Addr,
    /// `ipv4_addr . inet_proto . inet_service`.
    AddrProtoPort,
}

/// A set element.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Element {
    /// An address.
    Addr(Ipv4Addr),
    /// An address, protocol and port.
    AddrProtoPort(Ipv4Addr, Protocol, u16),
}

/// A named set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Set {
    /// Its element type.
    pub kind: SetType,
    /// Its elements.
    pub elements: BTreeSet<Element>,
}

/// The hooks weft's table attaches to (`inet` family).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Hook {
    /// Forwarded and bridged packets (with bridge netfilter, bridged IPv4 passes here).
    Forward,
    /// Packets for the host itself.
    Input,
}

impl Hook {
    /// The nftables keyword.
    pub fn keyword(self) -> &'static str {
        match self {
            Hook::Forward => "forward",
            Hook::Input => "input",
        }
    }
}

/// Which address of the packet a match looks at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    /// `ip saddr`.
    Src,
    /// `ip daddr`.
    Dst,
}

/// One condition of a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Match {
    /// `iifname != NAME oifname != NAME`: neither interface is NAME.
    NeitherInterface(String),
    /// `iifname != NAME`.
    NotInInterface(String),
    /// `ct state established,related`.
    EstablishedOrRelated,
    /// The address is in the named set.
    InSet(Side, String),
    /// The address is in the prefix.
    InCidr(Side, Cidr),
    /// The address is in none of the prefixes (`!= { ... }`; never empty).
    NotInCidrs(Side, Vec<Cidr>),
    /// `meta l4proto P`.
    Protocol(Protocol),
    /// `th dport A-B`.
    DstPorts(u16, u16),
    /// `ip daddr . meta l4proto . th dport @SET`.
    DstAddrProtoPortInSet(String),
}

/// What a rule does when it matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Let the packet through.
    Accept,
    /// Drop it.
    Drop,
    /// Evaluate the named chain, then go on here if it returns.
    Jump(String),
    /// Go back to the calling chain.
    Return,
}

/// A rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    /// All must hold.
    pub matches: Vec<Match>,
    /// The named counter it counts in, if any.
    pub counter: Option<String>,
    /// The verdict.
    pub verdict: Verdict,
}

/// A chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    /// Its name.
    pub name: String,
    /// The hook of a base chain (filter type, priority filter, policy accept); `None` for a
    /// regular chain.
    pub hook: Option<Hook>,
    /// Its rules, in order.
    pub rules: Vec<Rule>,
}

/// A whole table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ruleset {
    /// The table's name (family `inet`).
    pub table: String,
    /// Named sets.
    pub sets: BTreeMap<String, Set>,
    /// Named counters.
    pub counters: BTreeSet<String>,
    /// Chains, base chains first.
    pub chains: Vec<Chain>,
}

/// A packet as the interpreter sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet<'a> {
    /// The hook it passes.
    pub hook: Hook,
    /// Input interface (with bridge netfilter, the bridge for bridged packets).
    pub iif: &'a str,
    /// Output interface (empty at the input hook).
    pub oif: &'a str,
    /// Whether conntrack calls it established or related.
    pub established: bool,
    /// Source address.
    pub src: Ipv4Addr,
    /// Destination address.
    pub dst: Ipv4Addr,
    /// Protocol.
    pub protocol: Protocol,
    /// Destination port.
    pub port: u16,
}

/// The change of set elements that takes one ruleset to another of the same shape.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Delta {
    /// Elements to add, per set.
    pub add: BTreeMap<String, Vec<Element>>,
    /// Elements to delete, per set.
    pub delete: BTreeMap<String, Vec<Element>>,
}

impl Delta {
    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.delete.is_empty()
    }
}

/// How deep jumps may nest before the interpreter gives up (nftables allows 16).
const MAX_JUMPS: usize = 16;

enum Outcome {
    Accept,
    Drop,
    Return,
}

impl Ruleset {
    /// Whether the packet passes the table (the interpreter; see the module doc). A jump to a
    /// missing chain or deeper than nftables allows counts as a drop.
    pub fn verdict(&self, packet: &Packet<'_>) -> bool {
        match self.chains.iter().find(|c| c.hook == Some(packet.hook)) {
            None => true,
            Some(chain) => !matches!(self.run(chain, packet, 0), Outcome::Drop),
        }
    }

    fn run(&self, chain: &Chain, packet: &Packet<'_>, depth: usize) -> Outcome {
        for rule in &chain.rules {
            if !rule.matches.iter().all(|m| self.holds(m, packet)) {
                continue;
            }
            match &rule.verdict {
                Verdict::Accept => return Outcome::Accept,
                Verdict::Drop => return Outcome::Drop,
                Verdict::Return => return Outcome::Return,
                Verdict::Jump(name) => {
                    let Some(target) = self.chains.iter().find(|c| &c.name == name) else { return Outcome::Drop };
                    if depth >= MAX_JUMPS {
                        return Outcome::Drop;
                    }
                    match self.run(target, packet, depth + 1) {
                        Outcome::Return => continue,
                        done => return done,
                    }
                }
            }
        }
        Outcome::Return
    }

    fn holds(&self, m: &Match, p: &Packet<'_>) -> bool {
        let addr = |side: &Side| match side {
            Side::Src => p.src,
            Side::Dst => p.dst,
        };
        match m {
            Match::NeitherInterface(name) => p.iif != name && p.oif != name,
            Match::NotInInterface(name) => p.iif != name,
            Match::EstablishedOrRelated => p.established,
            Match::InSet(side, set) => self.contains(set, &Element::Addr(addr(side))),
            Match::InCidr(side, cidr) => cidr.contains(addr(side)),
            Match::NotInCidrs(side, cidrs) => !cidrs.iter().any(|c| c.contains(addr(side))),
            Match::Protocol(proto) => p.protocol == *proto,
            Match::DstPorts(lo, hi) => (*lo..=*hi).contains(&p.port),
            Match::DstAddrProtoPortInSet(set) => self.contains(set, &Element::AddrProtoPort(p.dst, p.protocol, p.port)),
        }
    }

    fn contains(&self, set: &str, element: &Element) -> bool {
        self.sets.get(set).is_some_and(|s| s.elements.contains(element))
    }

    /// The set element changes that turn `self` into `next`, if the two differ only in set
    /// elements (same table, set names and types, counters and chains); `None` otherwise.
    pub fn delta_to(&self, next: &Ruleset) -> Option<Delta> {
        if self.table != next.table
            || self.counters != next.counters
            || self.chains != next.chains
            || self.sets.len() != next.sets.len()
        {
            return None;
        }
        let mut delta = Delta::default();
        for ((name, old), (next_name, new)) in self.sets.iter().zip(&next.sets) {
            if name != next_name || old.kind != new.kind {
                return None;
            }
            let add: Vec<Element> = new.elements.difference(&old.elements).copied().collect();
            let delete: Vec<Element> = old.elements.difference(&new.elements).copied().collect();
            if !add.is_empty() {
                delta.add.insert(name.clone(), add);
            }
            if !delete.is_empty() {
                delta.delete.insert(name.clone(), delete);
            }
        }
        Some(delta)
    }

    /// Applies `delta` to the sets (the interpreter's view of an applied delta).
    pub fn apply(&mut self, delta: &Delta) {
        for (name, elements) in &delta.delete {
            if let Some(set) = self.sets.get_mut(name) {
                for e in elements {
                    set.elements.remove(e);
                }
            }
        }
        for (name, elements) in &delta.add {
            if let Some(set) = self.sets.get_mut(name) {
                set.elements.extend(elements.iter().copied());
            }
        }
    }
}

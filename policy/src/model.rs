//! The objects policy is computed from: a plain model of the parts of Kubernetes `Pod`,
//! `Namespace` and `networking.k8s.io/v1` `NetworkPolicy` that decide what may talk to what.
//!
//! Field meanings follow the Kubernetes API; where the API leaves something optional the model
//! says what absence means (see each field). Values are assumed validated as the API server
//! validates them; anything the API server would reject still has a defined meaning here and
//! never panics (an `In` with no values matches nothing, a peer with neither selector means every
//! pod of the policy's namespace).

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// Labels of a pod or namespace.
pub type Labels = BTreeMap<String, String>;

/// A transport protocol a policy port names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP (the API's default).
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
}

impl Protocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    /// The nftables keyword (`tcp`, `udp`, `sctp`).
    pub fn keyword(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// A port a container declares (`spec.containers[].ports[]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerPort {
    /// The port's name, which policies may refer to.
    pub name: Option<String>,
    /// The container port number.
    pub port: u16,
    /// Its protocol.
    pub protocol: Protocol,
}

/// A pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    /// Its namespace.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its labels.
    pub labels: Labels,
    /// Its IPv4 address; `None` until it has one (it then takes part in nothing).
    pub ip: Option<Ipv4Addr>,
    /// The node it runs on.
    pub node: String,
    /// The ports of all its containers.
    pub ports: Vec<ContainerPort>,
}

/// A namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    /// Its name.
    pub name: String,
    /// Its labels; a namespace with no object is taken to have none.
    pub labels: Labels,
}

/// The operator of a selector requirement.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operator {
    /// The label is present with one of the values.
    In,
    /// The label is absent, or present with none of the values.
    NotIn,
    /// The label is present.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

/// One `matchExpressions` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    /// The label key.
    pub key: String,
    /// The operator.
    pub operator: Operator,
    /// The values (`In`, `NotIn`; ignored by the others).
    pub values: Vec<String>,
}

/// A label selector: every `matchLabels` pair and every requirement must hold; the empty selector
/// matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    /// `matchLabels`.
    pub match_labels: Labels,
    /// `matchExpressions`.
    pub match_expressions: Vec<Requirement>,
}

impl LabelSelector {
    /// The selector that matches everything (`{}`).
    pub fn everything() -> LabelSelector {
        LabelSelector::default()
    }

    /// A selector of `matchLabels` only.
    pub fn labels<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> LabelSelector {
        LabelSelector {
            match_labels: pairs.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect(),
            match_expressions: Vec::new(),
        }
    }

    /// Whether `labels` satisfy the selector.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|r| {
                let value = labels.get(&r.key);
                match r.operator {
                    Operator::In => value.is_some_and(|v| r.values.contains(v)),
                    Operator::NotIn => value.is_none_or(|v| !r.values.contains(v)),
                    Operator::Exists => value.is_some(),
                    Operator::DoesNotExist => value.is_none(),
                }
            })
    }
}

/// An IPv4 prefix, host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr {
    addr: Ipv4Addr,
    prefix_len: u8,
}

impl Cidr {
    /// The prefix `addr/prefix_len`, host bits cleared; `None` if `prefix_len` exceeds 32.
    pub fn new(addr: Ipv4Addr, prefix_len: u8) -> Option<Cidr> {
        (prefix_len <= 32).then(|| Cidr { addr: Ipv4Addr::from(u32::from(addr) & mask(prefix_len)), prefix_len })
    }

    /// The network address.
    pub fn addr(self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(self) -> u8 {
        self.prefix_len
    }

    /// Whether `ip` lies in the prefix.
    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix_len) == u32::from(self.addr)
    }
}

fn mask(prefix_len: u8) -> u32 {
    if prefix_len == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix_len)) }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// A CIDR string that is not `a.b.c.d/n` with n at most 32.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not an IPv4 CIDR (a.b.c.d/n, n ≤ 32)")]
pub struct BadCidr(pub String);

impl FromStr for Cidr {
    type Err = BadCidr;

    fn from_str(s: &str) -> Result<Cidr, BadCidr> {
        let bad = || BadCidr(s.to_owned());
        let (addr, len) = s.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let len: u8 = len.parse().map_err(|_| bad())?;
        Cidr::new(addr, len).ok_or_else(bad)
    }
}

/// `ipBlock`: addresses in `cidr` but in none of `except`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpBlock {
    /// The block.
    pub cidr: Cidr,
    /// Holes in it.
    pub except: Vec<Cidr>,
}

impl IpBlock {
    /// Whether `ip` is in the block and in none of its holes.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.cidr.contains(ip) && !self.except.iter().any(|e| e.contains(ip))
    }
}

/// One entry of a rule's `from` or `to`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Peer {
    /// Pods: `podSelector` and/or `namespaceSelector`. Without a namespace selector, the pods of
    /// the policy's own namespace; without a pod selector, every pod of the selected namespaces.
    Pods {
        /// `podSelector`.
        pod_selector: Option<LabelSelector>,
        /// `namespaceSelector`.
        namespace_selector: Option<LabelSelector>,
    },
    /// `ipBlock`. It matches by address alone, pod addresses included (the API leaves this to the
    /// implementation; weft decides it so, as Calico does).
    IpBlock(IpBlock),
}

/// The port part of a policy port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortSpec {
    /// No `port`: every port of the protocol.
    Any,
    /// `port` (and `endPort`): the numbers `start..=end`.
    Range {
        /// First port.
        start: u16,
        /// Last port (`endPort`, or `start`).
        end: u16,
    },
    /// A named port, resolved against the destination pod's container ports of the same protocol.
    Named(String),
}

/// One entry of a rule's `ports`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyPort {
    /// The protocol (the API defaults it to TCP).
    pub protocol: Protocol,
    /// The port or ports.
    pub port: PortSpec,
}

/// An ingress or egress rule.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    /// `from` (ingress) or `to` (egress); empty or absent in the API: every peer.
    pub peers: Vec<Peer>,
    /// `ports`; empty or absent: every port and protocol.
    pub ports: Vec<PolicyPort>,
}

/// A direction of traffic, as seen from the selected pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Direction {
    /// Traffic to the pod.
    Ingress,
    /// Traffic from the pod.
    Egress,
}

impl Direction {
    /// `ingress` or `egress`.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        }
    }
}

/// A `networking.k8s.io/v1` NetworkPolicy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetworkPolicy {
    /// Its namespace (it selects pods of this namespace only).
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// `podSelector`: the pods it applies to.
    pub pod_selector: LabelSelector,
    /// `policyTypes`; `None` when absent, which means Ingress, plus Egress if there are egress
    /// rules.
    pub policy_types: Option<Vec<Direction>>,
    /// `ingress` rules (their union is allowed).
    pub ingress: Vec<Rule>,
    /// `egress` rules.
    pub egress: Vec<Rule>,
}

impl NetworkPolicy {
    /// Whether the policy isolates its pods in `direction` (after `policyTypes` defaulting).
    pub fn applies(&self, direction: Direction) -> bool {
        match &self.policy_types {
            Some(types) => types.contains(&direction),
            None => direction == Direction::Ingress || !self.egress.is_empty(),
        }
    }

    /// The rules of `direction`.
    pub fn rules(&self, direction: Direction) -> &[Rule] {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    /// Whether the policy applies to `pod` (same namespace, selector matches).
    pub fn selects(&self, pod: &Pod) -> bool {
        pod.namespace == self.namespace && self.pod_selector.matches(&pod.labels)
    }
}

/// Everything policy depends on, cluster-wide.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Objects {
    /// Every pod of the cluster.
    pub pods: Vec<Pod>,
    /// Every namespace.
    pub namespaces: Vec<Namespace>,
    /// Every NetworkPolicy.
    pub policies: Vec<NetworkPolicy>,
}

impl Objects {
    /// The labels of the namespace named `name` (none if there is no such object).
    pub fn namespace_labels(&self, name: &str) -> Option<&Labels> {
        self.namespaces.iter().find(|n| n.name == name).map(|n| &n.labels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn selector_operators() {
        let l = labels(&[("app", "web"), ("tier", "front")]);
        let req = |key: &str, operator, values: &[&str]| LabelSelector {
            match_labels: Labels::new(),
            match_expressions: vec![Requirement { key: key.into(), operator, values: values.iter().map(|v| (*v).into()).collect() }],
        };
        assert!(LabelSelector::everything().matches(&l));
        assert!(LabelSelector::labels([("app", "web")]).matches(&l));
        assert!(!LabelSelector::labels([("app", "db")]).matches(&l));
        assert!(req("app", Operator::In, &["db", "web"]).matches(&l));
        assert!(!req("app", Operator::In, &[]).matches(&l));
        assert!(!req("app", Operator::NotIn, &["web"]).matches(&l));
        assert!(req("zone", Operator::NotIn, &["a"]).matches(&l));
        assert!(req("tier", Operator::Exists, &[]).matches(&l));
        assert!(!req("tier", Operator::DoesNotExist, &[]).matches(&l));
        assert!(req("zone", Operator::DoesNotExist, &[]).matches(&l));
    }

    #[test]
    fn cidr_parse_and_contains() {
        let c: Cidr = "10.1.2.3/16".parse().unwrap();
        assert_eq!(c.to_string(), "10.1.0.0/16");
        assert!(c.contains(Ipv4Addr::new(10, 1, 200, 1)));
        assert!(!c.contains(Ipv4Addr::new(10, 2, 0, 1)));
        assert!("0.0.0.0/0".parse::<Cidr>().unwrap().contains(Ipv4Addr::new(1, 2, 3, 4)));
        assert!("10.0.0.0/33".parse::<Cidr>().is_err());
        assert!("10.0.0.0".parse::<Cidr>().is_err());
        let b = IpBlock { cidr: "10.0.0.0/8".parse().unwrap(), except: vec!["10.1.0.0/16".parse().unwrap()] };
        assert!(b.contains(Ipv4Addr::new(10, 2, 0, 1)));
        assert!(!b.contains(Ipv4Addr::new(10, 1, 0, 1)));
    }

    #[test]
    fn policy_types_default() {
        let mut p = NetworkPolicy {
            namespace: "a".into(),
            name: "p".into(),
            pod_selector: LabelSelector::everything(),
            policy_types: None,
            ingress: vec![],
            egress: vec![],
        };
        assert!(p.applies(Direction::Ingress) && !p.applies(Direction::Egress));
        p.egress.push(Rule::default());
        assert!(p.applies(Direction::Egress));
        p.policy_types = Some(vec![Direction::Egress]);
        assert!(!p.applies(Direction::Ingress) && p.applies(Direction::Egress));
    }
}

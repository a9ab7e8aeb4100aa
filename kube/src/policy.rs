//! NetworkPolicy from the API: Pods, Namespaces and `networking.k8s.io/v1` NetworkPolicies
//! (k8s-openapi types) converted to [`weft_policy::model`], and the policy loop that keeps one
//! node's nftables table in step with three informers.
//!
//! Conversion ([`pod`], [`namespace`], [`network_policy`]) is pure. A pod's address is the first
//! IPv4 address of `status.podIPs` (else `status.podIP`); host-network pods (their address is
//! the node's, policy does not apply to them) and pods that have finished (`Succeeded`,
//! `Failed`: their address may already be another pod's) have none and take part in nothing.
//! Named ports come from the ports of every container, init containers included. Every pod of
//! the cluster is converted, not only this node's: peers are selected cluster-wide, and the
//! compiler enforces on this node's pods only.
//!
//! A policy part the model cannot express is never dropped in a way that allows more: an IPv6
//! `ipBlock` (the model is IPv4) becomes a peer that matches no IPv4 address; a policy with a
//! protocol or port the API would not accept fails to convert ([`ConvertError`]) and
//! [`Objects`](PolicyStores::objects) then keeps it as a policy of its selector and types with
//! no rules (its pods are isolated, nothing allowed) and says why.
//!
//! The loop ([`run`]): waits until all three stores have listed (a partial view could select too
//! few pods and open what the table in place keeps closed), then after every change (coalesced
//! for [`Settings::settle`]) reconciles the whole store into the controller core and applies
//! what it asks for through an [`Enforce`]; a failed apply is retried after a backoff, as a full
//! update.

use std::future::Future;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use weft_policy::controller::{Controller, Event, Update};
use weft_policy::model::{self, Cidr, Direction, IpBlock, Operator, Peer, PolicyPort, PortSpec, Protocol, Requirement, Rule};

use crate::informer::Store;

/// A policy field the model cannot take.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// `protocol` is not TCP, UDP or SCTP.
    #[error("protocol {0:?} is not TCP, UDP or SCTP")]
    Protocol(String),
    /// A port number outside 1–65535.
    #[error("port {0} is not in 1-65535")]
    Port(i32),
    /// An `ipBlock` CIDR that is not a CIDR.
    #[error("ipBlock")]
    Cidr(#[source] model::BadCidr),
    /// A selector operator that is not In, NotIn, Exists or DoesNotExist.
    #[error("label selector operator {0:?} is not In, NotIn, Exists or DoesNotExist")]
    Operator(String),
    /// A `policyTypes` entry that is not Ingress or Egress.
    #[error("policyTypes entry {0:?} is not Ingress or Egress")]
    PolicyType(String),
}

fn labels(m: Option<&std::collections::BTreeMap<String, String>>) -> model::Labels {
    m.cloned().unwrap_or_default()
}

fn protocol(p: Option<&str>) -> Result<Protocol, ConvertError> {
    match p.unwrap_or("TCP") {
        "TCP" => Ok(Protocol::Tcp),
        "UDP" => Ok(Protocol::Udp),
        "SCTP" => Ok(Protocol::Sctp),
        other => Err(ConvertError::Protocol(other.to_owned())),
    }
}

fn port_number(n: i32) -> Result<u16, ConvertError> {
    u16::try_from(n).ok().filter(|p| *p > 0).ok_or(ConvertError::Port(n))
}

/// The first IPv4 address of the pod (`status.podIPs`, else `status.podIP`), if it takes part
/// in policy (not host-network, not finished).
pub fn pod_ip(p: &Pod) -> Option<Ipv4Addr> {
    if p.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
        return None;
    }
    let status = p.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let listed = status.pod_ips.iter().flatten().map(|i| i.ip.as_str());
    listed.chain(status.pod_ip.as_deref()).find_map(|ip| ip.parse::<Ipv4Addr>().ok())
}

/// A Pod as the model sees it. Container ports with a protocol the model does not know are left
/// out (a named port of that protocol then resolves to nothing on this pod).
pub fn pod(p: &Pod) -> model::Pod {
    let spec = p.spec.as_ref();
    let containers = spec.into_iter().flat_map(|s| s.containers.iter().chain(s.init_containers.iter().flatten()));
    let ports = containers
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|cp| {
            Some(model::ContainerPort {
                name: cp.name.clone(),
                port: port_number(cp.container_port).ok()?,
                protocol: protocol(cp.protocol.as_deref()).ok()?,
            })
        })
        .collect();
    model::Pod {
        namespace: p.metadata.namespace.clone().unwrap_or_default(),
        name: p.metadata.name.clone().unwrap_or_default(),
        labels: labels(p.metadata.labels.as_ref()),
        ip: pod_ip(p),
        node: spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        ports,
    }
}

/// A Namespace as the model sees it.
pub fn namespace(n: &Namespace) -> model::Namespace {
    model::Namespace { name: n.metadata.name.clone().unwrap_or_default(), labels: labels(n.metadata.labels.as_ref()) }
}

fn selector(s: &LabelSelector) -> Result<model::LabelSelector, ConvertError> {
    let mut match_expressions = Vec::new();
    for r in s.match_expressions.iter().flatten() {
        let operator = match r.operator.as_str() {
            "In" => Operator::In,
            "NotIn" => Operator::NotIn,
            "Exists" => Operator::Exists,
            "DoesNotExist" => Operator::DoesNotExist,
            other => return Err(ConvertError::Operator(other.to_owned())),
        };
        match_expressions.push(Requirement { key: r.key.clone(), operator, values: r.values.clone().unwrap_or_default() });
    }
    Ok(model::LabelSelector { match_labels: labels(s.match_labels.as_ref()), match_expressions })
}

/// A peer matching no IPv4 address (what an IPv6 block is to the IPv4 model).
fn no_ipv4() -> Peer {
    let all = Cidr::new(Ipv4Addr::UNSPECIFIED, 0).unwrap_or_else(|| unreachable!("/0 is a prefix"));
    Peer::IpBlock(IpBlock { cidr: all, except: vec![all] })
}

fn peer(p: &net::NetworkPolicyPeer) -> Result<Peer, ConvertError> {
    if let Some(b) = &p.ip_block {
        if b.cidr.contains(':') {
            return Ok(no_ipv4());
        }
        let cidr = b.cidr.parse().map_err(ConvertError::Cidr)?;
        let except = b.except.iter().flatten().filter(|e| !e.contains(':')).map(|e| e.parse().map_err(ConvertError::Cidr)).collect::<Result<_, _>>()?;
        return Ok(Peer::IpBlock(IpBlock { cidr, except }));
    }
    Ok(Peer::Pods {
        pod_selector: p.pod_selector.as_ref().map(selector).transpose()?,
        namespace_selector: p.namespace_selector.as_ref().map(selector).transpose()?,
    })
}

fn port(p: &net::NetworkPolicyPort) -> Result<PolicyPort, ConvertError> {
    let protocol = protocol(p.protocol.as_deref())?;
    let port = match &p.port {
        None => PortSpec::Any,
        Some(IntOrString::String(name)) => PortSpec::Named(name.clone()),
        Some(IntOrString::Int(n)) => {
            let start = port_number(*n)?;
            let end = match p.end_port {
                Some(e) => port_number(e)?,
                None => start,
            };
            PortSpec::Range { start, end }
        }
    };
    Ok(PolicyPort { protocol, port })
}

fn rule(peers: Option<&Vec<net::NetworkPolicyPeer>>, ports: Option<&Vec<net::NetworkPolicyPort>>) -> Result<Rule, ConvertError> {
    Ok(Rule {
        peers: peers.into_iter().flatten().map(peer).collect::<Result<_, _>>()?,
        ports: ports.into_iter().flatten().map(port).collect::<Result<_, _>>()?,
    })
}

fn policy_types(p: &net::NetworkPolicy) -> Result<Option<Vec<Direction>>, ConvertError> {
    let Some(types) = p.spec.as_ref().and_then(|s| s.policy_types.as_ref()) else { return Ok(None) };
    types
        .iter()
        .map(|t| match t.as_str() {
            "Ingress" => Ok(Direction::Ingress),
            "Egress" => Ok(Direction::Egress),
            other => Err(ConvertError::PolicyType(other.to_owned())),
        })
        .collect::<Result<_, _>>()
        .map(Some)
}

/// A NetworkPolicy as the model sees it.
pub fn network_policy(p: &net::NetworkPolicy) -> Result<model::NetworkPolicy, ConvertError> {
    let spec = p.spec.as_ref();
    let pod_selector = match spec.and_then(|s| s.pod_selector.as_ref()) {
        Some(s) => selector(s)?,
        None => model::LabelSelector::everything(),
    };
    Ok(model::NetworkPolicy {
        namespace: p.metadata.namespace.clone().unwrap_or_default(),
        name: p.metadata.name.clone().unwrap_or_default(),
        pod_selector,
        policy_types: policy_types(p)?,
        ingress: spec.and_then(|s| s.ingress.as_ref()).into_iter().flatten().map(|r| rule(r.from.as_ref(), r.ports.as_ref())).collect::<Result<_, _>>()?,
        egress: spec.and_then(|s| s.egress.as_ref()).into_iter().flatten().map(|r| rule(r.to.as_ref(), r.ports.as_ref())).collect::<Result<_, _>>()?,
    })
}

/// What a policy that does not convert becomes: its pods isolated in the directions it names
/// (both when the types cannot be read either), with nothing allowed. The selector falls back to
/// every pod of the namespace if it is the part that does not convert.
pub fn closed(p: &net::NetworkPolicy) -> model::NetworkPolicy {
    let spec = p.spec.as_ref();
    let pod_selector = spec.and_then(|s| s.pod_selector.as_ref()).and_then(|s| selector(s).ok()).unwrap_or_default();
    let has_egress = spec.and_then(|s| s.egress.as_ref()).is_some_and(|e| !e.is_empty());
    let policy_types = match policy_types(p) {
        Ok(Some(t)) => Some(t),
        Ok(None) if has_egress => Some(vec![Direction::Ingress, Direction::Egress]),
        Ok(None) => Some(vec![Direction::Ingress]),
        Err(_) => Some(vec![Direction::Ingress, Direction::Egress]),
    };
    model::NetworkPolicy {
        namespace: p.metadata.namespace.clone().unwrap_or_default(),
        name: p.metadata.name.clone().unwrap_or_default(),
        pod_selector,
        policy_types,
        ingress: Vec::new(),
        egress: Vec::new(),
    }
}

/// A policy that did not convert: `namespace/name` and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// `namespace/name`.
    pub policy: String,
    /// Why (the error chain).
    pub reason: String,
}

/// The three stores policy is computed from.
#[derive(Clone, Debug)]
pub struct PolicyStores {
    /// Every Pod of the cluster.
    pub pods: Store<Pod>,
    /// Every Namespace.
    pub namespaces: Store<Namespace>,
    /// Every NetworkPolicy.
    pub policies: Store<net::NetworkPolicy>,
}

impl PolicyStores {
    /// Whether all three have listed.
    pub fn synced(&self) -> bool {
        self.pods.synced() && self.namespaces.synced() && self.policies.synced()
    }

    /// Waits until any of the three changed; false once an informer is gone.
    pub async fn changed(&mut self) -> bool {
        tokio::select! {
            ok = self.pods.changed() => ok,
            ok = self.namespaces.changed() => ok,
            ok = self.policies.changed() => ok,
        }
    }

    /// The objects of the stores in the model, with the policies that did not convert (each kept
    /// closed, see [`closed`]).
    pub fn objects(&self) -> (model::Objects, Vec<Rejected>) {
        let pods = self.pods.read(|r| r.objects().map(|p| pod(p)).collect());
        let namespaces = self.namespaces.read(|r| r.objects().map(|n| namespace(n)).collect());
        let mut rejected = Vec::new();
        let policies = self.policies.read(|r| {
            r.objects()
                .map(|p| {
                    network_policy(p).unwrap_or_else(|e| {
                        let m = &p.metadata;
                        let policy = format!("{}/{}", m.namespace.as_deref().unwrap_or_default(), m.name.as_deref().unwrap_or_default());
                        rejected.push(Rejected { policy, reason: crate::informer::chain(&e) });
                        closed(p)
                    })
                })
                .collect()
        });
        (model::Objects { pods, namespaces, policies }, rejected)
    }
}

/// Applies updates to the node's table.
pub trait Enforce: Send + 'static {
    /// Applies `update` (one transaction); an error leaves the table as it was.
    fn apply(&mut self, update: &Update) -> impl Future<Output = Result<(), Box<dyn std::error::Error + Send + Sync>>> + Send;
    /// Called after every reconcile with the objects now enforced (whether an update was needed
    /// or not) and the policies that did not convert.
    fn enforced(&mut self, objects: Arc<model::Objects>, rejected: &[Rejected]);
}

/// Timing of the loop.
#[derive(Clone, Copy, Debug)]
pub struct Settings {
    /// How long changes are gathered after the first before reconciling.
    pub settle: Duration,
    /// The first retry delay after a failed apply (doubling up to 30 s).
    pub retry: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { settle: Duration::from_millis(20), retry: Duration::from_millis(500) }
    }
}

/// Keeps the table in step with the stores, for ever (until the task is dropped or an informer
/// is gone).
pub async fn run<E: Enforce>(mut stores: PolicyStores, mut controller: Controller, mut enforce: E, settings: Settings) {
    let mut retry = settings.retry;
    let mut reported: Vec<Rejected> = Vec::new();
    loop {
        if stores.synced() {
            let (objects, rejected) = stores.objects();
            for r in rejected.iter().filter(|r| !reported.contains(r)) {
                tracing::warn!(policy = %r.policy, "NetworkPolicy not understood, its pods are isolated with nothing allowed: {}", r.reason);
            }
            reported = rejected;
            let objects = Arc::new(objects);
            controller.handle(Event::Restarted((*objects).clone()));
            let mut failed = false;
            while let Some(update) = controller.poll_update() {
                let kind = if matches!(update, Update::Full(_)) { "full" } else { "delta" };
                let t0 = std::time::Instant::now();
                match enforce.apply(&update).await {
                    Ok(()) => {
                        controller.applied(true);
                        retry = settings.retry;
                        tracing::debug!(kind, took = ?t0.elapsed(), "network policy applied");
                    }
                    Err(e) => {
                        controller.applied(false);
                        tracing::warn!(kind, "network policy not applied: {}; again in {retry:?}", crate::informer::chain(e.as_ref()));
                        failed = true;
                        break;
                    }
                }
            }
            if failed {
                tokio::time::sleep(retry).await;
                retry = (retry * 2).min(Duration::from_secs(30));
                continue;
            }
            enforce.enforced(objects, &reported);
        }
        if !stores.changed().await {
            return;
        }
        tokio::time::sleep(settings.settle).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Container, ContainerPort, PodIP, PodSpec, PodStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelectorRequirement, ObjectMeta};
    use std::collections::BTreeMap;

    fn meta(ns: &str, name: &str, labels: &[(&str, &str)]) -> ObjectMeta {
        ObjectMeta {
            namespace: (!ns.is_empty()).then(|| ns.to_owned()),
            name: Some(name.to_owned()),
            labels: Some(labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()),
            ..ObjectMeta::default()
        }
    }

    fn k8s_pod(ips: &[&str], pod_ip: Option<&str>) -> Pod {
        Pod {
            metadata: meta("a", "web-1", &[("app", "web")]),
            spec: Some(PodSpec {
                node_name: Some("n1".into()),
                containers: vec![Container {
                    name: "c".into(),
                    ports: Some(vec![
                        ContainerPort { name: Some("http".into()), container_port: 8080, ..ContainerPort::default() },
                        ContainerPort { name: Some("dns".into()), container_port: 53, protocol: Some("UDP".into()), ..ContainerPort::default() },
                        ContainerPort { name: Some("odd".into()), container_port: 70000, ..ContainerPort::default() },
                    ]),
                    ..Container::default()
                }],
                init_containers: Some(vec![Container {
                    name: "sidecar".into(),
                    ports: Some(vec![ContainerPort { name: Some("metrics".into()), container_port: 9100, protocol: Some("SCTP".into()), ..ContainerPort::default() }]),
                    ..Container::default()
                }]),
                ..PodSpec::default()
            }),
            status: Some(PodStatus {
                phase: Some("Running".into()),
                pod_ip: pod_ip.map(str::to_owned),
                pod_ips: Some(ips.iter().map(|ip| PodIP { ip: (*ip).to_owned() }).collect()),
                ..PodStatus::default()
            }),
        }
    }

    #[test]
    fn a_pod_has_its_first_ipv4_address_node_labels_and_named_ports() {
        let p = pod(&k8s_pod(&["fd00::1", "10.32.0.5"], Some("fd00::1")));
        assert_eq!((p.namespace.as_str(), p.name.as_str(), p.node.as_str()), ("a", "web-1", "n1"));
        assert_eq!(p.ip, Some(Ipv4Addr::new(10, 32, 0, 5)), "the IPv4 one of podIPs");
        assert_eq!(p.labels, BTreeMap::from([("app".to_owned(), "web".to_owned())]));
        let port = |name: &str, port, protocol| model::ContainerPort { name: Some(name.into()), port, protocol };
        assert_eq!(p.ports, vec![port("http", 8080, Protocol::Tcp), port("dns", 53, Protocol::Udp), port("metrics", 9100, Protocol::Sctp)], "70000 left out");
        assert_eq!(pod(&k8s_pod(&[], Some("10.32.0.6"))).ip, Some(Ipv4Addr::new(10, 32, 0, 6)), "podIP when podIPs is empty");
        assert_eq!(pod(&k8s_pod(&[], None)).ip, None, "not yet started");
        let mut host = k8s_pod(&["192.0.2.11"], None);
        host.spec.as_mut().unwrap().host_network = Some(true);
        assert_eq!(pod(&host).ip, None, "host-network pods take no part");
        let mut done = k8s_pod(&["10.32.0.5"], None);
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        assert_eq!(pod(&done).ip, None, "a finished pod's address may be another's");
    }

    #[test]
    fn a_namespace_has_its_labels() {
        let n = namespace(&Namespace { metadata: meta("", "prod", &[("team", "x")]), ..Namespace::default() });
        assert_eq!(n, model::Namespace { name: "prod".into(), labels: BTreeMap::from([("team".to_owned(), "x".to_owned())]) });
    }

    fn sel(labels: &[(&str, &str)], exprs: &[(&str, &str, &[&str])]) -> LabelSelector {
        LabelSelector {
            match_labels: (!labels.is_empty()).then(|| labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()),
            match_expressions: (!exprs.is_empty()).then(|| {
                exprs
                    .iter()
                    .map(|(k, op, vs)| LabelSelectorRequirement {
                        key: (*k).to_owned(),
                        operator: (*op).to_owned(),
                        values: (!vs.is_empty()).then(|| vs.iter().map(|v| (*v).to_owned()).collect()),
                    })
                    .collect()
            }),
        }
    }

    fn np(spec: net::NetworkPolicySpec) -> net::NetworkPolicy {
        net::NetworkPolicy { metadata: meta("a", "p", &[]), spec: Some(spec) }
    }

    #[test]
    fn every_field_of_a_network_policy_converts() {
        let port = |protocol: Option<&str>, port: Option<IntOrString>, end: Option<i32>| net::NetworkPolicyPort {
            protocol: protocol.map(str::to_owned),
            port,
            end_port: end,
        };
        let spec = net::NetworkPolicySpec {
            pod_selector: Some(sel(&[("app", "web")], &[("tier", "In", &["front", "back"]), ("zone", "NotIn", &["z"]), ("x", "Exists", &[]), ("y", "DoesNotExist", &[])])),
            policy_types: Some(vec!["Ingress".into(), "Egress".into()]),
            ingress: Some(vec![
                net::NetworkPolicyIngressRule {
                    from: Some(vec![
                        net::NetworkPolicyPeer { pod_selector: Some(sel(&[("role", "client")], &[])), ..Default::default() },
                        net::NetworkPolicyPeer { namespace_selector: Some(sel(&[("team", "x")], &[])), ..Default::default() },
                        net::NetworkPolicyPeer { pod_selector: Some(sel(&[], &[])), namespace_selector: Some(sel(&[("team", "y")], &[])), ..Default::default() },
                        net::NetworkPolicyPeer { ip_block: Some(net::IPBlock { cidr: "192.0.2.0/24".into(), except: Some(vec!["192.0.2.128/25".into(), "fd00::/64".into()]) }), ..Default::default() },
                        net::NetworkPolicyPeer { ip_block: Some(net::IPBlock { cidr: "fd00::/8".into(), except: None }), ..Default::default() },
                    ]),
                    ports: Some(vec![
                        port(None, Some(IntOrString::Int(80)), None),
                        port(Some("UDP"), Some(IntOrString::Int(5000)), Some(5010)),
                        port(Some("TCP"), Some(IntOrString::String("http".into())), None),
                        port(Some("SCTP"), None, None),
                    ]),
                },
                net::NetworkPolicyIngressRule { from: None, ports: None },
            ]),
            egress: Some(vec![net::NetworkPolicyEgressRule {
                to: Some(vec![net::NetworkPolicyPeer { ip_block: Some(net::IPBlock { cidr: "10.0.0.0/8".into(), except: None }), ..Default::default() }]),
                ports: Some(vec![]),
            }]),
        };
        let p = network_policy(&np(spec)).unwrap();
        let l = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect::<model::Labels>();
        let req = |key: &str, operator, values: &[&str]| Requirement { key: key.into(), operator, values: values.iter().map(|v| (*v).into()).collect() };
        assert_eq!((p.namespace.as_str(), p.name.as_str()), ("a", "p"));
        assert_eq!(
            p.pod_selector,
            model::LabelSelector {
                match_labels: l(&[("app", "web")]),
                match_expressions: vec![
                    req("tier", Operator::In, &["front", "back"]),
                    req("zone", Operator::NotIn, &["z"]),
                    req("x", Operator::Exists, &[]),
                    req("y", Operator::DoesNotExist, &[])
                ],
            }
        );
        assert_eq!(p.policy_types, Some(vec![Direction::Ingress, Direction::Egress]));
        let msel = |pairs: &[(&str, &str)]| model::LabelSelector { match_labels: l(pairs), match_expressions: vec![] };
        let cidr = |s: &str| s.parse::<Cidr>().unwrap();
        assert_eq!(
            p.ingress[0].peers,
            vec![
                Peer::Pods { pod_selector: Some(msel(&[("role", "client")])), namespace_selector: None },
                Peer::Pods { pod_selector: None, namespace_selector: Some(msel(&[("team", "x")])) },
                Peer::Pods { pod_selector: Some(msel(&[])), namespace_selector: Some(msel(&[("team", "y")])) },
                Peer::IpBlock(IpBlock { cidr: cidr("192.0.2.0/24"), except: vec![cidr("192.0.2.128/25")] }),
                no_ipv4(),
            ]
        );
        assert_eq!(
            p.ingress[0].ports,
            vec![
                PolicyPort { protocol: Protocol::Tcp, port: PortSpec::Range { start: 80, end: 80 } },
                PolicyPort { protocol: Protocol::Udp, port: PortSpec::Range { start: 5000, end: 5010 } },
                PolicyPort { protocol: Protocol::Tcp, port: PortSpec::Named("http".into()) },
                PolicyPort { protocol: Protocol::Sctp, port: PortSpec::Any },
            ]
        );
        assert_eq!(p.ingress[1], Rule::default(), "absent from and ports: everything");
        assert_eq!(p.egress, vec![Rule { peers: vec![Peer::IpBlock(IpBlock { cidr: cidr("10.0.0.0/8"), except: vec![] })], ports: vec![] }]);
        // The IPv6 block matches no IPv4 address.
        let Peer::IpBlock(b) = no_ipv4() else { unreachable!() };
        assert!(!b.contains(Ipv4Addr::new(1, 2, 3, 4)) && !b.contains(Ipv4Addr::UNSPECIFIED));
    }

    #[test]
    fn absent_fields_take_the_apis_defaults() {
        let p = network_policy(&np(net::NetworkPolicySpec::default())).unwrap();
        assert_eq!(p.pod_selector, model::LabelSelector::everything());
        assert_eq!(p.policy_types, None, "the model applies the API's defaulting");
        assert!(p.ingress.is_empty() && p.egress.is_empty());
        let p = network_policy(&net::NetworkPolicy { metadata: meta("a", "q", &[]), spec: None }).unwrap();
        assert!(p.applies(Direction::Ingress) && !p.applies(Direction::Egress));
    }

    #[test]
    fn what_does_not_convert_is_an_error_and_the_policy_is_kept_closed() {
        let bad_port = |protocol: Option<&str>, port: i32| {
            np(net::NetworkPolicySpec {
                pod_selector: Some(sel(&[("app", "web")], &[])),
                ingress: Some(vec![net::NetworkPolicyIngressRule {
                    from: None,
                    ports: Some(vec![net::NetworkPolicyPort { protocol: protocol.map(str::to_owned), port: Some(IntOrString::Int(port)), end_port: None }]),
                }]),
                egress: Some(vec![net::NetworkPolicyEgressRule::default()]),
                ..Default::default()
            })
        };
        assert!(matches!(network_policy(&bad_port(Some("ICMP"), 1)), Err(ConvertError::Protocol(p)) if p == "ICMP"));
        assert!(matches!(network_policy(&bad_port(None, 0)), Err(ConvertError::Port(0))));
        assert!(matches!(network_policy(&bad_port(None, 65536)), Err(ConvertError::Port(65536))));
        let c = closed(&bad_port(None, 0));
        assert_eq!(c.pod_selector, model::LabelSelector { match_labels: [("app".to_owned(), "web".to_owned())].into(), match_expressions: vec![] });
        assert_eq!(c.policy_types, Some(vec![Direction::Ingress, Direction::Egress]));
        assert!(c.ingress.is_empty() && c.egress.is_empty());
        let bad_cidr = np(net::NetworkPolicySpec {
            ingress: Some(vec![net::NetworkPolicyIngressRule {
                from: Some(vec![net::NetworkPolicyPeer { ip_block: Some(net::IPBlock { cidr: "10.0.0.0/40".into(), except: None }), ..Default::default() }]),
                ports: None,
            }]),
            ..Default::default()
        });
        assert!(matches!(network_policy(&bad_cidr), Err(ConvertError::Cidr(_))));
        assert_eq!(closed(&bad_cidr).policy_types, Some(vec![Direction::Ingress]));
        let bad_op = np(net::NetworkPolicySpec { pod_selector: Some(sel(&[], &[("a", "Near", &[])])), ..Default::default() });
        assert!(matches!(network_policy(&bad_op), Err(ConvertError::Operator(_))));
        assert_eq!(closed(&bad_op).pod_selector, model::LabelSelector::everything(), "the namespace's every pod, closed");
        let bad_type = np(net::NetworkPolicySpec { policy_types: Some(vec!["Sideways".into()]), ..Default::default() });
        assert!(matches!(network_policy(&bad_type), Err(ConvertError::PolicyType(_))));
        assert_eq!(closed(&bad_type).policy_types, Some(vec![Direction::Ingress, Direction::Egress]));
    }
}

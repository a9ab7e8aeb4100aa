//! The compiler against the reference evaluator: random clusters of pods, namespaces and
//! policies, random new connections between pods, nodes and outside addresses; the compiled
//! rulesets of the nodes on the connection's way (run by the IR interpreter) must decide as
//! [`reference::allowed`] does. And pod churn: the element delta between two compilations turns
//! the first ruleset into the second.

use std::net::Ipv4Addr;

use proptest::prelude::*;
use weft_policy::ir::{Hook, Packet, Ruleset};
use weft_policy::model::{
    Cidr, ContainerPort, Direction, IpBlock, LabelSelector, Labels, Namespace, NetworkPolicy, Objects, Operator, Peer,
    Pod, PolicyPort, PortSpec, Protocol, Requirement, Rule,
};
use weft_policy::reference::{self, Endpoint, Flow};
use weft_policy::{Node, compile};

const NODES: [&str; 2] = ["n1", "n2"];
const NAMESPACES: [&str; 3] = ["a", "b", "c"];
const BRIDGE: &str = "weft";
/// Node addresses (their bridges' gateways), outside the pods' addresses.
const NODE_IPS: [Ipv4Addr; 2] = [Ipv4Addr::new(10, 32, 1, 1), Ipv4Addr::new(10, 32, 2, 1)];
const EXTERNAL: [Ipv4Addr; 2] = [Ipv4Addr::new(192, 0, 2, 7), Ipv4Addr::new(198, 51, 100, 9)];

fn protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![Just(Protocol::Tcp), Just(Protocol::Udp), Just(Protocol::Sctp)]
}

fn labels() -> impl Strategy<Value = Labels> {
    (
        prop::option::of(prop::sample::select(vec!["web", "db"])),
        prop::option::of(prop::sample::select(vec!["f", "b"])),
    )
        .prop_map(|(app, tier)| {
            let mut l = Labels::new();
            if let Some(a) = app {
                l.insert("app".into(), a.into());
            }
            if let Some(t) = tier {
                l.insert("tier".into(), t.into());
            }
            l
        })
}

fn selector() -> impl Strategy<Value = LabelSelector> {
    let req = (
        prop::sample::select(vec!["app", "tier", "team"]),
        prop_oneof![Just(Operator::In), Just(Operator::NotIn), Just(Operator::Exists), Just(Operator::DoesNotExist)],
        prop::collection::vec(prop::sample::select(vec!["web", "db", "f", "x"]), 0..3),
    )
        .prop_map(|(key, operator, values)| Requirement {
            key: key.into(),
            operator,
            values: values.into_iter().map(Into::into).collect(),
        });
    (labels(), prop::collection::vec(req, 0..2))
        .prop_map(|(match_labels, match_expressions)| LabelSelector { match_labels, match_expressions })
}

fn cidr() -> impl Strategy<Value = Cidr> {
    prop::sample::select(vec![
        "10.32.1.0/28", "10.32.1.8/29", "10.32.0.0/12", "10.32.2.12/30", "192.0.2.0/24", "0.0.0.0/0", "10.32.1.1/32",
        "198.51.100.0/25",
    ])
    .prop_map(|s| s.parse().expect("valid CIDR"))
}

fn peer() -> impl Strategy<Value = Peer> {
    prop_oneof![
        (prop::option::of(selector()), prop::option::of(selector()))
            .prop_map(|(pod_selector, namespace_selector)| Peer::Pods { pod_selector, namespace_selector }),
        (cidr(), prop::collection::vec(cidr(), 0..3)).prop_map(|(cidr, except)| Peer::IpBlock(IpBlock { cidr, except })),
    ]
}

fn policy_port() -> impl Strategy<Value = PolicyPort> {
    let spec = prop_oneof![
        Just(PortSpec::Any),
        (79u16..83, 0u16..3).prop_map(|(start, len)| PortSpec::Range { start, end: start + len }),
        Just(PortSpec::Range { start: 82, end: 80 }),
        prop::sample::select(vec!["http", "dns", "none"]).prop_map(|n| PortSpec::Named(n.into())),
    ];
    (protocol(), spec).prop_map(|(protocol, port)| PolicyPort { protocol, port })
}

fn rule() -> impl Strategy<Value = Rule> {
    (prop::collection::vec(peer(), 0..3), prop::collection::vec(policy_port(), 0..3))
        .prop_map(|(peers, ports)| Rule { peers, ports })
}

fn policy() -> impl Strategy<Value = NetworkPolicy> {
    (
        prop::sample::select(NAMESPACES.to_vec()),
        selector(),
        prop::option::of(prop::sample::subsequence(vec![Direction::Ingress, Direction::Egress], 0..=2)),
        prop::collection::vec(rule(), 0..3),
        prop::collection::vec(rule(), 0..3),
    )
        .prop_map(|(ns, pod_selector, policy_types, ingress, egress)| NetworkPolicy {
            namespace: ns.into(),
            name: String::new(),
            pod_selector,
            policy_types,
            ingress,
            egress,
        })
}

fn pod() -> impl Strategy<Value = Pod> {
    let port = (prop::option::of(prop::sample::select(vec!["http", "dns"])), 79u16..83, protocol())
        .prop_map(|(name, port, protocol)| ContainerPort { name: name.map(Into::into), port, protocol });
    (prop::sample::select(NAMESPACES.to_vec()), labels(), 0..NODES.len(), prop::collection::vec(port, 0..3)).prop_map(
        |(ns, labels, node, ports)| Pod {
            namespace: ns.into(),
            name: String::new(),
            labels,
            ip: None,
            node: NODES[node].into(),
            ports,
        },
    )
}

fn objects() -> impl Strategy<Value = Objects> {
    let ns_labels = prop::collection::vec(prop::option::of(prop::sample::select(vec!["x", "y"])), 3);
    (prop::collection::vec(pod(), 1..8), ns_labels, prop::collection::vec(policy(), 0..5)).prop_map(
        |(mut pods, ns_labels, mut policies)| {
            for (i, p) in pods.iter_mut().enumerate() {
                p.name = format!("pod{i}");
                // Pods of node n1 in 10.32.1.0/24, of n2 in 10.32.2.0/24; every 4th has no address yet.
                let node = if p.node == NODES[0] { 1 } else { 2 };
                p.ip = (i % 4 != 3).then(|| Ipv4Addr::new(10, 32, node, 10 + i as u8));
            }
            for (i, p) in policies.iter_mut().enumerate() {
                p.name = format!("pol{i}");
            }
            let namespaces = NAMESPACES
                .iter()
                .zip(ns_labels)
                .map(|(n, team)| Namespace {
                    name: (*n).into(),
                    labels: team.map(|t| ("team".to_owned(), t.to_owned())).into_iter().collect(),
                })
                .collect();
            Objects { pods, namespaces, policies }
        },
    )
}

/// The packets a new connection's first packet is judged as, one per node on its way.
fn path(objects: &Objects, flow: &Flow) -> Vec<(usize, Hook, &'static str, &'static str, Ipv4Addr, Ipv4Addr)> {
    let node_of = |i: usize| NODES.iter().position(|n| *n == objects.pods[i].node).expect("pod on a known node");
    let ip = |e: Endpoint| match e {
        Endpoint::Pod(i) => objects.pods[i].ip.expect("endpoint pods have addresses"),
        Endpoint::Node(_, ip) | Endpoint::External(ip) => ip,
    };
    let (src, dst) = (ip(flow.src), ip(flow.dst));
    match (flow.src, flow.dst) {
        (Endpoint::Pod(s), Endpoint::Pod(d)) if node_of(s) == node_of(d) => vec![(node_of(s), Hook::Forward, BRIDGE, BRIDGE, src, dst)],
        (Endpoint::Pod(s), Endpoint::Pod(d)) => vec![
            (node_of(s), Hook::Forward, BRIDGE, BRIDGE, src, dst), // out by weft-tap, a port of the bridge
            (node_of(d), Hook::Forward, BRIDGE, BRIDGE, src, dst), // in by weft-tap
        ],
        (Endpoint::Pod(s), Endpoint::Node(n, _)) if NODES[node_of(s)] == n => vec![(node_of(s), Hook::Input, BRIDGE, "", src, dst)],
        (Endpoint::Pod(s), _) => vec![(node_of(s), Hook::Forward, BRIDGE, "eth0", src, dst)],
        (Endpoint::Node(n, _), Endpoint::Pod(d)) if NODES[node_of(d)] == n => vec![], // the output hook: no chain
        (_, Endpoint::Pod(d)) => vec![(node_of(d), Hook::Forward, "eth0", BRIDGE, src, dst)],
        _ => unreachable!("flows have a pod at one end at least"),
    }
}

fn compiled_allows(objects: &Objects, rulesets: &[Ruleset], flow: &Flow) -> bool {
    path(objects, flow).into_iter().all(|(node, hook, iif, oif, src, dst)| {
        rulesets[node].verdict(&Packet { hook, iif, oif, established: false, src, dst, protocol: flow.protocol, port: flow.port })
    })
}

fn endpoints(objects: &Objects) -> Vec<Endpoint> {
    let mut v: Vec<Endpoint> =
        objects.pods.iter().enumerate().filter(|(_, p)| p.ip.is_some()).map(|(i, _)| Endpoint::Pod(i)).collect();
    v.extend(NODES.iter().zip(NODE_IPS).map(|(n, ip)| Endpoint::Node(n, ip)));
    v.extend(EXTERNAL.map(Endpoint::External));
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn compiled_rulesets_decide_as_the_reference(objects in objects(), flows in prop::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>(), protocol(), 79u16..83), 1..24)) {
        let rulesets: Vec<Ruleset> = NODES.iter().map(|n| compile(&objects, &Node { name: (*n).into(), bridge: BRIDGE.into() })).collect();
        let ends = endpoints(&objects);
        for (s, d, protocol, port) in flows {
            let (src, dst) = (*s.get(&ends), *d.get(&ends));
            if src == dst || !(matches!(src, Endpoint::Pod(_)) || matches!(dst, Endpoint::Pod(_))) {
                continue;
            }
            let flow = Flow { src, dst, protocol, port };
            prop_assert_eq!(compiled_allows(&objects, &rulesets, &flow), reference::allowed(&objects, &flow), "flow {:?}", flow);
        }
    }

    #[test]
    fn pod_churn_is_an_element_delta(objects in objects(), churn in prop::collection::vec((any::<prop::sample::Index>(), labels(), any::<bool>()), 1..4)) {
        let node = Node { name: NODES[0].into(), bridge: BRIDGE.into() };
        let before = compile(&objects, &node);
        let mut after_objects = objects.clone();
        for (i, labels, remove) in churn {
            if after_objects.pods.is_empty() { break; }
            let i = i.index(after_objects.pods.len());
            if remove { after_objects.pods.remove(i); } else { after_objects.pods[i].labels = labels; }
        }
        let after = compile(&after_objects, &node);
        let delta = before.delta_to(&after).expect("pod churn changes set elements only");
        let mut patched = before.clone();
        patched.apply(&delta);
        prop_assert_eq!(patched, after);
    }
}

//! A synthetic cluster for benchmarks: `pods` pods over 10 namespaces and 4 nodes (`node0` to
//! `node3`), `policies` policies with pod, namespace and ipBlock peers, named ports and port
//! ranges — the shape `policy/benches/compile.rs` and the throughput benchmark
//! (`benches/src/bin/policy_throughput.rs`) measure.

use std::net::Ipv4Addr;

use crate::model::{
    ContainerPort, Direction, IpBlock, LabelSelector, Namespace, NetworkPolicy, Objects, Peer, Pod, PolicyPort, PortSpec,
    Protocol, Rule,
};

/// Pod `i`: namespace `ns{i%10}`, labels `app=a{i%20}`, `tier=t{i%3}`, address 10.32.0.10 + i,
/// node `node{i%4}`, a named TCP port `http`.
pub fn pod(i: u32) -> Pod {
    Pod {
        namespace: format!("ns{}", i % 10),
        name: format!("pod{i}"),
        labels: [("app".to_owned(), format!("a{}", i % 20)), ("tier".to_owned(), format!("t{}", i % 3))].into(),
        ip: Some(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 32, 0, 10)) + i)),
        node: format!("node{}", i % 4),
        ports: vec![ContainerPort { name: Some("http".into()), port: 8000 + (i % 7) as u16, protocol: Protocol::Tcp }],
    }
}

/// Policy `i` in `ns{i%10}`, selecting `app=a{i%20}`: ingress from `tier=t1` of its namespace
/// and from `app=a{i+1}` of namespaces `team=team{i%3}` on the named port or UDP 5000-5100;
/// egress to 10.0.0.0/8 except the pod range.
pub fn policy(i: u32) -> NetworkPolicy {
    NetworkPolicy {
        namespace: format!("ns{}", i % 10),
        name: format!("pol{i}"),
        pod_selector: LabelSelector::labels([("app", format!("a{}", i % 20).as_str())]),
        policy_types: Some(vec![Direction::Ingress, Direction::Egress]),
        ingress: vec![Rule {
            peers: vec![
                Peer::Pods { pod_selector: Some(LabelSelector::labels([("tier", "t1")])), namespace_selector: None },
                Peer::Pods {
                    pod_selector: Some(LabelSelector::labels([("app", format!("a{}", (i + 1) % 20).as_str())])),
                    namespace_selector: Some(LabelSelector::labels([("team", format!("team{}", i % 3).as_str())])),
                },
            ],
            ports: vec![
                PolicyPort { protocol: Protocol::Tcp, port: PortSpec::Named("http".into()) },
                PolicyPort { protocol: Protocol::Udp, port: PortSpec::Range { start: 5000, end: 5100 } },
            ],
        }],
        egress: vec![Rule {
            peers: vec![Peer::IpBlock(IpBlock {
                cidr: "10.0.0.0/8".parse().expect("valid"),
                except: vec!["10.32.0.0/12".parse().expect("valid")],
            })],
            ports: vec![],
        }],
    }
}

/// `pods` pods, 10 namespaces, `policies` policies.
pub fn cluster(pods: u32, policies: u32) -> Objects {
    Objects {
        pods: (0..pods).map(pod).collect(),
        namespaces: (0..10)
            .map(|i| Namespace { name: format!("ns{i}"), labels: [("team".to_owned(), format!("team{}", i % 3))].into() })
            .collect(),
        policies: (0..policies).map(policy).collect(),
    }
}

//! Compile time of a policy change on a cluster of 1000 pods and 100 policies (the goal: under
//! 100 ms), and of a pod coming (recompile, element delta, rendering).

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{Criterion, criterion_group, criterion_main};
use weft_policy::model::{
    ContainerPort, Direction, IpBlock, LabelSelector, Namespace, NetworkPolicy, Objects, Peer, Pod, PolicyPort, PortSpec,
    Protocol, Rule,
};
use weft_policy::render::{self, CounterValues};
use weft_policy::{Node, compile};

fn pod(i: u32) -> Pod {
    Pod {
        namespace: format!("ns{}", i % 10),
        name: format!("pod{i}"),
        labels: [("app".to_owned(), format!("a{}", i % 20)), ("tier".to_owned(), format!("t{}", i % 3))].into(),
        ip: Some(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 32, 0, 10)) + i)),
        node: format!("node{}", i % 4),
        ports: vec![ContainerPort { name: Some("http".into()), port: 8000 + (i % 7) as u16, protocol: Protocol::Tcp }],
    }
}

fn policy(i: u32) -> NetworkPolicy {
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

fn cluster() -> Objects {
    Objects {
        pods: (0..1000).map(pod).collect(),
        namespaces: (0..10)
            .map(|i| Namespace { name: format!("ns{i}"), labels: [("team".to_owned(), format!("team{}", i % 3))].into() })
            .collect(),
        policies: (0..100).map(policy).collect(),
    }
}

fn bench(c: &mut Criterion) {
    let node = Node { name: "node0".into(), bridge: "weft".into() };
    let mut objects = cluster();
    let before = compile(&objects, &node);
    objects.policies.push(policy(100));
    c.bench_function("policy change: compile + render, 1000 pods 100 policies", |b| {
        b.iter(|| render::full(&compile(black_box(&objects), &node), &CounterValues::new()))
    });
    let mut churned = cluster();
    churned.pods.push(pod(1000));
    c.bench_function("pod added: compile + delta + render, 1000 pods 100 policies", |b| {
        b.iter(|| {
            let next = compile(black_box(&churned), &node);
            render::delta(&next.table, &before.delta_to(&next).expect("same shape"))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);

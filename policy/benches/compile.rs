//! Compile time of a policy change on a cluster of 1000 pods and 100 policies (the goal: under
//! 100 ms), and of a pod coming (recompile, element delta, rendering).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use weft_policy::render::{self, CounterValues};
use weft_policy::synthetic::{cluster, policy, pod};
use weft_policy::{Node, compile};

fn bench(c: &mut Criterion) {
    let node = Node { name: "node0".into(), bridge: "weft".into() };
    let mut objects = cluster(1000, 100);
    let before = compile(&objects, &node);
    objects.policies.push(policy(100));
    c.bench_function("policy change: compile + render, 1000 pods 100 policies", |b| {
        b.iter(|| render::full(&compile(black_box(&objects), &node), &CounterValues::new()))
    });
    let mut churned = cluster(1000, 100);
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

//! IPAM allocate/release rate on one peer owning the whole default range (10.32.0.0/12).
//!
//! `core/*`: the sans-IO core alone, with `held` allocations already in place; one element is
//! one allocation (each followed by its release). `persisted`: the same through
//! `PersistentIpam`, which writes the state crash-safely (temp file, fsync, rename, fsync of the
//! directory) before answering; both the allocation and the release are written, so one element
//! costs two crash-safe writes. The state directory is in the system temp dir.

use std::hint::black_box;
use std::time::Instant;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use weft_mesh::ipam::{Bootstrap, Config, Ipam, PersistentIpam, Store};
use weft_mesh::peer::PeerName;

fn peer(held: usize) -> Ipam {
    let me = PeerName::from_u64(1);
    let now = Instant::now();
    let mut ipam =
        Ipam::new(me, Config::new(Bootstrap::Seeds(vec![me])), now).expect("valid config");
    for i in 0..held {
        ipam.allocate(now, &format!("held-{i}"), "eth0")
            .expect("space");
    }
    ipam
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("ipam");
    let ids: Vec<String> = (0..1024).map(|i| format!("container-{i:08x}")).collect();
    for held in [0usize, 1000, 100_000] {
        let mut ipam = peer(held);
        let now = Instant::now();
        g.throughput(Throughput::Elements(1));
        g.bench_function(BenchmarkId::new("core/allocate+release", held), |b| {
            let mut k = 0;
            b.iter(|| {
                k = (k + 1) % ids.len();
                let a = ipam.allocate(now, &ids[k], "eth0").expect("space");
                black_box(a);
                black_box(ipam.release(&ids[k], Some("eth0")));
            })
        });
        g.throughput(Throughput::Elements(ids.len() as u64));
        g.bench_function(
            BenchmarkId::new("core/allocate-1024-then-release", held),
            |b| {
                b.iter(|| {
                    for id in &ids {
                        black_box(ipam.allocate(now, id, "eth0").expect("space"));
                    }
                    for id in &ids {
                        black_box(ipam.release(id, Some("eth0")));
                    }
                })
            },
        );
    }

    let dir = std::env::temp_dir().join(format!("weft-ipam-bench-{}", std::process::id()));
    let me = PeerName::from_u64(1);
    let store = Store::open(&dir).expect("state dir");
    let now = Instant::now();
    let mut ipam = PersistentIpam::open(me, Config::new(Bootstrap::Seeds(vec![me])), store, now)
        .expect("open");
    g.throughput(Throughput::Elements(1));
    g.sample_size(20);
    g.bench_function("persisted/allocate+release", |b| {
        let mut k = 0;
        b.iter(|| {
            k = (k + 1) % ids.len();
            black_box(ipam.allocate(now, &ids[k], "eth0").expect("space"));
            black_box(ipam.release(&ids[k], Some("eth0")).expect("persist"));
        })
    });
    g.finish();
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! The in-memory implementations behave as the API server does for the informer and the
//! registry: a watch from a compacted version fails with Gone and the informer lists again;
//! a stale write is a conflict.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use weft_kube::informer::{Backoff, Informer};
use weft_kube::memory::{MemoryRegistry, MemorySource};
use weft_kube::nodes::{self, node};
use weft_kube::registry::{self, PeerDoc, Registry, RegistryError};

async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_informer_follows_the_memory_source_through_compactions() {
    let src: MemorySource<Node> = MemorySource::new("nodes");
    src.apply(node("n1", &[("InternalIP", "192.0.2.1")]));
    let (informer, store) = Informer::new(src.clone(), Backoff { min: Duration::from_millis(10), max: Duration::from_millis(50) });
    let task = tokio::spawn(informer.run());
    let names = || store.read(|r| r.objects().map(|n| nodes::name(n).to_owned()).collect::<Vec<_>>());
    eventually("n1 listed", || names() == ["n1"]).await;
    src.apply(node("n2", &[("InternalIP", "192.0.2.2")]));
    eventually("n2 watched", || names() == ["n1", "n2"]).await;
    // Compacted under the running watch, with changes after: the watch fails with Gone, the
    // informer lists again and sees everything.
    src.compact();
    src.delete("n1");
    src.apply(node("n3", &[("InternalIP", "192.0.2.3")]));
    eventually("relisted after Gone", || names() == ["n2", "n3"]).await;
    assert_eq!(store.read(|r| r.version().map(str::to_owned)), Some(src.version().to_string()));
    task.abort();
}

#[tokio::test]
async fn the_memory_registry_refuses_stale_writes() {
    let r = MemoryRegistry::new();
    registry::register(&r, "a", "n1").await.unwrap();
    let v = r.read().await.unwrap().unwrap();
    registry::register(&r, "b", "n2").await.unwrap();
    let e = r.replace(&v.version, &PeerDoc::default()).await.unwrap_err();
    assert!(matches!(e, RegistryError::Conflict), "{e}");
    assert!(matches!(r.create(&PeerDoc::default()).await, Err(RegistryError::Conflict)));
    assert_eq!(r.doc().unwrap().peers.len(), 2, "the stale write changed nothing");
}

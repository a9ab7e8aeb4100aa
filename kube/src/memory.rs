//! In-memory implementations of [`ObjectSource`] and [`Registry`], for tests.
//!
//! [`MemorySource`] behaves as the API server does for one kind: one resourceVersion counter,
//! every change logged with its version, watches replaying the log after their version and then
//! following it; [`MemorySource::compact`] forgets the log, so a watch from an older version
//! fails with [`SourceError::Gone`] (at once, or as the next event of a running watch).
//! [`MemoryRegistry`] refuses a write naming a stale version with [`RegistryError::Conflict`].

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::registry::{PeerDoc, Registry, RegistryError, Versioned};
use crate::source::{Event, Key, Listed, Object, ObjectSource, SourceError, Watch};

#[derive(Debug)]
struct State<K> {
    objects: BTreeMap<Key, K>,
    version: u64,
    /// (version, event), oldest first; events at or below `compacted` are forgotten.
    log: VecDeque<(u64, Event<K>)>,
    compacted: u64,
}

/// An in-memory source of one kind of object.
#[derive(Debug)]
pub struct MemorySource<K> {
    state: Arc<Mutex<State<K>>>,
    tx: Arc<watch::Sender<u64>>,
    what: String,
}

impl<K> Clone for MemorySource<K> {
    fn clone(&self) -> Self {
        MemorySource { state: self.state.clone(), tx: self.tx.clone(), what: self.what.clone() }
    }
}

impl<K: Object> MemorySource<K> {
    /// An empty source, `what` naming the kind in logs.
    pub fn new(what: &str) -> MemorySource<K> {
        let state = State { objects: BTreeMap::new(), version: 0, log: VecDeque::new(), compacted: 0 };
        MemorySource { state: Arc::new(Mutex::new(state)), tx: Arc::new(watch::channel(0).0), what: what.to_owned() }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State<K>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record(&self, f: impl FnOnce(&mut State<K>, String) -> Event<K>) -> u64 {
        let v = {
            let mut s = self.lock();
            s.version += 1;
            let v = s.version;
            let ev = f(&mut s, v.to_string());
            s.log.push_back((v, ev));
            v
        };
        self.tx.send_replace(v);
        v
    }

    /// Adds or replaces `obj` (its resourceVersion is set); returns the new version.
    pub fn apply(&self, mut obj: K) -> u64 {
        self.record(|s, v| {
            obj.meta_mut().resource_version = Some(v);
            s.objects.insert(Key::of(&obj), obj.clone());
            Event::Applied(obj)
        })
    }

    /// Deletes the object named `name` (cluster-scoped) if it is there; returns the new version.
    pub fn delete(&self, name: &str) -> Option<u64> {
        self.delete_in("", name)
    }

    /// Deletes the object `name` of `namespace` (empty: cluster-scoped) if it is there; returns
    /// the new version.
    pub fn delete_in(&self, namespace: &str, name: &str) -> Option<u64> {
        let key = Key { namespace: namespace.to_owned(), name: name.to_owned() };
        let mut obj = self.lock().objects.get(&key)?.clone();
        Some(self.record(|s, v| {
            s.objects.remove(&key);
            obj.meta_mut().resource_version = Some(v);
            Event::Deleted(obj)
        }))
    }

    /// Forgets the change log: watches from any version before now fail with 410 Gone.
    pub fn compact(&self) {
        {
            let mut s = self.lock();
            s.log.clear();
            s.compacted = s.version;
        }
        // Running watches wake up and find their version too old.
        let v = self.lock().version;
        self.tx.send_replace(v);
    }

    /// The current version.
    pub fn version(&self) -> u64 {
        self.lock().version
    }
}

impl<K: Object> ObjectSource<K> for MemorySource<K> {
    fn what(&self) -> String {
        self.what.clone()
    }

    async fn list(&self) -> Result<Listed<K>, SourceError> {
        let s = self.lock();
        Ok(Listed { items: s.objects.values().cloned().collect(), version: s.version.to_string() })
    }

    async fn watch(&self, version: &str) -> Result<Watch<K>, SourceError> {
        let gone = || SourceError::Gone { version: version.to_owned() };
        let from: u64 = version.parse().map_err(|_| gone())?;
        if from < self.lock().compacted {
            return Err(gone());
        }
        let state = self.state.clone();
        let rx = self.tx.subscribe();
        let stream = futures::stream::unfold((from, rx, false), move |(cursor, mut rx, ended)| {
            let state = state.clone();
            async move {
                if ended {
                    return None;
                }
                loop {
                    let next = {
                        let s = state.lock().unwrap_or_else(|p| p.into_inner());
                        if cursor < s.compacted {
                            Some(Err(SourceError::Gone { version: cursor.to_string() }))
                        } else {
                            s.log.iter().find(|(v, _)| *v > cursor).map(|(v, e)| Ok((*v, e.clone())))
                        }
                    };
                    match next {
                        Some(Ok((v, ev))) => return Some((Ok(ev), (v, rx, false))),
                        Some(Err(e)) => return Some((Err(e), (cursor, rx, true))),
                        None => {
                            if rx.changed().await.is_err() {
                                return None;
                            }
                        }
                    }
                }
            }
        });
        Ok(Box::pin(stream))
    }
}

/// An in-memory peer registry.
#[derive(Clone, Debug, Default)]
pub struct MemoryRegistry {
    state: Arc<Mutex<Option<(u64, PeerDoc)>>>,
}

impl MemoryRegistry {
    /// An empty registry (no ConfigMap yet).
    pub fn new() -> MemoryRegistry {
        MemoryRegistry::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<(u64, PeerDoc)>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The document as it stands.
    pub fn doc(&self) -> Option<PeerDoc> {
        self.lock().as_ref().map(|(_, d)| d.clone())
    }
}

impl Registry for MemoryRegistry {
    async fn read(&self) -> Result<Option<Versioned<PeerDoc>>, RegistryError> {
        Ok(self.lock().as_ref().map(|(v, d)| Versioned { version: v.to_string(), value: d.clone() }))
    }

    async fn create(&self, doc: &PeerDoc) -> Result<String, RegistryError> {
        let mut s = self.lock();
        if s.is_some() {
            return Err(RegistryError::Conflict);
        }
        *s = Some((1, doc.clone()));
        Ok("1".into())
    }

    async fn replace(&self, version: &str, doc: &PeerDoc) -> Result<String, RegistryError> {
        let mut s = self.lock();
        match s.as_mut() {
            Some((v, d)) if v.to_string() == version => {
                *v += 1;
                *d = doc.clone();
                Ok(v.to_string())
            }
            _ => Err(RegistryError::Conflict),
        }
    }
}

//! [`Reflector`]: the local store of one kind of object and the version to watch from (sans-IO).
//!
//! It is fed what the source returns ([`Reflector::listed`], [`Reflector::apply`]) and says what
//! to do next ([`Reflector::next`]): list when it has no version (at start, and after
//! [`Reflector::expire`] on 410 Gone), else watch from the last version seen. A list replaces the
//! whole store, so objects deleted while no watch ran disappear too; until that list arrives the
//! old store stays readable (consumers never see an empty cluster in between). Every change bumps
//! [`Reflector::generation`].

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::source::{Event, Key, Listed, Object};

/// What to ask the source next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// List everything.
    List,
    /// Watch from this version.
    Watch(String),
}

/// What a list changed in the store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Relisted {
    /// Objects new to the store.
    pub added: usize,
    /// Objects whose resourceVersion changed.
    pub modified: usize,
    /// Objects gone from the store.
    pub removed: usize,
}

/// The store and the watch position.
#[derive(Debug)]
pub struct Reflector<K> {
    objects: BTreeMap<Key, Arc<K>>,
    version: Option<String>,
    synced: bool,
    generation: u64,
}

impl<K> Default for Reflector<K> {
    fn default() -> Self {
        Reflector { objects: BTreeMap::new(), version: None, synced: false, generation: 0 }
    }
}

fn version_of<K: Object>(obj: &K) -> Option<&str> {
    obj.meta().resource_version.as_deref()
}

impl<K: Object> Reflector<K> {
    /// An empty store that lists first.
    pub fn new() -> Reflector<K> {
        Reflector::default()
    }

    /// What to do next.
    pub fn next(&self) -> Step {
        match &self.version {
            Some(v) => Step::Watch(v.clone()),
            None => Step::List,
        }
    }

    /// A list arrived: it replaces the store.
    pub fn listed(&mut self, list: Listed<K>) -> Relisted {
        let mut r = Relisted::default();
        let mut fresh = BTreeMap::new();
        for obj in list.items {
            let key = Key::of(&obj);
            match self.objects.get(&key) {
                None => r.added += 1,
                Some(old) if version_of(old.as_ref()) != version_of(&obj) => r.modified += 1,
                Some(_) => {}
            }
            fresh.insert(key, Arc::new(obj));
        }
        r.removed = self.objects.keys().filter(|k| !fresh.contains_key(*k)).count();
        self.objects = fresh;
        self.version = Some(list.version);
        self.synced = true;
        self.generation += 1;
        r
    }

    /// A watch event arrived.
    pub fn apply(&mut self, ev: Event<K>) {
        match ev {
            Event::Applied(obj) => {
                self.version = version_of(&obj).map(str::to_owned).or(self.version.take());
                self.objects.insert(Key::of(&obj), Arc::new(obj));
            }
            Event::Deleted(obj) => {
                self.version = version_of(&obj).map(str::to_owned).or(self.version.take());
                self.objects.remove(&Key::of(&obj));
            }
            Event::Bookmark(v) => {
                self.version = Some(v);
                return; // the objects did not change
            }
        }
        self.generation += 1;
    }

    /// The version watched from is gone: the next step lists again. The store stays as it is
    /// until then.
    pub fn expire(&mut self) {
        self.version = None;
    }

    /// Whether a list has been stored (the store reflects the cluster, possibly a little late).
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// Bumped by every change of the objects.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The last version seen, if any.
    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }

    /// The object at `key`.
    pub fn get(&self, key: &Key) -> Option<&Arc<K>> {
        self.objects.get(key)
    }

    /// Every object, by key.
    pub fn objects(&self) -> impl Iterator<Item = &Arc<K>> + '_ {
        self.objects.values()
    }

    /// How many objects are stored.
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Node;
    use kube::api::ObjectMeta;

    fn node(name: &str, rv: &str) -> Node {
        Node { metadata: ObjectMeta { name: Some(name.into()), resource_version: Some(rv.into()), ..Default::default() }, ..Default::default() }
    }

    fn names(r: &Reflector<Node>) -> Vec<String> {
        r.objects().map(|n| n.metadata.name.clone().unwrap()).collect()
    }

    #[test]
    fn lists_then_watches_from_the_last_version_seen() {
        let mut r = Reflector::new();
        assert_eq!(r.next(), Step::List);
        assert!(!r.synced());
        r.listed(Listed { items: vec![node("a", "5"), node("b", "6")], version: "7".into() });
        assert_eq!(r.next(), Step::Watch("7".into()));
        r.apply(Event::Applied(node("c", "8")));
        r.apply(Event::Deleted(node("a", "9")));
        assert_eq!(r.next(), Step::Watch("9".into()));
        assert_eq!(names(&r), ["b", "c"]);
        let g = r.generation();
        r.apply(Event::Bookmark("12".into()));
        assert_eq!((r.next(), r.generation()), (Step::Watch("12".into()), g), "a bookmark moves the version only");
    }

    #[test]
    fn a_relist_after_gone_replaces_the_store_and_keeps_it_readable_meanwhile() {
        let mut r = Reflector::new();
        r.listed(Listed { items: vec![node("a", "1"), node("b", "2")], version: "2".into() });
        r.expire();
        assert_eq!(r.next(), Step::List);
        assert_eq!(names(&r), ["a", "b"], "still readable until the list arrives");
        // While no watch ran: a deleted, b modified, c added.
        let d = r.listed(Listed { items: vec![node("b", "7"), node("c", "8")], version: "9".into() });
        assert_eq!(d, Relisted { added: 1, modified: 1, removed: 1 });
        assert_eq!(names(&r), ["b", "c"]);
        assert_eq!(r.next(), Step::Watch("9".into()));
    }
}

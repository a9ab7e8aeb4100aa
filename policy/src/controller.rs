//! The controller core, sans-IO: a store of the objects an object source (list + watch) reports,
//! and the updates that bring the node's nftables table in line with them.
//!
//! Contract: feed it every change ([`Controller::handle`]); ask for [`Controller::poll_update`]
//! whenever convenient (changes in between are coalesced); apply what it returns and report the
//! outcome with [`Controller::applied`]. An update is a delta (set elements only) when the
//! ruleset's shape did not change since the last update known to be applied, else the whole
//! table. After a failed apply, or before the first, the next update is a full one.

use std::collections::BTreeMap;

use crate::compile::{Node, compile};
use crate::ir::Ruleset;
use crate::model::{Namespace, NetworkPolicy, Objects, Pod};
use crate::render::{self, CounterValues};

/// A change reported by the object source.
#[derive(Clone, Debug)]
pub enum Event {
    /// A pod appeared or changed.
    PodApplied(Pod),
    /// A pod is gone (namespace, name).
    PodDeleted(String, String),
    /// A namespace appeared or changed.
    NamespaceApplied(Namespace),
    /// A namespace is gone.
    NamespaceDeleted(String),
    /// A policy appeared or changed.
    PolicyApplied(NetworkPolicy),
    /// A policy is gone (namespace, name).
    PolicyDeleted(String, String),
    /// The source re-listed: everything not in the list is gone.
    Restarted(Objects),
}

/// What to apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Update {
    /// Replace the table: the ruleset (render it with [`render::full`], with the counters read
    /// from the table being replaced).
    Full(Ruleset),
    /// Change set elements: an `nft -f` script.
    Delta(String),
}

impl Update {
    /// The `nft -f` script of the update, carrying `counters` into a full one.
    pub fn script(&self, counters: &CounterValues) -> String {
        self.script_with(counters, &render::Options::default())
    }

    /// [`script`](Self::script), a full table rendered with `options`.
    pub fn script_with(&self, counters: &CounterValues, options: &render::Options) -> String {
        match self {
            Update::Full(r) => render::full_with(r, counters, options),
            Update::Delta(s) => s.clone(),
        }
    }
}

/// The store and the state of the table.
#[derive(Debug)]
pub struct Controller {
    node: Node,
    pods: BTreeMap<(String, String), Pod>,
    namespaces: BTreeMap<String, Namespace>,
    policies: BTreeMap<(String, String), NetworkPolicy>,
    dirty: bool,
    applied: Option<Ruleset>,
    pending: Option<Ruleset>,
}

impl Controller {
    /// A controller for `node`, with an empty store.
    pub fn new(node: Node) -> Controller {
        Controller {
            node,
            pods: BTreeMap::new(),
            namespaces: BTreeMap::new(),
            policies: BTreeMap::new(),
            dirty: true,
            applied: None,
            pending: None,
        }
    }

    /// Takes a change into the store.
    pub fn handle(&mut self, event: Event) {
        match event {
            Event::PodApplied(p) => {
                self.pods.insert((p.namespace.clone(), p.name.clone()), p);
            }
            Event::PodDeleted(ns, name) => {
                self.pods.remove(&(ns, name));
            }
            Event::NamespaceApplied(n) => {
                self.namespaces.insert(n.name.clone(), n);
            }
            Event::NamespaceDeleted(name) => {
                self.namespaces.remove(&name);
            }
            Event::PolicyApplied(p) => {
                self.policies.insert((p.namespace.clone(), p.name.clone()), p);
            }
            Event::PolicyDeleted(ns, name) => {
                self.policies.remove(&(ns, name));
            }
            Event::Restarted(objects) => {
                self.pods = objects.pods.into_iter().map(|p| ((p.namespace.clone(), p.name.clone()), p)).collect();
                self.namespaces = objects.namespaces.into_iter().map(|n| (n.name.clone(), n)).collect();
                self.policies =
                    objects.policies.into_iter().map(|p| ((p.namespace.clone(), p.name.clone()), p)).collect();
            }
        }
        self.dirty = true;
    }

    /// The objects in the store.
    pub fn objects(&self) -> Objects {
        Objects {
            pods: self.pods.values().cloned().collect(),
            namespaces: self.namespaces.values().cloned().collect(),
            policies: self.policies.values().cloned().collect(),
        }
    }

    /// The update due, if any: nothing when the store did not change the ruleset since the last
    /// applied one. Until [`applied`](Self::applied) is called, it is the pending update.
    pub fn poll_update(&mut self) -> Option<Update> {
        if !self.dirty && self.pending.is_none() {
            return None;
        }
        self.dirty = false;
        let next = compile(&self.objects(), &self.node);
        let update = match &self.applied {
            Some(current) if *current == next => {
                self.pending = None;
                return None;
            }
            Some(current) => match current.delta_to(&next) {
                Some(delta) => Update::Delta(render::delta(&next.table, &delta)),
                None => Update::Full(next.clone()),
            },
            None => Update::Full(next.clone()),
        };
        self.pending = Some(next);
        Some(update)
    }

    /// Reports whether the last update polled was applied. On failure the table's state is
    /// unknown and the next update will be full.
    pub fn applied(&mut self, ok: bool) {
        let pending = self.pending.take();
        if ok {
            self.applied = pending;
        } else {
            self.applied = None;
            self.dirty = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{LabelSelector, Rule};
    use std::net::Ipv4Addr;

    fn pod(name: &str, ip: u8) -> Pod {
        Pod {
            namespace: "a".into(),
            name: name.into(),
            labels: [("app".to_owned(), "web".to_owned())].into(),
            ip: Some(Ipv4Addr::new(10, 32, 1, ip)),
            node: "n1".into(),
            ports: vec![],
        }
    }

    fn deny(name: &str) -> NetworkPolicy {
        NetworkPolicy {
            namespace: "a".into(),
            name: name.into(),
            pod_selector: LabelSelector::everything(),
            policy_types: None,
            ingress: vec![Rule::default()],
            egress: vec![],
        }
    }

    #[test]
    fn full_then_deltas_then_full_on_policy_change_or_failure() {
        let mut c = Controller::new(Node { name: "n1".into(), bridge: "weft".into() });
        c.handle(Event::PolicyApplied(deny("p")));
        c.handle(Event::PodApplied(pod("x", 10)));
        assert!(matches!(c.poll_update(), Some(Update::Full(_))));
        c.applied(true);
        assert_eq!(c.poll_update(), None);

        c.handle(Event::PodApplied(pod("y", 11)));
        let Some(Update::Delta(script)) = c.poll_update() else { panic!("a new pod is a delta") };
        assert!(script.contains("add element inet weft-policy p0 { 10.32.1.11 }"), "{script}");
        c.applied(true);

        c.handle(Event::PodDeleted("a".into(), "x".into()));
        let Some(Update::Delta(script)) = c.poll_update() else { panic!("a pod gone is a delta") };
        assert!(script.contains("delete element inet weft-policy p0 { 10.32.1.10 }"), "{script}");
        c.applied(false); // the table's state is now unknown
        assert!(matches!(c.poll_update(), Some(Update::Full(_))));
        c.applied(true);

        c.handle(Event::PolicyApplied(deny("q")));
        assert!(matches!(c.poll_update(), Some(Update::Full(_))), "a new policy changes rules");
        c.applied(true);
        c.handle(Event::Restarted(c.objects()));
        assert_eq!(c.poll_update(), None, "a re-list with nothing new changes nothing");
    }
}

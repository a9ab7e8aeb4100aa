//! Reclaiming the space of deleted nodes' peers: what to do (sans-IO, [`Reclaimer::decide`]) and
//! the claim protocol over the registry ([`Reclaimer::round`]).
//!
//! A peer is reclaimed when its registered node is no longer a Node, it is not reachable in the
//! mesh (a reachable peer is never reclaimed, Node or not), and it has been unreachable for the
//! grace period as this router has seen it (so a router that has just started, and reaches no one
//! yet, reclaims nothing). Exactly one router reclaims it:
//! 1. it writes a claim (dead peer → itself) into the registry by compare-and-swap; a 409
//!    means someone else wrote first: read again and decide again (a claim held by a reachable
//!    peer is left to it; one held by a peer unreachable for the grace period is taken over, as
//!    its holder may have died half-way);
//! 2. holding the claim, it reclaims the space (`rmpeer`, through [`Mesh::rmpeer`]) and then
//!    removes the peer's entry and the claim (again by compare-and-swap). A router that dies in
//!    between finds its claim on restart and finishes; a second `rmpeer` finds nothing left.
//!
//! A claim whose node came back (or whose peer became reachable) is released, not acted on.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::controller::Mesh;
use crate::registry::{self, PeerDoc, Registry, RegistryError, MAX_TRIES};

/// How long a peer must be unreachable, as this router saw it, before it reclaims it.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// What to do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Write a claim on `peer` (its `node` is gone).
    Claim {
        /// The dead peer.
        peer: String,
        /// Its node.
        node: String,
    },
    /// We hold the claim on `peer`: reclaim its space, then remove its entry and the claim.
    Finish {
        /// The dead peer.
        peer: String,
        /// Its node (empty if it has no entry any more).
        node: String,
    },
    /// We hold a claim on `peer` that no longer holds (its node is back, or it is reachable, or it
    /// has no entry): remove the claim.
    Release {
        /// The peer.
        peer: String,
    },
}

/// A reclaim done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reclaimed {
    /// The dead peer.
    pub peer: String,
    /// Its node.
    pub node: String,
    /// Addresses that moved to this peer.
    pub addresses: u64,
}

/// Why a reclaim round stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReclaimError {
    /// The registry could not be read or written.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The router refused to reclaim the peer.
    #[error("cannot reclaim the space of peer {peer} (node {node})")]
    Rmpeer {
        /// The peer.
        peer: String,
        /// Its node.
        node: String,
        /// The router's reason.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The reclaim decisions of one router.
#[derive(Debug)]
pub struct Reclaimer {
    me: String,
    grace: Duration,
    unreachable_since: BTreeMap<String, Instant>,
}

impl Reclaimer {
    /// Decisions for peer `me`, reclaiming peers unreachable for `grace`.
    pub fn new(me: &str, grace: Duration) -> Reclaimer {
        Reclaimer { me: me.to_owned(), grace, unreachable_since: BTreeMap::new() }
    }

    /// What to do now, given the registry, the current Node names and the reachable peers
    /// (`live`, this one included). Call it whenever any of them may have changed: it also
    /// keeps the time each peer became unreachable.
    pub fn decide(&mut self, now: Instant, doc: &PeerDoc, nodes: &BTreeSet<String>, live: &BTreeSet<String>) -> Option<Decision> {
        let named: BTreeSet<&String> = doc.peers.keys().chain(doc.claims.values()).filter(|p| **p != self.me).collect();
        self.unreachable_since.retain(|p, _| named.contains(p) && !live.contains(p));
        for p in &named {
            if !live.contains(*p) {
                self.unreachable_since.entry((*p).clone()).or_insert(now);
            }
        }
        let gone_for_grace = |p: &str| self.unreachable_since.get(p).is_some_and(|t| now.saturating_duration_since(*t) >= self.grace);
        let node_gone = |node: &str| !nodes.contains(node);
        for (peer, claimer) in &doc.claims {
            if *claimer != self.me {
                continue;
            }
            match doc.peers.get(peer) {
                Some(node) if node_gone(node) && !live.contains(peer) && *peer != self.me => {
                    return Some(Decision::Finish { peer: peer.clone(), node: node.clone() });
                }
                _ => return Some(Decision::Release { peer: peer.clone() }),
            }
        }
        for (peer, node) in &doc.peers {
            if *peer == self.me || !node_gone(node) || live.contains(peer) || !gone_for_grace(peer) {
                continue;
            }
            let free = match doc.claims.get(peer) {
                None => true,
                Some(c) => !live.contains(c) && gone_for_grace(c),
            };
            if free {
                return Some(Decision::Claim { peer: peer.clone(), node: node.clone() });
            }
        }
        None
    }

    /// Reclaims what [`Reclaimer::decide`] says, through `registry` and `mesh`, until there is
    /// nothing left to do; `nodes` are the current Node names (the caller's store is synced).
    pub async fn round<R: Registry, M: Mesh>(&mut self, registry: &R, mesh: &M, nodes: &BTreeSet<String>) -> Result<Vec<Reclaimed>, ReclaimError> {
        let mut done = Vec::new();
        // Each pass either makes progress or met a conflict; bounded all the same.
        for _ in 0..MAX_TRIES * 4 {
            let Some(current) = registry.read().await? else { return Ok(done) };
            let live = mesh.live_peers();
            let Some(decision) = self.decide(Instant::now(), &current.value, nodes, &live) else { return Ok(done) };
            match decision {
                Decision::Claim { peer, node } => {
                    let mut doc = current.value.clone();
                    let previous = doc.claims.insert(peer.clone(), self.me.clone());
                    match registry.replace(&current.version, &doc).await {
                        Ok(_) => match previous {
                            None => tracing::info!(%peer, %node, "node deleted and its peer unreachable: claimed the reclaim of its space"),
                            Some(c) => tracing::info!(%peer, %node, from = %c, "took over the reclaim of a deleted node's peer from an unreachable claimer"),
                        },
                        Err(RegistryError::Conflict) => tracing::debug!(%peer, "claim met a conflict: reading the registry again"),
                        Err(e) => return Err(e.into()),
                    }
                }
                Decision::Finish { peer, node } => {
                    let addresses = mesh.rmpeer(&peer, &node).map_err(|source| ReclaimError::Rmpeer { peer: peer.clone(), node: node.clone(), source })?;
                    tracing::info!(%peer, %node, addresses, "reclaimed the space of a deleted node's peer");
                    self.clear(registry, &peer, true).await?;
                    done.push(Reclaimed { peer, node, addresses });
                }
                Decision::Release { peer } => {
                    tracing::info!(%peer, "released a reclaim claim: the node is back or the peer is reachable");
                    self.clear(registry, &peer, false).await?;
                }
            }
        }
        Ok(done)
    }

    /// Removes our claim on `peer` (and, if `entry`, its registry entry).
    async fn clear<R: Registry>(&self, registry: &R, peer: &str, entry: bool) -> Result<(), RegistryError> {
        registry::update(registry, |doc| {
            if doc.claims.get(peer) != Some(&self.me) {
                return false; // no longer ours: whoever holds it now finishes
            }
            doc.claims.remove(peer);
            if entry {
                doc.peers.remove(peer);
            }
            true
        })
        .await
        .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    fn doc(peers: &[(&str, &str)], claims: &[(&str, &str)]) -> PeerDoc {
        PeerDoc {
            peers: peers.iter().map(|(p, n)| ((*p).to_owned(), (*n).to_owned())).collect(),
            claims: claims.iter().map(|(p, c)| ((*p).to_owned(), (*c).to_owned())).collect(),
        }
    }

    const GRACE: Duration = Duration::from_secs(30);

    #[test]
    fn a_deleted_nodes_peer_is_claimed_only_after_the_grace_and_never_while_reachable() {
        let t0 = Instant::now();
        let mut r = Reclaimer::new("a", GRACE);
        let d = doc(&[("a", "n1"), ("b", "n2"), ("c", "n3")], &[]);
        let nodes = set(&["n1", "n2"]); // n3 deleted
        assert_eq!(r.decide(t0, &d, &nodes, &set(&["a", "b"])), None, "just seen unreachable");
        assert_eq!(r.decide(t0 + GRACE / 2, &d, &nodes, &set(&["a", "b"])), None);
        let claim = Decision::Claim { peer: "c".into(), node: "n3".into() };
        assert_eq!(r.decide(t0 + GRACE, &d, &nodes, &set(&["a", "b"])), Some(claim.clone()));
        // Reachable again, even without its Node: never reclaimed, and the clock starts over.
        assert_eq!(r.decide(t0 + GRACE * 2, &d, &nodes, &set(&["a", "b", "c"])), None);
        assert_eq!(r.decide(t0 + GRACE * 3, &d, &nodes, &set(&["a", "b"])), None);
        assert_eq!(r.decide(t0 + GRACE * 4, &d, &nodes, &set(&["a", "b"])), Some(claim));
        // Its Node back: nothing to do.
        assert_eq!(r.decide(t0 + GRACE * 5, &d, &set(&["n1", "n2", "n3"]), &set(&["a", "b"])), None);
        // A peer whose Node exists is never reclaimed, however long unreachable; nor ourselves.
        let mut r = Reclaimer::new("a", GRACE);
        let d = doc(&[("a", "gone"), ("b", "n2")], &[]);
        for s in [0, 60, 600] {
            assert_eq!(r.decide(t0 + Duration::from_secs(s), &d, &set(&["n2"]), &set(&[])), None);
        }
    }

    #[test]
    fn a_claim_held_by_a_reachable_peer_is_left_to_it_one_held_by_a_dead_one_is_taken_over() {
        let t0 = Instant::now();
        let mut r = Reclaimer::new("a", GRACE);
        let d = doc(&[("a", "n1"), ("b", "n2"), ("c", "n3")], &[("c", "b")]);
        let nodes = set(&["n1", "n2"]);
        r.decide(t0, &d, &nodes, &set(&["a", "b"]));
        assert_eq!(r.decide(t0 + GRACE * 10, &d, &nodes, &set(&["a", "b"])), None, "b holds it and is reachable");
        // b becomes unreachable (died half-way): after the grace, a takes over.
        assert_eq!(r.decide(t0 + GRACE * 11, &d, &nodes, &set(&["a"])), None);
        assert_eq!(r.decide(t0 + GRACE * 12, &d, &nodes, &set(&["a"])), Some(Decision::Claim { peer: "c".into(), node: "n3".into() }));
    }

    #[test]
    fn our_own_claim_is_finished_or_released() {
        let t0 = Instant::now();
        let mut r = Reclaimer::new("a", GRACE);
        let d = doc(&[("a", "n1"), ("c", "n3")], &[("c", "a")]);
        // Finishing needs no grace: the claim was made after it.
        assert_eq!(r.decide(t0, &d, &set(&["n1"]), &set(&["a"])), Some(Decision::Finish { peer: "c".into(), node: "n3".into() }));
        assert_eq!(r.decide(t0, &d, &set(&["n1", "n3"]), &set(&["a"])), Some(Decision::Release { peer: "c".into() }), "its node is back");
        assert_eq!(r.decide(t0, &d, &set(&["n1"]), &set(&["a", "c"])), Some(Decision::Release { peer: "c".into() }), "it is reachable");
    }
}

//! Bounded degree: which peers a router keeps connections to when the connection limit is below
//! the cluster size (pure, deterministic from the peer names).
//!
//! The peers are placed on `R = max(1, limit / 2)` rings, ring `r` ordering them by a hash of
//! the name salted with `r`; each peer connects to its successor and its predecessor on every
//! ring. The choice is symmetric (B is A's successor on a ring exactly when A is B's
//! predecessor), so both ends of every chosen connection want it and each peer has at most
//! `2R ≤ limit` of them. Ring 0 alone is a cycle through every peer, so the partial mesh is
//! connected and no peer is isolated; the other rings are independent random orders, i.e.
//! random chords, which make it an expander: paths grow like `log N / log(2R - 1)` (at 5000
//! peers and a limit of 6, a diameter of about 8). With a limit of 1, only the ring-0 successor
//! is chosen (a cycle needs two connections per peer; each peer is then still on one, as the
//! successor's predecessor).
//!
//! Every peer computes its choice from the names it knows; while peers disagree on who is in
//! the cluster (gossip converging) choices may briefly differ, and settle with the topology.

use crate::peer::PeerName;

/// How many rings a connection limit allows.
pub fn rings(limit: usize) -> usize {
    (limit / 2).max(1)
}

fn key(name: PeerName, ring: usize) -> (u64, PeerName) {
    let salt = crate::topology::mix(0x6a09_e667_f3bc_c908 ^ ring as u64);
    (crate::topology::mix(name.to_u64() ^ salt), name)
}

/// The peers `me` should keep connections to, sorted: all others when they number at most
/// `limit`, else its neighbours on the rings. `peers` may include `me` and repeat names.
pub fn choose(me: PeerName, peers: &[PeerName], limit: usize) -> Vec<PeerName> {
    let mut others: Vec<PeerName> = peers.iter().copied().filter(|&p| p != me).collect();
    others.sort_unstable();
    others.dedup();
    if others.len() <= limit {
        return others;
    }
    let mut chosen = Vec::with_capacity(2 * rings(limit));
    for ring in 0..rings(limit) {
        let mine = key(me, ring);
        // Successor: the smallest key above ours, else the smallest (wrapping); predecessor:
        // the largest below ours, else the largest.
        let (mut succ, mut pred) = (None, None);
        let (mut lowest, mut highest) = (None, None);
        for &p in &others {
            let k = key(p, ring);
            if k > mine && succ.is_none_or(|s| k < s) {
                succ = Some(k);
            }
            if k < mine && pred.is_none_or(|s| k > s) {
                pred = Some(k);
            }
            if lowest.is_none_or(|s| k < s) {
                lowest = Some(k);
            }
            if highest.is_none_or(|s| k > s) {
                highest = Some(k);
            }
        }
        if let Some((_, s)) = succ.or(lowest) {
            chosen.push(s);
        }
        if limit >= 2 {
            if let Some((_, p)) = pred.or(highest) {
                chosen.push(p);
            }
        }
    }
    chosen.sort_unstable();
    chosen.dedup();
    chosen
}

/// The peers paired with `me` by [`links`]: those it chooses and those that choose it (the same
/// peers for a limit of 2 or more; with a limit of 1, its successor and its predecessor on the
/// ring). Both ends of a pair find each other, so both keep the connection.
pub fn partners(me: PeerName, peers: &[PeerName], limit: usize) -> Vec<PeerName> {
    let mut out: Vec<PeerName> = links(peers, limit)
        .into_iter()
        .filter_map(|(a, b)| {
            if a == me {
                Some(b)
            } else if b == me {
                Some(a)
            } else {
                None
            }
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Every chosen connection of a cluster, as pairs (lower name first), sorted: what
/// [`choose`] gives each peer, computed for all at once (`O(R·N log N)`).
pub fn links(peers: &[PeerName], limit: usize) -> Vec<(PeerName, PeerName)> {
    let mut names = peers.to_vec();
    names.sort_unstable();
    names.dedup();
    let n = names.len();
    let mut out = Vec::new();
    if n < 2 {
        return out;
    }
    if n - 1 <= limit {
        for i in 0..n {
            for j in i + 1..n {
                out.push((names[i], names[j]));
            }
        }
        return out;
    }
    for ring in 0..rings(limit) {
        let mut order: Vec<(u64, PeerName)> = names.iter().map(|&p| key(p, ring)).collect();
        order.sort_unstable();
        for i in 0..n {
            let (a, b) = (order[i].1, order[(i + 1) % n].1);
            out.push((a.min(b), a.max(b)));
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<PeerName> {
        (0..n as u64)
            .map(|i| PeerName::from_u64(crate::topology::mix(i)))
            .collect()
    }

    #[test]
    fn small_clusters_connect_to_everyone() {
        let ps = names(5);
        let c = choose(ps[0], &ps, 4);
        assert_eq!(c.len(), 4);
        assert!(!c.contains(&ps[0]));
        assert_eq!(links(&ps, 4).len(), 10);
    }

    #[test]
    fn choices_are_symmetric_bounded_and_agree_with_links() {
        let ps = names(300);
        for limit in [1, 2, 3, 6, 10] {
            let all = links(&ps, limit);
            let mut from_choices = Vec::new();
            for &p in &ps {
                let c = choose(p, &ps, limit);
                assert!(c.len() <= limit.max(1), "limit {limit}: {}", c.len());
                assert!(!c.is_empty());
                for &q in &c {
                    if limit >= 2 {
                        assert!(choose(q, &ps, limit).contains(&p), "symmetric");
                    }
                    from_choices.push((p.min(q), p.max(q)));
                }
            }
            from_choices.sort_unstable();
            from_choices.dedup();
            assert_eq!(from_choices, all, "limit {limit}");
        }
    }

    #[test]
    fn the_partial_mesh_is_connected_with_short_paths() {
        let ps = names(2000);
        let all = links(&ps, 6);
        let index = |p: PeerName| ps.iter().position(|&x| x == p).unwrap();
        let mut adj = vec![Vec::new(); ps.len()];
        for &(a, b) in &all {
            let (a, b) = (index(a), index(b));
            adj[a].push(b);
            adj[b].push(a);
        }
        assert!(adj.iter().all(|a| (2..=6).contains(&a.len())));
        let mut dist = vec![u32::MAX; ps.len()];
        dist[0] = 0;
        let mut queue = std::collections::VecDeque::from([0]);
        while let Some(u) = queue.pop_front() {
            for &v in &adj[u] {
                if dist[v] == u32::MAX {
                    dist[v] = dist[u] + 1;
                    queue.push_back(v);
                }
            }
        }
        let far = *dist.iter().max().unwrap();
        assert!(far < 12, "eccentricity {far} at 2000 peers, limit 6");
    }

    #[test]
    fn no_peer_is_isolated_and_partners_agree_on_both_ends() {
        for n in [2, 3, 9, 10, 64, 301] {
            let ps = names(n);
            for limit in 1..=9 {
                let all: Vec<Vec<PeerName>> = ps.iter().map(|&p| partners(p, &ps, limit)).collect();
                for (i, mine) in all.iter().enumerate() {
                    assert!(!mine.is_empty(), "{n} peers, limit {limit}: peer {i} isolated");
                    assert!(mine.len() <= limit.max(2), "{n} peers, limit {limit}: {}", mine.len());
                    for q in mine {
                        let j = ps.iter().position(|p| p == q).unwrap();
                        assert!(all[j].contains(&ps[i]), "{n} peers, limit {limit}: {i} pairs with {j}, not back");
                    }
                    if limit >= 2 {
                        assert_eq!(*mine, choose(ps[i], &ps, limit), "partners are the choice");
                    }
                }
            }
        }
    }

    #[test]
    fn choice_ignores_order_and_repeats_of_the_names() {
        let mut ps = names(50);
        let c = choose(ps[7], &ps, 4);
        let me = ps[7];
        ps.reverse();
        ps.extend_from_slice(&ps.clone()[..10]);
        assert_eq!(choose(me, &ps, 4), c);
    }
}

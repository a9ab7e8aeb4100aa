//! Rendering a [`Ruleset`] as an `nft -f` script. Text rather than the JSON API because the text is
//! what operators read in `nft list ruleset`, what the conformance tests diff against, and what
//! `nft` accepts with no extra library; both reach the same netlink transaction.
//!
//! Contracts: [`full`] replaces the whole table in one transaction (declare it so deleting cannot
//! fail, delete it, define it again), so a half-applied ruleset is never seen; counter values given
//! to it are carried into the new table. [`delta`] changes set elements only, also in one
//! transaction, and is valid only on the exact ruleset it was computed from (deleting an element
//! that is not there fails the whole transaction, and the caller then applies [`full`]).

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::ir::{Delta, Element, Match, Ruleset, SetType, Side, Verdict};

/// Packets and bytes of a named counter.
pub type CounterValues = BTreeMap<String, (u64, u64)>;

/// The script that replaces the table with `ruleset`, counters starting from `counters` (absent
/// ones from zero).
pub fn full(ruleset: &Ruleset, counters: &CounterValues) -> String {
    let t = &ruleset.table;
    let mut s = String::with_capacity(4096);
    // Writing to a String cannot fail: the results of writeln! are ignored below.
    let _ = writeln!(s, "table inet {t} {{}}\ndelete table inet {t}\ntable inet {t} {{");
    for name in &ruleset.counters {
        let (packets, bytes) = counters.get(name).copied().unwrap_or((0, 0));
        let _ = writeln!(s, "  counter {name} {{ packets {packets} bytes {bytes} }}");
    }
    for (name, set) in &ruleset.sets {
        let kind = match set.kind {
            SetType::Addr => "ipv4_addr",
            SetType::AddrProtoPort => "ipv4_addr . inet_proto . inet_service",
        };
        let _ = write!(s, "  set {name} {{ type {kind};");
        if !set.elements.is_empty() {
            s.push_str(" elements = { ");
            elements(&mut s, set.elements.iter());
            s.push_str(" };");
        }
        s.push_str(" }\n");
    }
    for chain in &ruleset.chains {
        let _ = writeln!(s, "  chain {} {{", chain.name);
        if let Some(hook) = chain.hook {
            let _ = writeln!(s, "    type filter hook {} priority filter; policy accept;", hook.keyword());
        }
        for rule in &chain.rules {
            s.push_str("    ");
            for m in &rule.matches {
                render_match(&mut s, m);
                s.push(' ');
            }
            if let Some(counter) = &rule.counter {
                let _ = write!(s, "counter name \"{counter}\" ");
            }
            match &rule.verdict {
                Verdict::Accept => s.push_str("accept"),
                Verdict::Drop => s.push_str("drop"),
                Verdict::Return => s.push_str("return"),
                Verdict::Jump(c) => {
                    let _ = write!(s, "jump {c}");
                }
            }
            s.push('\n');
        }
        s.push_str("  }\n");
    }
    s.push_str("}\n");
    s
}

/// The script that applies `delta` to table `table` (empty if the delta is).
pub fn delta(table: &str, delta: &Delta) -> String {
    let mut s = String::new();
    for (verb, changes) in [("delete", &delta.delete), ("add", &delta.add)] {
        for (set, els) in changes {
            let _ = write!(s, "{verb} element inet {table} {set} {{ ");
            elements(&mut s, els.iter());
            s.push_str(" }\n");
        }
    }
    s
}

fn elements<'a>(s: &mut String, els: impl Iterator<Item = &'a Element>) {
    for (i, e) in els.enumerate() {
        if i > 0 {
            s.push_str(", ");
        }
        let _ = match e {
            Element::Addr(a) => write!(s, "{a}"),
            Element::AddrProtoPort(a, p, port) => write!(s, "{a} . {} . {port}", p.keyword()),
        };
    }
}

fn side(side: &Side) -> &'static str {
    match side {
        Side::Src => "ip saddr",
        Side::Dst => "ip daddr",
    }
}

fn render_match(s: &mut String, m: &Match) {
    let _ = match m {
        Match::NeitherInterface(n) => write!(s, "iifname != \"{n}\" oifname != \"{n}\""),
        Match::NotInInterface(n) => write!(s, "iifname != \"{n}\""),
        Match::EstablishedOrRelated => write!(s, "ct state established,related"),
        Match::InSet(sd, set) => write!(s, "{} @{set}", side(sd)),
        Match::InCidr(sd, c) => write!(s, "{} {c}", side(sd)),
        Match::NotInCidrs(sd, cs) => {
            let list: Vec<String> = cs.iter().map(ToString::to_string).collect();
            write!(s, "{} != {{ {} }}", side(sd), list.join(", "))
        }
        Match::Protocol(p) => write!(s, "meta l4proto {}", p.keyword()),
        Match::DstPorts(a, b) if a == b => write!(s, "th dport {a}"),
        Match::DstPorts(a, b) => write!(s, "th dport {a}-{b}"),
        Match::DstAddrProtoPortInSet(set) => write!(s, "ip daddr . meta l4proto . th dport @{set}"),
    };
}

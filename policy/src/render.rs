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

/// How a full table is rendered beyond the ruleset itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// Log drops to the kernel log (nft `log`, prefix `weft-policy drop DIRECTION/NAMESPACE/NAME`),
    /// at most this many per second for each policy and direction (nft `limit rate`; beyond it
    /// the packets are still dropped and counted, not logged). None: no logging.
    pub log_drops_per_second: Option<u32>,
}

/// The longest log prefix nftables takes (the kernel's 128 bytes with its terminating zero).
const LOG_PREFIX_MAX: usize = 127;

/// The script that replaces the table with `ruleset`, counters starting from `counters` (absent
/// ones from zero).
pub fn full(ruleset: &Ruleset, counters: &CounterValues) -> String {
    full_with(ruleset, counters, &Options::default())
}

/// [`full`], with `options`. Logging adds, before each drop rule, a rule of the same matches that
/// only logs (within its rate), so the verdicts are those of the ruleset.
pub fn full_with(ruleset: &Ruleset, counters: &CounterValues, options: &Options) -> String {
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
            if let (Some(rate), Some(counter), Verdict::Drop) = (options.log_drops_per_second, &rule.counter, &rule.verdict) {
                s.push_str("    ");
                for m in &rule.matches {
                    render_match(&mut s, m);
                    s.push(' ');
                }
                let mut prefix = format!("weft-policy drop {counter} ");
                if prefix.len() > LOG_PREFIX_MAX {
                    let mut cut = LOG_PREFIX_MAX - 1;
                    while !prefix.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    prefix.truncate(cut);
                    prefix.push(' ');
                }
                let _ = writeln!(s, "limit rate {rate}/second burst {rate} packets log prefix \"{prefix}\"");
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::{Node, compile};
    use crate::model::{LabelSelector, NetworkPolicy, Objects, Pod, Rule};

    #[test]
    fn logging_adds_a_rate_limited_log_rule_before_each_drop_only() {
        let pod = Pod {
            namespace: "a".into(),
            name: "x".into(),
            labels: Default::default(),
            ip: Some("10.32.0.2".parse().unwrap()),
            node: "n".into(),
            ports: vec![],
        };
        let policy = |name: &str| NetworkPolicy {
            namespace: "a".into(),
            name: name.into(),
            pod_selector: LabelSelector::everything(),
            policy_types: None,
            ingress: vec![Rule::default()],
            egress: vec![],
        };
        let long = "x".repeat(200);
        let objects = Objects { pods: vec![pod], namespaces: vec![], policies: vec![policy("deny"), policy(&long)] };
        let r = compile(&objects, &Node { name: "n".into(), bridge: "weft".into() });
        let plain = full(&r, &CounterValues::new());
        assert!(!plain.contains("log"), "{plain}");
        let logged = full_with(&r, &CounterValues::new(), &Options { log_drops_per_second: Some(5) });
        let lines: Vec<&str> = logged.lines().collect();
        let drop_at = lines.iter().position(|l| l.contains("counter name \"ingress/a/deny\" drop")).unwrap();
        assert_eq!(
            lines[drop_at - 1].trim(),
            "ip daddr @p0 limit rate 5/second burst 5 packets log prefix \"weft-policy drop ingress/a/deny \""
        );
        assert_eq!(logged.lines().count(), plain.lines().count() + 2, "one log rule per drop rule, nothing else");
        let long_prefix = lines.iter().find(|l| l.contains("log prefix") && l.contains("xxx")).unwrap();
        let prefix = long_prefix.split("log prefix \"").nth(1).unwrap().trim_end_matches('"');
        assert!(prefix.len() <= LOG_PREFIX_MAX && prefix.ends_with(' '), "{prefix:?}");
    }
}

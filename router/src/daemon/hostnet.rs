//! Host networking pods need beyond the bridge, set in the router's own network namespace (the
//! node's, on Kubernetes: the router runs with hostNetwork):
//!
//! - IPv4 forwarding (`net.ipv4.ip_forward`) on: without it no pod traffic leaves its host.
//!   [`HostNet::start`] fails when it is off and cannot be turned on.
//! - Masquerade of pod traffic leaving the pod range: the nftables table `ip weft`, whose one
//!   rule rewrites the source of packets from the range to anywhere outside it (multicast
//!   aside) to the address of the interface they leave by. With `--no-masquerade` the table is
//!   removed instead (for networks that route the pod range themselves); a node without `nft`
//!   is then left as it is. The table is replaced whole in one `nft -f` transaction (created if
//!   missing, deleted, written anew), so no packet meets half of it; nothing outside it is
//!   touched.
//! - `net.bridge.bridge-nf-call-iptables` = 1, so that kube-proxy's Service rules see traffic the
//!   bridge forwards between pods of one host. It exists only while the `br_netfilter` module is
//!   loaded; when it is missing, `modprobe br_netfilter` is tried once at start, and otherwise a
//!   warning says what pods lose.
//!
//! [`HostNet::start`] applies all of it; [`HostNet::repair`] (every repair tick) checks it and
//! puts back what someone changed, logging each repair, and each distinct warning once. The
//! masquerade table stays when the router stops (pods keep running across a restart);
//! [`remove_table`] (`weft reset`) removes it. Forwarding and the bridge setting are left on:
//! other software on the node may rely on them.
//!
//! Why the `nft` program rather than nftables netlink: a ruleset file is one atomic transaction
//! by construction, the rule reads as an operator would write it (and as `nft list` shows it),
//! and no netlink encoder for nftables objects has to be kept here; it costs one short process
//! per change and one `nft -j list table` per repair tick.
//!
//! Assumes: the files under `/proc/sys/net` are those of the calling process's namespace (the
//! kernel resolves them by the task that opens them). `net.ipv4.ip_forward` is per namespace;
//! the `net.bridge` settings are per namespace since Linux 5.3, and before that exist only in
//! the initial namespace — so a router in a test namespace never changes the host's settings.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use weft_mesh::ipam::Cidr;

/// The nftables family and name of weft's own table.
pub const TABLE: &str = "ip weft";
/// Its chain for source NAT.
pub const CHAIN: &str = "postrouting";
/// The sysctl turning IPv4 forwarding on, under `/proc/sys`.
pub const IP_FORWARD: &str = "net/ipv4/ip_forward";
/// The sysctl passing bridged IPv4 through the IP hooks, under `/proc/sys`.
pub const BRIDGE_NF_CALL_IPTABLES: &str = "net/bridge/bridge-nf-call-iptables";

/// Why host networking could not be set up or checked.
#[derive(Debug, thiserror::Error)]
pub enum HostNetError {
    /// IPv4 forwarding is off and could not be turned on.
    #[error(
        "cannot enable IPv4 forwarding ({path}): pods could not reach anything beyond their host; run the router privileged (a container's /proc/sys is read-only otherwise) or set net.ipv4.ip_forward=1 on the node"
    )]
    Forwarding {
        /// The sysctl file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The `nft` program could not be run.
    #[error("cannot run {nft}: install nftables (Debian's package nftables), or start the router with --no-masquerade")]
    NftMissing {
        /// The program.
        nft: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `nft` ran and refused.
    #[error("nft {what} failed: {stderr}")]
    Nft {
        /// What was asked of it.
        what: &'static str,
        /// What it said.
        stderr: String,
    },
    /// `nft -j` printed something that is not its JSON.
    #[error("nft -j list table {TABLE} printed something that is not nftables JSON")]
    NftJson(#[source] serde_json::Error),
}

/// What [`HostNet::start`] or [`HostNet::repair`] changed, and what it could not do.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Each change made.
    pub repairs: Vec<String>,
    /// Each problem that does not stop the router.
    pub warnings: Vec<String>,
}

/// Where the sysctls are and which programs to run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tools {
    /// The sysctl tree (`/proc/sys`).
    pub proc_sys: PathBuf,
    /// The `nft` program (found on `PATH` by default).
    pub nft: String,
    /// The `modprobe` program.
    pub modprobe: String,
}

impl Default for Tools {
    fn default() -> Self {
        Tools { proc_sys: "/proc/sys".into(), nft: "nft".into(), modprobe: "modprobe".into() }
    }
}

/// The host networking of one router.
#[derive(Debug)]
pub struct HostNet {
    range: Cidr,
    masquerade: bool,
    tools: Tools,
    warned: Mutex<BTreeSet<String>>,
}

impl HostNet {
    /// For pod range `range`, masquerading unless `masquerade` is false, with `tools`
    /// ([`Tools::default`] but in tests).
    pub fn new(range: Cidr, masquerade: bool, tools: Tools) -> HostNet {
        HostNet { range, masquerade, tools, warned: Mutex::new(BTreeSet::new()) }
    }

    /// Applies everything; fails when forwarding cannot be turned on or the masquerade table
    /// cannot be written (or, with `--no-masquerade`, removed).
    pub fn start(&self) -> Result<Outcome, HostNetError> {
        let mut out = Outcome::default();
        self.forwarding(&mut out)?;
        self.bridge_nf(&mut out, true);
        self.masquerade(&mut out)?;
        self.remember(&out.warnings);
        Ok(out)
    }

    /// Checks everything and puts back what changed. Errors become warnings; a warning already
    /// given is not given again.
    pub fn repair(&self) -> Outcome {
        let mut out = Outcome::default();
        if let Err(e) = self.forwarding(&mut out) {
            out.warnings.push(chain(&e));
        }
        self.bridge_nf(&mut out, false);
        if let Err(e) = self.masquerade(&mut out) {
            out.warnings.push(chain(&e));
        }
        let fresh = self.remember(&out.warnings);
        out.warnings = fresh;
        out
    }

    /// Records `warnings`; returns those not given before.
    fn remember(&self, warnings: &[String]) -> Vec<String> {
        let mut given = self.warned.lock().unwrap_or_else(|p| p.into_inner());
        warnings.iter().filter(|w| given.insert((*w).clone())).cloned().collect()
    }

    fn forwarding(&self, out: &mut Outcome) -> Result<(), HostNetError> {
        let path = self.tools.proc_sys.join(IP_FORWARD);
        match ensure_one(&path) {
            Ok(Some(was)) => {
                out.repairs.push(format!("enabled IPv4 forwarding (net.ipv4.ip_forward was {was})"));
                Ok(())
            }
            Ok(None) => Ok(()),
            Err(source) => Err(HostNetError::Forwarding { path, source }),
        }
    }

    /// Sets `bridge-nf-call-iptables`; at `start`, loads `br_netfilter` first if it is missing.
    fn bridge_nf(&self, out: &mut Outcome, start: bool) {
        let path = self.tools.proc_sys.join(BRIDGE_NF_CALL_IPTABLES);
        let mut loaded = None;
        if !path.exists() {
            if !start {
                return; // warned about at start
            }
            let probe = Command::new(&self.tools.modprobe).arg("br_netfilter").stdin(Stdio::null()).output();
            loaded = Some(match probe {
                Ok(o) if o.status.success() => "modprobe br_netfilter succeeded".to_owned(),
                Ok(o) => format!("modprobe br_netfilter failed: {}", String::from_utf8_lossy(&o.stderr).trim()),
                Err(e) => format!("modprobe could not be run: {e}"),
            });
            if !path.exists() {
                out.warnings.push(format!(
                    "{} is missing: the br_netfilter module is not loaded ({}): kube-proxy's Service rules will not see traffic between pods of one node; load it on the node (modprobe br_netfilter, or br_netfilter in /etc/modules-load.d/)",
                    path.display(),
                    loaded.unwrap_or_default()
                ));
                return;
            }
        }
        match ensure_one(&path) {
            Ok(Some(was)) => out.repairs.push(format!(
                "set net.bridge.bridge-nf-call-iptables to 1 (was {was}){}",
                loaded.map(|l| format!("; {l}")).unwrap_or_default()
            )),
            Ok(None) => {}
            Err(e) => out.warnings.push(format!(
                "cannot set {} to 1 ({e}): kube-proxy's Service rules will not see traffic between pods of one node; run the router privileged or set it on the node",
                path.display()
            )),
        }
    }

    fn masquerade(&self, out: &mut Outcome) -> Result<(), HostNetError> {
        let have = match list_table(&self.tools.nft) {
            // Off and without nft: this router made no table, and none can be removed.
            Err(HostNetError::NftMissing { .. }) if !self.masquerade => return Ok(()),
            r => r?,
        };
        if !self.masquerade {
            if have.is_some() {
                remove_table(&self.tools.nft)?;
                out.repairs.push(format!("removed the nftables table {TABLE}: masquerade is off (--no-masquerade)"));
            }
            return Ok(());
        }
        let want = rules(self.range);
        if have.as_ref() == Some(&want.comments()) {
            return Ok(());
        }
        nft_apply(&self.tools.nft, &want.script(), "-f (write the table ip weft)")?;
        out.repairs.push(match have {
            None => format!("nftables table {TABLE}: masquerading pod traffic leaving {}", self.range),
            Some(_) => format!("rewrote the nftables table {TABLE}, which had been changed: masquerading pod traffic leaving {}", self.range),
        });
        Ok(())
    }
}

/// Writes `1` to the sysctl at `path` unless it holds it; returns what it held before a change.
fn ensure_one(path: &Path) -> std::io::Result<Option<String>> {
    let now = std::fs::read_to_string(path)?;
    let now = now.trim();
    if now == "1" {
        return Ok(None);
    }
    std::fs::write(path, "1\n")?;
    Ok(Some(now.to_owned()))
}

/// The text of an error and its causes, for a warning line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// The table's content: its rules, each with a comment naming it (what [`list_table`] reads
/// back to tell whether the table is as written).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rules {
    rules: Vec<(String, String)>,
}

/// The rules for pod range `range`.
pub fn rules(range: Cidr) -> Rules {
    Rules {
        rules: vec![(
            format!("ip saddr {range} ip daddr != {{ {range}, 224.0.0.0/4 }} masquerade"),
            format!("weft: masquerade pods of {range} leaving it"),
        )],
    }
}

impl Rules {
    /// The rules' comments, in order.
    pub fn comments(&self) -> Vec<String> {
        self.rules.iter().map(|(_, c)| c.clone()).collect()
    }

    /// The `nft -f` script that makes the table exactly this, in one transaction: the table
    /// is created if missing (so the delete cannot fail), deleted, and written anew.
    pub fn script(&self) -> String {
        let mut s = format!("add table {TABLE}\ndelete table {TABLE}\ntable {TABLE} {{\n  chain {CHAIN} {{\n    type nat hook postrouting priority srcnat; policy accept;\n");
        for (rule, comment) in &self.rules {
            s.push_str(&format!("    {rule} comment \"{comment}\"\n"));
        }
        s.push_str("  }\n}\n");
        s
    }
}

/// Runs `nft -f -` with `script` on its standard input.
fn nft_apply(nft: &str, script: &str, what: &'static str) -> Result<(), HostNetError> {
    let missing = |source| HostNetError::NftMissing { nft: nft.to_owned(), source };
    let mut child = Command::new(nft)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(missing)?;
    if let Some(mut stdin) = child.stdin.take() {
        // A write error means nft exited early; its status and stderr below say why.
        let _ = stdin.write_all(script.as_bytes());
    }
    let out = child.wait_with_output().map_err(missing)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(HostNetError::Nft { what, stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned() })
    }
}

/// Reads weft's table: `None` when it does not exist, otherwise the comments of the rules of
/// its chain [`CHAIN`] in order — or a marker that never matches [`Rules::comments`] when the
/// table holds anything else (another chain, the chain on another hook, a rule without comment).
pub fn list_table(nft: &str) -> Result<Option<Vec<String>>, HostNetError> {
    let out = Command::new(nft)
        .args(["-j", "list", "table", "ip", "weft"])
        .stdin(Stdio::null())
        .output()
        .map_err(|source| HostNetError::NftMissing { nft: nft.to_owned(), source })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("No such file or directory") {
            return Ok(None);
        }
        return Err(HostNetError::Nft { what: "-j list table ip weft", stderr: stderr.trim().to_owned() });
    }
    parse_table(&out.stdout).map(Some)
}

/// What [`list_table`] makes of `nft -j` output for the table (see there).
pub fn parse_table(json: &[u8]) -> Result<Vec<String>, HostNetError> {
    let v: serde_json::Value = serde_json::from_slice(json).map_err(HostNetError::NftJson)?;
    let items = v.get("nftables").and_then(|n| n.as_array()).map(Vec::as_slice).unwrap_or_default();
    let foreign = || vec!["(something weft did not write)".to_owned()];
    let mut comments = Vec::new();
    for item in items {
        if let Some(chain) = item.get("chain") {
            let ours = chain["name"] == CHAIN && chain["type"] == "nat" && chain["hook"] == "postrouting";
            if !ours {
                return Ok(foreign());
            }
        } else if let Some(rule) = item.get("rule") {
            match rule["comment"].as_str() {
                Some(c) if rule["chain"] == CHAIN => comments.push(c.to_owned()),
                _ => return Ok(foreign()),
            }
        } else if item.get("table").is_none() && item.get("metainfo").is_none() {
            return Ok(foreign()); // a set, map, counter...
        }
    }
    Ok(comments)
}

/// Deletes weft's table; `Ok(false)` when there was none.
pub fn remove_table(nft: &str) -> Result<bool, HostNetError> {
    if list_table(nft)?.is_none() {
        return Ok(false);
    }
    // Created first so that the delete cannot fail if it went away meanwhile.
    nft_apply(nft, &format!("add table {TABLE}\ndelete table {TABLE}\n"), "-f (delete the table ip weft)")?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range() -> Cidr {
        "10.32.0.0/12".parse().unwrap()
    }

    #[test]
    fn the_script_replaces_the_table_whole_and_names_its_rule() {
        let s = rules(range()).script();
        assert!(s.starts_with("add table ip weft\ndelete table ip weft\ntable ip weft {\n"), "{s}");
        assert!(s.contains("type nat hook postrouting priority srcnat;"), "{s}");
        assert!(
            s.contains("ip saddr 10.32.0.0/12 ip daddr != { 10.32.0.0/12, 224.0.0.0/4 } masquerade comment \"weft: masquerade pods of 10.32.0.0/12 leaving it\""),
            "{s}"
        );
        let other = rules("10.40.0.0/16".parse().unwrap());
        assert_ne!(other.comments(), rules(range()).comments(), "another range is told apart by the comment");
    }

    /// `nft -j list table ip weft` as nft 1.0.6 prints it for the table [`rules`] writes.
    const LISTED: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "json_schema_version": 1}},
        {"table": {"family": "ip", "name": "weft", "handle": 2}},
        {"chain": {"family": "ip", "table": "weft", "name": "postrouting", "handle": 1, "type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"}},
        {"rule": {"family": "ip", "table": "weft", "chain": "postrouting", "handle": 3, "comment": "weft: masquerade pods of 10.32.0.0/12 leaving it",
                  "expr": [{"masquerade": null}]}}]}"#;

    #[test]
    fn a_listed_table_is_recognised_only_when_it_is_exactly_ours() {
        assert_eq!(parse_table(LISTED.as_bytes()).unwrap(), rules(range()).comments());
        let emptied = LISTED.replace(r#"{"rule""#, r#"{"ignored""#);
        assert_ne!(parse_table(emptied.as_bytes()).unwrap(), rules(range()).comments(), "an unknown object is foreign");
        let flushed: String = LISTED.split(",\n        {\"rule\"").next().unwrap().to_owned() + "]}";
        assert_eq!(parse_table(flushed.as_bytes()).unwrap(), Vec::<String>::new(), "a flushed chain has no rules");
        let uncommented = LISTED.replace(r#""comment": "weft: masquerade pods of 10.32.0.0/12 leaving it","#, "");
        assert_ne!(parse_table(uncommented.as_bytes()).unwrap(), rules(range()).comments());
        let rehooked = LISTED.replace(r#""hook": "postrouting""#, r#""hook": "prerouting""#);
        assert_ne!(parse_table(rehooked.as_bytes()).unwrap(), rules(range()).comments());
        assert!(matches!(parse_table(b"Error: oops"), Err(HostNetError::NftJson(_))));
    }

    fn sysctls(forward: &str, bridge: Option<&str>) -> (PathBuf, impl Drop) {
        struct Rm(PathBuf);
        impl Drop for Rm {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let root = std::env::temp_dir().join(format!("weft-hostnet-{}-{n}", std::process::id()));
        std::fs::create_dir_all(root.join("net/ipv4")).unwrap();
        std::fs::write(root.join(IP_FORWARD), forward).unwrap();
        if let Some(b) = bridge {
            std::fs::create_dir_all(root.join("net/bridge")).unwrap();
            std::fs::write(root.join(BRIDGE_NF_CALL_IPTABLES), b).unwrap();
        }
        (root.clone(), Rm(root))
    }

    /// Tools over the sysctl tree `root`, with no `nft` (masquerade is off in these tests, so it
    /// is not needed) and no `modprobe`: a unit test changes nothing of the machine's.
    fn tools(root: &Path) -> Tools {
        let absent = |p: &str| root.join(p).display().to_string();
        Tools { proc_sys: root.to_owned(), nft: absent("no-nft"), modprobe: absent("no-modprobe") }
    }

    #[test]
    fn sysctls_are_set_once_and_put_back_and_warnings_given_once() {
        let (root, _rm) = sysctls("0\n", Some("0\n"));
        let h = HostNet::new(range(), false, tools(&root));
        let out = h.start().unwrap();
        assert_eq!(out.repairs, vec!["enabled IPv4 forwarding (net.ipv4.ip_forward was 0)", "set net.bridge.bridge-nf-call-iptables to 1 (was 0)"]);
        assert_eq!(std::fs::read_to_string(root.join(IP_FORWARD)).unwrap(), "1\n");
        assert_eq!(h.repair(), Outcome::default(), "nothing to do the second time");
        std::fs::write(root.join(IP_FORWARD), "0").unwrap();
        assert_eq!(h.repair().repairs, vec!["enabled IPv4 forwarding (net.ipv4.ip_forward was 0)"]);

        // Forwarding that cannot be enabled stops the start, with the file named.
        std::fs::write(root.join(IP_FORWARD), "0").unwrap();
        std::fs::remove_file(root.join(IP_FORWARD)).unwrap();
        std::fs::create_dir(root.join(IP_FORWARD)).unwrap(); // unreadable as a file
        let e = h.start().unwrap_err();
        assert!(matches!(e, HostNetError::Forwarding { .. }) && e.to_string().contains("net/ipv4/ip_forward"), "{e}");
        let first = h.repair().warnings;
        assert_eq!(first.len(), 1, "{first:?}");
        assert!(first[0].contains("cannot enable IPv4 forwarding"), "{first:?}");
        assert!(h.repair().warnings.is_empty(), "a warning already given is not repeated");
    }

    #[test]
    fn a_missing_bridge_setting_is_a_warning_not_a_failure() {
        let (root, _rm) = sysctls("1", None);
        let h = HostNet::new(range(), false, tools(&root));
        let out = h.start().unwrap();
        assert!(out.repairs.is_empty(), "{out:?}");
        assert_eq!(out.warnings.len(), 1, "{out:?}");
        assert!(out.warnings[0].contains("br_netfilter") && out.warnings[0].contains("kube-proxy"), "{out:?}");
        assert!(out.warnings[0].contains("modprobe could not be run"), "{out:?}");
        assert_eq!(h.repair(), Outcome::default(), "the repair tick does not warn again");
    }
}

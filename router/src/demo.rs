//! `weft demo`: the cluster of the test bed ([`topology::cluster`]) brought up on this machine —
//! hosts A and B on one segment, B and C on another, D behind a NAT — with `weft router` on every
//! host and pods attached through `weft-cni`; what crosses it is shown as reachability matrices,
//! then `weft status`.
//!
//! The namespaces are named `weft-demo-*`; `--keep` leaves them for inspection
//! (`ip netns exec weft-demo-a ...`) and `--down` removes them.

use std::net::Ipv4Addr;

use weft_fastpath::testbed::topology::{self, Cluster};
use std::time::Duration;

use weft_fastpath::testbed::{self, NodeId, TestBed};

use crate::cluster::{self, RouterOptions, RunDir};

/// The bed name, prefix of every namespace the demo makes.
pub const DEMO_BED: &str = "weft-demo";

/// `weft demo` options.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Leave the cluster running afterwards (remove it with `weft demo --down`).
    #[arg(long)]
    pub keep: bool,
    /// Remove a cluster left by `--keep`, and nothing else.
    #[arg(long, conflicts_with = "keep")]
    pub down: bool,
    /// Pods per host.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=20))]
    pub pods: u8,
}

/// Errors of the demo.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// The kernel layer or the test bed failed.
    #[error(transparent)]
    Kernel(#[from] weft_fastpath::Error),
    /// A router or the CNI plugin failed.
    #[error("{0}")]
    Demo(String),
}

/// Runs the demo as `opts` say.
pub fn run(opts: &Options) -> Result<(), DemoError> {
    let pid_file = std::env::temp_dir().join(format!("weft-{DEMO_BED}")).join("pids");
    if opts.down {
        let mut stopped = 0;
        for pid in std::fs::read_to_string(&pid_file).unwrap_or_default().split_whitespace() {
            // Only the routers this demo started and recorded, by PID.
            if let Ok(pid) = pid.parse::<i32>() {
                if cluster::alive(pid as u32) && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM).is_ok() {
                    stopped += 1;
                }
            }
        }
        let removed = testbed::remove_named(DEMO_BED)?;
        let _ = std::fs::remove_dir_all(pid_file.parent().unwrap_or(&pid_file));
        println!("stopped {stopped} routers, removed {} namespaces of the demo cluster", removed.len());
        return Ok(());
    }
    let mut bed = TestBed::named(DEMO_BED)?;
    println!("weft demo: a virtual cluster in network namespaces (prefix {DEMO_BED}-)\n");
    let cluster = topology::cluster(&mut bed, 0)?;
    let run = RunDir::new(DEMO_BED).map_err(|e| DemoError::Demo(format!("run directory: {e}")))?;
    let binary = std::env::current_exe().map_err(|e| DemoError::Demo(format!("own binary: {e}")))?;
    let plugin = binary.with_file_name("weft-cni");
    if !plugin.exists() {
        return Err(DemoError::Demo(format!("{} is missing: build it (cargo build -p weft-cni)", plugin.display())));
    }

    // Until the mesh shares one address ring, each host's router gets a quarter of the range.
    let mut routers = Vec::new();
    for (i, &h) in cluster.hosts.iter().enumerate() {
        let range = format!("10.{}.0.0/14", 32 + 4 * i);
        let o = RouterOptions { binary: binary.clone(), password: None, extra_args: vec!["--ipalloc-range".into(), range] };
        let name = bed.name(h).to_owned();
        let r = cluster::start_router(&mut bed, &run, h, &name, &[], &o).map_err(DemoError::Demo)?;
        routers.push(r);
    }
    let pids: Vec<String> = routers.iter().map(|r| r.pid.to_string()).collect();
    std::fs::write(&pid_file, pids.join(" ")).map_err(|e| DemoError::Demo(format!("{}: {e}", pid_file.display())))?;
    for r in &routers {
        cluster::wait_for(r, Duration::from_secs(20), |s| s.ipam.state == "ready").map_err(DemoError::Demo)?;
    }
    let mut pods: Vec<(NodeId, Ipv4Addr)> = Vec::new();
    for (i, &h) in cluster.hosts.iter().enumerate() {
        for j in 1..=opts.pods {
            let pod = bed.add_node(&format!("{}-pod{j}", bed.name(h)))?;
            let addr = cni_add(&bed, h, pod, &plugin, &routers[i].api_socket)?;
            pods.push((pod, addr));
        }
    }
    print_topology(&bed, &cluster, &pods);

    let names: Vec<&str> = cluster.hosts.iter().map(|&h| bed.name(h)).collect();
    let host_rows = matrix(&bed, &cluster.hosts, |to| cluster.all_addrs[index_of(&cluster.hosts, to)].clone());
    print_matrix("underlay: UDP from each host (row) to each host's addresses (column)", &names, &host_rows);
    let pod_nodes: Vec<NodeId> = pods.iter().map(|p| p.0).collect();
    let pod_names: Vec<&str> = pods.iter().map(|p| bed.name(p.0)).collect();
    let pod_rows = matrix(&bed, &pod_nodes, |to| vec![pods[index_of(&pod_nodes, to)].1]);
    print_matrix("pods: UDP from each pod (row) to each pod (column)", &pod_names, &pod_rows);

    match routers[0].client().get::<weft_api::types::Status>("/status") {
        Ok(s) => println!("weft status (on a):\n{}", crate::cli::render_status(&s)),
        Err(e) => println!("weft status (on a): {e}\n"),
    }
    println!(
        "What this shows: a weft router on every host, pods attached by weft-cni with addresses from\n\
         that router's IPAM and the bridge as their gateway; pods of one host reach each other. The\n\
         underlay is as messy as intended (A and C share no segment, D is behind a NAT).\n\
         Not there yet: the mesh transport and the sleeve, so pods on different hosts cannot reach\n\
         each other yet, and each host's router holds its own part of the range."
    );
    if opts.keep {
        bed.keep();
        let dir = run.keep();
        println!("\nkept (router logs in {}): try `ip netns exec {DEMO_BED}-a-pod1 ping 10.32.0.2`; remove with `weft demo --down`", dir.display());
    } else {
        bed.teardown()?;
        println!("\ntorn down: no namespace or router of the demo is left");
    }
    Ok(())
}

/// Attaches `pod` on `host` through `weft-cni` (CNI 1.0.0 ADD) and returns its address.
fn cni_add(bed: &TestBed, host: NodeId, pod: NodeId, plugin: &std::path::Path, api_socket: &std::path::Path) -> Result<Ipv4Addr, DemoError> {
    use std::io::Write;
    let conf = serde_json::json!({"cniVersion": "1.0.0", "name": "weft", "type": "weft-cni", "apiSocket": api_socket}).to_string();
    let ns = bed.ns(pod).name().to_owned();
    let out = bed
        .ns(host)
        .run(|| -> std::io::Result<std::process::Output> {
            let mut child = std::process::Command::new(plugin)
                .env("CNI_COMMAND", "ADD")
                .env("CNI_CONTAINERID", format!("demo-{ns}"))
                .env("CNI_NETNS", format!("{}/{ns}", weft_fastpath::netns::NETNS_DIR))
                .env("CNI_IFNAME", "eth0")
                .env("CNI_PATH", plugin.parent().unwrap_or(plugin))
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()?;
            child.stdin.take().map(|mut s| s.write_all(conf.as_bytes())).transpose()?;
            child.wait_with_output()
        })?
        .map_err(|e| DemoError::Demo(format!("run weft-cni: {e}")))?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| DemoError::Demo(format!("weft-cni answer: {e}")))?;
    if !out.status.success() {
        return Err(DemoError::Demo(format!("weft-cni ADD for {ns}: {}", v["msg"])));
    }
    v["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| DemoError::Demo(format!("weft-cni result without an address: {v}")))
}

fn index_of(nodes: &[NodeId], n: NodeId) -> usize {
    nodes.iter().position(|&x| x == n).unwrap_or(0)
}

fn print_topology(bed: &TestBed, c: &Cluster, pods: &[(NodeId, Ipv4Addr)]) {
    println!("hosts (underlay addresses):");
    for (i, &h) in c.hosts.iter().enumerate() {
        let addrs: Vec<String> = c.all_addrs[i].iter().map(|a| a.to_string()).collect();
        let note = if i == 3 { format!("  behind NAT {}", bed.name(c.nat)) } else { String::new() };
        println!("  {:<3} {}{}", bed.name(h), addrs.join(", "), note);
        let prefix = format!("{}-", bed.name(h));
        let mine: Vec<String> = pods.iter().filter(|(p, _)| bed.name(*p).starts_with(&prefix)).map(|(p, a)| format!("{} {a}", bed.name(*p))).collect();
        println!("      pods (attached by weft-cni): {}", mine.join(", "));
    }
    println!();
}

/// Probes every ordered pair of `nodes` in parallel; `true` where any address answered.
fn matrix(bed: &TestBed, nodes: &[NodeId], addrs: impl Fn(NodeId) -> Vec<Ipv4Addr> + Sync) -> Vec<Vec<Option<bool>>> {
    std::thread::scope(|s| {
        let rows: Vec<_> = nodes
            .iter()
            .map(|&from| {
                let addrs = &addrs;
                s.spawn(move || {
                    nodes
                        .iter()
                        .map(|&to| {
                            (from != to).then(|| {
                                addrs(to).into_iter().any(|a| matches!(bed.udp_probe(from, to, a), Ok(Some(_))))
                            })
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        rows.into_iter().map(|r| r.join().unwrap_or_default()).collect()
    })
}

fn print_matrix(title: &str, names: &[&str], rows: &[Vec<Option<bool>>]) {
    println!("{title}:");
    let w = names.iter().map(|n| n.len()).max().unwrap_or(1).max(4);
    print!("  {:w$}", "");
    for n in names {
        print!(" {n:>w$}");
    }
    println!();
    for (n, row) in names.iter().zip(rows) {
        print!("  {n:w$}");
        for cell in row {
            let c = match cell {
                None => "·",
                Some(true) => "ok",
                Some(false) => "--",
            };
            print!(" {c:>w$}");
        }
        println!();
    }
    println!();
}

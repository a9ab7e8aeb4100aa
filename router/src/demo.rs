//! `weft demo`: the cluster of the test bed ([`topology::cluster`]) brought up on this machine —
//! hosts A and B on one segment, B and C on another, D behind a NAT — with `weft router` on every
//! host and pods attached through `weft-cni`; what crosses it is shown as reachability matrices,
//! then a TCP transfer between pods on A and C (relayed by B) and `weft status`.
//!
//! The namespaces are named `weft-demo-*`; `--keep` leaves them for inspection
//! (`ip netns exec weft-demo-a ...`) and `--down` removes them.

use std::net::Ipv4Addr;

use weft_testbed::topology::{self, Cluster};
use std::time::Duration;

use weft_testbed::{self, NodeId, TestBed};

use weft_testbed::routers::{self, RouterOptions, RunDir};

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
    Kernel(#[from] weft_kernel::Error),
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
            if let Ok(pid) = pid.parse::<i32>()
                && routers::alive(pid as u32)
                && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM).is_ok()
            {
                stopped += 1;
            }
        }
        let removed = weft_testbed::remove_named(DEMO_BED)?;
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
    let password = format!("weft-demo-password-{}", std::process::id());
    let o = RouterOptions { binary: binary.clone(), password: Some(password), extra_args: vec![] };
    println!("starting a weft router on every host (A dials B, C dials B, D dials C through its NAT; cluster password set)...");
    let t0 = std::time::Instant::now();
    let routers = routers::start_cluster(&mut bed, &run, &cluster, &o, Duration::from_secs(40));
    // Record the PIDs first, so `weft demo --down` can stop them even if the mesh failed.
    let pids: Vec<String> = bed.children().iter().map(|p| p.to_string()).collect();
    std::fs::write(&pid_file, pids.join(" ")).map_err(|e| DemoError::Demo(format!("{}: {e}", pid_file.display())))?;
    let routers = routers.map_err(DemoError::Demo)?;
    println!("meshed in {:.1} s: connections up, topology agreed, the pod range divided among the four\n", t0.elapsed().as_secs_f64());
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
    let pod_rows = ping_matrix(&bed, &pods);
    print_matrix("pods: ping from each pod (row) to each pod (column), across the mesh", &pod_names, &pod_rows);
    let _ = pod_nodes;

    // A TCP transfer from a pod on A to a pod on C: A and C share no segment, so every byte is
    // relayed by the router on B, encrypted on both hops.
    let a_pod = pods.iter().find(|(p, _)| bed.name(*p).ends_with("-a-pod1") || bed.name(*p) == "a-pod1").copied();
    let c_pod = pods.iter().find(|(p, _)| bed.name(*p).ends_with("-c-pod1") || bed.name(*p) == "c-pod1").copied();
    if let (Some(a), Some(c)) = (a_pod, c_pod) {
        match weft_testbed::iperf3(&mut bed, c.0, a.0, c.1, Duration::from_secs(3)) {
            Ok(t) => println!("TCP a-pod1 -> c-pod1 (relayed by b, encrypted): {:.2} Gbit/s over 3 s, {} retransmits\n", t.bits_per_second / 1e9, t.retransmits),
            Err(e) => println!("TCP a-pod1 -> c-pod1: {e}\n"),
        }
    }

    let weft_cli = |args: &[&str], r: &routers::RouterProc| -> String {
        match std::process::Command::new(&binary).args(args).arg("--api-socket").arg(&r.api_socket).output() {
            Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr),
            Err(e) => format!("{e}\n"),
        }
    };
    println!("weft status (on a):\n{}", weft_cli(&["status"], &routers[0]));
    println!("weft status peers (on a):\n{}", weft_cli(&["status", "peers"], &routers[0]));
    println!("weft status connections (on b):\n{}", weft_cli(&["status", "connections"], &routers[1]));
    println!("weft status ipam (on a):\n{}", weft_cli(&["status", "ipam"], &routers[0]));
    println!(
        "What this shows: a weft router on every host, meshed over QUIC with a cluster password;\n\
         pods attached by weft-cni with addresses from one shared range; every pod reaches every\n\
         other over the encrypted sleeve, though A and C share no segment (B relays) and D is\n\
         behind a NAT. Metrics: `ip netns exec {DEMO_BED}-a curl 127.0.0.1:6782/metrics` with --keep."
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
                .env("CNI_NETNS", format!("{}/{ns}", weft_kernel::netns::NETNS_DIR))
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

/// Pings every ordered pair of pods (one echo each, retried once: the first may wait for ARP
/// across the mesh), the pods of one source in parallel with the others.
fn ping_matrix(bed: &TestBed, pods: &[(NodeId, Ipv4Addr)]) -> Vec<Vec<Option<bool>>> {
    std::thread::scope(|s| {
        let rows: Vec<_> = pods
            .iter()
            .map(|&(from, _)| {
                s.spawn(move || {
                    pods.iter()
                        .map(|&(to, addr)| (from != to).then(|| (0..2).any(|_| bed.ping(from, addr).unwrap_or(false))))
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

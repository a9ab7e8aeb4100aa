//! `weft demo`: the cluster of the test bed ([`topology::cluster`]) brought up on this machine —
//! hosts A and B on one segment, B and C on another, D behind a NAT, two pods on each host — with
//! what crosses it shown as reachability matrices.
//!
//! The namespaces are named `weft-demo-*`; `--keep` leaves them for inspection
//! (`ip netns exec weft-demo-a ...`) and `--down` removes them.

use std::net::Ipv4Addr;

use weft_fastpath::testbed::topology::{self, Cluster};
use weft_fastpath::testbed::{self, NodeId, TestBed};

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
}

/// Runs the demo as `opts` say.
pub fn run(opts: &Options) -> Result<(), DemoError> {
    if opts.down {
        let removed = testbed::remove_named(DEMO_BED)?;
        println!("removed {} namespaces of the demo cluster", removed.len());
        return Ok(());
    }
    let mut bed = TestBed::named(DEMO_BED)?;
    println!("weft demo: a virtual cluster in network namespaces (prefix {DEMO_BED}-)\n");
    let cluster = topology::cluster(&mut bed, opts.pods)?;
    print_topology(&bed, &cluster);

    let names: Vec<&str> = cluster.hosts.iter().map(|&h| bed.name(h)).collect();
    let host_rows = matrix(&bed, &cluster.hosts, |to| cluster.all_addrs[index_of(&cluster.hosts, to)].clone());
    print_matrix("underlay: UDP from each host (row) to each host's addresses (column)", &names, &host_rows);

    let pods: Vec<(NodeId, Ipv4Addr)> = cluster.pods.iter().flatten().copied().collect();
    let pod_nodes: Vec<NodeId> = pods.iter().map(|p| p.0).collect();
    let pod_names: Vec<&str> = pods.iter().map(|p| bed.name(p.0)).collect();
    let pod_rows = matrix(&bed, &pod_nodes, |to| vec![pods[index_of(&pod_nodes, to)].1]);
    print_matrix("pods: UDP from each pod (row) to each pod (column)", &pod_names, &pod_rows);

    println!(
        "What this shows: the underlay is as messy as promised (A and C share no segment, D is\n\
         reachable only through its NAT), and pods reach the pods of their own host through the\n\
         bridge `weft`.\n\
         Not there yet: the weft router (mesh, sleeve, switch), so pods on different hosts cannot\n\
         reach each other yet; pods are attached by the kernel layer, not yet by weft-cni; and\n\
         `weft status` does not exist yet. Those are the Router, CNI and Status issues."
    );
    if opts.keep {
        bed.keep();
        println!("\nkept: try `ip netns exec {DEMO_BED}-a-pod1 ping 10.32.1.11`; remove with `weft demo --down`");
    } else {
        bed.teardown()?;
        println!("\ntorn down: no namespace of the demo is left");
    }
    Ok(())
}

fn index_of(nodes: &[NodeId], n: NodeId) -> usize {
    nodes.iter().position(|&x| x == n).unwrap_or(0)
}

fn print_topology(bed: &TestBed, c: &Cluster) {
    println!("hosts (underlay addresses):");
    for (i, &h) in c.hosts.iter().enumerate() {
        let addrs: Vec<String> = c.all_addrs[i].iter().map(|a| a.to_string()).collect();
        let note = if i == 3 { format!("  behind NAT {}", bed.name(c.nat)) } else { String::new() };
        println!("  {:<3} {}{}", bed.name(h), addrs.join(", "), note);
        let pods: Vec<String> = c.pods[i].iter().map(|(p, a)| format!("{} {a}", bed.name(*p))).collect();
        println!("      pods: {}", pods.join(", "));
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

//! `weft router --kube-peers` on test-bed hosts, against a stand-in of the Kubernetes API
//! server's HTTP protocol (`kube/tests/standin`, listening in its own namespace on the hosts'
//! segment): Nodes become dial targets, the first Node list sizes the IPAM consensus, the CNI
//! configuration appears only once ADDs can be served, 20 parallel ADDs right after that give
//! pods that reach their gateway and pods on the other host at once, and a deleted Node's peer
//! is reclaimed by exactly one router. Also `/healthz` and `/readyz`. Root needed.

#[path = "../../kube/tests/standin/mod.rs"]
mod standin;

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use standin::StandIn;
use weft_api::types::{IpamShare, Status};
use weft_kernel::netns::{NETNS_DIR, NetNs};
use weft_testbed::routers::{self, RouterOptions, RouterProc, RunDir};
use weft_testbed::topology::SEGMENT_1;
use weft_testbed::{NodeId, TestBed};

fn weft() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft"))
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

struct Cluster {
    bed: TestBed,
    run: RunDir,
    api: StandIn,
    hosts: Vec<NodeId>,
    routers: Vec<RouterProc>,
}

const API_ADDR: &str = "192.0.2.2:8080";

fn host_addr(i: usize) -> String {
    format!("192.0.2.{}", 11 + i)
}

fn conf_dir(run: &RunDir, i: usize) -> PathBuf {
    run.path().join(format!("h{}", i + 1)).join("net.d")
}

/// `n` hosts on one segment, each a Node of the stand-in, each running a router with
/// `--kube-peers` (no --peer, no --ipalloc-init) that writes its CNI configuration when ready.
fn cluster(n: usize) -> Cluster {
    let mut bed = TestBed::new().expect("namespace tests need root (CI runs as root)");
    let run = RunDir::new(bed.id()).unwrap();
    let seg = bed.add_segment("lan", SEGMENT_1, 24).unwrap();
    let api_node = bed.add_node("api").unwrap();
    bed.attach(api_node, seg, 2).unwrap();
    let listener = bed.ns(api_node).run(|| TcpListener::bind(API_ADDR)).unwrap().unwrap();
    let api = StandIn::serve(listener);
    let kubeconfig = run.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig);
    let mut hosts = Vec::new();
    for i in 0..n {
        let h = bed.add_node(&format!("h{}", i + 1)).unwrap();
        bed.attach(h, seg, 11 + i as u8).unwrap();
        api.add_node(&format!("h{}", i + 1), &host_addr(i));
        hosts.push(h);
    }
    let mut routers = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        let opts = RouterOptions {
            binary: weft(),
            password: Some("a kube test password".into()),
            extra_args: [
                "--kube-peers",
                "--kubeconfig",
                kubeconfig.to_str().unwrap(),
                "--node-name",
                &format!("h{}", i + 1),
                "--kube-reclaim-grace",
                "2",
                "--write-cni-conf",
                "--cni-conf-dir",
                conf_dir(&run, i).to_str().unwrap(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        };
        routers.push(routers::start_router(&mut bed, &run, *h, &format!("h{}", i + 1), &[], &opts).unwrap());
    }
    Cluster { bed, run, api, hosts, routers }
}

impl Cluster {
    fn logs(&self) -> String {
        self.routers.iter().enumerate().map(|(i, r)| format!("--- h{} ---\n{}", i + 1, r.log_text())).collect()
    }

    /// Waits until every router has written its CNI configuration (it is ready for ADDs).
    fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for i in 0..self.routers.len() {
            let conf = conf_dir(&self.run, i).join("10-weft.conflist");
            while !conf.exists() {
                assert!(routers::alive(self.routers[i].pid), "router h{} exited:\n{}", i + 1, self.logs());
                assert!(Instant::now() < deadline, "no CNI configuration from h{} within {timeout:?}:\n{}", i + 1, self.logs());
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
}

/// One HTTP GET to the router's metrics address inside `ns`: (status code, body).
fn http_get(ns: &NetNs, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    ns.run(|| {
        let mut s = std::net::TcpStream::connect("127.0.0.1:6782").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let code = out.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        (code, body)
    })
    .unwrap()
}

fn cnitool(host: &NetNs, conf_dir: &Path, verb: &str, pod_ns: &str) -> Output {
    let plugins = format!("{}:/usr/lib/cni", weft().parent().unwrap().display());
    host.run(|| {
        Command::new("cnitool")
            .args([verb, "weft", &format!("{NETNS_DIR}/{pod_ns}")])
            .env("NETCONFPATH", conf_dir)
            .env("CNI_PATH", &plugins)
            .output()
            .unwrap()
    })
    .unwrap()
}

#[test]
fn right_after_ready_twenty_parallel_adds_reach_their_gateway_and_the_other_host() {
    let plugin = weft().parent().unwrap().join("weft-cni");
    assert!(plugin.exists(), "{} is not built: cargo build -p weft-cni first", plugin.display());
    assert!(Command::new("cnitool").arg("--help").output().is_ok(), "cnitool is missing: run scripts/install-deps");
    let mut c = cluster(2);
    let t0 = Instant::now();
    c.wait_ready(Duration::from_secs(40));
    let ready = t0.elapsed();

    // Pod namespaces exist before the routers are ready? No: made now, after, as the kubelet would.
    let pods: Vec<(usize, NodeId)> = (0..20).map(|j| (j % 2, c.bed.add_node(&format!("p{j}")).unwrap())).collect();
    let t1 = Instant::now();
    let host_ns: Vec<&NetNs> = c.hosts.iter().map(|h| c.bed.ns(*h)).collect();
    let pod_names: Vec<(usize, String)> = pods.iter().map(|(h, p)| (*h, c.bed.ns(*p).name().to_owned())).collect();
    let dirs: Vec<PathBuf> = (0..2).map(|i| conf_dir(&c.run, i)).collect();
    let adds: Vec<Output> = std::thread::scope(|s| {
        let handles: Vec<_> = pod_names.iter().map(|(h, ns)| s.spawn(|| cnitool(host_ns[*h], &dirs[*h], "add", ns))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut addrs = Vec::new();
    for (out, (h, _)) in adds.iter().zip(&pod_names) {
        assert!(out.status.success(), "ADD on h{}: {}\n{}", h + 1, text(out), c.logs());
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let ip: Ipv4Addr = v["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().parse().unwrap();
        let gw: Ipv4Addr = v["ips"][0]["gateway"].as_str().unwrap().parse().unwrap();
        addrs.push((ip, gw));
    }
    let added = t1.elapsed();
    // Every gateway an ADD returned was on its bridge when the ADD returned.
    let bridges: Vec<Vec<std::net::IpAddr>> =
        host_ns.iter().map(|ns| ns.run(|| weft_kernel::Handle::open().unwrap().addresses("weft").unwrap()).unwrap().into_iter().map(|(a, _)| a).collect()).collect();
    for (j, (_, gw)) in addrs.iter().enumerate() {
        assert!(bridges[j % 2].contains(&(*gw).into()), "pod {j}'s gateway {gw} is not on h{}'s bridge: {:?}", j % 2 + 1, bridges[j % 2]);
    }
    // Each pod pings its gateway and the pod next to it in the list (on the other host), all at
    // once, one echo each with a 2 s deadline: no retries.
    let pod_ns: Vec<&NetNs> = pods.iter().map(|(_, p)| c.bed.ns(*p)).collect();
    let pings: Vec<(usize, String, Output)> = std::thread::scope(|s| {
        let mut handles = Vec::new();
        for j in 0..20 {
            let other = addrs[j ^ 1].0;
            for target in [addrs[j].1, other] {
                let ns = pod_ns[j];
                handles.push(s.spawn(move || {
                    let out = ns.run(|| Command::new("ping").args(["-n", "-c", "1", "-W", "2", &target.to_string()]).output().unwrap()).unwrap();
                    (j, target.to_string(), out)
                }));
            }
        }
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let failed: Vec<String> = pings.iter().filter(|(_, _, o)| !o.status.success()).map(|(j, t, o)| format!("pod {j} -> {t}: {}", text(o))).collect();
    assert!(failed.is_empty(), "{} of 40 pings failed:\n{}\n{}", failed.len(), failed.join("\n"), c.logs());
    // A gateway that was missing would still answer once the repair added it, a second or more
    // later (ARP retries): the answers must come at once.
    let rtt = |o: &Output| -> f64 { text(o).split("time=").nth(1).and_then(|t| t.split_whitespace().next()).and_then(|t| t.parse().ok()).unwrap_or(f64::MAX) };
    let slowest = pings.iter().map(|(_, _, o)| rtt(o)).fold(0.0, f64::max);
    assert!(slowest < 500.0, "a ping took {slowest} ms: an address was not there at once:\n{}", pings.iter().map(|(j, t, o)| format!("pod {j} -> {t}: {}", text(o))).collect::<String>());
    println!("routers ready (CNI configuration written) after {ready:?}; 20 parallel ADDs in {added:?}; 40 pings, all answered at the first try, the slowest in {slowest} ms");

    // Discovery: each dials the other's Node address; the first division was agreed by the two
    // Nodes of the first list; both registered in the peer registry.
    for (i, r) in c.routers.iter().enumerate() {
        let s: Status = r.client().get("/status").unwrap();
        assert_eq!(s.targets, vec![format!("{}:6783", host_addr(1 - i))], "h{}", i + 1);
        assert_eq!((s.peers, s.connections.established, s.ipam.state.as_str()), (2, 1, "ready"), "h{}: {s:?}", i + 1);
        let shares: Vec<IpamShare> = r.client().get("/ipam").unwrap();
        assert_eq!(shares.len(), 2, "the range divided between the two Nodes' peers: {shares:?}");
        assert!(r.log_text().contains("Nodes listed nodes=2"), "{}", r.log_text());
        assert_eq!(http_get(host_ns[i], "/readyz"), (200, "ok\n".to_owned()));
        assert_eq!(http_get(host_ns[i], "/healthz"), (200, "ok\n".to_owned()));
    }
    let peers = c.api.configmap_json("kube-system", "weft-peers", "peers").unwrap();
    let names: Vec<String> = c.routers.iter().map(|r| r.client().get::<Status>("/status").unwrap().name).collect();
    assert_eq!(peers, serde_json::json!({names[0].clone(): "h1", names[1].clone(): "h2"}));
    // The configuration is the shipped one, pointed at the router's socket.
    let conf: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dirs[0].join("10-weft.conflist")).unwrap()).unwrap();
    assert_eq!(conf["plugins"][0]["apiSocket"].as_str(), c.routers[0].api_socket.to_str());
    let Cluster { bed, run, .. } = c;
    bed.teardown().unwrap();
    drop(run);
}

#[test]
fn a_deleted_nodes_peer_is_reclaimed_by_exactly_one_router_and_targets_follow_the_nodes() {
    let mut c = cluster(3);
    c.wait_ready(Duration::from_secs(40));
    for (i, r) in c.routers.iter().enumerate() {
        routers::wait_for(r, Duration::from_secs(20), |s| s.peers == 3 && s.connections.established == 2).map_err(|e| format!("h{}: {e}", i + 1)).unwrap();
    }
    let dead: Status = c.routers[2].client().get("/status").unwrap();
    let before: Vec<IpamShare> = c.routers[0].client().get("/ipam").unwrap();
    let dead_share = before.iter().find(|s| s.peer == dead.name).unwrap().size;
    assert!(dead_share > 0);

    // A fourth Node appears: dialled (nothing answers there; it stays a target).
    c.api.add_node("h4", "192.0.2.99");
    routers::wait_for(&c.routers[0], Duration::from_secs(10), |s| s.targets.contains(&"192.0.2.99:6783".to_owned())).unwrap();

    // h3's router dies and its Node is deleted.
    let pid = c.routers[2].pid;
    c.bed.kill(pid).unwrap();
    c.api.delete_node("h3");
    c.api.delete_node("h4");
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(90);
    let reclaimed_on = |i: usize| -> bool {
        let shares: Vec<IpamShare> = c.routers[i].client().get("/ipam").unwrap();
        shares.iter().all(|s| s.peer != dead.name || s.size == 0)
    };
    while !(reclaimed_on(0) && reclaimed_on(1)) {
        assert!(Instant::now() < deadline, "h3 not reclaimed within 90 s:\n{}", c.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("h3's space reclaimed, as both live routers see it, {:?} after its Node was deleted", t0.elapsed());
    let said = |i: usize| c.routers[i].log_text().contains("reclaimed the space of a deleted node's peer");
    let logged = Instant::now() + Duration::from_secs(5);
    while !(said(0) || said(1)) && Instant::now() < logged {
        std::thread::sleep(Duration::from_millis(50));
    }
    let claimed: Vec<usize> = (0..2).filter(|i| said(*i)).collect();
    assert_eq!(claimed.len(), 1, "exactly one router reclaimed:\n{}", c.logs());
    let reclaimer = claimed[0];
    let s: Status = c.routers[reclaimer].client().get("/status").unwrap();
    println!("reclaimed by h{}: {}", reclaimer + 1, s.ipam.detail);
    assert!(s.ipam.detail.contains("reclaimed") && s.ipam.detail.contains(&dead.name), "{}", s.ipam.detail);
    let shares: Vec<IpamShare> = c.routers[reclaimer].client().get("/ipam").unwrap();
    let mine = shares.iter().find(|x| x.peer == s.name).unwrap().size;
    let was = before.iter().find(|x| x.peer == s.name).unwrap().size;
    assert_eq!(mine, was + dead_share, "h3's space moved to the reclaimer");
    // The registry forgot h3; the routers stopped dialling h3 and h4.
    let peers = c.api.configmap_json("kube-system", "weft-peers", "peers").unwrap();
    assert!(peers.get(&dead.name).is_none() && peers.as_object().unwrap().len() == 2, "{peers}");
    assert_eq!(c.api.configmap_json("kube-system", "weft-peers", "claims").unwrap(), serde_json::json!({}));
    for i in 0..2 {
        let s: Status = c.routers[i].client().get("/status").unwrap();
        assert_eq!(s.targets, vec![format!("{}:6783", host_addr(1 - i))], "h{}", i + 1);
    }
    // The CLI shows it.
    let out = Command::new(weft()).args(["status", "--api-socket"]).arg(&c.routers[reclaimer].api_socket).output().unwrap();
    assert!(text(&out).contains("reclaimed"), "{}", text(&out));
    let Cluster { bed, run, .. } = c;
    bed.teardown().unwrap();
    drop(run);
}

#[test]
fn healthz_and_readyz_say_why_not() {
    let mut bed = TestBed::new().expect("namespace tests need root (CI runs as root)");
    let run = RunDir::new(bed.id()).unwrap();
    let h = bed.add_node("h").unwrap();
    // Waits for a consensus of two, and dials a peer that is not there.
    let opts = RouterOptions { binary: weft(), password: None, extra_args: vec!["--ipalloc-init".into(), "consensus=2".into()] };
    let r = routers::start_router(&mut bed, &run, h, "h", &[Ipv4Addr::new(192, 0, 2, 200)], &opts).unwrap();
    routers::wait_for(&r, Duration::from_secs(20), |_| true).unwrap();
    let ns = bed.ns(h);
    assert_eq!(http_get(ns, "/healthz"), (200, "ok\n".to_owned()));
    let (code, body) = http_get(ns, "/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("IPAM is awaiting-consensus"), "{body}");
    assert!(body.contains("gateway"), "{body}");
    assert!(body.contains("no connection established yet (1 peers known)"), "{body}");
    // The ADD's allocation is refused as not ready, naming why.
    let e = r
        .client()
        .post::<_, weft_api::types::Allocation>("/ipam/allocate", &weft_api::types::AllocateRequest { attachment: weft_api::types::Attachment { container_id: "c".into(), ifname: "eth0".into() } })
        .unwrap_err();
    assert!(e.to_string().contains("IPAM is not ready"), "{e}");
    bed.teardown().unwrap();
}

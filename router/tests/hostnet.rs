//! The host networking `weft router` sets up (`router/src/daemon/hostnet.rs`) and `weft reset`
//! removes, on real namespaces: two meshed hosts and a namespace playing the internet on their
//! underlay segment, which has no route to the pod range. Pods are attached by `cnitool` with
//! the shipped conflist (`weft-cni`, then the reference `portmap`). Root needed.
//!
//! Everything the routers change is in the test bed's host namespaces: the tests check that the
//! sysctls of the namespace they run in (the machine's) are the same afterwards. On this kernel
//! (5.3 and later) `net.bridge.bridge-nf-call-iptables` is per namespace; on older ones it does
//! not exist outside the initial namespace, and the router only warns.

mod common;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::weft;
use weft_kernel::netlink::Route;
use weft_kernel::netns::NETNS_DIR;
use weft_testbed::routers::{self, RouterProc, RunDir};
use weft_testbed::{NodeId, TestBed};

const FORWARD: &str = "net/ipv4/ip_forward";
const BRIDGE_NF: &str = "net/bridge/bridge-nf-call-iptables";
/// The address of the namespace playing the internet.
const INET: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 100);

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A sysctl as the calling thread's namespace sees it (`None` when it does not exist there).
fn sysctl_here(key: &str) -> Option<String> {
    std::fs::read_to_string(Path::new("/proc/sys").join(key)).ok().map(|v| v.trim().to_owned())
}

fn sysctl(bed: &TestBed, n: NodeId, key: &str) -> Option<String> {
    bed.ns(n).run(|| sysctl_here(key)).unwrap()
}

/// The sysctls of the machine's own namespace that a router could touch.
fn machine_sysctls() -> (Option<String>, Option<String>) {
    (sysctl_here(FORWARD), sysctl_here(BRIDGE_NF))
}

fn nft(bed: &TestBed, n: NodeId, args: &[&str]) -> Output {
    bed.run(n, Command::new("nft").args(args)).unwrap()
}

/// Serves, on `addr` inside `n`, one line per connection: the address the connection came
/// from. Stops when the returned flag is set or after two minutes.
fn serve_peer_address(bed: &TestBed, n: NodeId, addr: SocketAddr) -> Arc<AtomicBool> {
    let listener = bed.ns(n).run(|| TcpListener::bind(addr)).unwrap().unwrap_or_else(|e| panic!("listen on {addr}: {e}"));
    listener.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
            match listener.accept() {
                Ok((mut s, peer)) => {
                    let _ = s.write_all(format!("{}\n", peer.ip()).as_bytes());
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    });
    stop
}

/// Connects from inside `n` to `to` and returns the line the server sent (the address it saw),
/// or the error.
fn seen_as(bed: &TestBed, n: NodeId, to: SocketAddr) -> Result<String, String> {
    bed.ns(n)
        .run(|| -> std::io::Result<String> {
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
            s.set_read_timeout(Some(Duration::from_secs(3)))?;
            let mut line = String::new();
            s.read_to_string(&mut line)?;
            Ok(line.trim().to_owned())
        })
        .unwrap()
        .map_err(|e| format!("connect to {to}: {e}"))
}

/// The shipped conflist (weft-cni, then portmap) pointed at `api_socket`, in `dir`.
fn conflist(dir: &Path, api_socket: &Path) {
    let shipped = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/10-weft.conflist")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&shipped).unwrap();
    assert_eq!(v["plugins"][1]["type"], "portmap", "the shipped conflist chains portmap after weft-cni");
    v["plugins"][0]["apiSocket"] = serde_json::json!(api_socket);
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("10-weft.conflist"), v.to_string()).unwrap();
}

/// `cnitool add` of a new pod namespace on host `h`, with `cap_args` (CNI capability
/// arguments, e.g. port mappings); returns the pod and its address.
fn attach(bed: &mut TestBed, h: NodeId, name: &str, conf: &Path, cap_args: &serde_json::Value) -> (NodeId, Ipv4Addr) {
    let plugin = weft().parent().unwrap().join("weft-cni");
    assert!(plugin.exists(), "{} is not built: build the workspace first (scripts/test does)", plugin.display());
    let pod = bed.add_node(name).unwrap();
    let ns = format!("{NETNS_DIR}/{}", bed.ns(pod).name());
    let out = bed
        .run(
            h,
            Command::new("cnitool")
                .args(["add", "weft", &ns])
                .env("NETCONFPATH", conf)
                .env("CNI_PATH", format!("{}:/usr/lib/cni", weft().parent().unwrap().display()))
                .env("CAP_ARGS", cap_args.to_string()),
        )
        .unwrap();
    assert!(out.status.success(), "cnitool add {name}: {}", text(&out));
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let addr = result["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().parse().unwrap();
    (pod, addr)
}

/// Starts a router on `h` named `name`, dialling `peers`, with `env` set: as
/// `routers::start_router`, which takes no environment.
fn start(bed: &mut TestBed, run: &RunDir, h: NodeId, name: &str, peers: &[Ipv4Addr], env: &[(&str, &str)]) -> RouterProc {
    let dir = run.path().join(name);
    let state_dir = dir.join("state");
    std::fs::create_dir_all(&state_dir).unwrap();
    let log = dir.join("router.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut cmd = Command::new(weft());
    cmd.arg("router").args(["--nickname", name]).arg("--state-dir").arg(&state_dir).arg("--api-socket").arg(dir.join("weft.sock"));
    for p in peers {
        cmd.arg("--peer").arg(p.to_string());
    }
    cmd.env_remove("WEFT_PEERS").env_remove("WEFT_PASSWORD").envs(env.iter().copied());
    cmd.stdin(Stdio::null()).stdout(out.try_clone().unwrap()).stderr(out);
    let pid = bed.spawn(h, &mut cmd).unwrap();
    RouterProc { host: h, pid, api_socket: dir.join("weft.sock"), state_dir, log }
}

/// Waits until the router's IPAM is ready.
fn ready(r: &RouterProc) {
    routers::wait_for(r, Duration::from_secs(30), |s| s.ipam.state == "ready").unwrap();
}

/// Polls `cond` every 100 ms for up to `secs` seconds.
fn eventually(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

fn reset(bed: &TestBed, h: NodeId, r: &RouterProc, extra: &[&str]) -> Output {
    bed.run(h, Command::new(weft()).arg("reset").arg("--api-socket").arg(&r.api_socket).arg("--state-dir").arg(&r.state_dir).args(extra)).unwrap()
}

#[test]
fn pods_leave_the_range_masqueraded_host_ports_are_reached_and_reset_removes_it_all() {
    let machine = machine_sysctls();
    let mut bed = TestBed::new().expect("namespace tests need root (CI runs as root)");
    let run = RunDir::new(bed.id()).unwrap();
    let lan = bed.add_segment("lan", Ipv4Addr::new(192, 0, 2, 0), 24).unwrap();
    let h1 = bed.add_node("h1").unwrap();
    let h2 = bed.add_node("h2").unwrap();
    let inet = bed.add_node("inet").unwrap();
    let a1 = bed.attach(h1, lan, 11).unwrap().addr;
    let a2 = bed.attach(h2, lan, 12).unwrap().addr;
    assert_eq!(bed.attach(inet, lan, 100).unwrap().addr, INET);
    // Both off before the router starts, so that it is seen turning them on.
    bed.ns(h1).set_sysctl(FORWARD, "0").unwrap();
    let bridge_nf = sysctl(&bed, h1, BRIDGE_NF).is_some();
    if bridge_nf {
        bed.ns(h1).set_sysctl(BRIDGE_NF, "0").unwrap();
    }

    // As the manifest sets it: masquerade stays on.
    let r1 = start(&mut bed, &run, h1, "h1", &[a2], &[("WEFT_NO_MASQUERADE", "false")]);
    let r2 = start(&mut bed, &run, h2, "h2", &[a1], &[]);
    ready(&r1);
    ready(&r2);
    assert_eq!(sysctl(&bed, h1, FORWARD).as_deref(), Some("1"), "the router enabled forwarding:\n{}", r1.log_text());
    if bridge_nf {
        assert_eq!(sysctl(&bed, h1, BRIDGE_NF).as_deref(), Some("1"), "the router set bridge-nf-call-iptables");
    } else {
        assert!(r1.log_text().contains("br_netfilter"), "without br_netfilter the router warns:\n{}", r1.log_text());
        println!("br_netfilter is not loaded here: the bridge setting was only warned about");
    }
    let table = nft(&bed, h1, &["list", "table", "ip", "weft"]);
    assert!(text(&table).contains("ip saddr 10.32.0.0/12 ip daddr != { 10.32.0.0/12, 224.0.0.0/4 } masquerade"), "{}", text(&table));

    let conf1 = run.path().join("net.d-h1");
    let conf2 = run.path().join("net.d-h2");
    conflist(&conf1, &r1.api_socket);
    conflist(&conf2, &r2.api_socket);
    let ports = serde_json::json!({"portMappings": [{"hostPort": 30080, "containerPort": 8080, "protocol": "tcp"}]});
    let (p1, ip1) = attach(&mut bed, h1, "p1", &conf1, &ports);
    let (p2, ip2) = attach(&mut bed, h2, "p2", &conf2, &serde_json::json!({}));

    // Out to the internet, which has no route to the pod range: seen as h1's underlay address.
    let stops = [
        serve_peer_address(&bed, inet, (INET, 7000).into()),
        serve_peer_address(&bed, p2, (ip2, 7000).into()),
        serve_peer_address(&bed, p1, (Ipv4Addr::UNSPECIFIED, 8080).into()),
    ];
    let seen = seen_as(&bed, p1, (INET, 7000).into()).unwrap_or_else(|e| panic!("pod to the internet: {e}\n{}", r1.log_text()));
    assert_eq!(seen, a1.to_string(), "masqueraded to the address of the interface it left by");
    // To a pod on the other host: across the overlay, not masqueraded.
    let seen = seen_as(&bed, p1, (ip2, 7000).into()).unwrap_or_else(|e| panic!("pod to pod: {e}"));
    assert_eq!(seen, ip1.to_string(), "pod to pod keeps the pod's address");
    // The hostPort on h1, from h2 (portmap's DNAT, then forwarding to the pod).
    let seen = seen_as(&bed, h2, (a1, 30080).into()).unwrap_or_else(|e| panic!("hostPort 30080 on h1 from h2: {e}"));
    assert_eq!(seen, a2.to_string(), "the pod behind the hostPort saw h2");
    println!("pod {ip1} on h1: reaches {INET} as {a1}, pod {ip2} on h2 as itself; hostPort {a1}:30080 from h2 reaches it");

    // Repaired when changed: the table deleted, forwarding turned off.
    assert_eq!(nft(&bed, h1, &["delete", "table", "ip", "weft"]).status.code(), Some(0));
    bed.ns(h1).set_sysctl(FORWARD, "0").unwrap();
    let t = Instant::now();
    assert!(
        eventually(10, || sysctl(&bed, h1, FORWARD).as_deref() == Some("1") && nft(&bed, h1, &["list", "table", "ip", "weft"]).status.success()),
        "not repaired within 10 s:\n{}",
        r1.log_text()
    );
    println!("table and forwarding repaired in {:?}", t.elapsed());
    assert!(r1.log_text().contains("host networking repaired"), "{}", r1.log_text());
    assert_eq!(seen_as(&bed, p1, (INET, 7000).into()).as_deref(), Ok(a1.to_string().as_str()), "masquerade works again");

    // Reset refuses while the router runs; after it stops (the table stays across a restart),
    // it removes the table, the bridge and, with --state, the state; a second run finds nothing.
    let refused = reset(&bed, h1, &r1, &[]);
    assert!(!refused.status.success() && text(&refused).contains("a router is running"), "{}", text(&refused));
    assert!(Command::new("kill").args(["-TERM", &r1.pid.to_string()]).status().unwrap().success());
    assert!(eventually(10, || !routers::alive(r1.pid)), "router did not stop");
    assert!(nft(&bed, h1, &["list", "table", "ip", "weft"]).status.success(), "the table stays when the router stops");
    let out = reset(&bed, h1, &r1, &["--state"]);
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    for line in ["removed the nftables table ip weft", "deleted the bridge weft", "removed the state directory"] {
        assert!(said.contains(line), "missing {line:?} in:\n{said}");
    }
    assert!(!nft(&bed, h1, &["list", "table", "ip", "weft"]).status.success(), "table gone");
    assert!(bed.netlink(h1).find_link("weft").unwrap().is_none(), "bridge gone");
    assert!(!r1.state_dir.exists(), "state gone");
    let again = reset(&bed, h1, &r1, &["--state"]);
    assert!(again.status.success() && text(&again).contains("nothing of weft's was left"), "{}", text(&again));
    println!("weft reset:\n{said}");

    stops.iter().for_each(|s| s.store(true, Ordering::Relaxed));
    assert_eq!(machine_sysctls(), machine, "the machine's own sysctls are unchanged");
    bed.teardown().unwrap();
}

#[test]
fn masquerade_opt_out() {
    let machine = machine_sysctls();
    let mut bed = TestBed::new().expect("namespace tests need root (CI runs as root)");
    let run = RunDir::new(bed.id()).unwrap();
    let lan = bed.add_segment("lan", Ipv4Addr::new(192, 0, 2, 0), 24).unwrap();
    let h1 = bed.add_node("h1").unwrap();
    let inet = bed.add_node("inet").unwrap();
    let a1 = bed.attach(h1, lan, 11).unwrap().addr;
    bed.attach(inet, lan, 100).unwrap();
    // A table of an earlier run with masquerade on: the opt-out removes it.
    let earlier = bed
        .ns(h1)
        .run(|| {
            let mut c = Command::new("nft").args(["-f", "-"]).stdin(Stdio::piped()).spawn().unwrap();
            c.stdin.take().unwrap().write_all(b"table ip weft {\n chain postrouting {\n  type nat hook postrouting priority srcnat;\n  masquerade\n }\n}\n").unwrap();
            c.wait().unwrap()
        })
        .unwrap();
    assert!(earlier.success());

    let r = start(&mut bed, &run, h1, "h1", &[], &[("WEFT_NO_MASQUERADE", "true")]);
    ready(&r);
    assert!(!nft(&bed, h1, &["list", "table", "ip", "weft"]).status.success(), "the table is removed:\n{}", r.log_text());
    assert!(r.log_text().contains("masquerade is off"), "{}", r.log_text());
    assert_eq!(sysctl(&bed, h1, FORWARD).as_deref(), Some("1"), "forwarding is on all the same");

    let conf = run.path().join("net.d");
    conflist(&conf, &r.api_socket);
    let (p1, ip1) = attach(&mut bed, h1, "p1", &conf, &serde_json::json!({}));
    let stop = serve_peer_address(&bed, inet, (INET, 7000).into());
    let e = seen_as(&bed, p1, (INET, 7000).into()).expect_err("without masquerade the internet cannot answer the pod range");
    println!("no masquerade: {e}");
    // Given a route to the pod range, the internet answers, and sees the pod's own address.
    bed.add_route(inet, &Route { dest: Ipv4Addr::new(10, 32, 0, 0).into(), prefix_len: 12, via: Some(a1.into()), dev: None }).unwrap();
    assert_eq!(seen_as(&bed, p1, (INET, 7000).into()), Ok(ip1.to_string()), "routed, not masqueraded");
    stop.store(true, Ordering::Relaxed);
    assert_eq!(machine_sysctls(), machine, "the machine's own sysctls are unchanged");
    bed.teardown().unwrap();
}

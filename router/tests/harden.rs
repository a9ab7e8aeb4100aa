//! The router under the probes of a local or remote attacker, on test-bed namespaces: a flood
//! of the metrics port, a full disk under IPAM, bad configurations, two live routers with one
//! identity, a peer calling itself by the broadcast name, and an unprivileged API client.
//! Root needed; every test tears its bed down, also on failure.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::weft;
use weft_api::types::{AllocateRequest, Allocation, Attachment, Connection, ConnectionState, Peer, ReleaseRequest, Status};
use weft_api::{Client, ClientError};
use weft_kernel::netns::NetNs;
use weft_testbed::routers::{self, RouterOptions, RouterProc, RunDir};
use weft_testbed::{NodeId, TestBed, topology};

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A shell script standing in for `weft`: `body`, with `$WEFT` the real binary, must `exec`
/// it with `"$@"` (so the router keeps the script's PID).
fn wrapper(run: &RunDir, name: &str, body: &str) -> PathBuf {
    let path = run.path().join(name);
    std::fs::write(&path, format!("#!/bin/sh\nset -e\nWEFT={}\n{body}\n", weft().display())).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

fn plain() -> RouterOptions {
    RouterOptions { binary: weft(), password: None, extra_args: vec![] }
}

fn ready(r: &RouterProc) -> Status {
    routers::wait_for(r, Duration::from_secs(30), |s| s.ipam.state == "ready").unwrap()
}

fn attachment(c: &str) -> Attachment {
    Attachment { container_id: c.into(), ifname: "eth0".into() }
}

fn allocate(c: &Client, id: &str) -> Result<Allocation, ClientError> {
    c.post("/ipam/allocate", &AllocateRequest { attachment: attachment(id) })
}

/// `GET /metrics` from inside `ns`.
fn scrape(ns: &NetNs) -> std::io::Result<String> {
    ns.run(|| {
        let mut s = TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], 6782)), Duration::from_secs(5))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })
    .map_err(std::io::Error::other)?
}

fn metric(text: &str, line_start: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
}

/// Opens `argv[1]` connections to 127.0.0.1:6782 and holds them; prints "OPENED FAILED" and
/// waits for stdin to close.
const FLOODER: &str = r#"
import socket, sys
held, failed = [], 0
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.settimeout(2)
    try:
        s.connect(("127.0.0.1", 6782))
        held.append(s)
    except OSError:
        failed += 1
        s.close()
print(len(held), failed, flush=True)
sys.stdin.read()
"#;

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn twenty_thousand_connections_to_the_metrics_port_leave_the_api_and_ipam_working() {
    const FLOOD: usize = 20_000;
    let mut bed = TestBed::new().expect("namespace tests need root (CI runs as root)");
    let run = RunDir::new(bed.id()).unwrap();
    let h = bed.add_node("h").unwrap();
    // The router starts with a soft limit of 1024 under a hard one of 4096: it must raise the
    // first to the second, and 20 000 connections would exhaust either without its budgets.
    let binary = wrapper(&run, "weft-limited", "ulimit -n 4096\nulimit -Sn 1024\nexec \"$WEFT\" \"$@\"");
    let r = routers::start_router(&mut bed, &run, h, "h", &[], &RouterOptions { binary, ..plain() }).unwrap();
    ready(&r);
    assert!(r.log_text().contains("file limit raised from 1024 to 4096"), "{}", r.log_text());
    let fds_idle = open_fds(r.pid);

    // The client ends are held by two child processes (this process's own file limit may be
    // below 20 000 + what it uses, and only a privileged process may raise it).
    let ns = NetNs::open(bed.ns(h).name()).unwrap();
    let flooder = |n: usize| {
        ns.run(|| {
            Command::new("python3")
                .args(["-c", FLOODER, &n.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
        })
        .unwrap()
        .expect("python3 runs the flood")
    };
    let client = r.client();
    let t0 = Instant::now();
    let mut children = vec![flooder(FLOOD / 2), flooder(FLOOD / 2)];
    let (opened, failed, allocs, worst, max_fds) = std::thread::scope(|s| {
        let reports: Vec<_> = children
            .iter_mut()
            .map(|c| {
                let mut out = c.stdout.take().unwrap();
                s.spawn(move || {
                    let mut line = Vec::new();
                    let mut b = [0u8; 1];
                    while out.read(&mut b).map(|n| n == 1).unwrap_or(false) && b[0] != b'\n' {
                        line.push(b[0]);
                    }
                    let line = String::from_utf8_lossy(&line).into_owned();
                    let mut it = line.split_whitespace().map(|x| x.parse::<usize>().unwrap_or(0));
                    (it.next().unwrap_or(0), it.next().unwrap_or(0))
                })
            })
            .collect();
        // Meanwhile IPAM allocations (what CNI ADD asks for) go on and must all succeed.
        let mut allocs = 0usize;
        let mut worst = Duration::ZERO;
        let mut max_fds = 0usize;
        while !reports.iter().all(|r| r.is_finished()) {
            assert!(t0.elapsed() < Duration::from_secs(180), "the flood takes too long");
            let t = Instant::now();
            let a = allocate(&client, &format!("during-{allocs}"));
            assert!(a.is_ok(), "allocation {allocs} during the flood: {a:?}\nrouter log:\n{}", r.log_text());
            worst = worst.max(t.elapsed());
            allocs += 1;
            max_fds = max_fds.max(open_fds(r.pid));
            std::thread::sleep(Duration::from_millis(20));
        }
        let (mut opened, mut failed) = (0, 0);
        for r in reports {
            let (o, f) = r.join().unwrap();
            opened += o;
            failed += f;
        }
        (opened, failed, allocs, worst, max_fds)
    });
    println!(
        "{opened} metrics connections opened and held ({failed} failed) in {:?}; {allocs} allocations meanwhile, slowest {worst:?}; router file handles {fds_idle} idle, at most {max_fds} during the flood",
        t0.elapsed()
    );
    assert_eq!(opened + failed, FLOOD, "the flooders did not finish");
    assert!(allocs >= 5, "too few allocations overlapped the flood ({allocs})");
    assert!(max_fds < 1024, "the router held {max_fds} file handles");

    // With the 20 000 client ends still open: the API still allocates and releases, and the
    // state still reaches the disk (the attacker's flood made `ipam.state.tmp` impossible).
    for i in 0..10 {
        allocate(&client, &format!("after-{i}")).unwrap();
    }
    let freed: Vec<String> = client.post("/ipam/release", &ReleaseRequest { attachment: attachment("after-0") }).unwrap();
    assert_eq!(freed.len(), 1);
    let s: Status = client.get("/status").unwrap();
    assert_eq!(s.ipam.allocated as usize, 1 + allocs + 9, "the bridge, the allocations during and after");

    // The metrics server still answers (the slots of the silent flood connections come back at
    // their deadline) and counts what it refused.
    let deadline = Instant::now() + Duration::from_secs(30);
    let page = loop {
        match scrape(&ns) {
            Ok(p) if p.starts_with("HTTP/1.1 200") => break p,
            other => assert!(Instant::now() < deadline, "metrics do not answer after the flood: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    let refused = metric(&page, "weft_local_connections_refused_total{server=\"metrics\"}").unwrap();
    let api_refused = metric(&page, "weft_local_connections_refused_total{server=\"api\"}").unwrap();
    println!("metrics: refused {refused} metrics connections, {api_refused} API connections; process_max_fds {:?}", metric(&page, "process_max_fds"));
    assert!(refused >= (FLOOD - 64 - failed) as f64 * 0.9, "refused {refused}");
    assert_eq!(api_refused, 0.0);
    assert_eq!(metric(&page, "process_max_fds"), Some(4096.0));
    for mut c in children {
        drop(c.stdin.take()); // the flooders exit when their stdin closes
        let _ = c.wait();
    }
    let log = r.log_text();
    assert!(!log.contains("cannot create"), "{log}");
    assert!(routers::alive(r.pid));
    bed.teardown().unwrap();
}

#[test]
fn on_a_full_disk_an_allocation_answered_an_error_is_not_kept_and_a_failed_release_keeps_its_address() {
    let mut bed = TestBed::new().expect("namespace tests need root (CI runs as root)");
    let run = RunDir::new(bed.id()).unwrap();
    let h = bed.add_node("h").unwrap();
    // The state directory is a 256 KiB tmpfs in a mount namespace of the router's own: the
    // test reaches it through /proc/PID/root, and it goes away with the router.
    let state = run.path().join("h/state");
    std::fs::create_dir_all(&state).unwrap();
    let body = format!("exec unshare -m --propagation private sh -ec 'mount -t tmpfs -o size=256k weft-state {} && exec \"$0\" \"$@\"' \"$WEFT\" \"$@\"", state.display());
    let binary = wrapper(&run, "weft-tmpfs", &body);
    let r = routers::start_router(&mut bed, &run, h, "h", &[], &RouterOptions { binary, ..plain() }).unwrap();
    ready(&r);
    let inside = PathBuf::from(format!("/proc/{}/root{}", r.pid, state.display()));
    let mounts = std::fs::read_to_string(format!("/proc/{}/mounts", r.pid)).unwrap();
    assert!(mounts.contains(&format!("weft-state {} tmpfs", state.display())), "{mounts}");
    assert!(inside.join("ipam.state").exists(), "the router's state is on its tmpfs");
    assert!(!state.join("ipam.state").exists(), "and not outside its mount namespace");

    let c = r.client();
    let kept = allocate(&c, "c1").unwrap();
    // Fill the disk.
    let mut filler = std::fs::File::create(inside.join("filler")).unwrap();
    let chunk = vec![0u8; 4096];
    let full = loop {
        match filler.write(&chunk) {
            Ok(0) => break std::io::Error::other("no progress"),
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    assert_eq!(full.raw_os_error(), Some(28), "filled to ENOSPC: {full}");
    let _ = filler.sync_all();

    let e = allocate(&c, "c2").unwrap_err();
    println!("allocation on a full disk: {e}");
    assert!(matches!(&e, ClientError::Refused { status: 500, message } if message.contains("No space left on device") && message.contains("nothing was changed")), "{e}");
    let list: Vec<Allocation> = c.get("/ipam/allocations").unwrap();
    assert!(list.iter().all(|a| a.attachment.container_id != "c2"), "refused, yet listed: {list:?}");
    let lookup = c.post::<_, Allocation>("/ipam/lookup", &AllocateRequest { attachment: attachment("c2") }).unwrap_err();
    assert!(matches!(lookup, ClientError::Refused { status: 404, .. }), "{lookup}");

    let e = c.post::<_, Vec<String>>("/ipam/release", &ReleaseRequest { attachment: attachment("c1") }).unwrap_err();
    println!("release on a full disk: {e}");
    assert!(matches!(e, ClientError::Refused { status: 500, .. }), "{e}");
    let still: Allocation = c.post("/ipam/lookup", &AllocateRequest { attachment: attachment("c1") }).unwrap();
    assert_eq!(still.address, kept.address, "a failed DEL leaves the allocation");
    let s: Status = c.get("/status").unwrap();
    assert_eq!(s.ipam.allocated, 2, "the bridge and c1");

    // What the router holds is what its disk holds.
    let (_, on_disk) = weft_mesh::ipam::persist::decode_state(&std::fs::read(inside.join("ipam.state")).unwrap()).unwrap();
    let mut disk: Vec<String> = on_disk.allocations.values().map(|h| h.container.clone()).collect();
    let mut memory: Vec<String> = list.iter().map(|a| a.attachment.container_id.clone()).collect();
    disk.sort();
    memory.sort();
    assert_eq!(disk, memory);

    // Space again: the same calls succeed.
    drop(filler);
    std::fs::remove_file(inside.join("filler")).unwrap();
    allocate(&c, "c2").unwrap();
    let freed: Vec<String> = c.post("/ipam/release", &ReleaseRequest { attachment: attachment("c1") }).unwrap();
    assert_eq!(freed, vec![kept.address]);
    let (_, on_disk) = weft_mesh::ipam::persist::decode_state(&std::fs::read(inside.join("ipam.state")).unwrap()).unwrap();
    assert!(on_disk.allocations.values().any(|h| h.container == "c2") && on_disk.allocations.values().all(|h| h.container != "c1"));
    bed.teardown().unwrap();
}

/// Runs `weft router ARGS` in `host`'s namespace with private state and socket paths, bounded
/// to 20 s; returns its output.
fn router_refusing(bed: &TestBed, run: &RunDir, host: NodeId, tag: &str, args: &[&str]) -> Output {
    let dir = run.path().join(tag);
    std::fs::create_dir_all(&dir).unwrap();
    bed.run(
        host,
        Command::new("timeout")
            .arg("20")
            .arg(weft())
            .arg("router")
            .arg("--state-dir")
            .arg(dir.join("state"))
            .arg("--api-socket")
            .arg(dir.join("weft.sock"))
            .arg("--metrics-addr")
            .arg("127.0.0.1:0")
            .args(args)
            .env_remove("WEFT_PASSWORD")
            .env_remove("WEFT_PASSWORD_FILE")
            .env_remove("WEFT_PEERS")
            .stdin(Stdio::null()),
    )
    .unwrap()
}

#[test]
fn bad_configurations_are_refused_with_their_message() {
    let mut bed = TestBed::new().expect("namespace tests need root (CI runs as root)");
    let run = RunDir::new(bed.id()).unwrap();
    let lan = topology::shared_segment(&mut bed, 1).unwrap();
    let h = lan.hosts[0];
    // A route of the host's own, besides its 192.0.2.11/24 on eth0.
    bed.netlink(h)
        .add_route(&weft_kernel::netlink::Route { dest: "198.51.100.0".parse().unwrap(), prefix_len: 24, via: Some("192.0.2.1".parse().unwrap()), dev: None })
        .unwrap();
    let short = run.path().join("short.pw");
    std::fs::write(&short, "hunter2\n").unwrap();
    let bad_identity = run.path().join("bad-identity");
    std::fs::create_dir_all(bad_identity.join("state")).unwrap();
    std::fs::write(bad_identity.join("state/identity"), "name ff:ff:ff:ff:ff:ff\nincarnation 4\n").unwrap();
    let cases: Vec<(&str, Vec<String>, &str)> = vec![
        ("all", vec!["--ipalloc-range".into(), "0.0.0.0/0".into()], "0.0.0.0/0 is every IPv4 address"),
        ("loopback", vec!["--ipalloc-range".into(), "127.0.0.0/8".into()], "overlaps 127.0.0.0/8, loopback"),
        ("multicast", vec!["--ipalloc-range".into(), "224.0.0.0/4".into()], "overlaps 224.0.0.0/4, multicast"),
        ("link-local", vec!["--ipalloc-range".into(), "169.254.0.0/16".into()], "link-local"),
        ("broadcast", vec!["--ipalloc-range".into(), "255.255.0.0/16".into()], "broadcast address 255.255.255.255"),
        ("underlay", vec!["--ipalloc-range".into(), "192.0.2.0/25".into()], "overlaps 192.0.2.11/24 on eth0 of this host"),
        ("route", vec!["--ipalloc-range".into(), "198.51.100.128/25".into()], "overlaps the route 198.51.100.0/24 via 192.0.2.1"),
        ("zero-password", vec!["--password-file".into(), "/dev/zero".into()], "/dev/zero is longer than 4 KiB"),
        ("short-password", vec!["--password-file".into(), short.display().to_string()], "has 7 bytes, fewer than 12"),
    ];
    for (tag, args, needle) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let t = Instant::now();
        let out = router_refusing(&bed, &run, h, tag, &args);
        let said = text(&out);
        println!("weft router {}  ->  exit {:?}, {:?}: {}", args.join(" "), out.status.code(), t.elapsed(), said.lines().filter(|l| l.starts_with("weft:") || l.contains("caused by")).collect::<Vec<_>>().join(" / "));
        assert_eq!(out.status.code(), Some(1), "{tag}: {said}");
        assert!(said.contains(needle), "{tag}: expected {needle:?} in:\n{said}");
        assert!(!run.path().join(tag).join("weft.sock").exists(), "{tag}: it started");
    }
    // An identity file naming the broadcast peer.
    let out = bed
        .run(
            h,
            Command::new("timeout")
                .arg("20")
                .arg(weft())
                .args(["router", "--metrics-addr", "127.0.0.1:0", "--state-dir"])
                .arg(bad_identity.join("state"))
                .arg("--api-socket")
                .arg(bad_identity.join("weft.sock")),
        )
        .unwrap();
    let said = text(&out);
    println!("identity file naming ff:ff:ff:ff:ff:ff  ->  exit {:?}: {}", out.status.code(), said.lines().filter(|l| l.starts_with("weft:") || l.contains("caused by")).collect::<Vec<_>>().join(" / "));
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("identity") && said.contains("ff:ff:ff:ff:ff:ff is the broadcast name"), "{said}");
    assert!(bed.netlink(h).find_link("weft").unwrap().is_none(), "a refused configuration created the bridge");
    bed.teardown().unwrap();
}

#[test]
fn bridge_addresses_of_an_earlier_range_are_removed_at_start_and_a_readable_password_file_is_warned_about() {
    let mut bed = TestBed::new().expect("namespace tests need root (CI runs as root)");
    let run = RunDir::new(bed.id()).unwrap();
    let h = bed.add_node("h").unwrap();
    let r = routers::start_router(&mut bed, &run, h, "first", &[], &plain()).unwrap();
    ready(&r);
    let deadline = Instant::now() + Duration::from_secs(20);
    while bed.netlink(h).addresses("weft").unwrap().iter().all(|(a, _)| !a.is_ipv4()) {
        assert!(Instant::now() < deadline, "the bridge got no address");
        std::thread::sleep(Duration::from_millis(200));
    }
    bed.kill(r.pid).unwrap();
    // And what a run with --ipalloc-range 203.0.113.0/24 before that left.
    bed.netlink(h).add_address("weft", "203.0.113.1".parse().unwrap(), 24).unwrap();
    let before = bed.netlink(h).addresses("weft").unwrap();
    println!("bridge addresses before: {before:?}");

    // A new range (a new state directory: IPAM refuses a range change in place), and a
    // password file everyone may read.
    let opts = RouterOptions { password: Some("a-long-enough-password".into()), extra_args: vec!["--ipalloc-range".into(), "10.40.0.0/16".into()], ..plain() };
    let r = routers::start_router(&mut bed, &run, h, "second", &[], &opts).unwrap();
    ready(&r);
    let deadline = Instant::now() + Duration::from_secs(20);
    let after = loop {
        let a = bed.netlink(h).addresses("weft").unwrap();
        if a.iter().any(|(a, p)| a.to_string().starts_with("10.40.") && *p == 16) {
            break a;
        }
        assert!(Instant::now() < deadline, "no address of the new range on the bridge: {a:?}\n{}", r.log_text());
        std::thread::sleep(Duration::from_millis(200));
    };
    println!("bridge addresses after: {after:?}");
    let v4: Vec<_> = after.iter().filter(|(a, _)| a.is_ipv4()).collect();
    assert_eq!(v4.len(), 1, "{after:?}");
    let routes = bed.netlink(h).routes().unwrap();
    let on_bridge: Vec<String> = routes.iter().filter(|x| x.dev.as_deref() == Some("weft") && x.dest.is_ipv4()).map(|x| x.to_string()).collect();
    println!("routes on the bridge: {on_bridge:?}");
    assert!(on_bridge.iter().all(|x| x.starts_with("10.40.0.0/16")), "{on_bridge:?}");
    let log = r.log_text();
    assert!(log.contains("removed 203.0.113.1/24 from bridge weft: not of the pod range 10.40.0.0/16"), "{log}");
    assert!(log.contains("removed 10.32.") && log.contains("/12 from bridge weft"), "{log}");
    // start_router writes the password file with the default umask: 0644.
    assert!(log.contains("may be read by its group or by everyone (mode 644): chmod 600 it"), "{log}");
    bed.teardown().unwrap();
}

#[test]
fn a_copy_of_a_running_routers_state_is_reported_and_the_third_router_keeps_one_connection() {
    two_live_routers_with_one_identity(false);
}

#[test]
fn two_routers_started_from_one_identity_file_are_reported_and_the_third_keeps_one_connection() {
    two_live_routers_with_one_identity(true);
}

/// Routers a1 and a2 with one identity both dial c. `together`: both start from the same
/// identity file at once (one incarnation); otherwise a2 starts later from a copy of a1's
/// running state directory (a newer incarnation, like a cloned machine).
fn two_live_routers_with_one_identity(together: bool) {
    let mut bed = TestBed::new().expect("namespace tests need root (CI runs as root)");
    let run = RunDir::new(bed.id()).unwrap();
    let lan = topology::shared_segment(&mut bed, 3).unwrap();
    let (addr1, addr2, addr_c) = (lan.links[0].addr, lan.links[1].addr, lan.links[2].addr);
    let opts = RouterOptions { extra_args: vec!["--ipalloc-init".into(), "consensus=2".into()], ..plain() };
    let c = routers::start_router(&mut bed, &run, lan.hosts[2], "c", &[], &opts).unwrap();
    let (a1, a2, name) = if together {
        let name = "0e:00:00:00:00:42".to_owned();
        for r in ["a1", "a2"] {
            let dir = run.path().join(r).join("state");
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("identity"), format!("name {name}\nincarnation 5\n")).unwrap();
        }
        let a1 = routers::start_router(&mut bed, &run, lan.hosts[0], "a1", &[addr_c], &opts).unwrap();
        let a2 = routers::start_router(&mut bed, &run, lan.hosts[1], "a2", &[addr_c], &opts).unwrap();
        (a1, a2, name)
    } else {
        let a1 = routers::start_router(&mut bed, &run, lan.hosts[0], "a1", &[addr_c], &opts).unwrap();
        let s = routers::wait_for(&a1, Duration::from_secs(30), |s| s.connections.established == 1).unwrap();
        // The copied host: the same state directory (identity, keys, IPAM), another address.
        let copy = run.path().join("a2/state");
        std::fs::create_dir_all(&copy).unwrap();
        for f in std::fs::read_dir(&a1.state_dir).unwrap() {
            let f = f.unwrap().path();
            if f.is_file() {
                std::fs::copy(&f, copy.join(f.file_name().unwrap())).unwrap();
            }
        }
        let a2 = routers::start_router(&mut bed, &run, lan.hosts[1], "a2", &[addr_c], &opts).unwrap();
        (a1, a2, s.name)
    };
    for r in [&a1, &a2] {
        assert_eq!(routers::wait_for(r, Duration::from_secs(30), |_| true).unwrap().name, name, "one name, two routers");
    }
    routers::wait_for(&c, Duration::from_secs(30), |s| s.connections.established == 1).unwrap();

    // Watch C's connection to that name for 25 s.
    let t0 = Instant::now();
    let mut seen: Vec<(Duration, String)> = Vec::new();
    while t0.elapsed() < Duration::from_secs(25) {
        let conns: Vec<Connection> = c.client().get("/connections").unwrap();
        let up: Vec<&Connection> = conns.iter().filter(|x| x.state == ConnectionState::Established && x.peer.as_deref() == Some(name.as_str())).collect();
        assert!(up.len() <= 1, "{up:?}");
        let now = up.first().map(|x| x.remote.clone()).unwrap_or_else(|| "none".into());
        if seen.last().is_none_or(|(_, r)| *r != now) {
            seen.push((t0.elapsed(), now));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("{}: C's connection to {name} over 25 s: {seen:?}", if together { "started together" } else { "copied later" });
    let log_c = c.log_text();
    let ups = log_c.lines().filter(|l| l.contains("mesh connection up") && l.contains(&name)).count();
    let replaced = log_c.lines().filter(|l| l.contains("replacing the older one") && l.contains(&name)).count();
    let refusals = log_c.lines().filter(|l| l.contains("two live routers share the name")).count();
    println!("C's log: {ups} connections to {name} came up, {replaced} replaced another, {refusals} refused as a conflict");
    let last = &seen.last().unwrap().1;
    assert_ne!(last, "none", "C lost {name}: {seen:?}\n{log_c}");
    let settled = seen.last().unwrap().0;
    assert!(settled < Duration::from_secs(10) && seen.len() <= 3, "C's connection kept changing: {seen:?}\n{log_c}");
    assert!(replaced <= 1, "flapping: {replaced} replacements\n{log_c}");
    assert!(refusals >= 1);

    // The conflict is said, with both addresses, in C's log and status ...
    let conflict = log_c.lines().find(|l| l.contains("two live routers share the name")).unwrap_or_else(|| panic!("no conflict in C's log:\n{log_c}"));
    println!("C's log: {conflict}");
    assert!(conflict.contains(&addr1.to_string()) && conflict.contains(&addr2.to_string()), "{conflict}");
    let conns: Vec<Connection> = c.client().get("/connections").unwrap();
    let refused = conns.iter().find(|x| x.reason.as_deref().is_some_and(|r| r.contains("two live routers"))).unwrap_or_else(|| panic!("{conns:?}"));
    println!("C's status: {} {} {}: {}", refused.direction, refused.remote, refused.state, refused.reason.as_deref().unwrap());
    let reason = refused.reason.as_deref().unwrap();
    assert!(reason.contains(&addr1.to_string()) && reason.contains(&addr2.to_string()), "{reason}");
    // ... and in the status of the router refused.
    let loser = if last.starts_with(&addr1.to_string()) { &a2 } else { &a1 };
    let theirs: Vec<Connection> = loser.client().get("/connections").unwrap();
    assert!(theirs.iter().any(|x| x.reason.as_deref().is_some_and(|r| r.contains("two live routers") && r.contains(&addr1.to_string()) && r.contains(&addr2.to_string()))), "{theirs:?}");
    let out = Command::new(weft()).args(["status", "connections", "--api-socket"]).arg(&c.api_socket).output().unwrap();
    println!("weft status connections on C:\n{}", text(&out));
    bed.teardown().unwrap();
}

#[test]
fn a_peer_calling_itself_by_the_broadcast_name_is_refused() {
    use weft_mesh::peer::PeerName;
    use weft_mesh::transport::tls::Credentials;
    use weft_mesh::transport::{Event, MeshConfig, MeshEndpoint};
    let mut bed = TestBed::new().expect("namespace tests need root (CI runs as root)");
    let run = RunDir::new(bed.id()).unwrap();
    let lan = topology::shared_segment(&mut bed, 2).unwrap();
    let r = routers::start_router(&mut bed, &run, lan.hosts[0], "h1", &[], &plain()).unwrap();
    ready(&r);
    let me = SocketAddr::from((lan.links[1].addr, 6783));
    let sock = bed.ns(lan.hosts[1]).run(|| std::net::UdpSocket::bind(me)).unwrap().unwrap();
    let creds = Credentials::load_or_create(&run.path().join("fake")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let reason = rt.block_on(async {
        let cfg = MeshConfig::new(PeerName([0xff; 6]), "everyone".into(), 1, me, 6784);
        let (ep, mut events) = MeshEndpoint::start_on(sock, cfg, &creds).unwrap();
        ep.connect(SocketAddr::from((lan.links[0].addr, 6783)));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut handles = Vec::new(); // dropping one would close its connection from this end
        loop {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(Event::Down { reason, .. })) => break reason,
                Ok(Some(Event::Up(_, h))) => handles.push(h),
                Ok(Some(_)) => continue,
                other => panic!("no refusal within 20 s: {other:?}"),
            }
        }
    });
    println!("the fake peer was told: {reason}");
    assert!(reason.contains("ff:ff:ff:ff:ff:ff is the broadcast name"), "{reason}");
    let log = r.log_text();
    assert!(log.contains("mesh connection refused: the peer calls itself ff:ff:ff:ff:ff:ff is the broadcast name"), "{log}");
    let peers: Vec<Peer> = r.client().get("/peers").unwrap();
    assert_eq!(peers.len(), 1, "{peers:?}");
    let s: Status = r.client().get("/status").unwrap();
    assert_eq!(s.connections.established, 0);
    bed.teardown().unwrap();
}

#[test]
fn an_unprivileged_client_is_told_permission_denied_not_that_the_router_is_down() {
    let mut bed = TestBed::new().expect("namespace tests need root (CI runs as root)");
    let run = RunDir::new(bed.id()).unwrap();
    let h = bed.add_node("h").unwrap();
    let r = routers::start_router(&mut bed, &run, h, "h", &[], &plain()).unwrap();
    ready(&r);
    let nobody = |cmd: &Path| {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"]).arg(cmd);
        c
    };
    let out = nobody(&weft()).args(["status", "--api-socket"]).arg(&r.api_socket).output().unwrap();
    println!("weft status as nobody: {}", text(&out).trim());
    assert!(!out.status.success());
    assert!(text(&out).contains("permission denied") && !text(&out).contains("not running"), "{}", text(&out));

    let plugin = weft().parent().unwrap().join("weft-cni");
    assert!(plugin.exists(), "{} is not built: cargo build -p weft-cni", plugin.display());
    let mut child = nobody(&plugin).env("CNI_COMMAND", "STATUS").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let conf = serde_json::json!({"cniVersion": "1.1.0", "name": "weft", "type": "weft-cni", "apiSocket": r.api_socket});
    child.stdin.take().unwrap().write_all(conf.to_string().as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    println!("weft-cni STATUS as nobody: {v}");
    assert!(v["msg"].as_str().unwrap().contains("permission denied"), "{v}");
    bed.teardown().unwrap();
}

//! `weft router` as a process on a test-bed host, driven through its API, the `weft` CLI and a
//! real CNI client (`cnitool`, from Debian's libcni) running `weft-cni` chained with the
//! reference `portmap` plugin. Root needed.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::{cnitool, netconf, weft, weft_cni};
use weft_api::types::{AllocateRequest, Allocation, Attachment, Status};
use weft_kernel::netns::NETNS_DIR;
use weft_testbed::{NodeId, TestBed};
use weft_testbed::routers::{self, RouterOptions, RouterProc, RunDir};

fn start(bed: &mut TestBed, run: &RunDir, h: NodeId) -> RouterProc {
    let opts = RouterOptions { binary: weft(), password: None, extra_args: vec![] };
    let r = routers::start_router(bed, run, h, "h", &[], &opts).unwrap();
    routers::wait_for(&r, Duration::from_secs(20), |s| s.ipam.state == "ready").unwrap();
    r
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn pods_attached_by_cnitool_get_addresses_and_talk() {
    assert!(Command::new("cnitool").arg("--help").output().is_ok(), "cnitool is missing: run scripts/install-deps --test");
    let mut bed = TestBed::new().expect("cannot build a test bed");
    let run = RunDir::new(bed.id()).unwrap();
    let h = bed.add_node("h").unwrap();
    let r = start(&mut bed, &run, h);
    // An open mesh may use the kernel fast path: the router asks for no hold on pods' UDP.
    let status: Status = r.client().get("/status").unwrap();
    assert_eq!((status.encryption, status.pod_udp_coalesce_us), (false, 0));
    // The configuration below asks for it, as an encrypted mesh's router writes it.
    let conf = run.path().join("net.d");
    netconf(&conf, &r.api_socket);
    let p1 = bed.add_node("p1").unwrap();
    let p2 = bed.add_node("p2").unwrap();
    let (n1, n2) = (bed.ns(p1).name().to_owned(), bed.ns(p2).name().to_owned());

    let add1 = cnitool(&bed, h, &conf, "add", &n1);
    assert!(add1.status.success(), "ADD: {}\nrouter log:\n{}", text(&add1), r.log_text());
    let result: serde_json::Value = serde_json::from_slice(&add1.stdout).unwrap();
    assert_eq!(result["interfaces"][2]["name"], "eth0");
    let host_if = result["interfaces"][1]["name"].as_str().unwrap().to_owned();
    let tc = bed.run(h, Command::new("tc").args(["qdisc", "show", "dev", &host_if])).unwrap();
    assert!(text(&tc).contains("tbf"), "the chained bandwidth plugin shaped {host_if}: {}", text(&tc));
    // The host end coalesces the pod's UDP (set in the host's namespace, not the runner's).
    let features = bed.netlink(h).features(&host_if).unwrap();
    for f in weft_kernel::offload::POD_FEATURES {
        assert!(features.iter().any(|(n, on)| n == f && *on), "{f} is not on for {host_if}: {features:?}");
    }
    assert_eq!(bed.netlink(h).gro_flush_timeout(&host_if).unwrap(), weft_kernel::offload::POD_GRO_FLUSH_TIMEOUT);
    assert_eq!(result["ips"][0]["interface"], 2);
    let add2 = cnitool(&bed, h, &conf, "add", &n2);
    assert!(add2.status.success(), "ADD: {}", text(&add2));
    let r2: serde_json::Value = serde_json::from_slice(&add2.stdout).unwrap();
    let a2 = r2["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().to_owned();
    assert_ne!(result["ips"][0]["address"], r2["ips"][0]["address"], "distinct addresses");

    let ping = bed.run(p1, Command::new("ping").args(["-n", "-c", "2", "-W", "2", &a2])).unwrap();
    assert!(ping.status.success(), "pod to pod: {}", text(&ping));
    let gw = result["ips"][0]["gateway"].as_str().unwrap().to_owned();
    let ping_gw = bed.run(p2, Command::new("ping").args(["-n", "-c", "1", "-W", "2", &gw])).unwrap();
    assert!(ping_gw.status.success(), "pod to its gateway (the bridge): {}", text(&ping_gw));

    let check = cnitool(&bed, h, &conf, "check", &n1);
    assert!(check.status.success(), "CHECK: {}", text(&check));
    let again = cnitool(&bed, h, &conf, "add", &n1);
    assert!(!again.status.success(), "a second ADD of the same attachment must fail");
    assert!(text(&again).contains("already exists"), "{}", text(&again));
    let ping = bed.run(p1, Command::new("ping").args(["-n", "-c", "1", "-W", "2", &a2])).unwrap();
    assert!(ping.status.success(), "the failed second ADD undid nothing of the first");

    for _ in 0..2 {
        let del = cnitool(&bed, h, &conf, "del", &n1);
        assert!(del.status.success(), "DEL (twice): {}", text(&del));
    }
    assert!(bed.netlink(p1).find_link("eth0").unwrap().is_none(), "DEL removed the pod interface");

    // DEL after the namespace is gone still frees the address.
    let status_before: Status = r.client().get("/status").unwrap();
    bed.netlink(p2).delete_link("eth0").unwrap();
    let del = cnitool(&bed, h, &conf, "del", &n2);
    assert!(del.status.success(), "DEL with the interface gone: {}", text(&del));
    let status_after: Status = r.client().get("/status").unwrap();
    assert_eq!(status_after.ipam.allocated, status_before.ipam.allocated - 1);
    assert_eq!(status_after.ipam.allocated, 1, "only the bridge's own address is left");
}

#[test]
fn status_cli_allocations_survive_kill_9_and_sigterm_is_clean() {
    let mut bed = TestBed::new().expect("cannot build a test bed");
    let run = RunDir::new(bed.id()).unwrap();
    let h = bed.add_node("h").unwrap();
    let r = start(&mut bed, &run, h);

    let out = Command::new(weft()).args(["status", "--api-socket"]).arg(&r.api_socket).output().unwrap();
    let summary = text(&out);
    assert!(out.status.success(), "{summary}");
    for field in ["Version:", "Name:", "Encryption: disabled", "Connections: 0", "Peers: 1", "IPAM: ready", "Range: 10.32.0.0/12"] {
        assert!(summary.contains(field), "missing {field:?} in:\n{summary}");
    }
    let json = Command::new(weft()).args(["status", "ipam", "--json", "--api-socket"]).arg(&r.api_socket).output().unwrap();
    let shares: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(shares[0]["size"], 1 << 20);
    assert_eq!(shares[0]["percent"], 100.0);

    let att = Attachment { container_id: "c1".into(), ifname: "eth0".into() };
    let first: Allocation = r.client().post("/ipam/allocate", &AllocateRequest { attachment: att.clone() }).unwrap();
    let same: Allocation = r.client().post("/ipam/allocate", &AllocateRequest { attachment: att.clone() }).unwrap();
    assert_eq!(first.address, same.address, "allocation is idempotent");

    bed.kill(r.pid).unwrap(); // SIGKILL
    let r = start(&mut bed, &run, h);
    let after: Allocation = r.client().post("/ipam/lookup", &AllocateRequest { attachment: att }).unwrap();
    assert_eq!(after.address, first.address, "the allocation survived kill -9");

    let term = Command::new("kill").args(["-TERM", &r.pid.to_string()]).status().unwrap();
    assert!(term.success());
    let mut stopped = false;
    for _ in 0..50 {
        if !routers::alive(r.pid) {
            stopped = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(stopped, "router did not stop on SIGTERM:\n{}", r.log_text());
    assert!(!r.api_socket.exists(), "the API socket is removed on shutdown");
    assert!(r.log_text().contains("SIGTERM: shutting down"));

    let down = Command::new(weft()).args(["status", "--api-socket"]).arg(&r.api_socket).output().unwrap();
    assert!(!down.status.success());
    assert!(text(&down).contains("not running"), "{}", text(&down));
}

#[test]
fn a_hundred_parallel_adds_get_distinct_addresses_and_dels_leave_nothing() {
    let plugin = weft_cni();
    let mut bed = TestBed::new().expect("cannot build a test bed");
    let run = RunDir::new(bed.id()).unwrap();
    let h = bed.add_node("h").unwrap();
    let r = start(&mut bed, &run, h);
    let links_before = bed.netlink(h).links().unwrap().len();
    let nodes: Vec<NodeId> = (0..100).map(|i| bed.add_node(&format!("p{i}")).unwrap()).collect();
    let pods: Vec<String> = nodes.iter().map(|&p| bed.ns(p).name().to_owned()).collect();
    let conf = serde_json::json!({"cniVersion": "1.0.0", "name": "weft", "type": "weft-cni", "apiSocket": r.api_socket}).to_string();

    let invoke = |cmd: &str, ns: &str| -> (Output, Duration) {
        let start = std::time::Instant::now();
        let mut child = bed
            .ns(h)
            .run(|| {
                Command::new(&plugin)
                    .env("CNI_COMMAND", cmd)
                    .env("CNI_CONTAINERID", format!("ctr-{ns}"))
                    .env("CNI_NETNS", format!("{NETNS_DIR}/{ns}"))
                    .env("CNI_IFNAME", "eth0")
                    .env("CNI_PATH", "/usr/lib/cni")
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
            })
            .unwrap()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(conf.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        (out, start.elapsed())
    };
    let results: Vec<(Output, Duration)> = std::thread::scope(|s| {
        let handles: Vec<_> = pods.iter().map(|ns| s.spawn(|| invoke("ADD", ns))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut addrs = std::collections::BTreeSet::new();
    let mut times: Vec<Duration> = Vec::new();
    for (out, t) in &results {
        assert!(out.status.success(), "parallel ADD failed: {}", text(out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        addrs.insert(v["ips"][0]["address"].as_str().unwrap().to_owned());
        times.push(*t);
    }
    assert_eq!(addrs.len(), 100, "every pod got its own address");
    times.sort();
    println!("100 parallel ADDs: p50 {:?}, p99 {:?}, max {:?}", times[49], times[98], times[99]);

    std::thread::scope(|s| {
        let handles: Vec<_> = pods.iter().map(|ns| s.spawn(|| invoke("DEL", ns))).collect();
        for h in handles {
            let (out, _) = h.join().unwrap();
            assert!(out.status.success(), "parallel DEL failed: {}", text(&out));
        }
    });
    assert_eq!(bed.netlink(h).links().unwrap().len(), links_before, "no host veth left behind");
    let s: Status = r.client().get("/status").unwrap();
    assert_eq!(s.ipam.allocated, 1, "no allocation left but the bridge's");
}

/// Runs `weft-cni` in `host`'s namespace with `env` and `conf` on stdin.
fn plugin_run(bed: &TestBed, host: NodeId, env: &[(&str, String)], conf: &str) -> Output {
    use std::io::Write;
    let plugin = weft_cni();
    bed.ns(host)
        .run(|| -> std::io::Result<Output> {
            let mut child = Command::new(&plugin)
                .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()?;
            child.stdin.take().unwrap().write_all(conf.as_bytes())?;
            child.wait_with_output()
        })
        .unwrap()
        .unwrap()
}

#[test]
fn each_spec_version_gets_its_result_format_and_latency_is_measured() {
    let mut bed = TestBed::new().expect("cannot build a test bed");
    let run = RunDir::new(bed.id()).unwrap();
    let h = bed.add_node("h").unwrap();
    let r = start(&mut bed, &run, h);
    let env = |cmd: &str, ns: &str| {
        vec![
            ("CNI_COMMAND", cmd.to_owned()),
            ("CNI_CONTAINERID", format!("ctr-{ns}")),
            ("CNI_NETNS", format!("{NETNS_DIR}/{ns}")),
            ("CNI_IFNAME", "eth0".to_owned()),
            ("CNI_PATH", "/usr/lib/cni".to_owned()),
        ]
    };
    for version in ["0.4.0", "1.0.0", "1.1.0"] {
        let pod = bed.add_node(&format!("v{}", version.replace('.', ""))).unwrap();
        let ns = bed.ns(pod).name().to_owned();
        let conf = serde_json::json!({"cniVersion": version, "name": "weft", "type": "weft-cni", "apiSocket": r.api_socket}).to_string();
        let out = plugin_run(&bed, h, &env("ADD", &ns), &conf);
        assert!(out.status.success(), "{version}: {}", text(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["cniVersion"], version);
        assert_eq!(v["interfaces"].as_array().unwrap().len(), 3, "bridge, host veth, pod interface");
        assert_eq!(v["interfaces"][2]["sandbox"].as_str(), Some(format!("{NETNS_DIR}/{ns}").as_str()));
        assert!(v["interfaces"][1].get("sandbox").is_none());
        assert_eq!(v["ips"][0]["interface"], 2);
        assert_eq!(v["ips"][0].get("version").is_some(), version == "0.4.0", "{version}: ips[].version only in 0.4.0");
        assert_eq!(v["interfaces"][2].get("mtu").is_some(), version == "1.1.0", "{version}: interfaces[].mtu only in 1.1.0");
        if version == "1.1.0" {
            let status = plugin_run(&bed, h, &[("CNI_COMMAND", "STATUS".to_owned())], &conf);
            assert!(status.status.success(), "STATUS with the router up: {}", text(&status));
            let gc_conf = serde_json::json!({"cniVersion": "1.1.0", "name": "weft", "type": "weft-cni", "apiSocket": r.api_socket,
                "cni.dev/valid-attachments": [{"containerID": format!("ctr-{ns}"), "ifname": "eth0"}]}).to_string();
            let gc = plugin_run(&bed, h, &[("CNI_COMMAND", "GC".to_owned())], &gc_conf);
            assert!(gc.status.success(), "GC: {}", text(&gc));
            let s: Status = r.client().get("/status").unwrap();
            assert_eq!(s.ipam.allocated, 2, "GC kept the listed attachment and the bridge, released the two others");
        }
    }

    // ADD latency over 200 pods, one after the other.
    let mut times = Vec::new();
    for i in 0..200 {
        let pod = bed.add_node(&format!("l{i}")).unwrap();
        let ns = bed.ns(pod).name().to_owned();
        let conf = serde_json::json!({"cniVersion": "1.0.0", "name": "weft", "type": "weft-cni", "apiSocket": r.api_socket}).to_string();
        let t = std::time::Instant::now();
        let out = plugin_run(&bed, h, &env("ADD", &ns), &conf);
        times.push(t.elapsed());
        assert!(out.status.success(), "{}", text(&out));
    }
    times.sort();
    println!("ADD latency over 200 pods: p50 {:?}, p99 {:?}", times[99], times[197]);

    // With the router down, ADD says "try again later" and leaves nothing behind.
    bed.kill(r.pid).unwrap(); // its TAP goes with it
    let links_before = bed.netlink(h).links().unwrap().len();
    let pod = bed.add_node("down").unwrap();
    let ns = bed.ns(pod).name().to_owned();
    let conf = serde_json::json!({"cniVersion": "1.0.0", "name": "weft", "type": "weft-cni", "apiSocket": r.api_socket}).to_string();
    let out = plugin_run(&bed, h, &env("ADD", &ns), &conf);
    assert!(!out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["code"], 11, "{v}");
    assert!(v["msg"].as_str().unwrap().contains("not running"), "{v}");
    assert_eq!(bed.netlink(h).links().unwrap().len(), links_before, "nothing left behind");
    assert!(bed.netlink(pod).find_link("eth0").unwrap().is_none());
}

//! What the router tests on the four-host cluster share: bringing the meshed routers up, pods
//! with addresses from their IPAM, logs for failure messages, teardown.

#![allow(dead_code, unreachable_pub)]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use weft_api::types::{AllocateRequest, Allocation, Attachment};
use weft_kernel::netns::NETNS_DIR;
use weft_testbed::topology::{self, Cluster};
use weft_testbed::{NodeId, TestBed};
use weft_testbed::routers::{self, RouterOptions, RouterProc, RunDir};

pub const NAMES: [&str; 4] = routers::CLUSTER_NAMES;

pub fn weft() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft"))
}

pub struct Mesh {
    pub bed: TestBed,
    pub run: RunDir,
    pub cluster: Cluster,
    pub routers: Vec<RouterProc>,
    pub opts: RouterOptions,
    /// (pod namespace, address) per host.
    pub pods: Vec<Vec<(NodeId, Ipv4Addr)>>,
}

impl Mesh {
    pub fn up(password: Option<&str>, pods_per_host: usize) -> Mesh {
        Mesh::up_with(password, pods_per_host, &[])
    }

    /// As [`Mesh::up`], with more flags for every router.
    pub fn up_with(password: Option<&str>, pods_per_host: usize, extra: &[&str]) -> Mesh {
        let mut bed = TestBed::new().expect("namespace tests need root (CI runs as root)");
        let run = RunDir::new(bed.id()).unwrap();
        let cluster = topology::cluster(&mut bed, 0).unwrap();
        let opts = RouterOptions { binary: weft(), password: password.map(str::to_owned), extra_args: extra.iter().map(|a| a.to_string()).collect() };
        let t0 = Instant::now();
        let routers = routers::start_cluster(&mut bed, &run, &cluster, &opts, Duration::from_secs(40)).unwrap();
        println!("mesh of 4 converged (connections, topology, IPAM consensus) in {:?}", t0.elapsed());
        let mut opts = opts;
        opts.extra_args.extend(["--ipalloc-init".to_owned(), "consensus=4".to_owned()]);
        let mut m = Mesh { bed, run, cluster, routers, opts, pods: vec![] };
        for i in 0..4 {
            let mut list = Vec::new();
            for j in 0..pods_per_host {
                list.push(m.add_pod(i, j));
            }
            m.pods.push(list);
        }
        m
    }

    pub fn add_pod(&mut self, host: usize, j: usize) -> (NodeId, Ipv4Addr) {
        let client = self.routers[host].client();
        let req = AllocateRequest { attachment: Attachment { container_id: format!("pod-{}-{j}", NAMES[host]), ifname: "eth0".into() } };
        let deadline = Instant::now() + Duration::from_secs(20);
        let alloc = loop {
            match client.post::<_, Allocation>("/ipam/allocate", &req) {
                Ok(a) if a.gateway.is_some() => break a,
                Ok(_) | Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
                other => panic!("allocate on {}: {other:?}", NAMES[host]),
            }
        };
        let (addr, prefix) = alloc.address.split_once('/').unwrap();
        let addr: Ipv4Addr = addr.parse().unwrap();
        let gw: Ipv4Addr = alloc.gateway.unwrap().parse().unwrap();
        let name = format!("{}-pod{}", NAMES[host], j + 1);
        let pod = self.bed.add_pod(self.cluster.hosts[host], &name, "weft", &format!("vp{}", j + 1), addr, prefix.parse().unwrap(), Some(gw)).unwrap();
        self.bed.netlink(pod).set_mtu("eth0", alloc.mtu).unwrap();
        (pod, addr)
    }

    pub fn all_pods(&self) -> Vec<(usize, NodeId, Ipv4Addr)> {
        self.pods.iter().enumerate().flat_map(|(h, l)| l.iter().map(move |(n, a)| (h, *n, *a))).collect()
    }

    pub fn logs(&self) -> String {
        self.routers.iter().enumerate().map(|(i, r)| format!("--- {} ---\n{}", NAMES[i], r.log_text())).collect()
    }

    pub fn down(self) {
        let Mesh { bed, run, .. } = self;
        bed.teardown().unwrap();
        drop(run);
    }
}

/// A conflist like deploy/10-weft.conflist, pointed at this router's socket.
pub fn netconf(dir: &Path, api_socket: &Path) {
    let shipped = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/10-weft.conflist")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&shipped).unwrap();
    v["plugins"][0]["apiSocket"] = serde_json::json!(api_socket);
    // Chain the reference bandwidth plugin too: it shapes the host veth our result names.
    v["plugins"].as_array_mut().unwrap().push(serde_json::json!({
        "type": "bandwidth", "ingressRate": 100_000_000, "ingressBurst": 1_000_000, "egressRate": 100_000_000, "egressBurst": 1_000_000
    }));
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("10-weft.conflist"), v.to_string()).unwrap();
}

pub fn cnitool(bed: &TestBed, h: NodeId, netconf_dir: &Path, verb: &str, pod_ns: &str) -> Output {
    let plugins = format!("{}:/usr/lib/cni", weft().parent().unwrap().display());
    bed.run(
        h,
        Command::new("cnitool")
            .args([verb, "weft", &format!("{NETNS_DIR}/{pod_ns}")])
            .env("NETCONFPATH", netconf_dir)
            .env("CNI_PATH", plugins),
    )
    .unwrap()
}


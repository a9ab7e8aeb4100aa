//! What the router tests share: the `weft` and `weft-cni` binaries; on the four-host cluster,
//! bringing the meshed routers up, pods with addresses from their IPAM, logs for failure
//! messages, teardown.

#![allow(dead_code, unreachable_pub)]

pub mod pinger;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use weft_kernel::netns::NETNS_DIR;
use weft_testbed::topology::{self, Cluster};
use weft_testbed::{NodeId, TestBed};
use weft_testbed::routers::{self, RouterOptions, RouterProc, RunDir};

pub const NAMES: [&str; 4] = routers::CLUSTER_NAMES;

pub fn weft() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft"))
}

/// The `weft-cni` binary, beside [`weft`]: where `weft demo` and `cnitool` (through
/// `CNI_PATH`) look for it.
///
/// Cargo builds only this package's binaries before its integration tests, so the first call in
/// a test process runs `cargo build -p weft-cni` with the profile and target directory `weft` was
/// built with (a quick no-op when it is fresh: cargo's fingerprints decide, not file times); the
/// other test threads wait for that build, and cargo's lock on the target directory serialises
/// it with any other cargo at work there. Panics with cargo's output if the build fails.
pub fn weft_cni() -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT.get_or_init(build_weft_cni).clone().unwrap_or_else(|e| panic!("{e}"))
}

fn build_weft_cni() -> Result<PathBuf, String> {
    build_bin("weft-cni", "weft-cni", None)
}

/// The `weft` binary of the release profile (`cargo build --release -p weft-router --bin weft`
/// in the target directory the tests were built in; a quick no-op when it is fresh): for tests
/// that run many routers, whose unoptimised builds would saturate the machine. Panics with
/// cargo's output if the build fails.
pub fn weft_release() -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT.get_or_init(|| build_bin("weft-router", "weft", Some("release"))).clone().unwrap_or_else(|e| panic!("{e}"))
}

/// Builds `bin` of `package` with `profile` (by default the profile `weft` was built with) in
/// the target directory `weft` was built in, and returns its path.
fn build_bin(package: &str, bin: &str, profile: Option<&str>) -> Result<PathBuf, String> {
    let weft = weft();
    // `weft` is TARGET_DIR/PROFILE_DIR/weft, or TARGET_DIR/TRIPLE/PROFILE_DIR/weft with --target.
    let out_dir = weft.parent().ok_or_else(|| format!("{} has no directory", weft.display()))?;
    let own = match out_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") => "dev",
        Some(name) => name,
        None => return Err(format!("no profile directory in {}", weft.display())),
    };
    let profile = profile.unwrap_or(own);
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into()));
    cargo.current_dir(env!("CARGO_MANIFEST_DIR")).args(["build", "--locked", "-p", package, "--bin", bin, "--profile", profile]);
    let is_target_dir = |d: &Path| d.join("CACHEDIR.TAG").exists();
    let dir_of = |profile_base: &Path| profile_base.join(if profile == "dev" { "debug" } else { profile });
    let bin_dir = match (out_dir.parent(), out_dir.parent().and_then(Path::parent)) {
        (Some(target_dir), _) if is_target_dir(target_dir) => {
            cargo.arg("--target-dir").arg(target_dir);
            dir_of(target_dir)
        }
        (Some(triple), Some(target_dir)) if is_target_dir(target_dir) => {
            cargo.arg("--target").arg(triple.file_name().unwrap_or_default()).arg("--target-dir").arg(target_dir);
            dir_of(triple)
        }
        _ => return Err(format!("no cargo target directory above {}", weft.display())),
    };
    let out = cargo.output().map_err(|e| format!("run {cargo:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{cargo:?} failed:\n{}", String::from_utf8_lossy(&out.stderr)));
    }
    let path = bin_dir.join(bin);
    if !path.exists() {
        return Err(format!("{cargo:?} succeeded but {} is missing", path.display()));
    }
    Ok(path)
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
        let container = format!("pod-{}-{j}", NAMES[host]);
        let name = format!("{}-pod{}", NAMES[host], j + 1);
        routers::add_allocated_pod(&mut self.bed, &self.routers[host], self.cluster.hosts[host], &container, &name, &format!("vp{}", j + 1)).unwrap()
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
    // As the router writes it with `--pod-udp-coalesce-above 0` where only the sleeve carries the
    // pods' traffic (every pod held from when it attaches).
    v["plugins"][0]["udpCoalesceMicros"] = serde_json::json!(weft_kernel::offload::POD_GRO_FLUSH_TIMEOUT.as_micros() as u64);
    // Chain the reference bandwidth plugin too: it shapes the host veth our result names.
    v["plugins"].as_array_mut().unwrap().push(serde_json::json!({
        "type": "bandwidth", "ingressRate": 100_000_000, "ingressBurst": 1_000_000, "egressRate": 100_000_000, "egressBurst": 1_000_000
    }));
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("10-weft.conflist"), v.to_string()).unwrap();
}

pub fn cnitool(bed: &TestBed, h: NodeId, netconf_dir: &Path, verb: &str, pod_ns: &str) -> Output {
    let plugins = format!("{}:/usr/lib/cni", weft_cni().parent().unwrap().display());
    bed.run(
        h,
        Command::new("cnitool")
            .args([verb, "weft", &format!("{NETNS_DIR}/{pod_ns}")])
            .env("NETCONFPATH", netconf_dir)
            .env("CNI_PATH", plugins),
    )
    .unwrap()
}


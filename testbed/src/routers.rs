//! Running `weft router` processes on the hosts of a test bed: for `weft demo` and the router
//! tests. Each router gets its own state directory, API socket and log file under one run
//! directory, removed when the [`RunDir`] is dropped; processes are started through the bed, so
//! the bed stops them (by PID) when it is torn down.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use weft_api::Client;
use weft_api::types::Status;
use crate::topology::Cluster;
use crate::{NodeId, TestBed};

/// A directory for the routers of one bed; removed on drop.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
}

impl RunDir {
    /// Creates `/tmp/weft-ID` (replacing a leftover of the same name).
    pub fn new(id: &str) -> std::io::Result<RunDir> {
        let path = std::env::temp_dir().join(format!("weft-{id}"));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path)?;
        Ok(RunDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps the directory after drop (for `weft demo --keep`).
    pub fn keep(self) -> PathBuf {
        let p = self.path.clone();
        std::mem::forget(self);
        p
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// One router started on a host of the bed.
#[derive(Debug, Clone)]
pub struct RouterProc {
    /// The host.
    pub host: NodeId,
    /// Its PID.
    pub pid: u32,
    /// Its API socket.
    pub api_socket: PathBuf,
    /// Its state directory.
    pub state_dir: PathBuf,
    /// Its log file.
    pub log: PathBuf,
}

impl RouterProc {
    /// A client of its API.
    pub fn client(&self) -> Client {
        Client::new(&self.api_socket).with_timeout(Duration::from_secs(5))
    }

    /// The log so far (for failure messages).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Allocates an address for `container` from `router`'s IPAM (asking again for up to 20 s,
/// until its IPAM is ready and answers with a gateway), then adds pod `name` on `host`'s bridge
/// `weft` with it: host end `veth`, the allocation's MTU, and the host end's UDP coalescing as
/// weft-cni sets it from the router's configuration. Returns the pod and its address.
pub fn add_allocated_pod(bed: &mut TestBed, router: &RouterProc, host: NodeId, container: &str, name: &str, veth: &str) -> weft_kernel::Result<(NodeId, Ipv4Addr)> {
    use weft_api::types::{AllocateRequest, Allocation, Attachment};
    let fail = |what: String| weft_kernel::Error::TestBed(format!("pod {name}: {what}"));
    let client = router.client();
    let req = AllocateRequest { attachment: Attachment { container_id: container.to_owned(), ifname: "eth0".into() } };
    let deadline = Instant::now() + Duration::from_secs(20);
    let alloc = loop {
        match client.post::<_, Allocation>("/ipam/allocate", &req) {
            Ok(a) if a.gateway.is_some() => break a,
            Ok(_) | Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            other => return Err(fail(format!("no address with a gateway within 20 s: {other:?}"))),
        }
    };
    let (addr, prefix) = alloc.address.split_once('/').ok_or_else(|| fail(format!("address {} without a prefix", alloc.address)))?;
    let addr: Ipv4Addr = addr.parse().map_err(|e| fail(format!("address {addr}: {e}")))?;
    let prefix: u8 = prefix.parse().map_err(|e| fail(format!("prefix {prefix}: {e}")))?;
    let gw: Option<Ipv4Addr> = alloc.gateway.as_deref().map(str::parse).transpose().map_err(|e| fail(format!("gateway: {e}")))?;
    let pod = bed.add_pod(host, name, "weft", veth, addr, prefix, gw)?;
    // As weft-cni leaves the host end: what the router writes into the CNI configuration.
    let status: Status = client.get("/status").map_err(|e| fail(format!("status: {e}")))?;
    bed.netlink(host).set_pod_udp_coalescing(veth, status.pod_udp_coalesce_at_attach())?;
    bed.netlink(pod).set_mtu("eth0", alloc.mtu)?;
    Ok((pod, addr))
}

/// How to start routers.
#[derive(Debug, Clone)]
pub struct RouterOptions {
    /// The `weft` binary.
    pub binary: PathBuf,
    /// The cluster password, or none for an open mesh.
    pub password: Option<String>,
    /// More flags for every router.
    pub extra_args: Vec<String>,
}

/// Starts `weft router` on `host`, dialling `peers`; its files live under `run/NAME`.
pub fn start_router(
    bed: &mut TestBed,
    run: &RunDir,
    host: NodeId,
    name: &str,
    peers: &[Ipv4Addr],
    opts: &RouterOptions,
) -> Result<RouterProc, String> {
    let dir = run.path().join(name);
    let state_dir = dir.join("state");
    std::fs::create_dir_all(&state_dir).map_err(|e| format!("create {}: {e}", state_dir.display()))?;
    let api_socket = dir.join("weft.sock");
    let log = dir.join("router.log");
    let log_file = std::fs::OpenOptions::new().create(true).append(true).open(&log).map_err(|e| format!("open {}: {e}", log.display()))?;
    let err_file = log_file.try_clone().map_err(|e| e.to_string())?;
    let mut cmd = Command::new(&opts.binary);
    cmd.arg("router")
        .arg("--nickname")
        .arg(name)
        .arg("--state-dir")
        .arg(&state_dir)
        .arg("--api-socket")
        .arg(&api_socket)
        .env_remove("WEFT_PEERS")
        .env_remove("WEFT_PASSWORD")
        .env("WEFT_LOG", std::env::var("WEFT_LOG").unwrap_or_else(|_| "info".into()))
        .stdin(Stdio::null())
        .stdout(log_file)
        .stderr(err_file);
    for p in peers {
        cmd.arg("--peer").arg(p.to_string());
    }
    if let Some(pw) = &opts.password {
        let f = dir.join("password");
        std::fs::write(&f, pw).map_err(|e| format!("write {}: {e}", f.display()))?;
        cmd.arg("--password-file").arg(&f);
    }
    cmd.args(&opts.extra_args);
    let pid = bed.spawn(host, &mut cmd).map_err(|e| weft_kernel::chain(&e))?;
    Ok(RouterProc { host, pid, api_socket, state_dir, log })
}

/// Waits until the router's API answers and `ready` holds for its status; returns the status.
pub fn wait_for(router: &RouterProc, timeout: Duration, ready: impl Fn(&Status) -> bool) -> Result<Status, String> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no answer yet");
    while Instant::now() < deadline {
        if !alive(router.pid) {
            return Err(format!("router {} exited; its log:\n{}", router.pid, router.log_text()));
        }
        match router.client().get::<Status>("/status") {
            Ok(s) if ready(&s) => return Ok(s),
            Ok(s) => last = format!("{s:?}"),
            Err(e) => last = weft_kernel::chain(&e),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(format!("router {} not ready within {timeout:?}: {last}; its log:\n{}", router.pid, router.log_text()))
}

/// Whether `pid` is running (not gone, not a zombie awaiting its reaper).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with(|c| c != 'Z' && c != 'X')))
        .unwrap_or(false)
}

/// Host names of the test bed's [`Cluster`], in order.
pub const CLUSTER_NAMES: [&str; 4] = ["a", "b", "c", "d"];
/// Established connections each host of the cluster has once meshed: A–B, B–C, C–D, and D–B
/// (D learns B's address by gossip and dials it through its NAT).
pub const CLUSTER_DEGREE: [usize; 4] = [1, 3, 2, 2];

/// Whom host `i` of the cluster dials: A → B, C → B, D → C (through its NAT); B dials no one.
pub fn cluster_peers(c: &Cluster, i: usize) -> Vec<Ipv4Addr> {
    match i {
        0 => vec![c.all_addrs[1][0]],
        2 => vec![c.all_addrs[1][1]],
        3 => vec![c.host_addrs[2]],
        _ => vec![],
    }
}

/// Starts router `i` of the cluster.
pub fn start_cluster_router(bed: &mut TestBed, run: &RunDir, c: &Cluster, i: usize, opts: &RouterOptions) -> Result<RouterProc, String> {
    start_router(bed, run, c.hosts[i], CLUSTER_NAMES[i], &cluster_peers(c, i), opts)
}

/// Starts a router on every host of the cluster, dividing the pod range among the four by
/// consensus, and waits until each has its connections, the whole topology and IPAM ready.
pub fn start_cluster(bed: &mut TestBed, run: &RunDir, c: &Cluster, opts: &RouterOptions, timeout: Duration) -> Result<Vec<RouterProc>, String> {
    let mut opts = opts.clone();
    opts.extra_args.extend(["--ipalloc-init".to_owned(), "consensus=4".to_owned()]);
    let routers = (0..4).map(|i| start_cluster_router(bed, run, c, i, &opts)).collect::<Result<Vec<_>, _>>()?;
    for (i, r) in routers.iter().enumerate() {
        wait_for(r, timeout, |s| s.connections.established >= CLUSTER_DEGREE[i] && s.peers == 4 && s.ipam.state == "ready")
            .map_err(|e| format!("{}: {e}", CLUSTER_NAMES[i]))?;
    }
    Ok(routers)
}

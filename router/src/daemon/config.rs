//! `weft router` configuration: flags, each with an environment variable (the DaemonSet passes
//! environment), checked into a [`Config`] before anything starts.
//!
//! The cluster password is read from a file (`--password-file` / `WEFT_PASSWORD_FILE`) or from
//! `WEFT_PASSWORD`; never from a command-line argument, and never logged. At most
//! [`MAX_PASSWORD`] bytes are read (so `/dev/zero` is refused, not read for ever); a password
//! shorter than [`MIN_PASSWORD`] bytes is refused: the mesh's PAKE allows no offline guessing,
//! but each handshake is one online guess (rate-limited per source), and a short password is
//! within reach of many of them; a file its group or everyone may read is warned about.
//!
//! The pod range is refused when it is `/0` or overlaps a block pods cannot use (this network,
//! loopback, link-local, multicast, reserved and broadcast: [`RESERVED_BLOCKS`]); what needs the
//! host's state (its addresses and routes) is checked at start, in [`super::plumbing`].
//!
//! Kubernetes discovery ([`KubeConfig`]) is on with `--kube-peers`, or by default inside a pod
//! (`KUBERNETES_SERVICE_HOST` set); `--kube-peers=false` turns it off.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use weft_kernel::offload::{self, MAX_POD_GRO_FLUSH_MICROS};
use weft_mesh::ipam::Cidr;

/// `--pod-udp-coalesce-above`'s default: a pod sending 20 000 packets a second or more is held
/// (iperf3's UDP floods here send 90 000; a busy DNS client a few hundred).
pub const DEFAULT_POD_UDP_COALESCE_ABOVE: u64 = 20_000;

/// The most bytes read from a password file (or taken from `WEFT_PASSWORD`).
pub const MAX_PASSWORD: usize = 4096;
/// The most data plane queues (`--dataplane-threads`).
pub const MAX_DATAPLANE_THREADS: usize = 64;
/// The fewest bytes a cluster password may have.
pub const MIN_PASSWORD: usize = 12;
/// IPv4 blocks no pod range may overlap: (block, prefix, what it is).
pub const RESERVED_BLOCKS: [([u8; 4], u8, &str); 5] = [
    ([0, 0, 0, 0], 8, "\"this network\", which no host may use as an address"),
    ([127, 0, 0, 0], 8, "loopback"),
    ([169, 254, 0, 0], 16, "link-local"),
    ([224, 0, 0, 0], 4, "multicast"),
    ([240, 0, 0, 0], 4, "reserved, with the broadcast address 255.255.255.255"),
];

/// Default mesh control port (QUIC).
pub const MESH_PORT: u16 = 6783;
/// Default sleeve data port.
pub const SLEEVE_PORT: u16 = 6784;
/// Default fast-path (kernel VXLAN) port.
pub const FASTPATH_PORT: u16 = 6785;

/// Flags of `weft router`.
#[derive(Debug, Clone, clap::Args)]
pub struct RouterArgs {
    /// A peer to connect to, HOST or HOST:PORT (repeatable; WEFT_PEERS takes a comma- or
    /// space-separated list).
    #[arg(long = "peer", value_name = "HOST[:PORT]")]
    pub peers: Vec<String>,
    /// File holding the cluster password (encryption and authentication on).
    #[arg(long, env = "WEFT_PASSWORD_FILE", value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// This peer's nickname (default: the host name).
    #[arg(long, env = "WEFT_NICKNAME")]
    pub nickname: Option<String>,
    /// Where this peer's identity, mesh key pair and IPAM state live.
    #[arg(long, env = "WEFT_STATE_DIR", default_value = "/var/lib/weft")]
    pub state_dir: PathBuf,
    /// The local API's unix socket.
    #[arg(long, env = "WEFT_API_SOCKET", default_value = "/run/weft/weft.sock")]
    pub api_socket: PathBuf,
    /// The pod address range, shared by the whole cluster.
    #[arg(long, env = "WEFT_IPALLOC_RANGE", default_value = "10.32.0.0/12")]
    pub ipalloc_range: String,
    /// How the first division of the range is agreed: `consensus=N` (N peers, this one
    /// included, divide it among themselves once all N know each other). Default: consensus
    /// among this peer and its `--peer` targets; with no `--peer`, this peer takes the whole
    /// range.
    #[arg(long, env = "WEFT_IPALLOC_INIT", value_name = "consensus=N")]
    pub ipalloc_init: Option<String>,
    /// On SIGTERM, hand this peer's part of the range to a live peer and release its
    /// allocations: for a host leaving the cluster for good (a plain restart keeps both). The
    /// router waits up to 10 s for the receiver to acknowledge that it saved the range.
    #[arg(long, env = "WEFT_HANDOVER_ON_EXIT")]
    pub handover_on_exit: bool,
    /// Seconds between fresh sleeve secrets on each connection (taken from the QUIC session).
    #[arg(long, env = "WEFT_REKEY_INTERVAL", default_value_t = 600, value_parser = clap::value_parser!(u64).range(3..))]
    pub rekey_interval: u64,
    /// Pod MTU (default 1376, as Weave Net: a 1500-byte underlay path less the encrypted
    /// sleeve's 106 bytes of headers, with 18 to spare; a fixed value, not measured). A packet
    /// too big for a smaller path is answered with ICMP "fragmentation needed" (or "packet too
    /// big") carrying the size that fits.
    #[arg(long, env = "WEFT_MTU")]
    pub mtu: Option<u32>,
    /// Milliseconds of silence after which a peer (its mesh connection, and its sleeve link) is
    /// dead: its routes are withdrawn and traffic takes another path. Keep-alives and sleeve
    /// heartbeats are sent every fifth of it, and the silence may start up to one of those
    /// after the last packet: a dead peer is known within 1.2 times it (default 2000: every
    /// 400 ms, known within 2.4 s; at least 500).
    #[arg(long, env = "WEFT_PEER_TIMEOUT", value_name = "MS", default_value_t = 2000, value_parser = clap::value_parser!(u64).range(500..=600_000))]
    pub peer_timeout: u64,
    /// At most this many peer connections. Below the cluster size, the router keeps only the
    /// connections of a bounded-degree partial mesh (closing the others once the cluster is
    /// known) and reaches the rest through relays.
    #[arg(long, env = "WEFT_CONN_LIMIT", default_value_t = 100)]
    pub conn_limit: usize,
    /// Mesh control (QUIC) port.
    #[arg(long, env = "WEFT_MESH_PORT", default_value_t = MESH_PORT)]
    pub mesh_port: u16,
    /// Sleeve data port.
    #[arg(long, env = "WEFT_SLEEVE_PORT", default_value_t = SLEEVE_PORT)]
    pub sleeve_port: u16,
    /// Data plane queues, each with a TAP reader and a sleeve receiver thread, 1 to 64
    /// (default: one for every two cores, 1 to 8).
    #[arg(long, env = "WEFT_DATAPLANE_THREADS", value_name = "N")]
    pub dataplane_threads: Option<usize>,
    /// How long (µs) GRO on a pod's host-side veth holds the pod's UDP datagrams to coalesce
    /// them into super-frames; 0 turns coalescing off (a lone datagram is not held), at most 1000.
    /// Applied while a pod sends fast (`--pod-udp-coalesce-above`).
    /// Default: 20 when the sleeve carries the pods' traffic (a cluster password without
    /// `--trusted-subnets`, or `--no-fastpath`), else 0 (the kernel fast path carries UDP at the
    /// kernel's rate, and a held datagram would only wait).
    #[arg(long, env = "WEFT_POD_UDP_COALESCE_US", value_name = "MICROS")]
    pub pod_udp_coalesce_us: Option<u64>,
    /// Hold a pod's UDP (`--pod-udp-coalesce-us`) only while the pod sends at least this many
    /// packets a second (read every 100 ms; let go after a second below a quarter of it), so
    /// that a lone datagram such as a DNS query is not held; 0 holds every pod's always.
    #[arg(long, env = "WEFT_POD_UDP_COALESCE_ABOVE", value_name = "PACKETS_PER_SECOND", default_value_t = DEFAULT_POD_UDP_COALESCE_ABOVE)]
    pub pod_udp_coalesce_above: u64,
    /// Prometheus metrics address (also `/healthz` and `/readyz`).
    #[arg(long, env = "WEFT_METRICS_ADDR", default_value = "127.0.0.1:6782")]
    pub metrics_addr: SocketAddr,
    /// Dial the cluster's Nodes (list and watch them) and reclaim the space of deleted ones.
    /// Default: on when running in a Kubernetes pod (KUBERNETES_SERVICE_HOST is set).
    #[arg(long, env = "WEFT_KUBE_PEERS", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub kube_peers: Option<bool>,
    /// Which Node address to dial: InternalIP, ExternalIP, ...
    #[arg(long, env = "WEFT_KUBE_ADDRESS_TYPE", default_value = weft_kube::nodes::DEFAULT_ADDRESS_TYPE)]
    pub kube_address_type: String,
    /// This host's Node name (the DaemonSet passes spec.nodeName); default: the host name.
    #[arg(long, env = "WEFT_NODE_NAME")]
    pub node_name: Option<String>,
    /// The namespace of the peer registry ConfigMap; default: the pod's own (its service account's).
    #[arg(long, env = "WEFT_KUBE_NAMESPACE")]
    pub kube_namespace: Option<String>,
    /// The peer registry ConfigMap (peer name to node name, reclaim claims).
    #[arg(long, env = "WEFT_KUBE_PEERS_CONFIGMAP", default_value = weft_kube::registry::DEFAULT_NAME)]
    pub kube_peers_configmap: String,
    /// A kubeconfig file for the API server (default: the pod's service account, else KUBECONFIG
    /// or ~/.kube/config).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Seconds a deleted Node's peer must be unreachable before its space is reclaimed.
    #[arg(long, env = "WEFT_KUBE_RECLAIM_GRACE", default_value_t = 30)]
    pub kube_reclaim_grace: u64,
    /// Enforce Kubernetes NetworkPolicy on this host's pods (nftables table `inet weft-policy`;
    /// needs the Kubernetes API, and bridge netfilter, which the router turns on). Default: on
    /// when Kubernetes discovery is (--kube-peers, or in a pod).
    #[arg(long, env = "WEFT_NETWORK_POLICY", value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub network_policy: Option<bool>,
    /// Log packets NetworkPolicy drops to the kernel log (prefix `weft-policy drop`), at most
    /// this many a second for each policy and direction (0: off).
    #[arg(long, env = "WEFT_POLICY_LOG_DROPS", value_name = "PER_SECOND", default_value_t = 0)]
    pub policy_log_drops: u32,
    /// Write the CNI configuration once the router is ready to serve ADDs.
    #[arg(long, env = "WEFT_WRITE_CNI_CONF")]
    pub write_cni_conf: bool,
    /// Where the CNI configuration goes.
    #[arg(long, env = "WEFT_CNI_CONF_DIR", default_value = "/etc/cni/net.d")]
    pub cni_conf_dir: PathBuf,
    /// The CNI configuration's file name.
    #[arg(long, env = "WEFT_CNI_CONF_NAME", default_value = "10-weft.conflist")]
    pub cni_conf_name: String,
    /// Do not masquerade pod traffic leaving the pod range (for networks that route the range
    /// to the nodes themselves); removes the nftables table `ip weft` if an earlier run made it.
    #[arg(long, env = "WEFT_NO_MASQUERADE")]
    pub no_masquerade: bool,
    /// Never use the kernel VXLAN fast path (UDP 6785): every frame crosses the sleeve.
    #[arg(long, env = "WEFT_NO_FASTPATH")]
    pub no_fastpath: bool,
    /// With a cluster password, the underlay subnets (CIDR,...) where frames may cross the fast
    /// path unencrypted; peers elsewhere stay on the encrypted sleeve. Without a password the
    /// fast path is used towards every directly reachable peer.
    #[arg(long, env = "WEFT_TRUSTED_SUBNETS", value_name = "CIDR,...", value_delimiter = ',')]
    pub trusted_subnets: Vec<String>,
}

/// Kubernetes peer discovery and reclaim (`--kube-peers`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeConfig {
    /// The Node address type dialled.
    pub address_type: String,
    /// This host's Node name.
    pub node_name: String,
    /// The registry's namespace (None: the client's default, the pod's own).
    pub namespace: Option<String>,
    /// The registry ConfigMap's name.
    pub configmap: String,
    /// How long a deleted Node's peer must be unreachable before it is reclaimed.
    pub reclaim_grace: std::time::Duration,
    /// A kubeconfig file, if given.
    pub kubeconfig: Option<PathBuf>,
}

/// A peer to dial: host name or address, and port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerTarget {
    /// Host name or address.
    pub host: String,
    /// Mesh port.
    pub port: u16,
}

/// The checked configuration.
#[derive(Clone)]
pub struct Config {
    /// Peers to dial at start.
    pub peers: Vec<PeerTarget>,
    /// The cluster password, if any. Never printed: `Debug` hides it.
    pub password: Option<Vec<u8>>,
    /// Nickname.
    pub nickname: String,
    /// State directory.
    pub state_dir: PathBuf,
    /// API socket path.
    pub api_socket: PathBuf,
    /// Pod range.
    pub ipalloc_range: Cidr,
    /// Peers expected in the first IPAM consensus (None: alone, this peer seeds the ring).
    pub ipalloc_consensus: Option<usize>,
    /// Hand the range over on SIGTERM.
    pub handover_on_exit: bool,
    /// Time between fresh sleeve secrets.
    pub rekey_interval: std::time::Duration,
    /// Pod MTU if fixed.
    pub mtu: Option<u32>,
    /// Silence after which a peer is dead; keep-alives and heartbeats every fifth of it.
    pub peer_timeout: std::time::Duration,
    /// Connection limit.
    pub conn_limit: usize,
    /// Mesh port.
    pub mesh_port: u16,
    /// Sleeve port.
    pub sleeve_port: u16,
    /// Metrics address.
    pub metrics_addr: SocketAddr,
    /// Data plane queues (TAP queues, sleeve sockets, two threads each).
    pub dataplane_threads: usize,
    /// GRO's hold on pods' UDP (`--pod-udp-coalesce-us`); `None`: not coalesced.
    pub pod_udp_coalesce: Option<std::time::Duration>,
    /// The packet rate from which a pod's UDP is held (`--pod-udp-coalesce-above`); 0: always.
    pub pod_udp_coalesce_above: u64,
    /// Whether `--ipalloc-init` was given (else, with Kubernetes, the first Node list decides).
    pub ipalloc_init_given: bool,
    /// Kubernetes discovery, when on.
    pub kube: Option<KubeConfig>,
    /// Where to write the CNI configuration once ready (None: not written).
    pub cni_conf: Option<PathBuf>,
    /// Masquerade pod traffic leaving the pod range (not `--no-masquerade`).
    pub masquerade: bool,
    /// Whether the kernel VXLAN fast path may be used.
    pub fastpath: bool,
    /// Underlay subnets trusted to carry frames unencrypted (`--trusted-subnets`).
    pub trusted_subnets: Vec<Cidr>,
    /// Whether NetworkPolicy is enforced (needs [`Config::kube`]).
    pub network_policy: bool,
    /// Drops logged per second per policy and direction, if any.
    pub policy_log_drops: Option<u32>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("peers", &self.peers)
            .field("password", &self.password.as_ref().map(|_| "(set)"))
            .field("nickname", &self.nickname)
            .field("state_dir", &self.state_dir)
            .field("api_socket", &self.api_socket)
            .field("ipalloc_range", &self.ipalloc_range)
            .field("mtu", &self.mtu)
            .field("conn_limit", &self.conn_limit)
            .field("masquerade", &self.masquerade)
            .field("dataplane_threads", &self.dataplane_threads)
            .field("pod_udp_coalesce", &self.pod_udp_coalesce)
            .field("pod_udp_coalesce_above", &self.pod_udp_coalesce_above)
            .finish_non_exhaustive()
    }
}

/// A configuration that cannot be used, and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The password file could not be read.
    #[error("cannot read the password file {path}")]
    PasswordFile {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The password is empty.
    #[error("the cluster password from {0} is empty: put the password in it, or leave encryption off by not setting one")]
    EmptyPassword(String),
    /// The password file (or variable) holds more than [`MAX_PASSWORD`] bytes.
    #[error("the cluster password from {0} is longer than 4 KiB: a password is one line (is it the right file?)")]
    LongPassword(String),
    /// The password is shorter than [`MIN_PASSWORD`] bytes.
    #[error(
        "the cluster password from {from} has {len} bytes, fewer than 12: every handshake is one guess at it, and a short one falls to enough of them; use a random one (openssl rand -base64 32)"
    )]
    ShortPassword {
        /// Where it came from.
        from: String,
        /// Its length.
        len: usize,
    },
    /// A bad `--peer` / `WEFT_PEERS` entry.
    #[error("bad peer {0:?}: expected HOST or HOST:PORT")]
    Peer(String),
    /// A bad `--ipalloc-range`.
    #[error("bad --ipalloc-range")]
    Range(#[source] weft_mesh::ipam::ring::CidrError),
    /// An `--ipalloc-range` with too few addresses.
    #[error("--ipalloc-range {0} is too small for pods: use /30 or larger")]
    RangeTooSmall(Cidr),
    /// A `--ipalloc-range` that is not a usable private block.
    #[error("bad --ipalloc-range: {0}")]
    RangeUnusable(String),
    /// A `--ipalloc-range` overlapping addresses pods cannot use.
    #[error("bad --ipalloc-range {range}: it overlaps {block}, {what}; pods need a private block such as 10.32.0.0/12")]
    ReservedRange {
        /// The range.
        range: Cidr,
        /// The block it overlaps.
        block: Cidr,
        /// What the block is.
        what: &'static str,
    },
    /// A bad `--ipalloc-init`.
    #[error("bad --ipalloc-init {0:?}: expected consensus=N with N at least 1")]
    IpallocInit(String),
    /// A bad `--mtu`.
    #[error("bad --mtu {0}: must be between 576 and 65000")]
    Mtu(u32),
    /// A bad `--pod-udp-coalesce-us`.
    #[error("bad --pod-udp-coalesce-us {0}: must be between 0 (off) and {MAX_POD_GRO_FLUSH_MICROS}")]
    PodUdpCoalesce(u64),
    /// A bad `--dataplane-threads`.
    #[error("bad --dataplane-threads {0}: must be between 1 and {MAX_DATAPLANE_THREADS}")]
    DataplaneThreads(usize),
    /// A bad `--conn-limit`.
    #[error("bad --conn-limit 0: must allow at least one connection")]
    ConnLimit,
    /// A bad `--cni-conf-name`.
    #[error("bad --cni-conf-name {0:?}: a file name such as 10-weft.conflist (no slash, not hidden)")]
    CniConfName(String),
    /// `--network-policy` without the Kubernetes API.
    #[error("--network-policy needs the Kubernetes API: add --kube-peers (on by default in a pod), or turn policy off with --network-policy=false")]
    PolicyWithoutKube,
    /// A bad `--trusted-subnets` entry.
    #[error("bad --trusted-subnets entry {0:?}: expected an IPv4 CIDR such as 192.0.2.0/24")]
    TrustedSubnet(String, #[source] weft_mesh::ipam::ring::CidrError),
}

impl Config {
    /// The hold a pod's UDP gets when it attaches (written into the CNI configuration, set on
    /// the pods already there at start): `--pod-udp-coalesce-us`'s when every pod is held always
    /// (`--pod-udp-coalesce-above 0`), else none (the router holds a pod once it sends fast).
    pub fn pod_udp_coalesce_at_attach(&self) -> Option<std::time::Duration> {
        self.pod_udp_coalesce.filter(|_| self.pod_udp_coalesce_above == 0)
    }

    /// Checks `args`, with `env` giving `WEFT_PEERS`, `WEFT_PASSWORD` and
    /// `KUBERNETES_SERVICE_HOST` (passed in for tests).
    pub fn from_args(args: RouterArgs, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let mut peers = Vec::new();
        let listed = env("WEFT_PEERS").unwrap_or_default();
        for p in args.peers.iter().map(String::as_str).chain(listed.split([',', ' ', '\n', '\t'])) {
            let p = p.trim();
            if !p.is_empty() {
                peers.push(parse_peer(p, args.mesh_port)?);
            }
        }
        let password = match (&args.password_file, env("WEFT_PASSWORD")) {
            (Some(path), _) => {
                let (pw, warning) = read_password(path)?;
                if let Some(w) = warning {
                    tracing::warn!("{w}");
                }
                Some(pw)
            }
            (None, Some(p)) => Some(check_password(p.into_bytes(), "WEFT_PASSWORD")?),
            (None, None) => None,
        };
        let ipalloc_range: Cidr = args.ipalloc_range.parse().map_err(ConfigError::Range)?;
        check_range(ipalloc_range)?;
        if let Some(m) = args.mtu.filter(|m| !(576..=65000).contains(m)) {
            return Err(ConfigError::Mtu(m));
        }
        if args.conn_limit == 0 {
            return Err(ConfigError::ConnLimit);
        }
        let dataplane_threads = match args.dataplane_threads {
            Some(n) if !(1..=MAX_DATAPLANE_THREADS).contains(&n) => return Err(ConfigError::DataplaneThreads(n)),
            Some(n) => n,
            None => default_dataplane_threads(std::thread::available_parallelism().map_or(1, |n| n.get())),
        };
        let pod_udp_coalesce = pod_udp_coalesce(&args, password.is_some())?;
        let ipalloc_consensus = match args.ipalloc_init.as_deref() {
            None if peers.is_empty() => None,
            None => Some(peers.len() + 1),
            Some(v) => match v.strip_prefix("consensus=").and_then(|n| n.parse::<usize>().ok()) {
                Some(n) if n >= 1 => Some(n),
                _ => return Err(ConfigError::IpallocInit(v.to_owned())),
            },
        };
        let in_cluster = env("KUBERNETES_SERVICE_HOST").is_some_and(|h| !h.is_empty());
        let kube = args.kube_peers.unwrap_or(in_cluster).then(|| KubeConfig {
            address_type: args.kube_address_type.clone(),
            node_name: args.node_name.clone().filter(|n| !n.is_empty()).unwrap_or_else(hostname),
            namespace: args.kube_namespace.clone().filter(|n| !n.is_empty()),
            configmap: args.kube_peers_configmap.clone(),
            reclaim_grace: std::time::Duration::from_secs(args.kube_reclaim_grace),
            kubeconfig: args.kubeconfig.clone(),
        });
        if args.cni_conf_name.is_empty() || args.cni_conf_name.contains('/') || args.cni_conf_name.starts_with('.') {
            return Err(ConfigError::CniConfName(args.cni_conf_name));
        }
        let cni_conf = args.write_cni_conf.then(|| args.cni_conf_dir.join(&args.cni_conf_name));
        let mut trusted_subnets = Vec::new();
        for t in args.trusted_subnets.iter().map(|t| t.trim()).filter(|t| !t.is_empty()) {
            trusted_subnets.push(t.parse::<Cidr>().map_err(|e| ConfigError::TrustedSubnet(t.to_owned(), e))?);
        }
        let network_policy = args.network_policy.unwrap_or(kube.is_some());
        if network_policy && kube.is_none() {
            return Err(ConfigError::PolicyWithoutKube);
        }
        let nickname = args.nickname.unwrap_or_else(hostname);
        Ok(Config {
            peers,
            password,
            nickname,
            state_dir: args.state_dir,
            api_socket: args.api_socket,
            ipalloc_range,
            ipalloc_consensus,
            handover_on_exit: args.handover_on_exit,
            rekey_interval: std::time::Duration::from_secs(args.rekey_interval),
            mtu: args.mtu,
            peer_timeout: std::time::Duration::from_millis(args.peer_timeout),
            conn_limit: args.conn_limit,
            mesh_port: args.mesh_port,
            sleeve_port: args.sleeve_port,
            metrics_addr: args.metrics_addr,
            dataplane_threads,
            pod_udp_coalesce,
            pod_udp_coalesce_above: args.pod_udp_coalesce_above,
            ipalloc_init_given: args.ipalloc_init.is_some(),
            kube,
            cni_conf,
            masquerade: !args.no_masquerade,
            fastpath: !args.no_fastpath,
            trusted_subnets,
            network_policy,
            policy_log_drops: (args.policy_log_drops > 0).then_some(args.policy_log_drops),
        })
    }
}

/// `--pod-udp-coalesce-us`, or its default for the paths the pods' traffic takes: held when only
/// the sleeve carries it, not held when the kernel fast path may.
fn pod_udp_coalesce(args: &RouterArgs, password: bool) -> Result<Option<std::time::Duration>, ConfigError> {
    let sleeve_only = args.no_fastpath || (password && args.trusted_subnets.iter().all(|t| t.trim().is_empty()));
    let micros = match args.pod_udp_coalesce_us {
        Some(us) if us > MAX_POD_GRO_FLUSH_MICROS => return Err(ConfigError::PodUdpCoalesce(us)),
        Some(us) => us,
        None if sleeve_only => return Ok(Some(offload::POD_GRO_FLUSH_TIMEOUT)),
        None => 0,
    };
    Ok(offload::pod_gro_flush_from_micros(micros))
}

/// The data plane queues a host with `cores` cores runs by default: one for every two cores
/// (each queue has two threads, the TAP reader and the sleeve receiver, and at full load the
/// kernel's own work on the TAP and the underlay NIC takes about as much again), at least one,
/// at most 8 (beyond that the switch's lock, taken once per batch by every TAP reader, and the
/// per-link session locks would be shared by too many threads to gain). A host of up to 3 cores
/// keeps the single queue (single-queue TAP, one exclusive sleeve socket) of earlier versions.
pub fn default_dataplane_threads(cores: usize) -> usize {
    (cores / 2).clamp(1, 8)
}

/// Parses HOST, HOST:PORT, \[V6\]:PORT or a bare IPv6 address.
pub fn parse_peer(p: &str, default_port: u16) -> Result<PeerTarget, ConfigError> {
    let bad = || ConfigError::Peer(p.to_owned());
    // [v6]:port, v6, host:port, host
    if let Some(rest) = p.strip_prefix('[') {
        let (host, tail) = rest.split_once(']').ok_or_else(bad)?;
        let port = match tail.strip_prefix(':') {
            Some(port) => port.parse().map_err(|_| bad())?,
            None if tail.is_empty() => default_port,
            None => return Err(bad()),
        };
        return Ok(PeerTarget { host: host.to_owned(), port });
    }
    if p.matches(':').count() > 1 {
        return Ok(PeerTarget { host: p.to_owned(), port: default_port }); // bare IPv6
    }
    match p.split_once(':') {
        Some((h, port)) if !h.is_empty() => Ok(PeerTarget { host: h.to_owned(), port: port.parse().map_err(|_| bad())? }),
        Some(_) => Err(bad()),
        None => Ok(PeerTarget { host: p.to_owned(), port: default_port }),
    }
}

/// Refuses a pod range that is `/0`, smaller than /30, or overlaps one of [`RESERVED_BLOCKS`].
pub fn check_range(range: Cidr) -> Result<(), ConfigError> {
    if range.prefix() == 0 {
        return Err(ConfigError::RangeUnusable(format!("{range} is every IPv4 address: pods need a private block such as 10.32.0.0/12")));
    }
    if range.prefix() > 30 {
        return Err(ConfigError::RangeTooSmall(range));
    }
    for (addr, prefix, what) in RESERVED_BLOCKS {
        // A constant table; `ranges_pods_cannot_use_are_refused` goes through every entry.
        let block = Cidr::new(addr.into(), prefix).expect("RESERVED_BLOCKS have their host bits zero");
        if overlaps(range, block.base(), block.prefix()) {
            return Err(ConfigError::ReservedRange { range, block, what });
        }
    }
    Ok(())
}

/// Whether `range` and the block of `addr/prefix` (host bits ignored) share an address.
pub fn overlaps(range: Cidr, addr: u32, prefix: u8) -> bool {
    let mask = |p: u8| if p == 0 { 0 } else { u32::MAX << (32 - p.min(32)) };
    // Two blocks overlap exactly when they agree on the shorter of the two prefixes.
    let m = mask(range.prefix().min(prefix));
    range.base() & m == addr & m
}

/// Reads the password file: at most [`MAX_PASSWORD`] bytes, trailing newlines dropped, at
/// least [`MIN_PASSWORD`] left. Also returns a warning when its group or everyone may read it.
fn read_password(path: &Path) -> Result<(Vec<u8>, Option<String>), ConfigError> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let err = |source| ConfigError::PasswordFile { path: path.to_owned(), source };
    let f = std::fs::File::open(path).map_err(err)?;
    let mode = f.metadata().map_err(err)?.permissions().mode();
    let mut pw = Vec::new();
    f.take(MAX_PASSWORD as u64 + 1).read_to_end(&mut pw).map_err(err)?;
    let from = path.display().to_string();
    if pw.len() > MAX_PASSWORD {
        return Err(ConfigError::LongPassword(from));
    }
    let warning = (mode & 0o044 != 0).then(|| {
        format!("the password file {from} may be read by its group or by everyone (mode {:o}): chmod 600 it", mode & 0o777)
    });
    Ok((check_password(pw, &from)?, warning))
}

/// Drops trailing newlines and checks the length.
fn check_password(mut pw: Vec<u8>, from: &str) -> Result<Vec<u8>, ConfigError> {
    if pw.len() > MAX_PASSWORD {
        return Err(ConfigError::LongPassword(from.to_owned()));
    }
    while pw.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        pw.pop();
    }
    if pw.is_empty() {
        return Err(ConfigError::EmptyPassword(from.to_owned()));
    }
    if pw.len() < MIN_PASSWORD {
        return Err(ConfigError::ShortPassword { from: from.to_owned(), len: pw.len() });
    }
    Ok(pw)
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "weft".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        a: RouterArgs,
    }

    fn args(flags: &[&str]) -> RouterArgs {
        T::try_parse_from(std::iter::once("weft").chain(flags.iter().copied())).unwrap().a
    }

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = Config::from_args(args(&[]), no_env).unwrap();
        assert_eq!(c.ipalloc_range.to_string(), "10.32.0.0/12");
        assert_eq!(c.ipalloc_range.size(), 1 << 20);
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/weft"));
        assert_eq!(c.api_socket, PathBuf::from("/run/weft/weft.sock"));
        assert_eq!((c.mesh_port, c.sleeve_port, c.conn_limit), (6783, 6784, 100));
        assert!(c.password.is_none() && c.peers.is_empty());
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(c.dataplane_threads, default_dataplane_threads(cores));
        let rule: Vec<usize> = [1, 2, 3, 4, 8, 16, 17, 64, 256].into_iter().map(default_dataplane_threads).collect();
        assert_eq!(rule, [1, 1, 1, 2, 4, 8, 8, 8, 8]);
        assert!(c.masquerade, "pod traffic leaving the range is masqueraded unless turned off");
        assert_eq!(c.peer_timeout, std::time::Duration::from_secs(2));
    }

    #[test]
    fn masquerade_is_turned_off_by_the_flag() {
        // WEFT_NO_MASQUERADE is exercised by the namespace test `masquerade_opt_out` (setting
        // the variable here would reach every test of this process).
        assert!(!Config::from_args(args(&["--no-masquerade"]), no_env).unwrap().masquerade);
    }

    #[test]
    fn the_peer_timeout_is_set_in_milliseconds_within_bounds() {
        let c = Config::from_args(args(&["--peer-timeout", "1500"]), no_env).unwrap();
        assert_eq!(c.peer_timeout, std::time::Duration::from_millis(1500));
        for bad in ["499", "600001", "2s"] {
            assert!(T::try_parse_from(["weft", "--peer-timeout", bad]).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn peers_come_from_flags_and_environment() {
        let env = |k: &str| (k == "WEFT_PEERS").then(|| "192.0.2.3, 192.0.2.4:7000 [2001:db8::1]:7001".to_owned());
        let c = Config::from_args(args(&["--peer", "node-a", "--peer", "198.51.100.2:6790"]), env).unwrap();
        let got: Vec<(String, u16)> = c.peers.iter().map(|p| (p.host.clone(), p.port)).collect();
        assert_eq!(
            got,
            vec![
                ("node-a".into(), 6783),
                ("198.51.100.2".into(), 6790),
                ("192.0.2.3".into(), 6783),
                ("192.0.2.4".into(), 7000),
                ("2001:db8::1".into(), 7001)
            ]
        );
        assert!(matches!(Config::from_args(args(&["--peer", "a:b"]), no_env), Err(ConfigError::Peer(_))));
        assert!(matches!(Config::from_args(args(&["--peer", ":80"]), no_env), Err(ConfigError::Peer(_))));
    }

    #[test]
    fn bad_values_are_refused_with_what_to_do() {
        let e = Config::from_args(args(&["--ipalloc-range", "10.32.0.1/12"]), no_env).unwrap_err();
        assert_eq!(e.to_string(), "bad --ipalloc-range", "the cause is not repeated");
        assert!(weft_kernel::chain(&e).contains("did you mean 10.32.0.0/12"), "{e}");
        let small = Config::from_args(args(&["--ipalloc-range", "10.32.0.0/31"]), no_env).unwrap_err();
        assert!(matches!(small, ConfigError::RangeTooSmall(_)) && small.to_string().contains("/30 or larger"), "{small}");
        assert!(matches!(Config::from_args(args(&["--ipalloc-range", "10.32.0.0/33"]), no_env), Err(ConfigError::Range(_))));
        assert!(matches!(Config::from_args(args(&["--mtu", "100"]), no_env), Err(ConfigError::Mtu(100))));
        assert!(matches!(Config::from_args(args(&["--conn-limit", "0"]), no_env), Err(ConfigError::ConnLimit)));
        for bad in ["0", "65"] {
            let e = Config::from_args(args(&["--dataplane-threads", bad]), no_env).unwrap_err();
            assert!(matches!(e, ConfigError::DataplaneThreads(_)) && e.to_string().contains("between 1 and 64"), "{e}");
        }
        assert_eq!(Config::from_args(args(&["--dataplane-threads", "64"]), no_env).unwrap().dataplane_threads, 64);
        assert_eq!(Config::from_args(args(&["--dataplane-threads=2"]), no_env).unwrap().dataplane_threads, 2);
        let coalesce = |a: &[&str]| Config::from_args(args(a), no_env).map(|c| c.pod_udp_coalesce);
        // Held by default only where the sleeve carries the pods' traffic.
        let held = Some(weft_kernel::offload::POD_GRO_FLUSH_TIMEOUT);
        assert_eq!(coalesce(&[]).unwrap(), None, "the fast path may carry it");
        assert_eq!(coalesce(&["--no-fastpath"]).unwrap(), held);
        let password = |v: &'static str| move |k: &str| (k == "WEFT_PASSWORD").then(|| v.to_owned());
        let with_password = |a: &[&str]| Config::from_args(args(a), password("a cluster password of some length")).map(|c| c.pod_udp_coalesce);
        assert_eq!(with_password(&[]).unwrap(), held, "encrypted: only the sleeve");
        assert_eq!(with_password(&["--trusted-subnets", "192.0.2.0/24"]).unwrap(), None);
        assert_eq!(with_password(&["--pod-udp-coalesce-us", "0"]).unwrap(), None);
        assert_eq!(coalesce(&["--pod-udp-coalesce-us", "20"]).unwrap(), held);
        assert_eq!(coalesce(&["--pod-udp-coalesce-us", "0"]).unwrap(), None);
        assert_eq!(coalesce(&["--pod-udp-coalesce-us", "1000"]).unwrap(), Some(std::time::Duration::from_millis(1)));
        let e = coalesce(&["--pod-udp-coalesce-us", "1001"]).unwrap_err();
        assert!(matches!(e, ConfigError::PodUdpCoalesce(1001)) && e.to_string().contains("between 0 (off) and 1000"), "{e}");
        // Held only while a pod sends fast, by default: not when it attaches.
        let attach = |a: &[&str]| Config::from_args(args(a), no_env).map(|c| (c.pod_udp_coalesce_above, c.pod_udp_coalesce_at_attach())).unwrap();
        assert_eq!(attach(&["--no-fastpath"]), (20_000, None));
        assert_eq!(attach(&["--no-fastpath", "--pod-udp-coalesce-above", "0"]), (0, held));
        assert_eq!(attach(&["--pod-udp-coalesce-above", "0"]), (0, None), "nothing to hold");
        assert!(matches!(Config::from_args(args(&["--ipalloc-init", "consensus=0"]), no_env), Err(ConfigError::IpallocInit(_))));
        assert_eq!(Config::from_args(args(&["--ipalloc-init", "consensus=4"]), no_env).unwrap().ipalloc_consensus, Some(4));
        assert_eq!(Config::from_args(args(&["--peer", "a", "--peer", "b"]), no_env).unwrap().ipalloc_consensus, Some(3));
        let missing = Config::from_args(args(&["--password-file", "/nonexistent/weft-pw"]), no_env).unwrap_err();
        assert!(missing.to_string().contains("/nonexistent/weft-pw"), "{missing}");
    }

    #[test]
    fn kubernetes_discovery_is_on_in_a_pod_or_when_asked() {
        assert_eq!(Config::from_args(args(&[]), no_env).unwrap().kube, None);
        let in_pod = |k: &str| (k == "KUBERNETES_SERVICE_HOST").then(|| "10.96.0.1".to_owned());
        let k = Config::from_args(args(&["--node-name", "node-1"]), in_pod).unwrap().kube.unwrap();
        assert_eq!((k.node_name.as_str(), k.address_type.as_str(), k.configmap.as_str(), k.namespace), ("node-1", "InternalIP", "weft-peers", None));
        assert_eq!(Config::from_args(args(&["--kube-peers=false"]), in_pod).unwrap().kube, None, "turned off in a pod");
        let k = Config::from_args(args(&["--kube-peers", "--kube-address-type", "ExternalIP", "--kube-namespace", "weft"]), no_env).unwrap().kube.unwrap();
        assert_eq!((k.address_type.as_str(), k.namespace.as_deref()), ("ExternalIP", Some("weft")));
        assert!(!k.node_name.is_empty(), "the host name by default");
        let c = Config::from_args(args(&["--kube-peers"]), no_env).unwrap();
        assert!(!c.ipalloc_init_given, "the first Node list decides the consensus");
        assert!(Config::from_args(args(&["--kube-peers", "--ipalloc-init", "consensus=3"]), no_env).unwrap().ipalloc_init_given);
    }

    #[test]
    fn network_policy_is_on_with_kubernetes_unless_turned_off() {
        let c = Config::from_args(args(&[]), no_env).unwrap();
        assert!(!c.network_policy && c.policy_log_drops.is_none());
        let in_pod = |k: &str| (k == "KUBERNETES_SERVICE_HOST").then(|| "10.96.0.1".to_owned());
        assert!(Config::from_args(args(&[]), in_pod).unwrap().network_policy, "on in a pod");
        assert!(Config::from_args(args(&["--kube-peers"]), no_env).unwrap().network_policy);
        assert!(!Config::from_args(args(&["--network-policy=false"]), in_pod).unwrap().network_policy);
        assert!(matches!(Config::from_args(args(&["--network-policy"]), no_env), Err(ConfigError::PolicyWithoutKube)));
        assert_eq!(Config::from_args(args(&["--kube-peers", "--policy-log-drops", "5"]), no_env).unwrap().policy_log_drops, Some(5));
    }

    #[test]
    fn the_cni_configuration_is_written_only_when_asked() {
        assert_eq!(Config::from_args(args(&[]), no_env).unwrap().cni_conf, None);
        let c = Config::from_args(args(&["--write-cni-conf"]), no_env).unwrap();
        assert_eq!(c.cni_conf, Some(PathBuf::from("/etc/cni/net.d/10-weft.conflist")));
        let c = Config::from_args(args(&["--write-cni-conf", "--cni-conf-dir", "/x", "--cni-conf-name", "05-w.conflist"]), no_env).unwrap();
        assert_eq!(c.cni_conf, Some(PathBuf::from("/x/05-w.conflist")));
        for bad in ["", "a/b", ".hidden"] {
            assert!(matches!(Config::from_args(args(&["--cni-conf-name", bad]), no_env), Err(ConfigError::CniConfName(_))), "{bad:?}");
        }
    }

    #[test]
    fn password_from_a_file_is_trimmed_and_never_shown() {
        let dir = std::env::temp_dir().join(format!("weft-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("pw");
        std::fs::write(&f, "s3cret-value\n").unwrap();
        let c = Config::from_args(args(&["--password-file", f.to_str().unwrap()]), no_env).unwrap();
        assert_eq!(c.password.as_deref(), Some(&b"s3cret-value"[..]));
        assert!(!format!("{c:?}").contains("s3cret"));
        std::fs::write(&f, "\n").unwrap();
        assert!(matches!(Config::from_args(args(&["--password-file", f.to_str().unwrap()]), no_env), Err(ConfigError::EmptyPassword(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn passwords_are_bounded_long_enough_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("weft-config-pw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("pw");
        let from_file = |content: &[u8], mode: u32| {
            std::fs::write(&f, content).unwrap();
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
            read_password(&f)
        };
        // An endless file is refused after 4 KiB + 1 byte.
        let t = std::time::Instant::now();
        let e = read_password(Path::new("/dev/zero")).unwrap_err();
        assert!(matches!(e, ConfigError::LongPassword(_)), "{e}");
        assert!(e.to_string().contains("/dev/zero") && e.to_string().contains("4 KiB"), "{e}");
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
        assert!(matches!(from_file(&[b'x'; MAX_PASSWORD + 1], 0o600), Err(ConfigError::LongPassword(_))));
        assert_eq!(from_file(&[b'x'; MAX_PASSWORD], 0o600).unwrap().0.len(), MAX_PASSWORD);
        // Short ones are refused, saying how long they are and what to do.
        let e = from_file(b"hunter2\n", 0o600).unwrap_err();
        assert!(matches!(e, ConfigError::ShortPassword { len: 7, .. }), "{e}");
        assert!(e.to_string().contains("fewer than 12") && !e.to_string().contains("hunter2"), "{e}");
        let (pw, warning) = from_file(b"twelve-bytes\n", 0o600).unwrap();
        assert_eq!((pw.as_slice(), warning), (&b"twelve-bytes"[..], None));
        // Readable by others: accepted, with a warning.
        for mode in [0o640, 0o604, 0o644] {
            let (_, warning) = from_file(b"twelve-bytes", mode).unwrap();
            let w = warning.unwrap_or_else(|| panic!("mode {mode:o} not warned about"));
            assert!(w.contains(&format!("{mode:o}")) && w.contains("chmod 600"), "{w}");
        }
        // The variable follows the same rules.
        let env = |v: &'static str| move |k: &str| (k == "WEFT_PASSWORD").then(|| v.to_owned());
        assert!(matches!(Config::from_args(args(&[]), env("short")), Err(ConfigError::ShortPassword { len: 5, .. })));
        assert!(matches!(Config::from_args(args(&[]), env("")), Err(ConfigError::EmptyPassword(_))));
        assert_eq!(Config::from_args(args(&[]), env("long enough, surely")).unwrap().password.as_deref(), Some(&b"long enough, surely"[..]));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn ranges_pods_cannot_use_are_refused() {
        for (range, needle) in [
            ("0.0.0.0/0", "every IPv4 address"),
            ("0.0.0.0/8", "this network"),
            ("127.0.0.0/8", "loopback"),
            ("127.1.0.0/16", "loopback"),
            ("224.0.0.0/4", "multicast"),
            ("239.1.0.0/16", "multicast"),
            ("169.254.0.0/16", "link-local"),
            ("240.0.0.0/4", "reserved"),
            ("255.255.255.0/24", "broadcast"),
            ("64.0.0.0/2", "loopback"),
            ("128.0.0.0/1", "link-local"),
        ] {
            let e = Config::from_args(args(&["--ipalloc-range", range]), no_env).unwrap_err();
            assert!(e.to_string().contains(needle) && e.to_string().contains(range), "{range}: {e}");
        }
        for range in ["10.32.0.0/12", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "198.18.0.0/15"] {
            assert!(Config::from_args(args(&["--ipalloc-range", range]), no_env).is_ok(), "{range}");
        }
    }

    #[test]
    fn overlap_is_exact_at_the_edges() {
        let r: Cidr = "10.32.0.0/12".parse().unwrap();
        let a = |s: &str| u32::from(s.parse::<std::net::Ipv4Addr>().unwrap());
        assert!(overlaps(r, a("10.47.255.255"), 32));
        assert!(!overlaps(r, a("10.48.0.0"), 32));
        assert!(!overlaps(r, a("10.31.255.255"), 32));
        assert!(overlaps(r, a("10.0.0.0"), 8), "a block containing the range");
        assert!(overlaps(r, a("10.40.1.7"), 24), "a subnet inside it, given by one of its addresses");
        assert!(overlaps(r, a("192.0.2.1"), 0), "a default route covers everything");
        assert!(!overlaps(r, a("192.0.2.1"), 24));
    }
}

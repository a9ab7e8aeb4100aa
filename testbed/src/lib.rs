//! The network test bed: topologies of network namespaces on one machine, for the tests and for
//! `weft demo`.
//!
//! Every host, segment switch and pod is a namespace named `wt-PID-N-NAME` (PID of the process
//! that made it, N a per-process counter), so beds of concurrent tests never collide and the
//! leftovers of a killed run are recognised and swept by the next [`TestBed::new`] (those it
//! cannot remove, held in another mount namespace, it leaves alone). Segments
//! are bridges inside their own switch namespace; hosts attach to them through veth pairs, so a
//! link is cut by taking its switch port down. Nothing is created in the caller's namespace.
//!
//! Dropping a [`TestBed`] — also while a test panics — kills the processes it started (only
//! those, by PID), closes its netlink sockets and removes its namespaces, which destroys every
//! link in them. [`TestBed::teardown`] does the same and reports every failure.

mod probe;
pub use probe::{PING_DEADLINE, PROBE_WAIT, Rtt, Throughput, Transfer, UdpRate, iperf3, iperf3_tcp, iperf3_udp};
pub mod routers;
pub mod servers;
pub mod topology;

use std::net::{IpAddr, Ipv4Addr};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering};

use weft_kernel::{Error, Result};
use weft_kernel::netlink::{Handle, LinkKind, Route};
use weft_kernel::netns::{self, NetNs};

/// The prefix of every namespace a test bed makes.
pub const NS_PREFIX: &str = "wt-";

static NEXT_BED: AtomicUsize = AtomicUsize::new(0);

/// A node of the bed (host, switch or pod): a namespace and a netlink handle inside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct NodeId(usize);

/// A segment: an L2 broadcast domain (a bridge in a switch namespace) with an IPv4 subnet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SegmentId(usize);

/// A cable between a host and a segment, which can be cut and restored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CableId(usize);

struct Node {
    name: String,
    ns: NetNs,
    nl: Handle,
    interfaces: usize,
}

struct Segment {
    switch: NodeId,
    subnet: Ipv4Addr,
    prefix_len: u8,
    ports: usize,
}

struct Cable {
    switch: NodeId,
    port: String,
}

/// One end of a host's attachment to a segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attachment {
    /// The host-side interface name (`eth0`, `eth1`, ...).
    pub iface: String,
    /// The host's address on the segment.
    pub addr: Ipv4Addr,
    /// The cable, to cut and restore.
    pub cable: CableId,
}

/// A set of namespaces and links, removed when dropped.
pub struct TestBed {
    id: String,
    nodes: Vec<Node>,
    segments: Vec<Segment>,
    cables: Vec<Cable>,
    children: Vec<Child>,
    torn_down: bool,
}

impl std::fmt::Debug for TestBed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestBed").field("id", &self.id).finish_non_exhaustive()
    }
}

/// Checks that this process may build a test bed: root (or CAP_NET_ADMIN and CAP_SYS_ADMIN) and
/// a usable `/dev/net/tun`. The error says what is missing and what to do.
pub fn require_privileges() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::TestBed(
            "these tests build network namespaces and must run as root (run them with sudo, or as \
             root in CI); they fail rather than pass silently without it"
                .into(),
        ));
    }
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/net/tun") {
        return Err(Error::TestBed(format!(
            "/dev/net/tun cannot be opened ({e}): load the tun module (modprobe tun) or give the \
             container the device"
        )));
    }
    Ok(())
}

impl TestBed {
    /// Starts an empty bed, after sweeping namespaces left by test processes that died.
    pub fn new() -> Result<TestBed> {
        require_privileges()?;
        sweep_stale()?;
        let id = format!("{NS_PREFIX}{}-{}", std::process::id(), NEXT_BED.fetch_add(1, Ordering::Relaxed));
        Ok(Self::empty(id))
    }

    /// Starts an empty bed whose namespaces are named `ID-NAME` and which is never swept as stale
    /// (for `weft demo`, whose bed may outlive the process). Fails if namespaces named so exist.
    pub fn named(id: &str) -> Result<TestBed> {
        require_privileges()?;
        if id.starts_with(NS_PREFIX) {
            return Err(Error::Invalid(format!("bed name {id:?} must not start with {NS_PREFIX:?}")));
        }
        let taken: Vec<String> = netns::list()?.into_iter().filter(|n| n.starts_with(&format!("{id}-"))).collect();
        if !taken.is_empty() {
            return Err(Error::TestBed(format!("namespaces of a bed named {id} exist already: {}", taken.join(" "))));
        }
        Ok(Self::empty(id.to_owned()))
    }

    fn empty(id: String) -> TestBed {
        TestBed { id, nodes: Vec::new(), segments: Vec::new(), cables: Vec::new(), children: Vec::new(), torn_down: false }
    }

    /// Leaves everything in place when the bed is dropped (processes keep running); remove it
    /// later with [`remove_named`].
    pub fn keep(mut self) {
        self.torn_down = true;
        self.children.clear();
    }

    /// The prefix of this bed's namespace names.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Adds a node (an empty namespace with loopback up) named `name` within the bed.
    pub fn add_node(&mut self, name: &str) -> Result<NodeId> {
        if self.nodes.iter().any(|n| n.name == name) {
            return Err(Error::TestBed(format!("node {name} exists already")));
        }
        let ns = NetNs::create(&format!("{}-{name}", self.id))?;
        let nl = Handle::open_in(&ns)?;
        self.nodes.push(Node { name: name.to_owned(), ns, nl, interfaces: 0 });
        Ok(NodeId(self.nodes.len() - 1))
    }

    /// The node's short name.
    pub fn name(&self, node: NodeId) -> &str {
        &self.nodes[node.0].name
    }

    /// The node's namespace.
    pub fn ns(&self, node: NodeId) -> &NetNs {
        &self.nodes[node.0].ns
    }

    /// A netlink handle inside the node's namespace.
    pub fn netlink(&mut self, node: NodeId) -> &mut Handle {
        &mut self.nodes[node.0].nl
    }

    /// Adds a segment `subnet/prefix_len`: a bridge in a switch namespace of its own.
    pub fn add_segment(&mut self, name: &str, subnet: Ipv4Addr, prefix_len: u8) -> Result<SegmentId> {
        let switch = self.add_node(&format!("sw-{name}"))?;
        let nl = self.netlink(switch);
        nl.add_link("br0", &LinkKind::Bridge)?;
        nl.set_up("br0")?;
        self.segments.push(Segment { switch, subnet, prefix_len, ports: 0 });
        Ok(SegmentId(self.segments.len() - 1))
    }

    /// Plugs `host` into `segment` at address `subnet + host_part`; returns the new interface.
    pub fn attach(&mut self, host: NodeId, segment: SegmentId, host_part: u8) -> Result<Attachment> {
        let seg = &mut self.segments[segment.0];
        let addr = Ipv4Addr::from(u32::from(seg.subnet) + u32::from(host_part));
        let prefix_len = seg.prefix_len;
        let port = format!("p{}", seg.ports);
        seg.ports += 1;
        let switch = seg.switch;
        let h = &mut self.nodes[host.0];
        let iface = format!("eth{}", h.interfaces);
        h.interfaces += 1;

        let (sw, hn) = two_mut(&mut self.nodes, switch.0, host.0);
        sw.nl.add_veth_pair_into(&port, &iface, &hn.ns)?;
        sw.nl.set_master(&port, "br0")?;
        sw.nl.set_up(&port)?;
        hn.nl.add_address(&iface, IpAddr::V4(addr), prefix_len)?;
        hn.nl.set_up(&iface)?;
        self.cables.push(Cable { switch, port });
        Ok(Attachment { iface, addr, cable: CableId(self.cables.len() - 1) })
    }

    /// Cuts a cable: nothing crosses it until [`restore`](Self::restore).
    pub fn cut(&mut self, cable: CableId) -> Result<()> {
        let c = &self.cables[cable.0];
        let port = c.port.clone();
        self.nodes[c.switch.0].nl.set_down(&port)
    }

    /// Restores a cut cable.
    pub fn restore(&mut self, cable: CableId) -> Result<()> {
        let c = &self.cables[cable.0];
        let port = c.port.clone();
        self.nodes[c.switch.0].nl.set_up(&port)
    }

    /// Adds a route on `node`.
    pub fn add_route(&mut self, node: NodeId, route: &Route) -> Result<()> {
        self.netlink(node).add_route(route)
    }

    /// Lets `node` forward IPv4 between its interfaces (a routing host).
    pub fn enable_forwarding(&mut self, node: NodeId) -> Result<()> {
        self.ns(node).set_sysctl("net/ipv4/ip_forward", "1")
    }

    /// Makes `node` a NAT: forwarding on, and traffic leaving by `out_iface` masqueraded to
    /// that interface's address (nftables; needs the `nft` program).
    pub fn masquerade(&mut self, node: NodeId, out_iface: &str) -> Result<()> {
        self.enable_forwarding(node)?;
        let rules = format!(
            "table ip weft_testbed_nat {{\n chain post {{\n  type nat hook postrouting priority 100;\n  oifname \"{out_iface}\" masquerade\n }}\n}}\n"
        );
        let out = self.ns(node).run(|| {
            use std::io::Write;
            let mut child = Command::new("nft")
                .args(["-f", "-"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()?;
            child.stdin.take().map(|mut s| s.write_all(rules.as_bytes())).transpose()?;
            child.wait_with_output()
        })?;
        match out {
            Ok(o) if o.status.success() => Ok(()),
            Ok(o) => Err(Error::TestBed(format!(
                "nft masquerade in {}: {}",
                self.ns(node).name(),
                String::from_utf8_lossy(&o.stderr).trim()
            ))),
            Err(e) => Err(Error::TestBed(format!(
                "cannot run nft ({e}): install Debian's nftables package (scripts/install-deps does)"
            ))),
        }
    }

    /// Adds a pod: a namespace whose `eth0` is a veth to `host`, its host end `host_if` attached
    /// to the bridge `bridge` on `host` (which must exist), with `addr/prefix_len` and a default
    /// route via `gateway` if given.
    #[allow(clippy::too_many_arguments)] // every argument is a distinct property of the pod's link
    pub fn add_pod(
        &mut self,
        host: NodeId,
        name: &str,
        bridge: &str,
        host_if: &str,
        addr: Ipv4Addr,
        prefix_len: u8,
        gateway: Option<Ipv4Addr>,
    ) -> Result<NodeId> {
        let pod = self.add_node(name)?;
        let (h, p) = two_mut(&mut self.nodes, host.0, pod.0);
        h.nl.add_veth_pair_into(host_if, "eth0", &p.ns)?;
        h.nl.set_master(host_if, bridge)?;
        h.nl.set_up(host_if)?;
        p.nl.add_address("eth0", IpAddr::V4(addr), prefix_len)?;
        p.nl.set_up("eth0")?;
        p.interfaces = 1;
        if let Some(gw) = gateway {
            p.nl.add_route(&Route::default_via(IpAddr::V4(gw)))?;
        }
        Ok(pod)
    }

    /// PIDs of the processes the bed started and still holds.
    pub fn children(&self) -> Vec<u32> {
        self.children.iter().map(|c| c.id()).collect()
    }

    /// Starts `cmd` inside `node`'s namespace; the bed kills it (by PID) when torn down.
    /// Returns the PID.
    pub fn spawn(&mut self, node: NodeId, cmd: &mut Command) -> Result<u32> {
        let name = self.nodes[node.0].ns.name().to_owned();
        let child = self.nodes[node.0].ns.run(|| cmd.spawn())?.map_err(|e| {
            Error::TestBed(format!("start {:?} in {name}: {e}", cmd.get_program()))
        })?;
        let pid = child.id();
        self.children.push(child);
        Ok(pid)
    }

    /// Takes a process this bed started off its list (the caller ends it).
    fn take_child(&mut self, pid: u32) -> Result<std::process::Child> {
        let i = self
            .children
            .iter()
            .position(|c| c.id() == pid)
            .ok_or_else(|| Error::TestBed(format!("process {pid} was not started by this test bed")))?;
        Ok(self.children.remove(i))
    }

    /// Stops a process this bed started (SIGKILL) and reaps it.
    pub fn kill(&mut self, pid: u32) -> Result<()> {
        let mut child = self.take_child(pid)?;
        let _ = child.kill();
        child.wait().map_err(|e| Error::TestBed(format!("reap process {pid}: {e}")))?;
        Ok(())
    }

    /// Asks a process this bed started to stop (SIGTERM) and reaps it; if it has not exited
    /// within `grace`, kills it (SIGKILL) and fails, saying so.
    pub fn terminate(&mut self, pid: u32, grace: std::time::Duration) -> Result<()> {
        let mut child = self.take_child(pid)?;
        // A child's PID is a positive i32 (pid_t) however std reports it.
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
        let deadline = std::time::Instant::now() + grace;
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return Ok(()),
                Ok(None) if std::time::Instant::now() < deadline => std::thread::sleep(std::time::Duration::from_millis(10)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(Error::TestBed(format!("process {pid} did not exit within {grace:?} of SIGTERM: killed")));
                }
            }
        }
    }

    /// Runs `cmd` inside `node`'s namespace to completion and returns its output.
    pub fn run(&self, node: NodeId, cmd: &mut Command) -> Result<std::process::Output> {
        let name = self.nodes[node.0].ns.name().to_owned();
        self.nodes[node.0].ns.run(|| cmd.output())?.map_err(|e| {
            Error::TestBed(format!("run {:?} in {name}: {e}", cmd.get_program()))
        })
    }

    /// Removes everything, reporting every step that failed (and still trying the others).
    pub fn teardown(mut self) -> Result<()> {
        self.teardown_inner()
    }

    fn teardown_inner(&mut self) -> Result<()> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        let mut errors = Vec::new();
        for mut child in self.children.drain(..) {
            let pid = child.id();
            let _ = child.kill();
            if let Err(e) = child.wait() {
                errors.push(Error::TestBed(format!("reap process {pid}: {e}")));
            }
        }
        // Close every socket and descriptor into the namespaces, then unmount them: the kernel
        // then destroys each namespace with its links.
        let names: Vec<String> = self.nodes.drain(..).map(|n| n.ns.name().to_owned()).collect();
        for name in names {
            if let Err(e) = netns::delete(&name) {
                errors.push(e);
            }
        }
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.remove(0)),
            _ => Err(Error::Many(errors)),
        }
    }
}

impl Drop for TestBed {
    fn drop(&mut self) {
        if let Err(e) = self.teardown_inner() {
            eprintln!("test bed {}: teardown: {}", self.id, weft_kernel::chain(&e));
        }
    }
}

/// Removes every namespace of the bed named `id` (see [`TestBed::named`]); returns their names.
pub fn remove_named(id: &str) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    let mut errors = Vec::new();
    for name in netns::list()?.into_iter().filter(|n| n.starts_with(&format!("{id}-"))) {
        match netns::delete(&name) {
            Ok(()) => removed.push(name),
            Err(e) => errors.push(e),
        }
    }
    match errors.len() {
        0 => Ok(removed),
        1 => Err(errors.remove(0)),
        _ => Err(Error::Many(errors)),
    }
}

/// Removes namespaces named by test beds of processes that no longer exist. One that cannot be
/// removed is left in place, with a line on stderr: its name carries a PID no bed of ours has,
/// so it cannot collide with ours (e.g. it is held in another mount namespace, by a test whose
/// process is not visible from here).
fn sweep_stale() -> Result<()> {
    for name in netns::list()? {
        let Some(rest) = name.strip_prefix(NS_PREFIX) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists()
            && let Err(e) = netns::delete(&name)
        {
            eprintln!("test bed: left {name} in place: {}", weft_kernel::chain(&e));
        }
    }
    Ok(())
}

fn two_mut<T>(v: &mut [T], a: usize, b: usize) -> (&mut T, &mut T) {
    assert_ne!(a, b, "two_mut needs two different indices");
    if a < b {
        let (x, y) = v.split_at_mut(b);
        (&mut x[a], &mut y[0])
    } else {
        let (x, y) = v.split_at_mut(a);
        (&mut y[0], &mut x[b])
    }
}

//! The data plane: dedicated OS threads moving frames between the TAP and the sleeve.
//!
//! - [`tapio`]: batched reads and writes of `weft-tap`, buffers allocated once;
//!   [`vnet`]: the virtio-net header the TAP puts before each frame;
//! - [`ethernet`]: the Ethernet header view; [`switch`]: MAC learning and the verdict per frame;
//! - [`forward`]: which next hops (and whether the bridge) get a frame, and with which relay
//!   envelope (its layout is the sleeve's, `weft_sleeve::wire`);
//! - [`icmp`]: "fragmentation needed" / "packet too big" answers to pods;
//! - [`links`]: the sleeve link to each connected peer (session, address, reassembly, health);
//! - [`sleeve`]: sealing and sending frames (whole or fragmented), walking opened bodies;
//! - [`gather`]: fragmented super-frames written to the TAP from the receive buffers their
//!   pieces lie in;
//! - [`udpmerge`]: UDP datagrams for this host merged per flow into one frame for the TAP.
//!
//! Two threads per queue, each side of a queue read by one thread at a time (see below): a
//! queue ([`Queue`]) is a queue of the multi-queue TAP and a socket of the sleeve port's
//! `SO_REUSEPORT` group (`--dataplane-threads N`; one by default on small hosts, and then the
//! single-queue TAP and one exclusive socket). The *TAP thread* reads a batch from `weft-tap`, asks the
//! [`Switch`] where each frame goes under one lock for the whole batch, finds the next hops in
//! the lock-free routes and queues each frame for its next hop's link; at the end of the batch
//! each link's frames leave packed into datagrams (several small frames per datagram), sealed
//! under the link's session lock once per batch, in UDP GSO trains ([`sleeve::Sender`]). The *sleeve thread* receives a batch of messages (recvmmsg, each a GRO train
//! of datagrams from one sender), finds each datagram's link by the receiver index in the
//! sleeve's header view, opens a message's datagrams under one session lock, then walks their
//! records: relays frames for other peers to their next hop (packed and sent at the end of
//! the batch, as the TAP thread's), writes frames for this host to the
//! TAP, answers control records; fragments are reassembled under the link's reassembler lock,
//! taken at most once per message. Frames for this host are switched without the switch's lock
//! ([`switch::PeerLearning`]); what they teach is learned under one lock per received batch
//! (and once a second, expired MAC entries are removed under it).
//!
//! Order per flow: the kernel hashes each sender's UDP 4-tuple to one socket of the group, so
//! one peer's datagrams are received and opened by one sleeve thread, in order (one peer does
//! not spread over queues on receive). That thread writes each frame to the TAP queue of its
//! flow ([`tapio::queue_of`]); tun's flow steering then reads the flow's frames back from that
//! queue, so each flow is read, sealed and sent by one TAP thread, in order, and the flows of
//! one peer are spread over the TAP threads. A flow's first frames from the bridge (before any
//! came back) go to the queue of the kernel's own flow hash. What several queues share, they
//! share as the two threads did: the switch (under its lock, once per batch), the links (a
//! link's session lock is taken once per batch or message, so two TAP threads sealing for one
//! peer take turns, and their datagrams may interleave: the replay window accepts that),
//! routes and counters.
//! The links' timers (heartbeats, path MTU probes) and the switch's aging run on queue 0's
//! sleeve thread only.
//!
//! Route and link tables are `arc-swap` snapshots; a link's receive time and address are
//! atomics; its health lock (heartbeats, path MTU) is taken by timers, control records, status
//! and, on the TAP thread, only for a frame too large for its path.
//!
//! Fewer hand-offs per round trip: each queue's TAP side (buffers, verdicts and sender,
//! `TapSide`) sits behind a lock either thread may take: the queue's TAP thread when `poll`
//! wakes it, a sleeve thread (without waiting, `try_lock`) right after it wrote frames to that
//! TAP queue. The answers
//! those frames draw (a pod's reply: the bridge, the veth and the pod's stack run in the writing
//! system call) are usually queued on the TAP by then, and leave without waiting for the TAP
//! thread (the kernel still wakes it; it finds nothing left to read). Frames are read and sent
//! on (flushed) under the lock, so they keep their order.

pub mod ethernet;
pub mod forward;
pub mod gather;
pub mod icmp;
pub mod links;
pub mod sleeve;
pub mod switch;
pub mod tapio;
pub mod udpmerge;
pub mod vnet;

use std::ops::{Deref, Range};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use weft_mesh::peer::PeerName;
use weft_mesh::routes::{Routes, RoutesHandle};
use weft_sleeve::liveness::{CONTROL_LEN, ControlMsg};
use weft_sleeve::udp::{RecvBatch, SleeveSocket};
use weft_sleeve::wire::{self, EnvelopeRepr, FrameRepr, Packet};

use links::{Links, SleeveLink};
use gather::{Gather, Pieces};
use sleeve::{DataplaneStats, LazyReasm, Received, SendError, Sender, Wire};
use switch::{PeerLearning, Switch, Verdict};
use tapio::{FrameBuf, Layout, TapIo};
use udpmerge::{Merge, Offer};

/// Frames read from the TAP per batch.
pub const TAP_BATCH: usize = 32;
/// Receive buffers per sleeve batch.
pub const UDP_BATCH: usize = 32;
/// How often the sleeve thread runs the links' timers (heartbeats, path MTU probes).
pub const TIMER_TICK: Duration = Duration::from_millis(50);
/// How often the sleeve thread removes expired MAC entries from the switch.
pub const AGING_TICK: Duration = Duration::from_secs(1);

/// One data plane queue: a TAP queue and a sleeve socket, each read by its own thread.
pub struct Queue {
    /// The TAP queue (replaced when the plumbing repair reopens the TAP).
    pub tap: ArcSwap<TapIo>,
    /// The sleeve socket (one of the group on the sleeve port).
    pub sock: SleeveSocket,
    /// The TAP side's buffers and sender: whichever thread holds it serves this TAP queue.
    tap_side: Mutex<TapSide>,
}

impl Queue {
    /// A queue of `sock` and `tap`.
    pub fn new(sock: SleeveSocket, tap: TapIo) -> Queue {
        Queue { tap: ArcSwap::from_pointee(tap), sock, tap_side: Mutex::new(TapSide::default()) }
    }
}

/// What all threads share.
pub struct Shared {
    /// This peer.
    pub me: PeerName,
    /// Sleeve links by peer and by session index.
    pub links: Links,
    /// Mesh routes (lock-free snapshots).
    pub routes: RoutesHandle,
    /// MAC learning.
    pub switch: Mutex<Switch>,
    /// The queues (at least one); queue 0 also sends the links' timer traffic.
    pub queues: Vec<Queue>,
    /// Counters.
    pub stats: DataplaneStats,
    stop: AtomicBool,
}

fn inc(c: &std::sync::atomic::AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Shared {
    /// The shared state of `queues`; threads start with [`Dataplane::start`], which refuses
    /// no queue.
    pub fn new(me: PeerName, routes: RoutesHandle, queues: Vec<Queue>) -> Shared {
        Shared {
            me,
            links: Links::default(),
            routes,
            switch: Mutex::new(Switch::new(switch::DEFAULT_MAX_AGE)),
            queues,
            stats: DataplaneStats::default(),
            stop: AtomicBool::new(false),
        }
    }

    fn switch(&self) -> std::sync::MutexGuard<'_, Switch> {
        self.switch.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets the MACs learned behind `peer` (its connection went away).
    pub fn forget_peer(&self, peer: PeerName) {
        self.switch().forget_peer(peer);
    }
}

/// What one queue's threads see: the shared state (through `Deref`), and in its place the
/// queue's own TAP and socket (`sh.tap`, `sh.sock`), and whether this queue runs the timers.
struct Lane<'a> {
    shared: &'a Shared,
    tap: &'a ArcSwap<TapIo>,
    sock: &'a SleeveSocket,
    tap_side: &'a Mutex<TapSide>,
    timers: bool,
}

impl<'a> Lane<'a> {
    /// `q` is below `shared.queues.len()` ([`Dataplane::start`] spawns one lane per queue).
    fn new(shared: &'a Shared, q: usize) -> Lane<'a> {
        let queue = &shared.queues[q];
        Lane { shared, tap: &queue.tap, sock: &queue.sock, tap_side: &queue.tap_side, timers: q == 0 }
    }
}

impl Deref for Lane<'_> {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        self.shared
    }
}

impl Lane<'_> {
    fn tap_side(&self) -> std::sync::MutexGuard<'_, TapSide> {
        self.tap_side.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The running data plane threads.
pub struct Dataplane {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Dataplane {
    /// Starts the TAP thread and the sleeve thread of each queue (named `weft-tap` and
    /// `weft-sleeve` for queue 0, `weft-tap-Q` and `weft-sleeve-Q` for queue Q). With no queue,
    /// or a thread the system refuses, the threads already started are stopped again.
    pub fn start(shared: Arc<Shared>) -> std::io::Result<Dataplane> {
        if shared.queues.is_empty() {
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, "a data plane needs at least one queue"));
        }
        let mut dp = Dataplane { shared: shared.clone(), threads: Vec::with_capacity(2 * shared.queues.len()) };
        for q in 0..shared.queues.len() {
            let suffix = if q == 0 { String::new() } else { format!("-{q}") };
            let (s1, s2) = (shared.clone(), shared.clone());
            for (name, body) in [
                (format!("weft-tap{suffix}"), Box::new(move || tap_thread(&s1, q)) as Box<dyn FnOnce() + Send>),
                (format!("weft-sleeve{suffix}"), Box::new(move || sleeve_thread(&s2, q))),
            ] {
                match std::thread::Builder::new().name(name).spawn(body) {
                    Ok(t) => dp.threads.push(t),
                    Err(e) => {
                        dp.stop();
                        return Err(e);
                    }
                }
            }
        }
        Ok(dp)
    }

    /// The shared state.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Whether all threads are still running.
    pub fn alive(&self) -> bool {
        self.threads.iter().all(|t| !t.is_finished())
    }

    /// Stops all threads (within their 100 ms wait).
    pub fn stop(self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// The TAP side's state, allocated once: the frame buffers, their verdicts, the sender, the
/// buffer for "too big" answers, the layout frames are read with and a buffer for a laid-out
/// frame that must be sent otherwise. It sits behind `Shared::tap_side`'s lock so that either
/// thread may serve the TAP (see the module's documentation); frames read under the lock leave
/// (flushed) under it too, so they keep their order.
struct TapSide {
    bufs: Vec<FrameBuf>,
    verdicts: [Verdict; TAP_BATCH],
    sender: Sender,
    reply: [u8; 1400],
    /// The layout of the link the last batch's last fragmented super-frame went to (see
    /// `tapio`): the next batch is read straight into its datagrams. None after a batch
    /// without one.
    layout: Option<Layout>,
    whole: Vec<u8>,
}

impl Default for TapSide {
    fn default() -> Self {
        TapSide {
            bufs: (0..TAP_BATCH).map(|_| FrameBuf::default()).collect(),
            verdicts: [Verdict::Local; TAP_BATCH],
            sender: Sender::default(),
            reply: [0u8; 1400],
            layout: None,
            whole: Vec::with_capacity(tapio::MAX_FRAME),
        }
    }
}

impl TapSide {
    /// Reads the frames ready on `tap` (up to a batch, without waiting) and sends each to its
    /// next hops, flushed before it returns; returns how many frames were read.
    fn serve(&mut self, sh: &Lane<'_>, tap: &TapIo) -> std::io::Result<usize> {
        let TapSide { bufs, verdicts, sender, reply, layout, whole } = self;
        let n = tap.read_ready_laid_out(bufs, *layout)?;
        if n == 0 {
            return Ok(0);
        }
        let now = Instant::now();
        sh.stats.tap_frames_in.fetch_add(n as u64, Ordering::Relaxed);
        {
            let mut sw = sh.switch();
            for (b, v) in bufs[..n].iter().zip(verdicts.iter_mut()) {
                *v = sw.from_local(now, b.frame_start());
            }
        }
        let routes = sh.routes.load();
        // Frames are read laid out only while super-frames come (a read over a layout's many
        // pieces costs a small frame more than a plain read).
        let mut next_layout = None;
        for (b, &v) in bufs[..n].iter_mut().zip(verdicts.iter()) {
            let Ok(h) = vnet::parse(b.vnet_hdr()) else { continue };
            let vh = (h != vnet::Header::default()).then_some(h);
            if let Verdict::Drop(_) = v {
                inc(&sh.stats.drop_switch);
                continue;
            }
            let plan = forward::from_bridge(sh.me, v, &**routes);
            if plan.dropped.is_some() {
                inc(&sh.stats.drop_no_route);
            }
            let frame_len = b.frame_len();
            // A super-frame read laid out, for one next hop: sent from where it was read.
            if let (forward::Onward::One(hop, envelope), Some(vh)) = (plan.onward, vh)
                && let Some((l, buf)) = b.laid_out_mut()
                && let Some(link) = sh.links.get(hop)
            {
                match sender.send_laid_out(now, &mut Net { sh, now }, &link, vh, envelope, l, buf, frame_len) {
                    Ok(true) => {
                        next_layout = Some(l);
                        continue;
                    }
                    Ok(false) => {}
                    Err(e) => {
                        lost(sh, now, &link, 1, e);
                        continue;
                    }
                }
            }
            let frame = b.whole(whole);
            // A unicast packet that may not be fragmented and does not fit one datagram to the
            // next hop is answered as a router on the path would: "fragmentation needed".
            // While the path MTU search runs, frames are fragmented instead: a pod would keep
            // the search's low floor as its path MTU for minutes.
            if let forward::Onward::One(hop, _) = plan.onward
                && vh.is_none_or(|h| !vnet::is_gso(&h))
                && let Some(link) = sh.links.get(hop)
                && let mtu = ip_mtu(&link)
                && frame.len() - ethernet::HEADER_LEN > usize::from(mtu)
                && !link.health().pmtu.is_searching()
                && let Some(n) = icmp::too_big_reply(frame, mtu, reply)
            {
                inc(&sh.stats.drop_too_big);
                let _ = tap.write_frame(&[0u8; vnet::LEN], &reply[..n]);
                continue;
            }
            for (hop, envelope) in plan.onward.sends() {
                let link = send(sh, sender, now, hop, &FrameRepr { vnet: vh, envelope, frame });
                // A fragmented super-frame: the next ones are read laid out for this link.
                if let Some(l) = link.and_then(|link| Layout::after(vh, frame.len(), &link)) {
                    next_layout = Some(l);
                }
            }
        }
        *layout = next_layout;
        sender.flush(now, &mut Net { sh, now });
        Ok(n)
    }
}

/// Serves the TAP from the sleeve thread, which just wrote frames to it, if the TAP thread is
/// not serving it already: the answers those frames draw (bridge, veth and the pod's stack run
/// in the writer's system call) are often queued by now, and leave without waiting for the
/// TAP thread to be scheduled.
fn serve_tap_after_write(sh: &Lane<'_>) {
    let tap = sh.tap.load_full();
    let mut side = match sh.tap_side.try_lock() {
        Ok(side) => side,
        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => return,
    };
    if let Err(e) = side.serve(sh, &tap) {
        tracing::debug!("TAP read: {e}");
    }
}

fn tap_thread(sh: &Shared, q: usize) {
    let sh = &Lane::new(sh, q);
    while !sh.stop.load(Ordering::Relaxed) {
        let tap = sh.tap.load_full();
        let r = match tap.wait_readable(Duration::from_millis(100)) {
            Ok(false) => continue,
            Ok(true) => sh.tap_side().serve(sh, &tap),
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            tracing::debug!("TAP read: {e}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The largest IP packet one datagram of `link` carries whole: what its body carries in one
/// frame record (with room for a virtio-net header) less the Ethernet header.
pub(crate) fn ip_mtu(link: &SleeveLink) -> u16 {
    let frame = wire::max_frame_in_body(link.max_body());
    frame.saturating_sub(ethernet::HEADER_LEN).min(u16::MAX as usize) as u16
}

/// Queues `frame` for `hop`'s link; it leaves at the batch's [`Sender::flush`]. Returns the
/// link, if there is one.
fn send(sh: &Lane<'_>, sender: &mut Sender, now: Instant, hop: PeerName, frame: &FrameRepr<'_>) -> Option<Arc<SleeveLink>> {
    let Some(link) = sh.links.get(hop) else {
        inc(&sh.stats.drop_no_route);
        return None;
    };
    if let Err(e) = sender.push(now, &mut Net { sh, now }, &link, frame) {
        lost(sh, now, &link, 1, e);
    }
    Some(link)
}

/// The data plane's [`Wire`]: the sleeve socket, and the counters and path MTU search a lost
/// send touches.
struct Net<'a> {
    sh: &'a Lane<'a>,
    now: Instant,
}

impl Wire for Net<'_> {
    fn send(&mut self, link: &SleeveLink, datagrams: &[u8], segment: Option<usize>) -> std::io::Result<()> {
        self.sh.sock.send(link.addr(), datagrams, segment)
    }

    fn failed(&mut self, link: &SleeveLink, frames: u64, error: SendError) {
        lost(self.sh, self.now, link, frames, error);
    }
}

/// `frames` frames for `link` were not sent, for `error`.
fn lost(sh: &Shared, now: Instant, link: &SleeveLink, frames: u64, error: SendError) {
    match error {
        SendError::TooBig(_) => {
            sh.stats.drop_too_big.fetch_add(frames, Ordering::Relaxed);
        }
        // The path (or our own interface) no longer carries datagrams of this size: search again.
        SendError::Io(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
            sh.stats.drop_too_big.fetch_add(frames, Ordering::Relaxed);
            let mut h = link.health();
            h.pmtu.too_big(now, link.datagram().min(u16::MAX as usize) as u16);
            let d = usize::from(h.pmtu.current());
            if d != link.datagram() {
                tracing::info!(peer = %link.peer, datagram = d, "sleeve: datagram refused as too big; searching the path MTU again");
                link.set_datagram(d);
            }
        }
        e => {
            tracing::debug!(peer = %link.peer, error = %Chain(&e), "sleeve: cannot send a frame");
            sh.stats.drop_io.fetch_add(frames, Ordering::Relaxed);
        }
    }
}

/// Displays an error with its causes, `outer: cause: cause`, for log lines.
struct Chain<'a>(&'a dyn std::error::Error);

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

/// The sleeve thread's state, allocated once: the send buffer, the bodies opened from the
/// message at hand, and what the frames of the batch at hand teach the switch.
#[derive(Default)]
struct Receiver {
    sender: Sender,
    opened: Vec<Range<usize>>,
    learning: PeerLearning,
    /// UDP datagrams for this host being merged into one frame for the TAP.
    merge: Merge,
    /// The queues whose TAP the batch at hand wrote frames to (bit Q: queue Q; at most 64
    /// queues).
    to_tap: u64,
    /// The super-frame being gathered from its pieces where they were received.
    gather: Gather,
    /// A gathered frame copied together, for a relay.
    whole: Vec<u8>,
}

fn sleeve_thread(sh: &Shared, q: usize) {
    let sh = &Lane::new(sh, q);
    let mut batch = RecvBatch::new(UDP_BATCH);
    let mut rx = Receiver::default();
    let mut next_timers = Instant::now();
    let mut next_aging = Instant::now() + AGING_TICK;
    while !sh.stop.load(Ordering::Relaxed) {
        let n = match sh.sock.recv(&mut batch) {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!("sleeve receive: {e}");
                std::thread::sleep(Duration::from_millis(10));
                0
            }
        };
        let now = Instant::now();
        if n > 0 {
            let routes = sh.routes.load_full();
            let tap = sh.tap.load_full();
            for i in 0..n {
                let (src, data, stride) = batch.get_mut(i);
                receive_message(sh, &mut rx, &routes, &tap, now, src, data, stride);
                // Pieces of a frame being gathered outlive the next receive.
                rx.gather.keep(batch.buffer_mut(i));
            }
            // Relayed frames leave packed, as the TAP thread's do; merged datagrams are written.
            rx.sender.flush(now, &mut Net { sh, now });
            write_merged(sh, &mut rx.merge, &mut rx.to_tap);
            if !rx.learning.is_empty() {
                sh.switch().learn_from_peers(now, &mut rx.learning);
            }
            let mut written = std::mem::take(&mut rx.to_tap);
            while written != 0 {
                let q = written.trailing_zeros() as usize;
                written &= written - 1;
                serve_tap_after_write(&Lane::new(sh.shared, q));
            }
        }
        if sh.timers && now >= next_timers {
            next_timers = now + TIMER_TICK;
            for link in sh.links.all() {
                link_timers(sh, &mut rx.sender, now, &link);
            }
        }
        if sh.timers && now >= next_aging {
            next_aging = now + AGING_TICK;
            sh.switch().handle_timeout(now);
        }
    }
}

/// Heartbeats and path MTU probes due on `link` (a round of probes goes out at once; the
/// vector allocates only while a search runs).
fn link_timers(sh: &Lane<'_>, sender: &mut Sender, now: Instant, link: &SleeveLink) {
    let (hb, probes) = {
        let mut h = link.health();
        let searching = h.pmtu.is_searching();
        let probes = std::iter::from_fn(|| h.poll_probe(now)).collect::<Vec<_>>();
        if searching && !h.pmtu.is_searching() {
            tracing::info!(peer = %link.peer, datagram = h.pmtu.current(), "sleeve: path MTU found");
        }
        (h.liveness.poll_transmit(now), probes)
    };
    for msg in hb.iter().chain(&probes) {
        let _ = send_control(sh, sender, now, link, msg);
    }
}

fn send_control(sh: &Lane<'_>, sender: &mut Sender, now: Instant, link: &SleeveLink, msg: &ControlMsg) -> Result<(), sleeve::SendError> {
    let mut b = [0u8; CONTROL_LEN];
    let _ = msg.emit(&mut b);
    let r = sender.send_control(now, sh.sock, link, &b, msg.pad_to());
    if let Err(e) = &r {
        tracing::debug!(peer = %link.peer, error = %Chain(e), "sleeve: cannot send a control record");
    }
    r
}

/// A control record from `link`'s peer: answer heartbeats and probes, learn from acks.
fn on_control(sh: &Lane<'_>, sender: &mut Sender, now: Instant, link: &SleeveLink, payload: &[u8]) {
    let Ok(msg) = ControlMsg::parse(payload) else {
        inc(&sh.stats.drop_malformed);
        return;
    };
    let reply = {
        let mut h = link.health();
        if let ControlMsg::ProbeAck { size, .. } = msg {
            h.pmtu.on_ack(now, size);
            let d = usize::from(h.pmtu.current());
            if d != link.datagram() {
                tracing::debug!(peer = %link.peer, datagram = d, "sleeve: path MTU probe answered");
                link.set_datagram(d);
            }
        }
        h.liveness.on_control(now, &msg)
    };
    if let Some(r) = reply {
        let _ = send_control(sh, sender, now, link, &r);
    }
}

/// One received message: datagrams of `stride` bytes from `src` (a GRO train, or just one).
/// Each run of datagrams for one session is opened under one session lock, then walked.
#[allow(clippy::too_many_arguments)]
fn receive_message(sh: &Lane<'_>, rx: &mut Receiver, routes: &Routes, tap: &TapIo, now: Instant, src: std::net::SocketAddr, data: &mut [u8], stride: usize) {
    let mut at = 0;
    while at < data.len() {
        let index = match Packet::new_checked(&data[at..(at + stride).min(data.len())]) {
            Ok(p) => p.receiver_index(),
            Err(e) => {
                tracing::trace!(%src, error = %e, "sleeve: datagram refused");
                inc(&sh.stats.drop_malformed);
                at += stride;
                continue;
            }
        };
        let Some(link) = sh.links.by_index(index) else {
            inc(&sh.stats.drop_unknown_session);
            at += stride;
            continue;
        };
        // Open the run of datagrams for this session.
        rx.opened.clear();
        {
            let mut session = link.session();
            while at < data.len() {
                let end = (at + stride).min(data.len());
                let dgram = &mut data[at..end];
                if Packet::new_checked(&*dgram).map(|p| p.receiver_index()) != Ok(index) {
                    break;
                }
                match session.open(now, dgram) {
                    Ok(body) => rx.opened.push(at + body.start..at + body.end),
                    Err(_) => inc(&sh.stats.drop_open),
                }
                at = end;
            }
        }
        if rx.opened.is_empty() {
            continue;
        }
        if link.seen(now, src) {
            tracing::info!(peer = %link.peer, %src, "sleeve: peer now answers from a new address");
        }
        link.stats.datagrams_in.fetch_add(rx.opened.len() as u64, Ordering::Relaxed);
        // Walk what opened.
        let Receiver { sender, opened, learning, merge, to_tap, gather, whole } = rx;
        let mut reasm = LazyReasm::new(&link);
        for body in opened.iter() {
            sleeve::for_each_record(now, data, body.clone(), &mut reasm, gather, &sh.stats, |item| match item {
                Received::Frame(f) => {
                    link.stats.frames_in.fetch_add(1, Ordering::Relaxed);
                    link.stats.bytes_in.fetch_add(f.frame.len() as u64, Ordering::Relaxed);
                    deliver(sh, sender, learning, merge, to_tap, routes, tap, now, link.peer, &f);
                }
                Received::Pieces(p) => {
                    link.stats.frames_in.fetch_add(1, Ordering::Relaxed);
                    link.stats.bytes_in.fetch_add(p.len() as u64, Ordering::Relaxed);
                    deliver_pieces(sh, sender, learning, merge, to_tap, whole, routes, tap, now, link.peer, &p);
                }
                Received::Control(payload) => on_control(sh, sender, now, &link, payload),
            });
        }
    }
}

/// A frame from neighbour `from`: relay it on, and deliver it to the bridge when it is for this
/// host (UDP datagrams merged with others of their flow, written by [`write_merged`]; bit Q
/// of `to_tap` is set when queue Q's TAP was written to).
#[allow(clippy::too_many_arguments)]
fn deliver(sh: &Lane<'_>, sender: &mut Sender, learning: &mut PeerLearning, merge: &mut Merge, to_tap: &mut u64, routes: &Routes, tap: &TapIo, now: Instant, from: PeerName, f: &FrameRepr<'_>) {
    let plan = forward::from_peer(sh.me, from, f.envelope, routes);
    if plan.dropped.is_some() {
        inc(&sh.stats.drop_switch);
        return;
    }
    for (hop, envelope) in plan.onward.sends() {
        inc(&sh.stats.relayed);
        send(sh, sender, now, hop, &FrameRepr { envelope, ..*f });
    }
    if !plan.local {
        return;
    }
    let Some(q) = local_queue(sh, learning, f.envelope, f.frame) else { return };
    let flow_tap;
    let tap = if q == 0 && sh.queues.len() == 1 {
        tap
    } else {
        flow_tap = sh.queues[q].tap.load();
        &**flow_tap
    };
    loop {
        match merge.offer(q, f.vnet, f.frame) {
            Offer::Taken => return,
            Offer::EndsRun => write_merged(sh, merge, to_tap),
            Offer::Refused => {
                write_merged(sh, merge, to_tap);
                break;
            }
        }
    }
    let mut hdr = [0u8; vnet::LEN];
    vnet::emit(&f.vnet.unwrap_or_default(), &mut hdr);
    let r = tap.write_frame(&hdr, f.frame);
    tap_written(sh, q, r, 1, to_tap);
}

/// A super-frame gathered from its pieces, from neighbour `from`: written to the TAP from where
/// the pieces lie when it is for this host alone, copied together (into `whole`) and delivered
/// as any frame when it is relayed or dropped.
#[allow(clippy::too_many_arguments)]
fn deliver_pieces(sh: &Lane<'_>, sender: &mut Sender, learning: &mut PeerLearning, merge: &mut Merge, to_tap: &mut u64, whole: &mut Vec<u8>, routes: &Routes, tap: &TapIo, now: Instant, from: PeerName, p: &Pieces<'_>) {
    let plan = forward::from_peer(sh.me, from, p.envelope, routes);
    if !plan.local || plan.dropped.is_some() || plan.onward.sends().next().is_some() {
        let frame = p.copy_into(whole);
        deliver(sh, sender, learning, merge, to_tap, routes, tap, now, from, &FrameRepr { vnet: p.vnet, envelope: p.envelope, frame });
        return;
    }
    let Some(q) = local_queue(sh, learning, p.envelope, p.first) else { return };
    // A super-frame is never merged; what was merged before it goes first.
    write_merged(sh, merge, to_tap);
    let mut hdr = [0u8; vnet::LEN];
    vnet::emit(&p.vnet.unwrap_or_default(), &mut hdr);
    let r = sh.queues[q].tap.load().write_frame_parts(&hdr, p.parts());
    if tap_written(sh, q, r, 1, to_tap) {
        inc(&sh.stats.frames_gathered);
    }
}

/// The TAP queue a frame for this host (`frame`: at least its headers) is written to, if the
/// switch lets it in from the peer that sent it: with several queues, the flow's (its frames
/// back are read there, see the module doc).
fn local_queue(sh: &Lane<'_>, learning: &mut PeerLearning, envelope: EnvelopeRepr, frame: &[u8]) -> Option<usize> {
    if learning.from_peer(PeerName(envelope.src), frame) != Verdict::Local {
        inc(&sh.stats.drop_switch);
        return None;
    }
    Some(tapio::queue_of(frame, sh.queues.len()))
}

/// Writes the run of UDP datagrams `merge` holds, if any, to its queue's TAP.
fn write_merged(sh: &Lane<'_>, merge: &mut Merge, to_tap: &mut u64) {
    let Some(out) = merge.take() else { return };
    let mut hdr = [0u8; vnet::LEN];
    vnet::emit(&out.vnet, &mut hdr);
    let r = sh.queues[out.queue].tap.load().write_frame(&hdr, out.frame);
    if tap_written(sh, out.queue, r, out.datagrams as u64, to_tap) && out.datagrams > 1 {
        sh.stats.udp_merged.fetch_add(out.datagrams as u64, Ordering::Relaxed);
    }
}

/// Counts a write to queue `q`'s TAP of one frame carrying `datagrams` datagrams: written
/// (true), or dropped (counted).
fn tap_written(sh: &Lane<'_>, q: usize, r: std::io::Result<bool>, datagrams: u64, to_tap: &mut u64) -> bool {
    match r {
        Ok(true) => {
            inc(&sh.stats.tap_frames_out);
            *to_tap |= 1 << q;
            true
        }
        Ok(false) | Err(_) => {
            sh.stats.drop_io.fetch_add(datagrams, Ordering::Relaxed);
            false
        }
    }
}

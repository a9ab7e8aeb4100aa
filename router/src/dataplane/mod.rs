//! The data plane: dedicated OS threads moving frames between the TAP and the sleeve.
//!
//! - [`tapio`]: batched reads and writes of `weft-tap`, buffers allocated once;
//!   [`vnet`]: the virtio-net header the TAP puts before each frame;
//! - [`ethernet`]: the Ethernet header view; [`switch`]: MAC learning and the verdict per frame;
//! - [`forward`]: which next hops (and whether the bridge) get a frame, and with which relay
//!   envelope (its layout is the sleeve's, `weft_sleeve::wire`);
//! - [`icmp`]: "fragmentation needed" / "packet too big" answers to pods;
//! - [`links`]: the sleeve link to each connected peer (session, address, reassembly, health);
//! - [`sleeve`]: sealing and sending frames (whole or fragmented), walking opened bodies.
//!
//! Two threads per queue, each side read by one thread at a time (see below). The *TAP thread*
//! reads a batch from `weft-tap`, asks the
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
//! Route and link tables are `arc-swap` snapshots; a link's receive time and address are
//! atomics; its health lock (heartbeats, path MTU) is taken by timers, control records, status
//! and, on the TAP thread, only for a frame too large for its path.
//!
//! Fewer hand-offs per round trip: the TAP side's buffers, verdicts and sender (`TapSide`)
//! sit behind a lock either thread may take: the TAP thread when `poll` wakes it, the sleeve
//! thread (without waiting, `try_lock`) right after it wrote frames to the TAP. The answers
//! those frames draw (a pod's reply: the bridge, the veth and the pod's stack run in the writing
//! system call) are usually queued on the TAP by then, and leave without waiting for the TAP
//! thread (the kernel still wakes it; it finds nothing left to read). Frames are read and sent
//! on (flushed) under the lock, so they keep their order.

pub mod ethernet;
pub mod forward;
pub mod icmp;
pub mod links;
pub mod sleeve;
pub mod switch;
pub mod tapio;
pub mod vnet;

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use weft_mesh::peer::PeerName;
use weft_mesh::routes::{Routes, RoutesHandle};
use weft_sleeve::liveness::{CONTROL_LEN, ControlMsg};
use weft_sleeve::udp::{RecvBatch, SleeveSocket};
use weft_sleeve::wire::{self, FrameRepr, Packet};

use links::{Links, SleeveLink};
use sleeve::{DataplaneStats, LazyReasm, Received, SendError, Sender, Wire};
use switch::{PeerLearning, Switch, Verdict};
use tapio::{FrameBuf, TapIo};

/// Frames read from the TAP per batch.
pub const TAP_BATCH: usize = 32;
/// Receive buffers per sleeve batch.
pub const UDP_BATCH: usize = 32;
/// How often the sleeve thread runs the links' timers (heartbeats, path MTU probes).
pub const TIMER_TICK: Duration = Duration::from_millis(50);
/// How often the sleeve thread removes expired MAC entries from the switch.
pub const AGING_TICK: Duration = Duration::from_secs(1);

/// What both threads share.
pub struct Shared {
    /// This peer.
    pub me: PeerName,
    /// Sleeve links by peer and by session index.
    pub links: Links,
    /// Mesh routes (lock-free snapshots).
    pub routes: RoutesHandle,
    /// MAC learning.
    pub switch: Mutex<Switch>,
    /// The sleeve's UDP socket.
    pub sock: SleeveSocket,
    /// The TAP (replaced when the plumbing repair reopens it).
    pub tap: ArcSwap<TapIo>,
    /// The TAP side's buffers and sender: whichever thread holds it serves the TAP.
    tap_side: Mutex<TapSide>,
    /// Counters.
    pub stats: DataplaneStats,
    stop: AtomicBool,
}

fn inc(c: &std::sync::atomic::AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Shared {
    /// The shared state; threads start with [`Dataplane::start`].
    pub fn new(me: PeerName, routes: RoutesHandle, sock: SleeveSocket, tap: TapIo) -> Shared {
        Shared {
            me,
            links: Links::default(),
            routes,
            switch: Mutex::new(Switch::new(switch::DEFAULT_MAX_AGE)),
            sock,
            tap: ArcSwap::from_pointee(tap),
            tap_side: Mutex::new(TapSide::default()),
            stats: DataplaneStats::default(),
            stop: AtomicBool::new(false),
        }
    }

    fn switch(&self) -> std::sync::MutexGuard<'_, Switch> {
        self.switch.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn tap_side(&self) -> std::sync::MutexGuard<'_, TapSide> {
        self.tap_side.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets the MACs learned behind `peer` (its connection went away).
    pub fn forget_peer(&self, peer: PeerName) {
        self.switch().forget_peer(peer);
    }
}

/// The running data plane threads.
pub struct Dataplane {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Dataplane {
    /// Starts the TAP thread and the sleeve thread.
    pub fn start(shared: Arc<Shared>) -> std::io::Result<Dataplane> {
        let s1 = shared.clone();
        let s2 = shared.clone();
        let threads = vec![
            std::thread::Builder::new().name("weft-tap".into()).spawn(move || tap_thread(&s1))?,
            std::thread::Builder::new().name("weft-sleeve".into()).spawn(move || sleeve_thread(&s2))?,
        ];
        Ok(Dataplane { shared, threads })
    }

    /// The shared state.
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Whether both threads are still running.
    pub fn alive(&self) -> bool {
        self.threads.iter().all(|t| !t.is_finished())
    }

    /// Stops both threads (within their 100 ms wait).
    pub fn stop(self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// The TAP side's state, allocated once: the frame buffers, their verdicts, the sender and
/// the buffer for "too big" answers. It sits behind `Shared::tap_side`'s lock so that either
/// thread may serve the TAP (see the module's documentation); frames read under the lock leave
/// (flushed) under it too, so they keep their order.
struct TapSide {
    bufs: Vec<FrameBuf>,
    verdicts: [Verdict; TAP_BATCH],
    sender: Sender,
    reply: [u8; 1400],
}

impl Default for TapSide {
    fn default() -> Self {
        TapSide { bufs: (0..TAP_BATCH).map(|_| FrameBuf::default()).collect(), verdicts: [Verdict::Local; TAP_BATCH], sender: Sender::default(), reply: [0u8; 1400] }
    }
}

impl TapSide {
    /// Reads the frames ready on `tap` (up to a batch, without waiting) and sends each to its
    /// next hops, flushed before it returns; returns how many frames were read.
    fn serve(&mut self, sh: &Shared, tap: &TapIo) -> std::io::Result<usize> {
        let TapSide { bufs, verdicts, sender, reply } = self;
        let n = tap.read_ready(bufs)?;
        if n == 0 {
            return Ok(0);
        }
        let now = Instant::now();
        sh.stats.tap_frames_in.fetch_add(n as u64, Ordering::Relaxed);
        {
            let mut sw = sh.switch();
            for (b, v) in bufs[..n].iter().zip(verdicts.iter_mut()) {
                *v = sw.from_local(now, &b.packet()[vnet::LEN..]);
            }
        }
        let routes = sh.routes.load();
        for (b, &v) in bufs[..n].iter().zip(verdicts.iter()) {
            let packet = b.packet();
            let Ok(h) = vnet::parse(packet) else { continue };
            let vh = (h != vnet::Header::default()).then_some(h);
            let frame = &packet[vnet::LEN..];
            if let Verdict::Drop(_) = v {
                inc(&sh.stats.drop_switch);
                continue;
            }
            let plan = forward::from_bridge(sh.me, v, &**routes);
            if plan.dropped.is_some() {
                inc(&sh.stats.drop_no_route);
            }
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
                send(sh, sender, now, hop, &FrameRepr { vnet: vh, envelope, frame });
            }
        }
        sender.flush(now, &mut Net { sh, now });
        Ok(n)
    }
}

/// Serves the TAP from the sleeve thread, which just wrote frames to it, if the TAP thread is
/// not serving it already: the answers those frames draw (bridge, veth and the pod's stack run
/// in the writer's system call) are often queued by now, and leave without waiting for the
/// TAP thread to be scheduled.
fn serve_tap_after_write(sh: &Shared, tap: &TapIo) {
    let mut side = match sh.tap_side.try_lock() {
        Ok(side) => side,
        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => return,
    };
    if let Err(e) = side.serve(sh, tap) {
        tracing::debug!("TAP read: {e}");
    }
}

fn tap_thread(sh: &Shared) {
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

/// Queues `frame` for `hop`'s link; it leaves at the batch's [`Sender::flush`].
fn send(sh: &Shared, sender: &mut Sender, now: Instant, hop: PeerName, frame: &FrameRepr<'_>) {
    let Some(link) = sh.links.get(hop) else {
        inc(&sh.stats.drop_no_route);
        return;
    };
    if let Err(e) = sender.push(now, &mut Net { sh, now }, &link, frame) {
        lost(sh, now, &link, 1, e);
    }
}

/// The data plane's [`Wire`]: the sleeve socket, and the counters and path MTU search a lost
/// send touches.
struct Net<'a> {
    sh: &'a Shared,
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
    /// Frames written to the TAP in the batch at hand.
    to_tap: usize,
}

fn sleeve_thread(sh: &Shared) {
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
            }
            // Relayed frames leave packed, as the TAP thread's do.
            rx.sender.flush(now, &mut Net { sh, now });
            if !rx.learning.is_empty() {
                sh.switch().learn_from_peers(now, &mut rx.learning);
            }
            if rx.to_tap > 0 {
                rx.to_tap = 0;
                serve_tap_after_write(sh, &tap);
            }
        }
        if now >= next_timers {
            next_timers = now + TIMER_TICK;
            for link in sh.links.all() {
                link_timers(sh, &mut rx.sender, now, &link);
            }
        }
        if now >= next_aging {
            next_aging = now + AGING_TICK;
            sh.switch().handle_timeout(now);
        }
    }
}

/// Heartbeats and path MTU probes due on `link` (a round of probes goes out at once; the
/// vector allocates only while a search runs).
fn link_timers(sh: &Shared, sender: &mut Sender, now: Instant, link: &SleeveLink) {
    let (hb, probes) = {
        let mut h = link.health();
        let searching = h.pmtu.is_searching();
        let probes = std::iter::from_fn(|| h.pmtu.poll_probe(now)).collect::<Vec<_>>();
        if searching && !h.pmtu.is_searching() {
            tracing::info!(peer = %link.peer, datagram = h.pmtu.current(), "sleeve: path MTU found");
        }
        (h.liveness.poll_transmit(now), probes)
    };
    for msg in hb.iter().chain(&probes) {
        let _ = send_control(sh, sender, now, link, msg);
    }
}

fn send_control(sh: &Shared, sender: &mut Sender, now: Instant, link: &SleeveLink, msg: &ControlMsg) -> Result<(), sleeve::SendError> {
    let mut b = [0u8; CONTROL_LEN];
    let _ = msg.emit(&mut b);
    let r = sender.send_control(now, &sh.sock, link, &b, msg.pad_to());
    if let Err(e) = &r {
        tracing::debug!(peer = %link.peer, error = %Chain(e), "sleeve: cannot send a control record");
    }
    r
}

/// A control record from `link`'s peer: answer heartbeats and probes, learn from acks.
fn on_control(sh: &Shared, sender: &mut Sender, now: Instant, link: &SleeveLink, payload: &[u8]) {
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
fn receive_message(sh: &Shared, rx: &mut Receiver, routes: &Routes, tap: &TapIo, now: Instant, src: std::net::SocketAddr, data: &mut [u8], stride: usize) {
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
        let Receiver { sender, opened, learning, to_tap } = rx;
        let mut reasm = LazyReasm::new(&link);
        for body in opened.iter() {
            sleeve::for_each_record(now, &data[body.clone()], &mut reasm, &sh.stats, |item| match item {
                Received::Frame(f) => {
                    link.stats.frames_in.fetch_add(1, Ordering::Relaxed);
                    link.stats.bytes_in.fetch_add(f.frame.len() as u64, Ordering::Relaxed);
                    *to_tap += usize::from(deliver(sh, sender, learning, routes, tap, now, link.peer, &f))
                }
                Received::Control(payload) => on_control(sh, sender, now, &link, payload),
            });
        }
    }
}

/// A frame from neighbour `from`: relay it on, and deliver it to the bridge when it is for this
/// host; returns whether it was written to the TAP.
#[allow(clippy::too_many_arguments)]
fn deliver(sh: &Shared, sender: &mut Sender, learning: &mut PeerLearning, routes: &Routes, tap: &TapIo, now: Instant, from: PeerName, f: &FrameRepr<'_>) -> bool {
    let plan = forward::from_peer(sh.me, from, f.envelope, routes);
    if plan.dropped.is_some() {
        inc(&sh.stats.drop_switch);
        return false;
    }
    for (hop, envelope) in plan.onward.sends() {
        inc(&sh.stats.relayed);
        send(sh, sender, now, hop, &FrameRepr { envelope, ..*f });
    }
    if !plan.local {
        return false;
    }
    if learning.from_peer(PeerName(f.envelope.src), f.frame) != Verdict::Local {
        inc(&sh.stats.drop_switch);
        return false;
    }
    let mut hdr = [0u8; vnet::LEN];
    vnet::emit(&f.vnet.unwrap_or_default(), &mut hdr);
    match tap.write_frame(&hdr, f.frame) {
        Ok(true) => {
            inc(&sh.stats.tap_frames_out);
            true
        }
        Ok(false) | Err(_) => {
            inc(&sh.stats.drop_io);
            false
        }
    }
}

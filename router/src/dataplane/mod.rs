//! The data plane: dedicated OS threads moving frames between the TAP and the sleeve.
//!
//! - [`tapio`]: batched reads and writes of `weft-tap`, buffers with headroom;
//!   [`vnet`]: the virtio-net header the TAP puts before each frame;
//! - [`ethernet`]: the Ethernet header view; [`switch`]: MAC learning and the verdict per frame;
//! - [`envelope`]: origin, destination and hop limit before each frame on the sleeve;
//! - [`forward`]: which next hops (and whether the bridge) get a frame;
//! - [`icmp`]: "fragmentation needed" / "packet too big" answers to pods;
//! - [`links`]: the sleeve link to each connected peer (session, address, reassembly);
//! - [`sleeve`]: framing, fragmentation, sealing and opening of frames.
//!
//! Two threads, one reader per queue: the *TAP thread* reads batches from `weft-tap`, asks the
//! [`Switch`] where each frame goes (one lock per batch), finds the next hops in the lock-free
//! routes and sends each frame over the next hop's link; the *sleeve thread* receives batches of
//! datagrams (GRO), opens them, reassembles, relays frames for other peers to their next hop and
//! writes frames for this host to the TAP. Route and link tables are `arc-swap` snapshots; the
//! only locks are the switch (per batch) and each link's session (per frame).

pub mod envelope;
pub mod ethernet;
pub mod forward;
pub mod icmp;
pub mod links;
pub mod sleeve;
pub mod switch;
pub mod tapio;
pub mod vnet;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use weft_mesh::peer::PeerName;
use weft_mesh::routes::RoutesHandle;
use weft_sleeve::liveness::{CONTROL_LEN, ControlMsg};
use weft_sleeve::udp::{RecvBatch, SleeveSocket};

use switch::{Switch, Verdict};
use links::{Links, SleeveLink};
use sleeve::{DataplaneStats, Incoming, Received, Sender};
use tapio::{FrameBuf, TapIo};

/// Frames read from the TAP per batch.
pub const TAP_BATCH: usize = 32;
/// Receive buffers per sleeve batch.
pub const UDP_BATCH: usize = 32;
/// How often the sleeve thread runs the links' timers (heartbeats, path MTU probes).
pub const TIMER_TICK: Duration = Duration::from_millis(50);

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

fn tap_thread(sh: &Shared) {
    let mut bufs: Vec<FrameBuf> = (0..TAP_BATCH).map(|_| FrameBuf::default()).collect();
    let mut verdicts = [Verdict::Local; TAP_BATCH];
    let mut sender = Sender::default();
    let mut reply = [0u8; 1400];
    while !sh.stop.load(Ordering::Relaxed) {
        let tap = sh.tap.load_full();
        let n = match tap.read_batch(&mut bufs, Duration::from_millis(100)) {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!("TAP read: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if n == 0 {
            continue;
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
        for (b, v) in bufs[..n].iter().zip(verdicts) {
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
                && let Some(n) = icmp::too_big_reply(frame, mtu, &mut reply)
            {
                inc(&sh.stats.drop_too_big);
                let _ = tap.write_frame(&[0u8; vnet::LEN], &reply[..n]);
                continue;
            }
            for (hop, env) in plan.onward.sends() {
                send(sh, &mut sender, now, hop, env, vh.as_ref(), frame);
            }
        }
    }
}

/// The largest IP packet one datagram of `link` carries whole: the datagram less the session's
/// bytes, the record header, the envelope, a virtio-net header and the Ethernet header.
fn ip_mtu(link: &SleeveLink) -> u16 {
    let fixed = link.overhead + weft_sleeve::wire::RECORD_HEADER_LEN + envelope::LEN + weft_sleeve::wire::VNET_HDR_LEN + ethernet::HEADER_LEN;
    link.datagram().saturating_sub(fixed).min(u16::MAX as usize) as u16
}

fn send(sh: &Shared, sender: &mut Sender, now: Instant, hop: PeerName, env: envelope::Envelope, vh: Option<&vnet::Header>, frame: &[u8]) {
    let Some(link) = sh.links.get(hop) else {
        inc(&sh.stats.drop_no_route);
        return;
    };
    match sender.send(now, &sh.sock, &link, env, vh, frame) {
        Ok(()) => {}
        Err(sleeve::SendError::TooBig(_)) => inc(&sh.stats.drop_too_big),
        // The path (or our own interface) no longer carries datagrams of this size: search again.
        Err(sleeve::SendError::Io(e)) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
            inc(&sh.stats.drop_too_big);
            let mut h = link.health();
            h.pmtu.too_big(now, link.datagram().min(u16::MAX as usize) as u16);
            let d = usize::from(h.pmtu.current());
            if d != link.datagram() {
                tracing::info!(peer = %hop, datagram = d, "sleeve: datagram refused as too big; searching the path MTU again");
                link.set_datagram(d);
            }
        }
        Err(e) => {
            tracing::debug!(peer = %hop, "sleeve send: {e}");
            inc(&sh.stats.drop_io);
        }
    }
}

fn sleeve_thread(sh: &Shared) {
    let mut batch = RecvBatch::new(UDP_BATCH);
    let mut sender = Sender::default();
    let mut next_timers = Instant::now();
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
                for dgram in data.chunks_mut(stride) {
                    receive(sh, &mut sender, &routes, &tap, now, src, dgram);
                }
            }
        }
        if now >= next_timers {
            next_timers = now + TIMER_TICK;
            for link in sh.links.all() {
                link_timers(sh, &mut sender, now, &link);
            }
        }
    }
}

/// Heartbeats and path MTU probes due on `link`.
fn link_timers(sh: &Shared, sender: &mut Sender, now: Instant, link: &SleeveLink) {
    let (hb, probe) = {
        let mut h = link.health();
        (h.liveness.poll_transmit(now), h.pmtu.poll_probe(now))
    };
    for msg in [hb, probe].into_iter().flatten() {
        let _ = send_control(sh, sender, now, link, &msg);
    }
}

fn send_control(sh: &Shared, sender: &mut Sender, now: Instant, link: &SleeveLink, msg: &ControlMsg) -> Result<(), sleeve::SendError> {
    let mut b = [0u8; CONTROL_LEN];
    let _ = msg.emit(&mut b);
    let r = sender.send_control(now, &sh.sock, link, &b, msg.pad_to());
    if let Err(e) = &r {
        tracing::debug!(peer = %link.peer, "sleeve control: {e}");
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
                tracing::info!(peer = %link.peer, datagram = d, "sleeve: path MTU probe answered");
                link.set_datagram(d);
            }
        }
        h.liveness.on_control(now, &msg)
    };
    if let Some(r) = reply {
        let _ = send_control(sh, sender, now, link, &r);
    }
}

#[allow(clippy::too_many_arguments)]
fn receive(sh: &Shared, sender: &mut Sender, routes: &weft_mesh::routes::Routes, tap: &TapIo, now: Instant, src: std::net::SocketAddr, dgram: &mut [u8]) {
    let Some(idx) = dgram.get(8..12) else {
        inc(&sh.stats.drop_malformed);
        return;
    };
    let idx = u32::from_be_bytes([idx[0], idx[1], idx[2], idx[3]]);
    let Some(link) = sh.links.by_index(idx) else {
        inc(&sh.stats.drop_unknown_session);
        return;
    };
    let body = match link.session().open(now, dgram) {
        Ok(r) => r,
        Err(_) => {
            inc(&sh.stats.drop_open);
            return;
        }
    };
    link.health().liveness.on_receive(now);
    if link.seen(now, src) {
        tracing::info!(peer = %link.peer, %src, "sleeve: peer now answers from a new address");
    }
    link.stats.datagrams_in.fetch_add(1, Ordering::Relaxed);
    sleeve::for_each_record(now, &link, &dgram[body], &sh.stats, |item| match item {
        Received::Frame(f) => {
            link.stats.frames_in.fetch_add(1, Ordering::Relaxed);
            link.stats.bytes_in.fetch_add(f.frame.len() as u64, Ordering::Relaxed);
            deliver(sh, sender, routes, tap, now, f)
        }
        Received::Control(payload) => on_control(sh, sender, now, &link, payload),
    });
}

#[allow(clippy::too_many_arguments)]
fn deliver(sh: &Shared, sender: &mut Sender, routes: &weft_mesh::routes::Routes, tap: &TapIo, now: Instant, f: Incoming<'_>) {
    let plan = forward::from_peer(sh.me, f.env, routes);
    if plan.dropped.is_some() {
        inc(&sh.stats.drop_switch);
        return;
    }
    for (hop, env) in plan.onward.sends() {
        inc(&sh.stats.relayed);
        send(sh, sender, now, hop, env, f.vnet.as_ref(), f.frame);
    }
    if !plan.local {
        return;
    }
    if sh.switch().from_peer(now, f.env.src, f.frame) != Verdict::Local {
        inc(&sh.stats.drop_switch);
        return;
    }
    let mut hdr = [0u8; vnet::LEN];
    vnet::emit(&f.vnet.unwrap_or_default(), &mut hdr);
    match tap.write_frame(&hdr, f.frame) {
        Ok(true) => inc(&sh.stats.tap_frames_out),
        Ok(false) | Err(_) => inc(&sh.stats.drop_io),
    }
}

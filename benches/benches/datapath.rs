//! The whole in-process data path between two routers, A and B, without sockets or TAPs: a
//! batch of frames as the TAP hands them to A (virtio-net header and Ethernet frame) goes through
//! A's switch verdict, forwarding plan, packing into datagrams (several frame records per
//! datagram, or fragments) and sealing in place at the end of the batch
//! (`dataplane::sleeve::Sender::push` and `flush`, with this benchmark's [`Wire`] instead of the
//! socket) or, for a super-frame read laid out as the link's datagrams, sealing and sending
//! where it lies (`Sender::send_laid_out`), as `dataplane::TapSide::serve` does; each GSO train
//! of sealed datagrams is then received by B as `dataplane::receive_message` does: header view
//! and link by session index, every datagram opened under one session lock, records walked
//! (`dataplane::sleeve::for_each_record`: a super-frame's pieces gathered where they were
//! received, the receive buffer holding them swapped for a spare, as `dataplane::gather` does;
//! other fragmented frames reassembled), forwarding plan, peer learning, virtio-net header,
//! frame out; B's switch learns once per batch.
//!
//! Three copies stand in for the kernel's: each frame is copied into one of A's frame buffers
//! (the TAP read: whole, or laid out as the link's datagrams once a super-frame went to it in
//! pieces, as a router reads; `DATAPATH_WHOLE=1` reads every frame whole, as before layouts),
//! the sealed datagrams into B's receive buffer (the socket's copy, at most 64 KB per message as
//! UDP GSO and GRO carry them) and each delivered frame with its virtio-net header into an
//! output buffer (the TAP write, from a gathered frame's pieces where they lie). Link counters
//! and the ICMP "too big" check (which never fires for these frames) are left out. Links use
//! 1472-byte datagrams, what the path MTU search finds on a 1500-byte underlay.
//!
//! Each iteration is a batch of [`BATCH`] frames (the TAP thread's batch), every one of which
//! is checked to come out. Group `bytes` reports frame bytes per second (`Throughput::Bytes`,
//! the Ethernet frame bytes delivered, not the virtio-net header), group `frames` frames per second (`Throughput::Elements`), for 64-byte and 1400-byte
//! frames and 64 KB TCP super-frames (cut into fragments), sealed with either cipher
//! ([`Cipher::preferred`] is what a router picks on this CPU) and plain. Before timing, one batch
//! is checked to come out as it went in.

use std::hint::black_box;
use std::io;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group};
use weft_mesh::peer::PeerName;
use weft_mesh::routes::{Graph, Routes};
use weft_router::dataplane::ethernet::Mac;
use weft_router::dataplane::links::{Links, SleeveLink};
use weft_router::dataplane::sleeve::{self, DataplaneStats, LazyReasm, Received, SendError, Sender, Wire};
use weft_router::dataplane::switch::{Origin, PeerLearning, Switch, Verdict};
use weft_router::dataplane::gather::Gather;
use weft_router::dataplane::tapio::{FrameBuf, Layout};
use weft_router::dataplane::{forward, vnet};
use weft_sleeve::udp::RECV_BUFFER;
use weft_sleeve::wire::{FrameRepr, Packet};
use weft_sleeve::{Cipher, Config, Role, Session, SessionIds};

/// Frames per iteration: one TAP batch.
const BATCH: usize = 32;
/// Datagram size of the links (after path MTU discovery on a 1500-byte underlay).
const DATAGRAM: usize = 1472;
/// Largest Ethernet frame the TAP hands over: a 64 KB IP packet.
const SUPER: usize = 14 + 65_535;
const SIZES: [usize; 3] = [64, 1400, SUPER];

const PEER_A: PeerName = PeerName([0xa, 0, 0, 0, 0, 1]);
const PEER_B: PeerName = PeerName([0xb, 0, 0, 0, 0, 2]);
const POD_A: [u8; 6] = [0x02, 0, 0, 0, 0xa, 1];
const POD_B: [u8; 6] = [0x02, 0, 0, 0, 0xb, 1];
const SECRET: [u8; 32] = [0x5a; 32];

/// One router's data plane state, as `dataplane::Shared` and the two threads' buffers hold it.
struct Router {
    me: PeerName,
    routes: Routes,
    links: Links,
    switch: Mutex<Switch>,
    stats: DataplaneStats,
    sender: Sender,
    learning: PeerLearning,
    opened: Vec<Range<usize>>,
    /// The sleeve thread's super-frame being gathered where its pieces were received.
    gather: Gather,
    /// The TAP thread's frame buffers, the layout it reads with, a frame copied back together.
    bufs: Vec<FrameBuf>,
    layout: Option<Layout>,
    whole: Vec<u8>,
    /// Every frame read whole, never laid out (`DATAPATH_WHOLE=1`).
    reads_whole: bool,
}

impl Router {
    fn new(me: PeerName, session: Session, now: Instant) -> Router {
        let peer = if me == PEER_A { PEER_B } else { PEER_A };
        let routes = Routes::compute(me, &Graph::from_links(vec![PEER_A, PEER_B], &[(PEER_A, PEER_B)]));
        assert_eq!(routes.next_hop(peer), Some(peer), "the two routers are neighbours");
        let links = Links::default();
        let link = SleeveLink::new(peer, 1, session, "192.0.2.1:6784".parse().expect("address"), DATAGRAM, weft_sleeve::liveness::LivenessConfig::default(), now);
        link.set_datagram(DATAGRAM);
        links.insert(Arc::new(link));
        Router {
            me,
            routes,
            links,
            switch: Mutex::new(Switch::new(weft_router::dataplane::switch::DEFAULT_MAX_AGE)),
            stats: DataplaneStats::default(),
            sender: Sender::default(),
            learning: PeerLearning::default(),
            opened: Vec::new(),
            gather: Gather::default(),
            bufs: (0..BATCH).map(|_| FrameBuf::default()).collect(),
            layout: None,
            whole: Vec::new(),
            reads_whole: std::env::var_os("DATAPATH_WHOLE").is_some(),
        }
    }
}

/// A and B connected by one sleeve link sealed with `config`; A knows B's pod is behind B.
fn pair(config: Config, now: Instant) -> (Router, Router) {
    let a = Session::new(&SECRET, Role::Initiator, SessionIds { local: 1, remote: 2 }, config, now);
    let b = Session::new(&SECRET, Role::Responder, SessionIds { local: 2, remote: 1 }, config, now);
    let a = Router::new(PEER_A, a, now);
    let b = Router::new(PEER_B, b, now);
    a.switch.lock().expect("switch").learn(now, Mac(POD_B), Origin::Peer(PEER_B)).expect("learn");
    (a, b)
}

/// A TAP read: virtio-net header, then an IPv4 frame of `size` bytes from pod A to pod B (a TCP
/// super-frame with its segmentation metadata when it exceeds one MTU).
fn tap_frame(size: usize, seed: u8) -> Vec<u8> {
    let mut b = vec![0u8; vnet::LEN + size];
    if size > 1514 {
        let h = vnet::Header { flags: vnet::F_NEEDS_CSUM, gso_type: vnet::GSO_TCPV4, hdr_len: 66, gso_size: 1398, csum_start: 34, csum_offset: 16 };
        vnet::emit(&h, &mut b);
    }
    let f = &mut b[vnet::LEN..];
    f[..6].copy_from_slice(&POD_B);
    f[6..12].copy_from_slice(&POD_A);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    for (i, x) in f[14..].iter_mut().enumerate() {
        *x = (i as u8).wrapping_mul(31).wrapping_add(seed);
    }
    b
}

/// Where B's frames go instead of the TAP: each as one write of header and frame.
#[derive(Default)]
struct TapOut {
    buf: Vec<u8>,
    frames: usize,
    bytes: usize,
}

impl TapOut {
    /// One write of the header and the frame's parts (one, or a gathered frame's pieces).
    fn write_frame<'a>(&mut self, hdr: &[u8], parts: impl IntoIterator<Item = &'a [u8]>) {
        self.buf.clear();
        self.buf.extend_from_slice(hdr);
        for p in parts {
            self.buf.extend_from_slice(p);
        }
        self.frames += 1;
        self.bytes += self.buf.len() - hdr.len();
    }
}

/// The kernel between A and B: what A's sender hands the socket is received by B at once.
struct ToB<'a> {
    b: &'a mut Router,
    now: Instant,
    rx: &'a mut Box<[u8]>,
    out: &'a mut TapOut,
    check: &'a mut dyn FnMut(&[u8]),
}

/// Most bytes of one UDP GSO send (and so of one GRO message at B).
const MAX_GSO_BYTES: usize = 65_507;

impl Wire for ToB<'_> {
    fn send(&mut self, _: &SleeveLink, datagrams: &[u8], segment: Option<usize>) -> io::Result<()> {
        let stride = segment.unwrap_or(datagrams.len());
        for message in datagrams.chunks(stride * (MAX_GSO_BYTES / stride).max(1)) {
            // Datagram by datagram, as the kernel copies a train's segments (and as before
            // frames were packed: one large copy would count differently under callgrind).
            let mut len = 0;
            for d in message.chunks(stride) {
                self.rx[len..len + d.len()].copy_from_slice(d);
                len += d.len();
            }
            receive_message(self.b, self.now, &mut self.rx[..len], stride, self.out, self.check);
            // Pieces of a frame being gathered outlive the next receive into this buffer.
            self.b.gather.keep(self.rx);
        }
        Ok(())
    }

    fn failed(&mut self, link: &SleeveLink, frames: u64, error: SendError) {
        panic!("{frames} frames to {} lost: {error}", link.peer);
    }
}

/// Carries one batch of TAP reads (`packets`, each read into one of `a`'s frame buffers, laid
/// out for the link once a super-frame went to it in pieces, unless `WHOLE`) from A to B's
/// output; returns (frames, frame bytes) delivered. `check` receives every delivered TAP write
/// (virtio-net header and frame).
fn batch(a: &mut Router, b: &mut Router, packets: &[Vec<u8>], rx: &mut Box<[u8]>, out: &mut TapOut, check: &mut dyn FnMut(&[u8])) -> (usize, usize) {
    out.frames = 0;
    out.bytes = 0;
    let now = Instant::now();
    // The kernel's TAP reads.
    for (packet, buf) in packets.iter().zip(a.bufs.iter_mut()) {
        buf.fill(packet, a.layout);
    }
    // A, the TAP thread: verdicts under one switch lock, then plan, seal, "send".
    let mut verdicts = [Verdict::Local; BATCH];
    {
        let mut sw = a.switch.lock().expect("switch");
        for (buf, v) in a.bufs.iter().zip(verdicts.iter_mut()) {
            *v = sw.from_local(now, buf.frame_start());
        }
    }
    let mut wire = ToB { b, now, rx, out, check };
    let Router { me, routes, links, sender, bufs, layout, whole, reads_whole, .. } = a;
    for (buf, v) in bufs.iter_mut().zip(verdicts) {
        let h = vnet::parse(buf.vnet_hdr()).expect("virtio-net header");
        let vh = (h != vnet::Header::default()).then_some(h);
        assert!(!matches!(v, Verdict::Drop(_)), "A's switch dropped a frame: {v:?}");
        let plan = forward::from_bridge(*me, v, routes);
        let frame_len = buf.frame_len();
        if let (forward::Onward::One(hop, envelope), Some(vh)) = (plan.onward, vh)
            && let Some((l, data)) = buf.laid_out_mut()
        {
            let link = links.get(hop).expect("a link to the next hop");
            assert!(sender.send_laid_out(now, &mut wire, &link, vh, envelope, l, data, frame_len).expect("send laid out"));
            continue;
        }
        let frame = buf.whole(whole);
        for (hop, envelope) in plan.onward.sends() {
            let link = links.get(hop).expect("a link to the next hop");
            sender.push(now, &mut wire, &link, &FrameRepr { vnet: vh, envelope, frame }).expect("push");
            if !*reads_whole && let Some(l) = Layout::after(vh, frame.len(), &link) {
                *layout = Some(l);
            }
        }
    }
    sender.flush(now, &mut wire);
    let ToB { b, out, .. } = wire;
    if !b.learning.is_empty() {
        b.switch.lock().expect("switch").learn_from_peers(now, &mut b.learning);
    }
    (out.frames, out.bytes)
}

/// B, the sleeve thread, on one received message of datagrams `stride` bytes apart (as
/// `dataplane::receive_message`, delivering as `dataplane::deliver`).
fn receive_message(r: &mut Router, now: Instant, data: &mut [u8], stride: usize, out: &mut TapOut, check: &mut dyn FnMut(&[u8])) {
    let src = "192.0.2.1:6784".parse().expect("address");
    let mut at = 0;
    while at < data.len() {
        let index = Packet::new_checked(&data[at..(at + stride).min(data.len())]).expect("datagram").receiver_index();
        let link = r.links.by_index(index).expect("link by index");
        r.opened.clear();
        {
            let mut session = link.session();
            while at < data.len() {
                let end = (at + stride).min(data.len());
                let dgram = &mut data[at..end];
                if Packet::new_checked(&*dgram).map(|p| p.receiver_index()) != Ok(index) {
                    break;
                }
                let body = session.open(now, dgram).expect("open");
                r.opened.push(at + body.start..at + body.end);
                at = end;
            }
        }
        link.seen(now, src);
        let Router { me, routes, stats, learning, opened, gather, .. } = r;
        let mut reasm = LazyReasm::new(&link);
        let mut deliver = |vh: Option<vnet::Header>, envelope, first: &[u8], parts: &mut dyn Iterator<Item = &[u8]>| {
            let plan = forward::from_peer(*me, link.peer, envelope, &*routes);
            assert!(plan.local && plan.dropped.is_none(), "B does not keep the frame: {plan:?}");
            assert_eq!(learning.from_peer(PeerName(envelope.src), first), Verdict::Local);
            let mut hdr = [0u8; vnet::LEN];
            vnet::emit(&vh.unwrap_or_default(), &mut hdr);
            out.write_frame(&hdr, parts);
            check(&out.buf);
        };
        for body in opened.iter() {
            sleeve::for_each_record(now, data, body.clone(), &mut reasm, gather, stats, |item| match item {
                Received::Frame(f) => deliver(f.vnet, f.envelope, f.frame, &mut std::iter::once(f.frame)),
                Received::Pieces(p) => deliver(p.vnet, p.envelope, p.first, &mut p.parts()),
                Received::Control(_) => panic!("no control records are sent"),
            });
        }
    }
}

fn modes() -> Vec<(String, Config)> {
    let preferred = Cipher::preferred();
    let mut v: Vec<(String, Config)> = Cipher::ALL
        .into_iter()
        .map(|c| {
            let name = match c {
                Cipher::Aes256Gcm => "aes256gcm",
                Cipher::ChaCha20Poly1305 => "chacha20poly1305",
            };
            let tag = if c == preferred { " (preferred here)" } else { "" };
            eprintln!("datapath: {name}{tag}");
            (name.to_owned(), Config::sealed(c))
        })
        .collect();
    v.push(("plain".to_owned(), Config::plain()));
    v
}

fn size_name(size: usize) -> String {
    if size == SUPER { "64KB-super".to_owned() } else { size.to_string() }
}

fn datapath(c: &mut Criterion) {
    let modes = modes();
    for (unit, per) in [("bytes", true), ("frames", false)] {
        for (mode, config) in &modes {
            let mut g = c.benchmark_group(format!("datapath/{unit}/{mode}"));
            for size in SIZES {
                let now = Instant::now();
                let (mut a, mut b) = pair(*config, now);
                let bufs: Vec<Vec<u8>> = (0..BATCH).map(|i| tap_frame(size, i as u8)).collect();
                let mut rx: Box<[u8]> = vec![0u8; RECV_BUFFER].into();
                let mut out = TapOut::default();
                // One batch, checked: every frame comes out as it went in, in order.
                let mut k = 0;
                let got = batch(&mut a, &mut b, &bufs, &mut rx, &mut out, &mut |w: &[u8]| {
                    assert_eq!(w, &bufs[k][..], "frame {k} of {size} bytes changed on the way");
                    k += 1;
                });
                assert_eq!(got, (BATCH, BATCH * size));
                // Every super-frame came in order: gathered where it lay, none copied together.
                let reassembled: u64 = b.links.all().iter().map(|l| l.reassembler().stats().completed).sum();
                assert_eq!(reassembled, 0, "{size}-byte frames reassembled by copy");
                g.throughput(if per { Throughput::Bytes((BATCH * size) as u64) } else { Throughput::Elements(BATCH as u64) });
                g.bench_function(size_name(size), |bench| {
                    bench.iter(|| {
                        let got = batch(&mut a, &mut b, &bufs, &mut rx, &mut out, &mut |w: &[u8]| {
                            black_box(w);
                        });
                        assert_eq!(got.0, BATCH);
                    })
                });
            }
            g.finish();
        }
    }
}

/// A fixed number of batches, for instruction counts (`benches/callgrind.sh`): with
/// `DATAPATH_BATCHES=N`, `DATAPATH_MODE` (aes256gcm, chacha20poly1305 or plain) and
/// `DATAPATH_SIZE` (64, 1400 or 65549), carries N checked batches of that size and prints what
/// came out, instead of running criterion.
fn fixed(batches: usize) {
    let mode = std::env::var("DATAPATH_MODE").unwrap_or_else(|_| "aes256gcm".to_owned());
    let size: usize = std::env::var("DATAPATH_SIZE").ok().and_then(|s| s.parse().ok()).unwrap_or(64);
    let config = match mode.as_str() {
        "aes256gcm" => Config::sealed(Cipher::Aes256Gcm),
        "chacha20poly1305" => Config::sealed(Cipher::ChaCha20Poly1305),
        "plain" => Config::plain(),
        other => panic!("DATAPATH_MODE: unknown mode {other:?}"),
    };
    assert!(SIZES.contains(&size), "DATAPATH_SIZE: one of {SIZES:?}");
    let now = Instant::now();
    let (mut a, mut b) = pair(config, now);
    let bufs: Vec<Vec<u8>> = (0..BATCH).map(|i| tap_frame(size, i as u8)).collect();
    let mut rx: Box<[u8]> = vec![0u8; RECV_BUFFER].into();
    let mut out = TapOut::default();
    let (mut frames, mut bytes) = (0, 0);
    for _ in 0..batches {
        let mut k = 0;
        let got = batch(&mut a, &mut b, &bufs, &mut rx, &mut out, &mut |w: &[u8]| {
            assert_eq!(w, &bufs[k][..], "frame {k} of {size} bytes changed on the way");
            k += 1;
        });
        assert_eq!(got, (BATCH, BATCH * size));
        frames += got.0;
        bytes += got.1;
    }
    println!("datapath {mode} {size}: {batches} batches, {frames} frames, {bytes} frame bytes delivered");
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1));
    targets = datapath
}

fn main() {
    if let Some(n) = std::env::var("DATAPATH_BATCHES").ok().and_then(|s| s.parse().ok()) {
        fixed(n);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}

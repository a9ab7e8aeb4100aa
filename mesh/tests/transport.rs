//! The QUIC mesh transport between real network namespaces: hosts on one segment, real UDP
//! sockets, real TLS. Root needed (the test bed fails loudly without it).
//!
//! Covered: authentication by the PAKE (the wrong password refused on both sides with the
//! reason), an open and a password mesh refusing each other, failed attempts limited per
//! source, and what an unauthenticated client may send (a large frame, a version 1 hello).

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use tokio::sync::mpsc::UnboundedReceiver;
use weft_testbed::{TestBed, topology};
use weft_mesh::peer::PeerName;
use weft_mesh::topology::Direction;
use weft_mesh::transport::auth::PasswordKey;
use weft_mesh::transport::tls::Credentials;
use weft_mesh::transport::{ConnInfo, Event, MeshConfig, MeshEndpoint, Message};

struct Node {
    ep: MeshEndpoint,
    events: UnboundedReceiver<Event>,
    addr: SocketAddr,
    name: PeerName,
}

fn node(bed: &TestBed, h: weft_testbed::NodeId, ip: std::net::Ipv4Addr, n: u8, password: Option<&[u8]>, rekey: Duration) -> Node {
    node_with(bed, h, ip, n, password, |cfg| cfg.rekey_interval = rekey)
}

fn node_with(bed: &TestBed, h: weft_testbed::NodeId, ip: std::net::Ipv4Addr, n: u8, password: Option<&[u8]>, configure: impl FnOnce(&mut MeshConfig)) -> Node {
    let addr = SocketAddr::from((ip, 6783));
    let sock = bed.ns(h).run(|| UdpSocket::bind(addr)).unwrap().unwrap();
    let dir = std::env::temp_dir().join(format!("weft-transport-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let creds = Credentials::load_or_create(&dir).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let name = PeerName([0x0e, 0, 0, 0, 0, n]);
    let mut cfg = MeshConfig::new(name, format!("host{n}"), 1, addr, 6784);
    cfg.password = password.map(PasswordKey::new);
    configure(&mut cfg);
    let (ep, events) = MeshEndpoint::start_on(sock, cfg, &creds).unwrap();
    Node { ep, events, addr, name }
}

async fn next(n: &mut Node) -> Event {
    tokio::time::timeout(Duration::from_secs(15), n.events.recv()).await.expect("an event within 15 s").expect("endpoint alive")
}

async fn up(n: &mut Node) -> (ConnInfo, weft_mesh::transport::ConnHandle) {
    match next(n).await {
        Event::Up(i, h) => (i, h),
        other => panic!("expected the connection up, got {other:?}"),
    }
}

async fn down_reason(n: &mut Node) -> String {
    match next(n).await {
        Event::Down { reason, .. } => reason,
        other => panic!("expected the connection refused, got {other:?}"),
    }
}

#[test]
fn peers_authenticate_exchange_messages_and_rekey_and_the_wrong_password_is_refused_on_both_sides() {
    let mut bed = TestBed::new().expect("namespace tests need root (CI runs as root)");
    let lan = topology::shared_segment(&mut bed, 3).unwrap();
    let ips: Vec<_> = lan.links.iter().map(|l| l.addr).collect();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut a = node(&bed, lan.hosts[0], ips[0], 1, Some(b"s3cret"), Duration::from_millis(700));
        let mut b = node(&bed, lan.hosts[1], ips[1], 2, Some(b"s3cret"), Duration::from_millis(700));
        let mut c = node(&bed, lan.hosts[2], ips[2], 3, Some(b"wrong!"), Duration::from_secs(600));

        // a dials b: both sides come up with mirrored sleeve parameters and one secret.
        a.ep.connect(b.addr);
        let (ia, ha) = up(&mut a).await;
        let (ib, hb) = up(&mut b).await;
        assert_eq!((ia.peer, ib.peer), (b.name, a.name));
        assert_eq!((ia.direction, ib.direction), (Direction::Outbound, Direction::Inbound));
        assert_eq!(ia.sleeve.secret, ib.sleeve.secret, "both ends derive the same sleeve secret");
        assert_eq!((ia.sleeve.local_index, ia.sleeve.remote_index), (ib.sleeve.remote_index, ib.sleeve.local_index));
        assert_eq!(ia.sleeve.remote, SocketAddr::from((ips[1], 6784)));
        assert!(ia.sleeve.initiator && !ib.sleeve.initiator);
        println!("a <-> b up, rtt {:?}", ha.rtt());

        // Messages arrive in order.
        for i in 0..3u8 {
            ha.send(Message::Gossip(vec![i; 100]));
        }
        let mut got = Vec::new();
        let mut rekeys_b = Vec::new();
        while got.len() < 3 {
            match next(&mut b).await {
                Event::Message { msg: Message::Gossip(g), .. } => got.push(g[0]),
                Event::Rekey { epoch, secret, .. } => rekeys_b.push((epoch, secret)),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(got, vec![0, 1, 2]);
        hb.send(Message::Ipam { origin: b.name, dest: a.name, payload: vec![7] });

        // The dialler starts a new sleeve epoch; both ends report the same fresh secret.
        let mut rekey_a = None;
        while rekey_a.is_none() {
            match next(&mut a).await {
                Event::Rekey { epoch, secret, .. } => rekey_a = Some((epoch, secret)),
                Event::Message { msg, .. } => assert_eq!(msg, Message::Ipam { origin: b.name, dest: a.name, payload: vec![7] }),
                other => panic!("unexpected {other:?}"),
            }
        }
        while rekeys_b.is_empty() {
            if let Event::Rekey { epoch, secret, .. } = next(&mut b).await {
                rekeys_b.push((epoch, secret));
            }
        }
        let (ea, sa) = rekey_a.unwrap();
        assert_eq!((ea, sa), rekeys_b[0]);
        assert_ne!(sa, ia.sleeve.secret, "each epoch has a fresh secret");

        // c has the wrong password: refused on both sides, with the reason.
        c.ep.connect(a.addr);
        let rc = down_reason(&mut c).await;
        let mut ra = None;
        while ra.is_none() {
            match next(&mut a).await {
                Event::Down { reason, peer, .. } => {
                    assert_eq!(peer, Some(c.name));
                    ra = Some(reason);
                }
                Event::Rekey { .. } => {}
                Event::Up(i, _) => panic!("a peer with the wrong password came up: {i:?}"),
                other => panic!("unexpected {other:?}"),
            }
        }
        println!("c's side: {rc}\na's side: {}", ra.as_deref().unwrap());
        assert!(ra.unwrap().contains("wrong cluster password"));
        assert!(rc.contains("wrong cluster password") || rc.contains("refused"), "{rc}");

        // A peer going away says why, and closes once the other end has read it (not after a
        // fixed delay, nor only when the wait for an acknowledgement runs out).
        let t0 = std::time::Instant::now();
        ha.close("test over");
        let mut reason = None;
        while reason.is_none() {
            if let Event::Down { reason: r, .. } = next(&mut b).await {
                reason = Some(r);
            }
        }
        println!("b saw: {}", reason.as_deref().unwrap());
        assert_eq!(reason.unwrap(), "peer closed: test over");
        let mut ours = None;
        while ours.is_none() {
            if let Event::Down { reason: r, .. } = next(&mut a).await {
                ours = Some(r);
            }
        }
        tokio::time::timeout(Duration::from_secs(1), ha.closed()).await.expect("closed");
        println!("a saw: {} after {:?}", ours.as_deref().unwrap(), t0.elapsed());
        assert_eq!(ours.unwrap(), "closed by this router: test over", "b acknowledged the bye");
        assert!(t0.elapsed() < MeshConfig::new(a.name, String::new(), 1, a.addr, 6784).bye_timeout);
        for n in [&a, &b, &c] {
            n.ep.shutdown().await;
        }
    });
    drop(rt);
    bed.teardown().unwrap();
}

#[test]
fn an_open_mesh_and_a_password_mesh_do_not_mix() {
    let mut bed = TestBed::new().expect("namespace tests need root (CI runs as root)");
    let lan = topology::shared_segment(&mut bed, 2).unwrap();
    let ips: Vec<_> = lan.links.iter().map(|l| l.addr).collect();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut open = node(&bed, lan.hosts[0], ips[0], 11, None, Duration::from_secs(600));
        let mut closed = node(&bed, lan.hosts[1], ips[1], 12, Some(b"pw"), Duration::from_secs(600));
        open.ep.connect(closed.addr);
        let r1 = down_reason(&mut open).await;
        let r2 = down_reason(&mut closed).await;
        println!("open side: {r1}\npassword side: {r2}");
        assert!(r2.contains("has no cluster password"), "{r2}");
        assert!(r1.contains("password"), "{r1}");
        open.ep.shutdown().await;
        closed.ep.shutdown().await;
    });
    drop(rt);
    bed.teardown().unwrap();
}

async fn no_event_for(n: &mut Node, d: Duration) {
    if let Ok(e) = tokio::time::timeout(d, n.events.recv()).await {
        panic!("expected no event, got {e:?}");
    }
}

#[test]
fn failed_password_attempts_are_limited_per_source_and_other_sources_still_connect() {
    let mut bed = TestBed::new().expect("namespace tests need root (CI runs as root)");
    let lan = topology::shared_segment(&mut bed, 3).unwrap();
    let ips: Vec<_> = lan.links.iter().map(|l| l.addr).collect();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut a = node_with(&bed, lan.hosts[0], ips[0], 21, Some(b"s3cret"), |cfg| {
            cfg.admission.failure_burst = 3;
            cfg.admission.failure_refill = Duration::from_secs(600);
        });
        let mut b = node(&bed, lan.hosts[1], ips[1], 22, Some(b"s3cret"), Duration::from_secs(600));
        let mut c = node(&bed, lan.hosts[2], ips[2], 23, Some(b"guess"), Duration::from_secs(600));

        for i in 0..3 {
            c.ep.connect(a.addr);
            let rc = down_reason(&mut c).await;
            let ra = down_reason(&mut a).await;
            println!("attempt {i}: c's side: {rc}; a's side: {ra}");
            assert_eq!(ra, "wrong cluster password");
            assert_eq!(rc, "peer refused us: wrong cluster password");
        }
        // The fourth attempt is turned away before the handshake: a sees no connection at all.
        c.ep.connect(a.addr);
        let rc = down_reason(&mut c).await;
        println!("attempt 3: c's side: {rc}");
        assert!(rc.contains("refused the connection before the handshake") && rc.contains("failed password attempts"), "{rc}");
        no_event_for(&mut a, Duration::from_millis(500)).await;

        // Another source with the password is not affected.
        b.ep.connect(a.addr);
        let (ib, _) = up(&mut b).await;
        let (ia, _) = up(&mut a).await;
        assert_eq!((ib.peer, ia.peer), (a.name, b.name));
        for n in [&a, &b, &c] {
            n.ep.shutdown().await;
        }
    });
    drop(rt);
    bed.teardown().unwrap();
}

/// A QUIC client that is no mesh peer: sends `bytes` on the control stream and returns what it
/// reads back until the listener closes (at most 10 s).
async fn raw_client(sock: UdpSocket, to: SocketAddr, bytes: Vec<u8>) -> Vec<u8> {
    let transport = weft_mesh::transport::tls::transport(Duration::from_secs(1), Duration::from_secs(5), 1 << 20).unwrap();
    let runtime = quinn::default_runtime().unwrap();
    let mut ep = quinn::Endpoint::new(quinn::EndpointConfig::default(), None, sock, runtime).unwrap();
    ep.set_default_client_config(weft_mesh::transport::tls::client_config(transport).unwrap());
    let conn = ep.connect(to, weft_mesh::transport::tls::SERVER_NAME).unwrap().await.unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    // Written in the background: the listener may close before all of it is taken.
    tokio::spawn(async move {
        let _ = send.write_all(&bytes).await;
    });
    let got = tokio::time::timeout(Duration::from_secs(10), recv.read_to_end(1 << 20)).await.expect("the listener closes within 10 s");
    conn.close(0u32.into(), b"");
    got.unwrap_or_default()
}

fn frames(mut b: &[u8]) -> Vec<Message> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let n = u32::from_be_bytes(b[..4].try_into().unwrap()) as usize;
        if b.len() < 4 + n {
            break;
        }
        out.push(Message::decode(&b[4..4 + n]).unwrap());
        b = &b[4 + n..];
    }
    out
}

#[test]
fn before_authentication_a_large_frame_or_a_version_1_hello_is_refused_with_the_reason() {
    let mut bed = TestBed::new().expect("namespace tests need root (CI runs as root)");
    let lan = topology::shared_segment(&mut bed, 2).unwrap();
    let ips: Vec<_> = lan.links.iter().map(|l| l.addr).collect();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut a = node(&bed, lan.hosts[0], ips[0], 31, Some(b"s3cret"), Duration::from_secs(600));

        // A 4 MiB frame: refused at its length field.
        let mut big = (4u32 << 20).to_be_bytes().to_vec();
        big.extend(std::iter::repeat_n(0u8, 256 << 10));
        let sock = bed.ns(lan.hosts[1]).run(|| UdpSocket::bind((ips[1], 0))).unwrap().unwrap();
        let got = frames(&raw_client(sock, a.addr, big).await);
        let ra = down_reason(&mut a).await;
        println!("large frame: a's side: {ra}; the client got {got:?}");
        assert_eq!(ra, "control message of 4194304 bytes exceeds the limit of 2048");
        assert!(got.iter().any(|m| *m == Message::Bye(ra.clone())), "{got:?}");

        // A version 1 peer's hello (with its password proof).
        let mut v1 = vec![1, 1, 0x0e, 0, 0, 0, 0, 9];
        v1.extend_from_slice(&1u64.to_be_bytes());
        v1.extend_from_slice(&6784u16.to_be_bytes());
        v1.extend_from_slice(&7u32.to_be_bytes());
        v1.extend_from_slice(&[1, 2, b'o', b'l', 32]);
        v1.extend_from_slice(&[0xaa; 32]);
        let frame = [&(v1.len() as u32).to_be_bytes()[..], &v1].concat();
        let sock = bed.ns(lan.hosts[1]).run(|| UdpSocket::bind((ips[1], 0))).unwrap().unwrap();
        let got = raw_client(sock, a.addr, frame).await;
        let ra = down_reason(&mut a).await;
        println!("version 1 hello: a's side: {ra}");
        assert_eq!(ra, "peer speaks mesh protocol version 1, we speak 2");
        // The client got our hello and the reason; a version 1 peer reads the version byte of the
        // first frame and reports "peer speaks control protocol version 2, this router speaks 1".
        assert_eq!(got[4], 2, "our frames carry version 2");
        assert!(frames(&got).iter().any(|m| *m == Message::Bye(ra.clone())));
        a.ep.shutdown().await;
    });
    drop(rt);
    bed.teardown().unwrap();
}

#[test]
fn a_bye_nobody_acknowledges_ends_after_the_timeout_and_says_so() {
    let mut bed = TestBed::new().expect("namespace tests need root (CI runs as root)");
    let lan = topology::shared_segment(&mut bed, 2).unwrap();
    let ips: Vec<_> = lan.links.iter().map(|l| l.addr).collect();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        // The connections outlive the wait for the bye's acknowledgement (else the idle timeout,
        // as long as the bye timeout by default, races it and ends the connection first).
        let patient = |cfg: &mut MeshConfig| cfg.idle_timeout = Duration::from_secs(10);
        let mut a = node_with(&bed, lan.hosts[0], ips[0], 21, None, patient);
        let mut b = node_with(&bed, lan.hosts[1], ips[1], 22, None, patient);
        a.ep.connect(b.addr);
        let (_, ha) = up(&mut a).await;
        let _ = up(&mut b).await;
        // b's cable is cut: the bye never arrives, and nothing comes back.
        bed.cut(lan.links[1].cable).unwrap();
        let bye_timeout = MeshConfig::new(a.name, String::new(), 1, a.addr, 6784).bye_timeout;
        let t0 = std::time::Instant::now();
        ha.close("leaving");
        let reason = down_reason(&mut a).await;
        let took = t0.elapsed();
        println!("a saw: {reason} after {took:?}");
        assert_eq!(reason, format!("closed by this router: leaving (not acknowledged within {bye_timeout:?})"));
        assert!(took >= bye_timeout && took < bye_timeout * 2, "{took:?}");
        tokio::time::timeout(Duration::from_secs(1), ha.closed()).await.expect("closed once the wait ran out");
        a.ep.shutdown().await;
        b.ep.shutdown().await;
    });
    drop(rt);
    bed.teardown().unwrap();
}

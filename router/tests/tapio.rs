//! TAP I/O against the real kernel: frames a pod sends arrive (with their virtio-net header) in
//! batches, and frames written to the TAP reach the pod (root needed).

use std::net::{Ipv4Addr, UdpSocket};
use std::time::Duration;

use weft_kernel::tap::Tap;
use weft_testbed::TestBed;
use weft_testbed::topology::{self, POD_BRIDGE};
use weft_router::dataplane::tapio::{FrameBuf, TapIo};
use weft_router::dataplane::ethernet::{Frame, Mac};
use weft_router::dataplane::vnet;

const GHOST_MAC: [u8; 6] = [0x02, 0x77, 0, 0, 0, 0x99];
const GHOST_IP: Ipv4Addr = Ipv4Addr::new(10, 32, 0, 99);

fn checksum(b: &[u8]) -> u16 {
    let mut s: u32 = b.chunks(2).map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))).sum();
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// vnet header + Ethernet + ARP reply "GHOST_IP is at GHOST_MAC" to `to`.
fn arp_reply(to_mac: [u8; 6], to_ip: Ipv4Addr) -> Vec<u8> {
    let mut p = vec![0u8; vnet::LEN];
    p.extend_from_slice(&to_mac);
    p.extend_from_slice(&GHOST_MAC);
    p.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 2]);
    p.extend_from_slice(&GHOST_MAC);
    p.extend_from_slice(&GHOST_IP.octets());
    p.extend_from_slice(&to_mac);
    p.extend_from_slice(&to_ip.octets());
    p
}

/// vnet header + Ethernet + IPv4 + UDP from GHOST to `to`.
fn udp_to(to_mac: [u8; 6], to_ip: Ipv4Addr, port: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0u8; vnet::LEN];
    p.extend_from_slice(&to_mac);
    p.extend_from_slice(&GHOST_MAC);
    p.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 1, 0x40, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&GHOST_IP.octets());
    ip.extend_from_slice(&to_ip.octets());
    let c = checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    p.extend_from_slice(&ip);
    p.extend_from_slice(&4000u16.to_be_bytes());
    p.extend_from_slice(&port.to_be_bytes());
    p.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0]); // no UDP checksum (allowed over IPv4)
    p.extend_from_slice(payload);
    p
}

fn read_until(tap: &TapIo, bufs: &mut [FrameBuf], want: impl Fn(Frame<&[u8]>) -> bool) -> Vec<u8> {
    for _ in 0..50 {
        let n = tap.read_batch(bufs, Duration::from_millis(100)).unwrap();
        for b in &bufs[..n] {
            let f = Frame::new_checked(&b.packet()[vnet::LEN..]).unwrap();
            if want(f) {
                return b.packet().to_vec();
            }
        }
    }
    panic!("the expected frame never arrived on the TAP");
}

#[test]
fn frames_cross_the_tap_both_ways() {
    let mut bed = TestBed::new().expect("cannot build a test bed");
    let h = bed.add_node("h").unwrap();
    topology::add_pod_bridge(&mut bed, h, Ipv4Addr::new(10, 32, 0, 1), 12).unwrap();
    let tap = bed.ns(h).run(|| Tap::open("weft-tap")).unwrap().unwrap();
    bed.netlink(h).set_master("weft-tap", POD_BRIDGE).unwrap();
    bed.netlink(h).set_up("weft-tap").unwrap();
    let pod_ip = Ipv4Addr::new(10, 32, 0, 10);
    let pod = bed.add_pod(h, "pod", POD_BRIDGE, "vp0", pod_ip, 12, None).unwrap();
    let pod_mac = bed.netlink(pod).link("eth0").unwrap().mac.unwrap();
    let tap = TapIo::new(tap).unwrap();
    let mut bufs: Vec<FrameBuf> = (0..8).map(|_| FrameBuf::default()).collect();

    // The pod sends to an address on its subnet: its ARP request floods out of the TAP.
    let sock = bed.ns(pod).run(|| UdpSocket::bind((pod_ip, 5000))).unwrap().unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    sock.send_to(b"hello ghost", (GHOST_IP, 4000)).unwrap();
    let arp = read_until(&tap, &mut bufs, |f| f.ethertype() == 0x0806 && f.dst() == Mac::BROADCAST);
    assert_eq!(vnet::parse(&arp).unwrap().gso_type, vnet::GSO_NONE);
    assert_eq!(Frame::new_checked(&arp[vnet::LEN..]).unwrap().src(), Mac(pod_mac));

    // We answer for the ghost; the pod's datagram follows, unicast to the ghost's MAC.
    assert!(tap.write(&arp_reply(pod_mac, pod_ip)).unwrap());
    let data = read_until(&tap, &mut bufs, |f| f.dst() == Mac(GHOST_MAC) && f.ethertype() == 0x0800);
    assert!(data.ends_with(b"hello ghost"));

    // And a datagram written to the TAP reaches the pod's socket.
    assert!(tap.write(&udp_to(pod_mac, pod_ip, 5000, b"hello pod")).unwrap());
    let mut buf = [0u8; 64];
    let (n, from) = sock.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], from.ip()), (&b"hello pod"[..], std::net::IpAddr::V4(GHOST_IP)));
}

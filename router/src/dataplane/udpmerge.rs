//! UDP datagrams of one flow that arrive from the sleeve one frame each, merged into one UDP
//! super-frame for the TAP: the receiving kernel segments it again at the pod's socket, so a
//! burst costs one TAP write and one pass through bridge and veth instead of one per datagram
//! (as GRO would do on a NIC). Frames a pod's veth already coalesced (weft-cni's setting,
//! `weft_kernel::offload`) arrive as super-frames and pass through; this is for the others: UDP
//! from the host's own processes, from pods with plain veths, from older kernels.
//!
//! Only IPv4 UDP whose checksum the sending kernel left to be completed or verified (virtio-net
//! header `NEEDS_CSUM` or `DATA_VALID`) is merged: the merged frame's checksum is completed by
//! the receiving kernel per segment, so an unverified checksum is never replaced. A run is
//! consecutive frames with the same Ethernet, IP (TOS, TTL, DF, addresses) and UDP ports, equal
//! payload sizes (the last may be shorter, and ends the run), IP identifications that count up
//! by one (any, for DF datagrams: their identification means nothing, RFC 6864), at most
//! [`MAX_SEGMENTS`] and 64 KB. A frame that does not continue the run ends it: frames keep
//! their order. Pure: the caller writes what [`Merge::take`] hands back.

use super::icmp::checksum;
use super::vnet::{F_DATA_VALID, F_NEEDS_CSUM, GSO_NONE, GSO_UDP_L4, Header};

/// Most datagrams merged into one frame (as the kernel's own UDP GRO).
pub const MAX_SEGMENTS: usize = 64;
/// Ethernet + IPv4 (no options) + UDP headers.
const HEADERS: usize = 14 + 20 + 8;
/// Where the UDP header starts (`csum_start`) and its checksum within it.
const UDP_AT: usize = 34;
const UDP_CSUM: usize = 6;

/// The frame of a merged run, or a lone frame as it came.
pub struct Out<'a> {
    /// The queue whose TAP it goes to.
    pub queue: usize,
    /// Its virtio-net header.
    pub vnet: Header,
    /// The frame.
    pub frame: &'a [u8],
    /// How many datagrams it carries.
    pub datagrams: usize,
}

/// The run being merged (allocated once; empty between runs).
#[derive(Default)]
pub struct Merge {
    /// The first frame whole, then the payloads of the others.
    buf: Vec<u8>,
    vnet: Header,
    queue: usize,
    count: usize,
    seg: usize,
    next_id: u16,
    closed: bool,
}

/// What [`Merge::offer`] did with a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Added to the run (or started one); nothing to write yet.
    Taken,
    /// Does not continue the run: write what [`Merge::take`] hands back, then offer it again.
    EndsRun,
    /// Not mergeable: write what [`Merge::take`] hands back (if anything), then the frame as is.
    Refused,
}

impl Merge {
    /// Offers `frame` (with its virtio-net header `vnet`) for the TAP queue `queue`.
    pub fn offer(&mut self, queue: usize, vnet: Option<Header>, frame: &[u8]) -> Offer {
        let Some(d) = Datagram::of(vnet, frame) else { return Offer::Refused };
        if self.count == 0 {
            self.buf.clear();
            self.buf.extend_from_slice(frame);
            (self.vnet, self.queue, self.count, self.seg, self.next_id, self.closed) = (vnet.unwrap_or_default(), queue, 1, d.payload, d.id.wrapping_add(1), false);
            return Offer::Taken;
        }
        let first = &self.buf[..HEADERS];
        let same = |r: std::ops::Range<usize>| first[r.clone()] == frame[r];
        let continues = !self.closed
            && queue == self.queue
            && self.count < MAX_SEGMENTS
            && self.buf.len() + d.payload <= 14 + 65535
            && d.payload <= self.seg
            && same(0..14)
            && same(15..16)
            && first[20] & 0x40 == frame[20] & 0x40
            && same(22..24)
            && same(26..38)
            && (d.df || d.id == self.next_id);
        if !continues {
            return Offer::EndsRun;
        }
        self.buf.extend_from_slice(&frame[HEADERS..]);
        self.count += 1;
        self.next_id = d.id.wrapping_add(1);
        self.closed = d.payload < self.seg;
        Offer::Taken
    }

    /// The run so far as one frame (a lone frame unchanged), and a fresh start; `None` when no
    /// run is open.
    pub fn take(&mut self) -> Option<Out<'_>> {
        let count = std::mem::take(&mut self.count);
        if count == 0 {
            return None;
        }
        if count > 1 {
            let b = &mut self.buf;
            let ip_len = (b.len() - 14) as u16;
            b[16..18].copy_from_slice(&ip_len.to_be_bytes());
            b[24..26].copy_from_slice(&[0, 0]);
            let ip_sum = checksum(&[&b[14..34]]);
            b[24..26].copy_from_slice(&ip_sum.to_be_bytes());
            let udp_len = ip_len - 20;
            b[UDP_AT + 4..UDP_AT + 6].copy_from_slice(&udp_len.to_be_bytes());
            // The pseudo-header's folded sum (not complemented), left for the kernel to complete
            // per segment.
            let pseudo = !checksum(&[&b[26..34], &[0, 17], &udp_len.to_be_bytes()]);
            b[UDP_AT + UDP_CSUM..UDP_AT + UDP_CSUM + 2].copy_from_slice(&pseudo.to_be_bytes());
            self.vnet = Header { flags: F_NEEDS_CSUM, gso_type: GSO_UDP_L4, hdr_len: HEADERS as u16, gso_size: self.seg as u16, csum_start: UDP_AT as u16, csum_offset: UDP_CSUM as u16 };
        }
        Some(Out { queue: self.queue, vnet: self.vnet, frame: &self.buf, datagrams: count })
    }
}

/// A mergeable datagram's facts.
struct Datagram {
    payload: usize,
    id: u16,
    df: bool,
}

impl Datagram {
    fn of(vnet: Option<Header>, f: &[u8]) -> Option<Datagram> {
        let v = vnet?;
        let csum_left = v.flags & F_NEEDS_CSUM != 0 && usize::from(v.csum_start) == UDP_AT && usize::from(v.csum_offset) == UDP_CSUM;
        let verified = v.flags == F_DATA_VALID;
        if v.gso_type != GSO_NONE || !(csum_left || verified) || f.len() <= HEADERS {
            return None;
        }
        let u16_at = |i: usize| u16::from_be_bytes([f[i], f[i + 1]]);
        let ipv4_udp = f[12..14] == [0x08, 0x00] && f[14] == 0x45 && f[23] == 17;
        let whole = u16_at(20) & 0x3fff == 0; // no MF, offset 0
        let lengths = usize::from(u16_at(16)) == f.len() - 14 && usize::from(u16_at(UDP_AT + 4)) == f.len() - 34;
        (ipv4_udp && whole && lengths).then(|| Datagram { payload: f.len() - HEADERS, id: u16_at(18), df: u16_at(20) & 0x4000 != 0 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARTIAL: Header = Header { flags: F_NEEDS_CSUM, gso_type: GSO_NONE, hdr_len: 0, gso_size: 0, csum_start: 34, csum_offset: 6 };

    /// An IPv4 UDP frame from 10.32.0.1:4000 to 10.32.0.2:53 with `payload` bytes of `fill`.
    fn udp(id: u16, df: bool, payload: usize, fill: u8) -> Vec<u8> {
        let mut f = vec![0u8; HEADERS + payload];
        f[..12].copy_from_slice(&[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1]);
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        f[14] = 0x45;
        f[16..18].copy_from_slice(&((20 + 8 + payload) as u16).to_be_bytes());
        f[18..20].copy_from_slice(&id.to_be_bytes());
        f[20] = if df { 0x40 } else { 0 };
        f[22] = 64;
        f[23] = 17;
        f[26..34].copy_from_slice(&[10, 32, 0, 1, 10, 32, 0, 2]);
        f[34..36].copy_from_slice(&4000u16.to_be_bytes());
        f[36..38].copy_from_slice(&53u16.to_be_bytes());
        f[38..40].copy_from_slice(&((8 + payload) as u16).to_be_bytes());
        f[HEADERS..].fill(fill);
        f
    }

    /// What the receiving kernel does with a merged frame: segments of `gso_size` payload, each
    /// with the first's headers, lengths and counting identification (checksums not compared).
    fn segment(out: &Out<'_>) -> Vec<Vec<u8>> {
        let (h, body) = out.frame.split_at(HEADERS);
        let id = u16::from_be_bytes([h[18], h[19]]);
        body.chunks(usize::from(out.vnet.gso_size))
            .enumerate()
            .map(|(i, p)| {
                let mut f = [h, p].concat();
                f[16..18].copy_from_slice(&((28 + p.len()) as u16).to_be_bytes());
                f[18..20].copy_from_slice(&id.wrapping_add(i as u16).to_be_bytes());
                f[38..40].copy_from_slice(&((8 + p.len()) as u16).to_be_bytes());
                f
            })
            .collect()
    }

    fn without_checksums(mut f: Vec<u8>) -> Vec<u8> {
        f[24..26].fill(0);
        f[40..42].fill(0);
        f
    }

    #[test]
    fn a_run_of_one_flow_is_one_frame_that_segments_back_into_the_datagrams() {
        let frames: Vec<Vec<u8>> = (0..5).map(|i| udp(100 + i, false, if i == 4 { 300 } else { 1000 }, i as u8)).collect();
        let mut m = Merge::default();
        for f in &frames {
            assert_eq!(m.offer(0, Some(PARTIAL), f), Offer::Taken);
        }
        // The shorter last one closed the run.
        assert_eq!(m.offer(0, Some(PARTIAL), &udp(105, false, 1000, 9)), Offer::EndsRun);
        let out = m.take().unwrap();
        assert_eq!((out.datagrams, out.queue, out.frame.len()), (5, 0, HEADERS + 4300));
        assert_eq!(out.vnet, Header { flags: F_NEEDS_CSUM, gso_type: GSO_UDP_L4, hdr_len: 42, gso_size: 1000, csum_start: 34, csum_offset: 6 });
        // A valid IPv4 header checksum (the bridge's netfilter checks it), and the UDP
        // pseudo-header sum over the merged length.
        assert_eq!(checksum(&[&out.frame[14..34]]), 0);
        let udp_len = u16::from_be_bytes([out.frame[38], out.frame[39]]);
        assert_eq!(udp_len, 8 + 4300);
        // Addresses (four 16-bit words), protocol and UDP length, summed and folded by hand.
        let words = out.frame[26..34].chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])));
        let mut pseudo = words.sum::<u32>() + 17 + u32::from(udp_len);
        while pseudo > 0xffff {
            pseudo = (pseudo & 0xffff) + (pseudo >> 16);
        }
        assert_eq!(u32::from(u16::from_be_bytes([out.frame[40], out.frame[41]])), pseudo);
        let back: Vec<Vec<u8>> = segment(&out).into_iter().map(without_checksums).collect();
        let want: Vec<Vec<u8>> = frames.iter().cloned().map(without_checksums).collect();
        assert_eq!(back, want);
        assert!(m.take().is_none(), "taken once");
    }

    #[test]
    fn a_lone_frame_leaves_unchanged() {
        let f = udp(7, true, 64, 1);
        let mut m = Merge::default();
        assert_eq!(m.offer(2, Some(PARTIAL), &f), Offer::Taken);
        let out = m.take().unwrap();
        assert_eq!((out.frame, out.vnet, out.datagrams, out.queue), (&f[..], PARTIAL, 1, 2));
    }

    #[test]
    fn what_does_not_continue_a_run_ends_it() {
        let first = udp(10, false, 500, 0);
        let mut other_port = udp(11, false, 500, 0);
        other_port[36..38].copy_from_slice(&54u16.to_be_bytes());
        let mut other_ttl = udp(11, false, 500, 0);
        other_ttl[22] = 63;
        let cases: [(&str, usize, Vec<u8>); 5] = [
            ("another port", 0, other_port),
            ("another TTL", 0, other_ttl),
            ("an identification gap without DF", 0, udp(12, false, 500, 0)),
            ("a larger payload", 0, udp(11, false, 501, 0)),
            ("another TAP queue", 1, udp(11, false, 500, 0)),
        ];
        for (what, queue, f) in cases {
            let mut m = Merge::default();
            m.offer(0, Some(PARTIAL), &first);
            assert_eq!(m.offer(queue, Some(PARTIAL), &f), Offer::EndsRun, "{what}");
        }
        // With DF, identifications need not count up.
        let mut m = Merge::default();
        m.offer(0, Some(PARTIAL), &udp(0, true, 500, 0));
        assert_eq!(m.offer(0, Some(PARTIAL), &udp(0, true, 500, 0)), Offer::Taken);
        // At most MAX_SEGMENTS.
        let mut m = Merge::default();
        for i in 0..MAX_SEGMENTS {
            assert_eq!(m.offer(0, Some(PARTIAL), &udp(i as u16, false, 64, 0)), Offer::Taken);
        }
        assert_eq!(m.offer(0, Some(PARTIAL), &udp(MAX_SEGMENTS as u16, false, 64, 0)), Offer::EndsRun);
    }

    #[test]
    fn only_ipv4_udp_with_its_checksum_left_or_verified_is_merged() {
        let f = udp(1, true, 100, 0);
        let mut m = Merge::default();
        assert_eq!(m.offer(0, None, &f), Offer::Refused, "a checksum nobody verified");
        let gso = Header { gso_type: GSO_UDP_L4, gso_size: 50, ..PARTIAL };
        assert_eq!(m.offer(0, Some(gso), &f), Offer::Refused, "already a super-frame");
        let verified = Header { flags: F_DATA_VALID, ..Header::default() };
        assert_eq!(m.offer(0, Some(verified), &f), Offer::Taken);
        let mut fragment = udp(2, false, 100, 0);
        fragment[20] = 0x20; // more fragments
        let mut tcp = udp(2, true, 100, 0);
        tcp[23] = 6;
        let mut options = udp(2, true, 100, 0);
        options[14] = 0x46;
        let mut padded = udp(2, true, 100, 0);
        padded.push(0);
        for (what, f) in [("a fragment", fragment), ("TCP", tcp), ("IP options", options), ("trailing bytes", padded)] {
            assert_eq!(m.offer(0, Some(PARTIAL), &f), Offer::Refused, "{what}");
        }
        // A truncated frame: refused, never a panic.
        for n in 0..HEADERS + 2 {
            assert_eq!(Merge::default().offer(0, Some(PARTIAL), &udp(1, true, 2, 0)[..n]), Offer::Refused, "{n} bytes");
        }
    }
}

//! ICMP "fragmentation needed" (IPv4, type 3 code 4) and "packet too big" (IPv6, type 2): what
//! the router writes back to the bridge when a pod sends a packet that may not be fragmented and
//! does not fit one datagram of the path to its destination, so the pod's kernel lowers its path
//! MTU for that destination as it would for any router on the way.
//!
//! The reply comes from the packet's destination (addresses and MACs swapped): the pod's kernel
//! takes a PMTU update from any source as long as the quoted header matches a flow of its own.
//! It quotes as much of the packet as RFC 792 / RFC 4443 allow within 576 / 1280 bytes.

const ETH: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
/// Largest IPv4 reply (the minimum every host accepts).
const V4_MAX_REPLY: usize = 576;
/// Largest IPv6 reply (the IPv6 minimum MTU).
const V6_MAX_REPLY: usize = 1280;

/// Whether `frame` (Ethernet) is a packet that must not be fragmented on the way: IPv4 with DF
/// set, or IPv6 — and not itself an ICMP error (those are never answered with errors).
pub fn must_not_fragment(frame: &[u8]) -> bool {
    match ethertype(frame) {
        Some(ETHERTYPE_IPV4) => frame.get(ETH..ETH + 20).is_some_and(|ip| {
            ip[0] >> 4 == 4 && ip[6] & 0x40 != 0 && !(ip[9] == 1 && frame.get(ETH + usize::from(ip[0] & 0x0f) * 4).is_some_and(|t| is_v4_error(*t)))
        }),
        Some(ETHERTYPE_IPV6) => frame.get(ETH..ETH + 40).is_some_and(|ip| ip[0] >> 4 == 6 && !(ip[6] == 58 && frame.get(ETH + 40).is_some_and(|t| *t < 128))),
        _ => false,
    }
}

fn ethertype(frame: &[u8]) -> Option<u16> {
    frame.get(12..14).map(|b| u16::from_be_bytes([b[0], b[1]]))
}

fn is_v4_error(t: u8) -> bool {
    matches!(t, 3 | 4 | 5 | 11 | 12)
}

/// Writes into `out` the Ethernet frame answering `frame` with "fragmentation needed" /
/// "packet too big" for an IP MTU of `mtu`; returns its length, or `None` when `frame` is not a
/// packet to answer ([`must_not_fragment`]) or `out` is too small. Never panics.
pub fn too_big_reply(frame: &[u8], mtu: u16, out: &mut [u8]) -> Option<usize> {
    if !must_not_fragment(frame) {
        return None;
    }
    let ip = &frame[ETH..];
    let is_v4 = ethertype(frame) == Some(ETHERTYPE_IPV4);
    let (ip_hdr, icmp_hdr, max) = if is_v4 { (20, 8, V4_MAX_REPLY) } else { (40, 8, V6_MAX_REPLY) };
    let quoted = ip.len().min(max - ip_hdr - icmp_hdr);
    let total = ETH + ip_hdr + icmp_hdr + quoted;
    let out = out.get_mut(..total)?;
    out[0..6].copy_from_slice(&frame[6..12]);
    out[6..12].copy_from_slice(&frame[0..6]);
    out[12..14].copy_from_slice(&frame[12..14]);
    let (hdr, rest) = out[ETH..].split_at_mut(ip_hdr);
    let (icmp, quote) = rest.split_at_mut(icmp_hdr);
    quote.copy_from_slice(&ip[..quoted]);
    if is_v4 {
        hdr.fill(0);
        hdr[0] = 0x45;
        hdr[1] = 0xc0;
        hdr[2..4].copy_from_slice(&((ip_hdr + icmp_hdr + quoted) as u16).to_be_bytes());
        hdr[8] = 64;
        hdr[9] = 1;
        hdr[12..16].copy_from_slice(&ip[16..20]);
        hdr[16..20].copy_from_slice(&ip[12..16]);
        let c = checksum(&[hdr]);
        hdr[10..12].copy_from_slice(&c.to_be_bytes());
        icmp.fill(0);
        icmp[0] = 3;
        icmp[1] = 4;
        icmp[6..8].copy_from_slice(&mtu.to_be_bytes());
        let c = checksum(&[icmp, quote]);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
    } else {
        let len = (icmp_hdr + quoted) as u32;
        hdr.fill(0);
        hdr[0] = 0x60;
        hdr[4..6].copy_from_slice(&(len as u16).to_be_bytes());
        hdr[6] = 58;
        hdr[7] = 64;
        hdr[8..24].copy_from_slice(&ip[24..40]);
        hdr[24..40].copy_from_slice(&ip[8..24]);
        icmp.fill(0);
        icmp[0] = 2;
        icmp[4..8].copy_from_slice(&u32::from(mtu).to_be_bytes());
        let mut pseudo = [0u8; 40];
        pseudo[..32].copy_from_slice(&hdr[8..40]);
        pseudo[32..36].copy_from_slice(&len.to_be_bytes());
        pseudo[39] = 58;
        let c = checksum(&[&pseudo, icmp, quote]);
        icmp[2..4].copy_from_slice(&c.to_be_bytes());
    }
    Some(total)
}

/// The Internet checksum (RFC 1071) over the concatenation of `parts` (each of even length but
/// the last): the complement of their folded ones' complement sum.
pub(super) fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    for p in parts {
        let mut chunks = p.chunks_exact(2);
        for c in &mut chunks {
            sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [last] = chunks.remainder() {
            sum += u32::from(*last) << 8;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v4_frame(df: bool, len: usize) -> Vec<u8> {
        let mut f = vec![0u8; ETH + len];
        f[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 2]);
        f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
        f[12..14].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        let ip = &mut f[ETH..];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        ip[6] = if df { 0x40 } else { 0 };
        ip[8] = 64;
        ip[9] = 6;
        ip[12..16].copy_from_slice(&[10, 32, 0, 1]);
        ip[16..20].copy_from_slice(&[10, 36, 0, 1]);
        for (i, b) in ip[20..].iter_mut().enumerate() {
            *b = i as u8;
        }
        f
    }

    #[test]
    fn an_ipv4_df_packet_gets_fragmentation_needed_with_valid_checksums() {
        let f = v4_frame(true, 2000);
        let mut out = [0u8; 1500];
        let n = too_big_reply(&f, 1304, &mut out).unwrap();
        let r = &out[..n];
        assert_eq!(n, ETH + 576);
        assert_eq!((&r[0..6], &r[6..12]), (&f[6..12], &f[0..6]), "MACs swapped");
        let ip = &r[ETH..ETH + 20];
        assert_eq!(checksum(&[ip]), 0, "IPv4 header checksum");
        assert_eq!((&ip[12..16], &ip[16..20]), (&[10, 36, 0, 1][..], &[10, 32, 0, 1][..]));
        assert_eq!(ip[9], 1);
        let icmp = &r[ETH + 20..];
        assert_eq!(checksum(&[icmp]), 0, "ICMP checksum");
        assert_eq!((icmp[0], icmp[1], u16::from_be_bytes([icmp[6], icmp[7]])), (3, 4, 1304));
        assert_eq!(&icmp[8..28], &f[ETH..ETH + 20], "the original header is quoted");
    }

    #[test]
    fn an_ipv6_packet_gets_packet_too_big_with_a_valid_checksum() {
        let mut f = vec![0u8; ETH + 1500];
        f[12..14].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
        f[ETH] = 0x60;
        f[ETH + 6] = 17;
        f[ETH + 8..ETH + 24].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        f[ETH + 24..ETH + 40].copy_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2]);
        let mut out = [0u8; 2000];
        let n = too_big_reply(&f, 1280, &mut out).unwrap();
        assert_eq!(n, ETH + 1280);
        let r = &out[ETH..n];
        let mut pseudo = [0u8; 40];
        pseudo[..32].copy_from_slice(&r[8..40]);
        pseudo[32..36].copy_from_slice(&((n - ETH - 40) as u32).to_be_bytes());
        pseudo[39] = 58;
        assert_eq!(checksum(&[&pseudo, &r[40..]]), 0, "ICMPv6 checksum");
        assert_eq!((r[40], u32::from_be_bytes([r[44], r[45], r[46], r[47]])), (2, 1280));
    }

    #[test]
    fn packets_that_may_be_fragmented_and_truncated_frames_are_not_answered() {
        let mut out = [0u8; 1500];
        assert_eq!(too_big_reply(&v4_frame(false, 2000), 1304, &mut out), None);
        let f = v4_frame(true, 100);
        for cut in 0..34 {
            assert_eq!(too_big_reply(&f[..cut], 1304, &mut out), None, "cut at {cut}");
        }
        assert_eq!(too_big_reply(&v4_frame(true, 2000), 1304, &mut [0u8; 100]), None, "no room");
    }

    proptest! {
        #[test]
        fn arbitrary_frames_never_panic(f in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut out = [0u8; 1500];
            let _ = too_big_reply(&f, 1300, &mut out);
        }
    }
}

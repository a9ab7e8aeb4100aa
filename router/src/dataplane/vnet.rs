//! The virtio-net header the TAP prepends to every frame (`IFF_VNET_HDR`, 12 bytes, little
//! endian on the hosts weft runs on): how a TCP/UDP super-frame is to be segmented and
//! checksummed. Carrying it with the frame lets the receiving kernel segment only where it must.

/// Length of the header (`struct virtio_net_hdr_v1`).
pub const LEN: usize = 12;

/// `flags`: the checksum from `csum_start` on is partial and must be completed.
pub const F_NEEDS_CSUM: u8 = 1;
/// `flags`: the checksum was verified.
pub const F_DATA_VALID: u8 = 2;

/// `gso_type`: not a super-frame.
pub const GSO_NONE: u8 = 0;
/// `gso_type`: TCP over IPv4.
pub const GSO_TCPV4: u8 = 1;
/// `gso_type`: UDP (USO).
pub const GSO_UDP_L4: u8 = 5;
/// `gso_type`: TCP over IPv6.
pub const GSO_TCPV6: u8 = 4;
/// `gso_type` bit: ECN.
pub const GSO_ECN: u8 = 0x80;

/// The header's fields: the sleeve's type, which carries them between hosts (big-endian there);
/// here they are read from and written to the TAP in the host's order.
pub use weft_sleeve::VnetHdr as Header;

/// Error for fewer than [`LEN`] bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("virtio-net header truncated: {0} bytes, need {LEN}")]
pub struct Truncated(pub usize);

/// Parses the first [`LEN`] bytes of a packet read from the TAP.
pub fn parse(buf: &[u8]) -> Result<Header, Truncated> {
    let b: &[u8; LEN] = buf.get(..LEN).and_then(|s| s.try_into().ok()).ok_or(Truncated(buf.len()))?;
    let u = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
    Ok(Header { flags: b[0], gso_type: b[1], hdr_len: u(2), gso_size: u(4), csum_start: u(6), csum_offset: u(8) })
}

/// Writes `h` into the first [`LEN`] bytes of `buf` for the TAP (`num_buffers` zero).
///
/// Panics if `buf` is shorter than [`LEN`]: callers size their buffers with headroom.
pub fn emit(h: &Header, buf: &mut [u8]) {
    let b = &mut buf[..LEN];
    b[0] = h.flags;
    b[1] = h.gso_type;
    b[2..4].copy_from_slice(&h.hdr_len.to_le_bytes());
    b[4..6].copy_from_slice(&h.gso_size.to_le_bytes());
    b[6..8].copy_from_slice(&h.csum_start.to_le_bytes());
    b[8..10].copy_from_slice(&h.csum_offset.to_le_bytes());
    b[10..12].copy_from_slice(&0u16.to_le_bytes());
}

/// Whether the header describes a super-frame the receiving kernel must segment.
pub fn is_gso(h: &Header) -> bool {
    h.gso_type & !GSO_ECN != GSO_NONE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_of_a_tcp_super_frame_header() {
        let bytes = [0x01, 0x01, 0x42, 0x00, 0xa8, 0x05, 0x22, 0x00, 0x10, 0x00, 0x00, 0x00];
        let h = parse(&bytes).unwrap();
        assert_eq!(
            h,
            Header { flags: F_NEEDS_CSUM, gso_type: GSO_TCPV4, hdr_len: 66, gso_size: 1448, csum_start: 34, csum_offset: 16 }
        );
        assert!(is_gso(&h));
        let mut out = [0xffu8; LEN];
        emit(&h, &mut out);
        assert_eq!(out, bytes);
        assert_eq!(parse(&bytes[..11]), Err(Truncated(11)));
        assert!(!is_gso(&Header::default()));
    }
}

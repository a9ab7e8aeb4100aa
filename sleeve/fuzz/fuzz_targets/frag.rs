//! Fragment headers and reassembly on arbitrary bytes: never panics; the first byte picks the
//! record flags, the rest is cut into fragment payloads at the lengths the bytes themselves give.
//! Whatever completes must be exactly as long as its header said, and, when it parses as a frame
//! payload, re-emit to the same bytes.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use weft_sleeve::frag::{FragmentHeader, ReasmConfig, Reassembler};
use weft_sleeve::wire::FrameRepr;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut rest)) = data.split_first() else { return };
    let mut r = Reassembler::new(ReasmConfig { max_slots: 3, timeout: Duration::from_millis(5) });
    let t0 = Instant::now();
    let mut step = 0u64;
    while rest.len() >= 2 {
        let n = usize::from(u16::from_be_bytes([rest[0], rest[1]])) % 2048;
        rest = &rest[2..];
        let piece = &rest[..n.min(rest.len())];
        rest = &rest[piece.len()..];
        let parsed = FragmentHeader::parse(piece).ok().map(|(h, _)| h.total_len as usize);
        step += 1;
        if let Ok(Some(whole)) = r.push(t0 + Duration::from_millis(step), flags, piece) {
            assert_eq!(whole.flags, flags);
            assert_eq!(Some(whole.payload.len()), parsed);
            if let Ok(frame) = FrameRepr::parse(whole.flags, whole.payload) {
                let mut out = vec![0u8; whole.payload.len()];
                assert_eq!(frame.emit(&mut out), Ok(out.len()));
                assert_eq!(out, whole.payload);
            }
        }
    }
});

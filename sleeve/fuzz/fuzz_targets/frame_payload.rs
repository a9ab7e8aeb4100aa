//! Frame payloads (virtio-net header, relay envelope, Ethernet frame) on arbitrary bytes: never
//! panics, and what parses re-emits to the bytes it came from. The first byte is the record
//! flags; the rest is the payload. The envelope alone round-trips through its view too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_sleeve::wire::{ENVELOPE_LEN, Envelope, EnvelopeRepr, FRAME_HEAD_MAX, FrameRepr};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, payload)) = data.split_first() else {
        return;
    };
    if let Ok(frame) = FrameRepr::parse(flags, payload) {
        assert_eq!(frame.flags(), flags);
        assert_eq!(frame.buffer_len(), payload.len());
        let mut out = vec![0u8; payload.len()];
        assert_eq!(frame.emit(&mut out), Ok(payload.len()));
        assert_eq!(out, payload);
        let mut head = [0u8; FRAME_HEAD_MAX];
        let n = frame.emit_head(&mut head).expect("a head fits FRAME_HEAD_MAX");
        assert_eq!(&head[..n], &payload[..n]);
    }
    if let Ok(view) = Envelope::new_checked(payload) {
        let repr = EnvelopeRepr::parse(&view).expect("a checked envelope parses");
        let mut out = [0u8; ENVELOPE_LEN];
        repr.emit(&mut out).expect("an envelope fits");
        assert_eq!(&out[..], &payload[..ENVELOPE_LEN]);
        assert_eq!(view.payload(), &payload[ENVELOPE_LEN..]);
    }
});

//! The packet header parser on arbitrary bytes: never panics, and what parses re-emits to the
//! same header bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_sleeve::wire::{HEADER_LEN, HeaderRepr, Packet};

fuzz_target!(|data: &[u8]| {
    let Ok(packet) = Packet::new_checked(data) else {
        return;
    };
    let repr = HeaderRepr::parse(&packet).expect("a checked packet parses");
    let _ = (packet.body(), packet.tag());
    let mut out = [0u8; HEADER_LEN];
    repr.emit(&mut out).expect("header fits");
    assert_eq!(&out[..], packet.header());
});

//! The body record iterator on arbitrary bytes: never panics, stops after an error, and the
//! records it yields (frame records with their whole frame payload: virtio-net header, relay
//! envelope, Ethernet frame) re-emit to the bytes they came from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_sleeve::wire::Records;

fuzz_target!(|data: &[u8]| {
    let mut out = vec![0u8; data.len()];
    let mut at = 0;
    let mut after_error = false;
    for r in Records::new(data) {
        assert!(!after_error, "iterator yielded after an error");
        match r {
            Ok(rec) => {
                let n = rec.emit(&mut out[at..]).expect("a parsed record re-emits");
                assert_eq!(n, rec.buffer_len());
                at += n;
            }
            Err(_) => after_error = true,
        }
    }
    assert_eq!(&out[..at], &data[..at]);
    assert_eq!(Records::validate(data).is_ok(), !after_error && at > 0);
});

//! Control records (heartbeats, path MTU probes) on arbitrary bytes: never panics, and what
//! parses re-emits to the bytes it came from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_sleeve::liveness::{CONTROL_LEN, ControlMsg};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = ControlMsg::parse(data) {
        let mut out = [0u8; CONTROL_LEN];
        assert_eq!(m.emit(&mut out), Ok(CONTROL_LEN));
        assert_eq!(&out[..], &data[..CONTROL_LEN]);
    }
});

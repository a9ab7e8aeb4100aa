//! Mesh control messages on arbitrary bytes: checking a length field and decoding never panic;
//! what decodes re-encodes to the bytes it came from (but a `Bye`, whose reason is read lossily
//! and truncated) and decodes again to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_mesh::transport::proto::{HANDSHAKE_MESSAGE_LEN, LEN_FIELD, MAX_MESSAGE_LEN, Message};

fuzz_target!(|data: &[u8]| {
    if let Some(field) = data.first_chunk::<LEN_FIELD>() {
        for max in [HANDSHAKE_MESSAGE_LEN, MAX_MESSAGE_LEN] {
            if let Ok(n) = Message::frame_len(*field, max) {
                assert!((2..=max).contains(&n));
            }
        }
    }
    if let Ok(m) = Message::decode(data) {
        let bytes = m.to_bytes();
        let field = *bytes.first_chunk::<LEN_FIELD>().expect("a frame has a length field");
        assert_eq!(Message::frame_len(field, MAX_MESSAGE_LEN), Ok(bytes.len() - LEN_FIELD));
        match &m {
            Message::Bye(reason) if reason.len() > 1024 => {}
            Message::Bye(_) => assert_eq!(Message::decode(&bytes[LEN_FIELD..]).as_ref(), Ok(&m)),
            _ => {
                assert_eq!(&bytes[LEN_FIELD..], data);
                assert_eq!(Message::decode(&bytes[LEN_FIELD..]).as_ref(), Ok(&m));
            }
        }
    }
});

//! A handshake fed arbitrary frames: never panics, and with a password never authenticates
//! the peer (that takes a key confirmation made with the PAKE key, which needs the password).
//!
//! Input: one byte choosing the end (bit 0) and whether it has a password (bit 1), then frames,
//! each a big-endian u16 length and that many bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use weft_mesh::peer::PeerName;
use weft_mesh::transport::auth::{End, PasswordKey};
use weft_mesh::transport::handshake::Handshake;
use weft_mesh::transport::proto::Hello;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let end = if mode & 1 == 0 { End::Dialer } else { End::Listener };
    let password = (mode & 2 != 0).then(|| PasswordKey::new(b"fuzz"));
    let hello = Hello { name: PeerName([0x0e, 0, 0, 0, 0, 1]), incarnation: 1, nickname: "fuzz".into(), sleeve_port: 6784, sleeve_index: 1, password: false, pake: vec![] };
    let (mut hs, _) = Handshake::start(hello, password.as_ref(), end, &[7; 32]);
    while let Some((len, tail)) = rest.split_first_chunk::<2>() {
        let n = usize::from(u16::from_be_bytes(*len)).min(tail.len());
        let (frame, tail) = tail.split_at(n);
        rest = tail;
        match hs.handle(frame) {
            Ok(step) => {
                if let Some(peer) = step.done {
                    assert!(password.is_none() && peer.keys.is_none(), "authenticated without the password");
                    return;
                }
            }
            Err(_) => return,
        }
    }
});

//! `Session::open` with a fixed key on arbitrary bytes, for a sealed and a plain session: never
//! panics, every refusal is counted, and a sealed session opens nothing it did not get from its
//! peer.
#![no_main]

use std::sync::OnceLock;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use weft_sleeve::wire::Records;
use weft_sleeve::{Cipher, Config, Role, Session, SessionIds};

const SECRET: [u8; 32] = [3; 32];
const IDS: SessionIds = SessionIds {
    local: 1,
    remote: 2,
};

fn start() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

fuzz_target!(|data: &[u8]| {
    let now = start();
    // First byte picks the session kind; the rest is the datagram.
    let Some((&sel, packet)) = data.split_first() else {
        return;
    };
    let config = match sel % 3 {
        0 => Config::sealed(Cipher::ChaCha20Poly1305),
        1 => Config::sealed(Cipher::Aes256Gcm),
        _ => Config::plain(),
    };
    let mut session = Session::new(&SECRET, Role::Responder, IDS, config, now);
    let mut buf = packet.to_vec();
    let result = session.open(now, &mut buf);
    let stats = *session.stats();
    assert_eq!(stats.opened + stats.dropped(), 1);
    match result {
        Ok(body) => {
            // Only plain packets can be forged without the key.
            assert_eq!(sel % 3, 2, "sealed session opened a forged packet");
            assert!(Records::new(&buf[body]).all(|r| r.is_ok()));
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});

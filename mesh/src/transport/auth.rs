//! Password authentication by a balanced PAKE, and the sleeve secrets, both bound to one QUIC
//! connection.
//!
//! Both ends of a connection read the same value from the TLS exporter (RFC 5705 / RFC 8446
//! §7.5, label [`AUTH_LABEL`]); a man in the middle runs two TLS sessions and so reads two
//! different values. With a cluster password the ends run SPAKE2 in its symmetric mode (the
//! `spake2` crate, Ed25519 group) with the identity `"weft mesh v2" || exporter`: each sends one
//! group element blinded by the password, and each derives a shared key that only a party with the
//! same password on the same TLS session can derive. From that key and the exporter, HKDF-SHA256
//! gives one key-confirmation key per end and a sleeve mix; each end proves it holds the key by
//! sending `HMAC-SHA256(confirmation key of its end, exporter || transcript)`, where the transcript
//! hashes both `Hello` frames (which carry the PAKE messages). Confirmations are compared in
//! constant time.
//!
//! What this promises: nothing on the wire is a function of the password alone. A passive
//! observer, an active attacker, or a fake listener that answers a dialling router learns, per
//! handshake, only whether the one password guess it blinded its own PAKE message with is right
//! (one online guess); it cannot test further guesses offline from a recorded attempt. A
//! confirmation cannot be relayed to another connection (the exporter differs) nor reflected to
//! its sender (each end has its own key).
//!
//! The sleeve secret of epoch `e` is the exporter value with label [`SLEEVE_LABEL`] and context
//! `e` (big-endian u64), mixed by HKDF with the PAKE session's sleeve mix when there is a
//! password: fresh for every connection and every epoch, and known only to the two ends that
//! authenticated each other.

use ring::{digest, hkdf, hmac};
use spake2::{Ed25519Group, Identity, Password, Spake2};

/// Exporter label for the PAKE identity and key confirmation.
pub const AUTH_LABEL: &[u8] = b"EXPORTER-weft-mesh-pake-v2";
/// Exporter label for sleeve secrets.
pub const SLEEVE_LABEL: &[u8] = b"EXPORTER-weft-sleeve-secret";
/// Length of a PAKE message (a side byte and a compressed Ed25519 point).
pub const PAKE_MESSAGE_LEN: usize = 33;
/// Length of a key confirmation.
pub const CONFIRM_LEN: usize = 32;

/// Which end of the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The end that dialled.
    Dialer,
    /// The end that accepted.
    Listener,
}

impl End {
    /// The other end.
    pub fn peer(self) -> End {
        match self {
            End::Dialer => End::Listener,
            End::Listener => End::Dialer,
        }
    }
}

/// Why a PAKE message could not be used.
#[derive(Debug, thiserror::Error)]
#[error("malformed PAKE message")]
pub struct PakeError(#[source] spake2::Error);

struct Len32;
impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

fn expand(prk: &hkdf::Prk, info: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    prk.expand(&[info], Len32).and_then(|okm| okm.fill(&mut out)).expect("32 bytes is a valid HKDF-SHA256 length");
    out
}

/// The PAKE input derived from a cluster password. It is never sent, nor anything computed
/// from it alone.
#[derive(Clone)]
pub struct PasswordKey([u8; 32]);

impl std::fmt::Debug for PasswordKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordKey(..)")
    }
}

impl PasswordKey {
    /// Derives the PAKE input from the password bytes.
    pub fn new(password: &[u8]) -> PasswordKey {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"weft mesh password v2").extract(password);
        PasswordKey(expand(&prk, b"spake2 password"))
    }

    /// The bytes SPAKE2 is given as its password.
    pub(crate) fn pake_input(&self) -> &[u8; 32] {
        &self.0
    }
}

/// The SPAKE2 identity for the connection whose exporter value is `exporter`.
pub(crate) fn pake_identity(exporter: &[u8; 32]) -> Vec<u8> {
    [&b"weft mesh v2"[..], exporter].concat()
}

/// One end's PAKE state, between sending its message and receiving the peer's.
pub struct Pake {
    spake: Spake2<Ed25519Group>,
    exporter: [u8; 32],
}

impl std::fmt::Debug for Pake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pake(..)")
    }
}

impl Pake {
    /// Starts the PAKE on the connection whose exporter value (label [`AUTH_LABEL`]) is
    /// `exporter`; returns the state and the message to send ([`PAKE_MESSAGE_LEN`] bytes).
    pub fn start(password: &PasswordKey, exporter: &[u8; 32]) -> (Pake, Vec<u8>) {
        let (spake, msg) = Spake2::<Ed25519Group>::start_symmetric(&Password::new(password.pake_input()), &Identity::new(&pake_identity(exporter)));
        (Pake { spake, exporter: *exporter }, msg)
    }

    /// Finishes with the peer's PAKE message; `transcript` is [`transcript_hash`] of both
    /// `Hello` frames. A malformed message is an error; a message made with another password
    /// is not (the keys differ, and key confirmation fails).
    pub fn finish(self, peer_message: &[u8], transcript: &[u8; 32]) -> Result<SessionKeys, PakeError> {
        let key = self.spake.finish(peer_message).map_err(PakeError)?;
        Ok(SessionKeys::derive(&key, &self.exporter, transcript))
    }
}

/// The hash of both `Hello` frame bodies (after the length field), the dialler's first.
pub fn transcript_hash(dialer_hello: &[u8], listener_hello: &[u8]) -> [u8; 32] {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(b"weft mesh handshake v2");
    for h in [dialer_hello, listener_hello] {
        ctx.update(&(h.len() as u64).to_be_bytes());
        ctx.update(h);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// The keys of one authenticated PAKE session.
pub struct SessionKeys {
    dialer: hmac::Key,
    listener: hmac::Key,
    sleeve_mix: [u8; 32],
    exporter: [u8; 32],
    transcript: [u8; 32],
}

impl std::fmt::Debug for SessionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionKeys(..)")
    }
}

impl SessionKeys {
    /// The key schedule from the PAKE's shared key.
    pub(crate) fn derive(pake_key: &[u8], exporter: &[u8; 32], transcript: &[u8; 32]) -> SessionKeys {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, exporter).extract(pake_key);
        SessionKeys {
            dialer: hmac::Key::new(hmac::HMAC_SHA256, &expand(&prk, b"weft confirm dialer")),
            listener: hmac::Key::new(hmac::HMAC_SHA256, &expand(&prk, b"weft confirm listener")),
            sleeve_mix: expand(&prk, b"weft sleeve mix"),
            exporter: *exporter,
            transcript: *transcript,
        }
    }

    fn key(&self, end: End) -> &hmac::Key {
        match end {
            End::Dialer => &self.dialer,
            End::Listener => &self.listener,
        }
    }

    fn message(&self) -> [u8; 64] {
        let mut m = [0u8; 64];
        m[..32].copy_from_slice(&self.exporter);
        m[32..].copy_from_slice(&self.transcript);
        m
    }

    /// The key confirmation `end` sends.
    pub fn confirmation(&self, end: End) -> [u8; CONFIRM_LEN] {
        let mut out = [0u8; CONFIRM_LEN];
        out.copy_from_slice(hmac::sign(self.key(end), &self.message()).as_ref());
        out
    }

    /// Whether `tag` is the confirmation `end` must send (constant time).
    pub fn verify(&self, end: End, tag: &[u8]) -> bool {
        hmac::verify(self.key(end), &self.message(), tag).is_ok()
    }

    /// What the sleeve secrets of this connection are mixed with.
    pub fn sleeve_mix(&self) -> &[u8; 32] {
        &self.sleeve_mix
    }
}

/// The sleeve secret from the exporter value of [`SLEEVE_LABEL`] for one epoch, mixed with the
/// PAKE session's sleeve mix when there is a password.
pub fn sleeve_secret(exporter: &[u8; 32], mix: Option<&[u8; 32]>) -> [u8; 32] {
    let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, mix.map_or(&[0u8; 32][..], |m| &m[..]));
    expand(&salt.extract(exporter), b"weft sleeve secret")
}

/// The exporter context for sleeve epoch `epoch`.
pub fn epoch_context(epoch: u64) -> [u8; 8] {
    epoch.to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(pw: &[u8], exporter: &[u8; 32], peer_pw: &[u8], peer_exporter: &[u8; 32]) -> (SessionKeys, SessionKeys) {
        let t = [7u8; 32];
        let (a, ma) = Pake::start(&PasswordKey::new(pw), exporter);
        let (b, mb) = Pake::start(&PasswordKey::new(peer_pw), peer_exporter);
        assert_eq!((ma.len(), mb.len()), (PAKE_MESSAGE_LEN, PAKE_MESSAGE_LEN));
        (a.finish(&mb, &t).unwrap(), b.finish(&ma, &t).unwrap())
    }

    #[test]
    fn the_same_password_on_the_same_session_confirms_and_nothing_else_does() {
        let (x1, x2) = ([1u8; 32], [2u8; 32]);
        let (d, l) = session(b"correct horse", &x1, b"correct horse", &x1);
        assert!(l.verify(End::Dialer, &d.confirmation(End::Dialer)));
        assert!(d.verify(End::Listener, &l.confirmation(End::Listener)));
        assert_eq!(d.sleeve_mix(), l.sleeve_mix());
        assert!(!l.verify(End::Listener, &d.confirmation(End::Dialer)), "a confirmation cannot be reflected");
        assert!(!l.verify(End::Dialer, &d.confirmation(End::Dialer)[..31]));

        let (d, l) = session(b"correct horse", &x1, b"correct horsf", &x1);
        assert!(!l.verify(End::Dialer, &d.confirmation(End::Dialer)), "another password");
        assert_ne!(d.sleeve_mix(), l.sleeve_mix());
        let (d, l) = session(b"correct horse", &x1, b"correct horse", &x2);
        assert!(!l.verify(End::Dialer, &d.confirmation(End::Dialer)), "two TLS sessions (a man in the middle)");

        // Each run is fresh: the same password and session give other messages and keys.
        let (d2, _) = session(b"correct horse", &x1, b"correct horse", &x1);
        assert_ne!(d.confirmation(End::Dialer), d2.confirmation(End::Dialer));
        assert!(!format!("{:?}", PasswordKey::new(b"correct horse")).contains("horse"));
    }

    #[test]
    fn malformed_pake_messages_are_errors() {
        let k = PasswordKey::new(b"pw");
        let (_, good) = Pake::start(&k, &[0; 32]);
        // Half of all 32-byte strings are no curve point; take the first such.
        let not_a_point: Vec<u8> = (0u8..=255)
            .map(|i| [&[good[0]][..], &[i; 32][..]].concat())
            .find(|m| <Ed25519Group as spake2::Group>::bytes_to_element(&m[1..]).is_none())
            .expect("some byte pattern is not a point");
        let mut other_side = good.clone();
        other_side[0] = b'A';
        for bad in [&good[..32], &[][..], &not_a_point[..], &other_side[..]] {
            let (p, _) = Pake::start(&k, &[0; 32]);
            let e = p.finish(bad, &[0; 32]).unwrap_err();
            assert_eq!(e.to_string(), "malformed PAKE message");
            assert!(std::error::Error::source(&e).is_some());
        }
    }

    #[test]
    fn sleeve_secrets_differ_by_epoch_value_and_session() {
        let (d, l) = session(b"pw", &[1; 32], b"pw", &[1; 32]);
        let a = sleeve_secret(&[1; 32], Some(d.sleeve_mix()));
        assert_eq!(a, sleeve_secret(&[1; 32], Some(l.sleeve_mix())));
        assert_ne!(a, sleeve_secret(&[2; 32], Some(d.sleeve_mix())));
        assert_ne!(a, sleeve_secret(&[1; 32], None));
        let (d2, _) = session(b"pw", &[1; 32], b"pw", &[1; 32]);
        assert_ne!(a, sleeve_secret(&[1; 32], Some(d2.sleeve_mix())), "a new PAKE run gives new secrets");
    }
}

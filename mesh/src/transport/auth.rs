//! The password proof and the sleeve secrets, both bound to one QUIC connection.
//!
//! Both ends of a connection read the same value from the TLS exporter (RFC 5705 / RFC 8446
//! §7.5); a man in the middle runs two TLS sessions and so reads two different values. Each end
//! proves the password by sending `HMAC-SHA256(K, role || exporter)`, where
//! `K = HKDF-SHA256(password)` and `role` says which end it is, so a proof can be neither
//! relayed to another connection nor reflected back to its sender. Proofs are compared in
//! constant time.
//!
//! The sleeve secret of epoch `e` is the exporter value with label [`SLEEVE_LABEL`] and context
//! `e` (big-endian u64), mixed with the password key when there is one: fresh for every
//! connection and every epoch.

use ring::{hkdf, hmac};

/// Exporter label for the password proof.
pub const AUTH_LABEL: &[u8] = b"EXPORTER-weft-mesh-auth";
/// Exporter label for sleeve secrets.
pub const SLEEVE_LABEL: &[u8] = b"EXPORTER-weft-sleeve-secret";
/// Length of a proof.
pub const PROOF_LEN: usize = 32;

/// Which end of the connection computes a proof.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The end that dialled.
    Dialer,
    /// The end that accepted.
    Listener,
}

impl End {
    fn tag(self) -> &'static [u8] {
        match self {
            End::Dialer => b"weft proof: dialer",
            End::Listener => b"weft proof: listener",
        }
    }
}

struct Len32;
impl hkdf::KeyType for Len32 {
    fn len(&self) -> usize {
        32
    }
}

/// The key derived from a cluster password.
#[derive(Clone)]
pub struct PasswordKey(hmac::Key, [u8; 32]);

impl std::fmt::Debug for PasswordKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PasswordKey(..)")
    }
}

impl PasswordKey {
    /// Derives the key from the password bytes.
    pub fn new(password: &[u8]) -> PasswordKey {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"weft mesh password v1").extract(password);
        let mut k = [0u8; 32];
        prk.expand(&[b"proof key"], Len32).and_then(|okm| okm.fill(&mut k)).expect("32 bytes is a valid HKDF-SHA256 length");
        let mut mix = [0u8; 32];
        prk.expand(&[b"sleeve mix"], Len32).and_then(|okm| okm.fill(&mut mix)).expect("32 bytes is a valid HKDF-SHA256 length");
        PasswordKey(hmac::Key::new(hmac::HMAC_SHA256, &k), mix)
    }

    /// The proof `end` sends on the connection whose exporter value is `exporter`.
    pub fn proof(&self, end: End, exporter: &[u8; 32]) -> [u8; PROOF_LEN] {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(end.tag());
        ctx.update(exporter);
        let mut out = [0u8; PROOF_LEN];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// Whether `proof` is the one `end` must send on this connection (constant time).
    pub fn verify(&self, end: End, exporter: &[u8; 32], proof: &[u8]) -> bool {
        let mut msg = Vec::with_capacity(64);
        msg.extend_from_slice(end.tag());
        msg.extend_from_slice(exporter);
        hmac::verify(&self.0, &msg, proof).is_ok()
    }
}

/// The sleeve secret from the exporter value of [`SLEEVE_LABEL`] for one epoch, mixed with the
/// password key when there is one.
pub fn sleeve_secret(exporter: &[u8; 32], password: Option<&PasswordKey>) -> [u8; 32] {
    let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, password.map_or(&[0u8; 32][..], |p| &p.1[..]));
    let mut out = [0u8; 32];
    salt.extract(exporter)
        .expand(&[b"weft sleeve secret"], Len32)
        .and_then(|okm| okm.fill(&mut out))
        .expect("32 bytes is a valid HKDF-SHA256 length");
    out
}

/// The exporter context for sleeve epoch `epoch`.
pub fn epoch_context(epoch: u64) -> [u8; 8] {
    epoch.to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_bind_password_connection_and_end() {
        let k = PasswordKey::new(b"correct horse");
        let (x1, x2) = ([1u8; 32], [2u8; 32]);
        let p = k.proof(End::Dialer, &x1);
        assert!(k.verify(End::Dialer, &x1, &p));
        assert!(!k.verify(End::Listener, &x1, &p), "a proof cannot be reflected");
        assert!(!k.verify(End::Dialer, &x2, &p), "nor relayed to another connection");
        assert!(!PasswordKey::new(b"wrong").verify(End::Dialer, &x1, &p), "nor made without the password");
        assert!(!k.verify(End::Dialer, &x1, &p[..31]));
        assert!(!format!("{k:?}").contains("horse"));
    }

    #[test]
    fn sleeve_secrets_differ_by_epoch_value_and_password() {
        let k = PasswordKey::new(b"pw");
        let a = sleeve_secret(&[1; 32], Some(&k));
        assert_eq!(a, sleeve_secret(&[1; 32], Some(&k)));
        assert_ne!(a, sleeve_secret(&[2; 32], Some(&k)));
        assert_ne!(a, sleeve_secret(&[1; 32], None));
        assert_ne!(a, sleeve_secret(&[1; 32], Some(&PasswordKey::new(b"other"))));
    }
}

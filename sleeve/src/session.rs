//! Sans-IO sleeve sessions: per-direction AEAD keys, counters, replay protection, rekeying.
//!
//! A [`Session`] is one end of a sleeve between two peers. It never reads a clock or touches a
//! socket: `now` is passed in, packets are sealed and opened in caller-owned buffers, in place,
//! without allocating.
//!
//! Keys. Both ends derive, with HKDF-SHA256 from the 32-byte session secret the mesh supplies,
//! one chain key per direction (the initiator's send key is the responder's receive key). Each
//! chain key yields one AEAD key per cipher. A sender seals with the cipher of its
//! [`Config::mode`] ([`Cipher::preferred`] picks AES-256-GCM when the CPU has AES instructions,
//! else ChaCha20-Poly1305); a receiver opens whichever cipher the header names, so the two ends
//! need not agree on a cipher. The 64-bit counter is the nonce; it starts at 0 for each key and
//! a key is replaced long before it could wrap.
//!
//! Rekeying. A sender moves to the next key epoch when its counter reaches
//! [`Config::rekey_after_packets`] or its key is [`Config::rekey_after`] old: the next chain key
//! is HKDF of the current one (a ratchet), and the header's epoch byte tells the receiver. The
//! receiver holds the key for the epoch after its current one ready, promotes it when a packet
//! sealed with it authenticates, and keeps the previous key for [`Config::previous_key_grace`]
//! so reordered packets from before the switch still open. [`Session::rekey`] installs a fresh
//! secret from the mesh: the receiver gets ready for it at once; the sender switches to it when
//! a packet from the peer proves the peer has it too, or after [`Config::secret_switch_delay`].
//! Contract: the mesh installs the same secret at both ends within that delay of each other.
//! A receiver follows the sender one epoch at a time: if every packet of a whole epoch is lost
//! (minutes of traffic), the session stops opening and the liveness check replaces it.
//!
//! Opening checks, in order: header (version, length, type), session indexes, mode, key epoch,
//! replay window (cheap, before decrypting), AEAD tag, and only then commits the counter to the
//! window; finally the body records are validated. Every refusal is counted in [`Stats`].
//!
//! Plain mode (trusted networks) carries the same header and records without encryption, and
//! still refuses malformed packets, foreign session indexes and duplicate counters.

use std::ops::Range;
use std::time::{Duration, Instant};

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;

use crate::replay::{ReplayError, ReplayWindow};
use crate::wire::{self, HEADER_LEN, HeaderRepr, Packet, PacketType, Records, TAG_LEN};

/// Which end of the session this is; decides which derived key sends and which receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The end that opened the mesh connection.
    Initiator,
    /// The end that accepted it.
    Responder,
}

/// The AEAD a session seals with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cipher {
    /// ChaCha20-Poly1305: fast everywhere in software.
    ChaCha20Poly1305,
    /// AES-256-GCM: fastest with AES and carry-less multiply instructions.
    Aes256Gcm,
}

impl Cipher {
    /// Both ciphers.
    pub const ALL: [Cipher; 2] = [Cipher::ChaCha20Poly1305, Cipher::Aes256Gcm];

    /// AES-256-GCM when this CPU has AES and carry-less multiply instructions, else
    /// ChaCha20-Poly1305.
    pub fn preferred() -> Self {
        if cpu_has_aes() {
            Self::Aes256Gcm
        } else {
            Self::ChaCha20Poly1305
        }
    }

    /// The packet type of packets sealed with this cipher.
    pub fn packet_type(self) -> PacketType {
        match self {
            Self::ChaCha20Poly1305 => PacketType::ChaCha20Poly1305,
            Self::Aes256Gcm => PacketType::Aes256Gcm,
        }
    }

    /// The `ring` algorithm.
    pub fn algorithm(self) -> &'static aead::Algorithm {
        match self {
            Self::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
            Self::Aes256Gcm => &aead::AES_256_GCM,
        }
    }

    fn label(self) -> &'static [u8] {
        match self {
            Self::ChaCha20Poly1305 => b"chacha20-poly1305",
            Self::Aes256Gcm => b"aes-256-gcm",
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn cpu_has_aes() -> bool {
    std::arch::is_x86_feature_detected!("aes") && std::arch::is_x86_feature_detected!("pclmulqdq")
}

#[cfg(target_arch = "aarch64")]
fn cpu_has_aes() -> bool {
    std::arch::is_aarch64_feature_detected!("aes")
        && std::arch::is_aarch64_feature_detected!("pmull")
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn cpu_has_aes() -> bool {
    false
}

/// Sealed with a cipher, or plain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Encrypted and authenticated; packets are sealed with this cipher.
    Sealed(Cipher),
    /// No encryption or authentication (trusted networks only).
    Plain,
}

/// Session settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Config {
    /// Sealed (with which cipher) or plain.
    pub mode: Mode,
    /// A send key is replaced when its counter reaches this many packets.
    pub rekey_after_packets: u64,
    /// A send key is replaced when it is this old.
    pub rekey_after: Duration,
    /// How long the previous receive key still opens packets after the peer switched.
    pub previous_key_grace: Duration,
    /// After [`Session::rekey`], how long the sender waits for proof that the peer has the new
    /// secret before switching to it anyway.
    pub secret_switch_delay: Duration,
}

impl Config {
    /// Sealed with `cipher`, default limits.
    pub fn sealed(cipher: Cipher) -> Self {
        Self {
            mode: Mode::Sealed(cipher),
            rekey_after_packets: 1 << 60,
            rekey_after: Duration::from_secs(120),
            previous_key_grace: Duration::from_secs(15),
            secret_switch_delay: Duration::from_secs(5),
        }
    }

    /// Plain mode, default limits.
    pub fn plain() -> Self {
        Self {
            mode: Mode::Plain,
            ..Self::sealed(Cipher::ChaCha20Poly1305)
        }
    }
}

impl Default for Config {
    /// Sealed with [`Cipher::preferred`].
    fn default() -> Self {
        Self::sealed(Cipher::preferred())
    }
}

/// The two session indexes of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionIds {
    /// The index this end chose; the peer puts it in the receiver field.
    pub local: u32,
    /// The index the peer chose; this end puts it in the receiver field.
    pub remote: u32,
}

/// Packet counts of a session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Packets sealed.
    pub sealed: u64,
    /// Packets opened and accepted.
    pub opened: u64,
    /// Dropped: header version is not ours.
    pub bad_version: u64,
    /// Dropped: shorter than header (and tag).
    pub truncated: u64,
    /// Dropped: the AEAD tag did not verify.
    pub auth_failed: u64,
    /// Dropped: counter already accepted.
    pub replayed: u64,
    /// Dropped: counter behind the replay window.
    pub too_old: u64,
    /// Dropped: session indexes name no session of ours (foreign packet).
    pub unknown_session: u64,
    /// Dropped: key epoch we hold no key for.
    pub unknown_epoch: u64,
    /// Dropped: plain packet for a sealed session or the reverse.
    pub mode_mismatch: u64,
    /// Dropped: malformed header fields or body records.
    pub malformed: u64,
    /// Send keys replaced (ratchet or new secret).
    pub send_rekeys: u64,
    /// Receive keys replaced because the peer switched.
    pub recv_rekeys: u64,
}

impl Stats {
    /// All dropped packets.
    pub fn dropped(&self) -> u64 {
        self.bad_version
            + self.truncated
            + self.auth_failed
            + self.replayed
            + self.too_old
            + self.unknown_session
            + self.unknown_epoch
            + self.mode_mismatch
            + self.malformed
    }

    fn count(&mut self, e: &OpenError) {
        let c = match e {
            OpenError::BadVersion(_) => &mut self.bad_version,
            OpenError::Truncated(_) => &mut self.truncated,
            OpenError::Malformed(_) => &mut self.malformed,
            OpenError::UnknownSession { .. } => &mut self.unknown_session,
            OpenError::ModeMismatch(_) => &mut self.mode_mismatch,
            OpenError::UnknownEpoch(_) => &mut self.unknown_epoch,
            OpenError::Replay(ReplayError::Duplicate(_)) => &mut self.replayed,
            OpenError::Replay(ReplayError::TooOld { .. }) => &mut self.too_old,
            OpenError::AuthFailed => &mut self.auth_failed,
        };
        *c += 1;
    }
}

/// Why a received packet was dropped. Each variant has its counter in [`Stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The header names a version we do not speak.
    #[error("sleeve version {0} is not supported (this weft speaks {v})", v = wire::VERSION)]
    BadVersion(u8),
    /// The packet is shorter than its header (and tag).
    #[error("truncated packet")]
    Truncated(#[source] wire::Error),
    /// Header fields or (after authentication) body records are malformed.
    #[error("malformed packet")]
    Malformed(#[source] wire::Error),
    /// The session indexes name no session of ours: a foreign or stale packet.
    #[error("no session for receiver index {receiver_index} from sender index {sender_index}")]
    UnknownSession {
        /// Sender index in the header.
        sender_index: u32,
        /// Receiver index in the header.
        receiver_index: u32,
    },
    /// Plain packet for a sealed session, or sealed packet for a plain one.
    #[error("{0:?} packet does not match the session's mode")]
    ModeMismatch(PacketType),
    /// The key epoch is neither the previous, current nor next one.
    #[error("no key for epoch {0}")]
    UnknownEpoch(u8),
    /// The counter was seen before or is behind the window.
    #[error("replayed packet")]
    Replay(#[source] ReplayError),
    /// The AEAD tag did not verify: wrong key or tampered packet.
    #[error("authentication failed")]
    AuthFailed,
}

impl OpenError {
    fn from_header(e: wire::Error) -> Self {
        match e {
            wire::Error::BadVersion(v) => Self::BadVersion(v),
            wire::Error::Truncated { .. } => Self::Truncated(e),
            other => Self::Malformed(other),
        }
    }
}

/// Why a packet could not be sealed. Only caller mistakes, never network input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The buffer cannot hold header, body and tag.
    #[error("buffer of {available} bytes cannot hold a packet of {needed}")]
    BufferTooSmall {
        /// Bytes the packet needs.
        needed: usize,
        /// Bytes in the buffer.
        available: usize,
    },
    /// The AEAD refused the input (larger than the cipher allows).
    #[error("the AEAD refused to seal a body of {0} bytes")]
    Aead(usize),
    /// The body is empty; receivers refuse bodies without a record.
    #[error("empty body")]
    EmptyBody,
    /// A plain session sent 2^64 packets; replace the session.
    #[error("packet counter exhausted")]
    CounterExhausted,
}

const SALT: &[u8] = b"weft sleeve v1";
const LABEL_I2R: &[u8] = b"initiator to responder";
const LABEL_R2I: &[u8] = b"responder to initiator";
const LABEL_RATCHET: &[u8] = b"ratchet";
const LABEL_NEW_SECRET: &[u8] = b"new secret";

/// One direction's key material for one epoch. Never leaves this module.
#[derive(Clone)]
struct ChainKey([u8; 32]);

impl ChainKey {
    fn expand(prk: &hkdf::Prk, label: &[u8]) -> [u8; 32] {
        let mut out = [0u8; 32];
        // Invariant: 32 bytes is the HKDF-SHA256 output length, far below the 255 * 32 limit.
        prk.expand(&[label], hkdf::HKDF_SHA256)
            .and_then(|okm| okm.fill(&mut out))
            .expect("HKDF-SHA256 can expand 32 bytes");
        out
    }

    /// The initial chain keys (initiator to responder, responder to initiator).
    fn initial(secret: &[u8; 32]) -> (Self, Self) {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, SALT).extract(secret);
        (
            Self(Self::expand(&prk, LABEL_I2R)),
            Self(Self::expand(&prk, LABEL_R2I)),
        )
    }

    fn prk(&self) -> hkdf::Prk {
        hkdf::Prk::new_less_safe(hkdf::HKDF_SHA256, &self.0)
    }

    fn ratchet(&self) -> Self {
        Self(Self::expand(&self.prk(), LABEL_RATCHET))
    }

    /// The next chain key from a newly installed secret, bound to this chain so that installing
    /// the same secret twice still yields fresh keys.
    fn mix_secret(&self, secret: &[u8; 32]) -> Self {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &self.0).extract(secret);
        Self(Self::expand(&prk, LABEL_NEW_SECRET))
    }

    fn aead_key(&self, cipher: Cipher) -> LessSafeKey {
        let bytes = Self::expand(&self.prk(), cipher.label());
        // Invariant: both algorithms take 32-byte keys.
        LessSafeKey::new(UnboundKey::new(cipher.algorithm(), &bytes).expect("32-byte AEAD key"))
    }
}

impl std::fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChainKey(..)")
    }
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

#[derive(Debug)]
struct SendKey {
    epoch: u64,
    from_secret: bool,
    chain: ChainKey,
    key: LessSafeKey,
    counter: u64,
    created: Instant,
}

impl SendKey {
    fn new(epoch: u64, from_secret: bool, chain: ChainKey, cipher: Cipher, now: Instant) -> Self {
        let key = chain.aead_key(cipher);
        Self {
            epoch,
            from_secret,
            chain,
            key,
            counter: 0,
            created: now,
        }
    }
}

#[derive(Debug)]
struct RecvKey {
    epoch: u64,
    chain: ChainKey,
    chacha: LessSafeKey,
    aes: LessSafeKey,
    window: ReplayWindow,
    /// Set once this became the previous key.
    expires: Option<Instant>,
}

impl RecvKey {
    fn new(epoch: u64, chain: ChainKey) -> Self {
        Self {
            epoch,
            chacha: chain.aead_key(Cipher::ChaCha20Poly1305),
            aes: chain.aead_key(Cipher::Aes256Gcm),
            chain,
            window: ReplayWindow::new(),
            expires: None,
        }
    }

    fn key(&self, t: PacketType) -> &LessSafeKey {
        if t == PacketType::Aes256Gcm {
            &self.aes
        } else {
            &self.chacha
        }
    }
}

#[derive(Debug)]
struct PendingSecret {
    secret: [u8; 32],
    since: Instant,
    send_done: bool,
    recv_done: bool,
}

#[derive(Debug)]
struct SealedState {
    cipher: Cipher,
    send: SendKey,
    recv: RecvKey,
    recv_prev: Option<RecvKey>,
    /// The ratchet of `recv`, ready for the peer's next epoch.
    recv_next: RecvKey,
    /// `recv` mixed with the pending secret, ready if the peer switches to it.
    recv_next_secret: Option<RecvKey>,
    pending: Option<PendingSecret>,
}

#[derive(Debug)]
enum State {
    Plain {
        counter: u64,
        window: Box<ReplayWindow>,
    },
    Sealed(Box<SealedState>),
}

/// Which receive key a packet's epoch selects.
#[derive(Clone, Copy)]
enum Slot {
    Current,
    Previous,
    Next,
    NextSecret,
}

/// One end of a sleeve session. See the module doc for the protocol.
#[derive(Debug)]
pub struct Session {
    ids: SessionIds,
    config: Config,
    stats: Stats,
    state: State,
}

impl Session {
    /// A session from the mesh-supplied `secret`. Both ends must use the same secret, opposite
    /// roles and mirrored [`SessionIds`].
    pub fn new(
        secret: &[u8; 32],
        role: Role,
        ids: SessionIds,
        config: Config,
        now: Instant,
    ) -> Self {
        let state = match config.mode {
            Mode::Plain => State::Plain {
                counter: 0,
                window: Box::default(),
            },
            Mode::Sealed(cipher) => {
                let (i2r, r2i) = ChainKey::initial(secret);
                let (send, recv) = match role {
                    Role::Initiator => (i2r, r2i),
                    Role::Responder => (r2i, i2r),
                };
                let recv_next = RecvKey::new(1, recv.ratchet());
                State::Sealed(Box::new(SealedState {
                    cipher,
                    send: SendKey::new(0, false, send, cipher, now),
                    recv: RecvKey::new(0, recv),
                    recv_prev: None,
                    recv_next,
                    recv_next_secret: None,
                    pending: None,
                }))
            }
        };
        Self {
            ids,
            config,
            stats: Stats::default(),
            state,
        }
    }

    /// The session indexes.
    pub fn ids(&self) -> SessionIds {
        self.ids
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The packet counts.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Bytes a packet adds around its body: the header, and the tag when sealed.
    pub fn overhead(&self) -> usize {
        match self.config.mode {
            Mode::Plain => HEADER_LEN,
            Mode::Sealed(_) => HEADER_LEN + TAG_LEN,
        }
    }

    /// The largest body that fits a datagram of `datagram_len` bytes.
    pub fn max_body_len(&self, datagram_len: usize) -> usize {
        datagram_len.saturating_sub(self.overhead())
    }

    /// Where, in a buffer for a datagram of at most `datagram_len` bytes, the body goes: write
    /// its records there (with a [`wire::BodyWriter`]), then [`Session::seal_in_place`] the
    /// buffer. Empty when `datagram_len` cannot hold a body.
    pub fn body_range(&self, datagram_len: usize) -> Range<usize> {
        HEADER_LEN..HEADER_LEN.max(datagram_len.saturating_sub(self.overhead() - HEADER_LEN))
    }

    /// The sender's current key epoch (0 for plain sessions).
    pub fn send_epoch(&self) -> u64 {
        match &self.state {
            State::Plain { .. } => 0,
            State::Sealed(s) => s.send.epoch,
        }
    }

    /// The receiver's current key epoch (0 for plain sessions).
    pub fn recv_epoch(&self) -> u64 {
        match &self.state {
            State::Plain { .. } => 0,
            State::Sealed(s) => s.recv.epoch,
        }
    }

    /// Seals, in place, the body the caller wrote at `buf[HEADER_LEN..HEADER_LEN + body_len]`
    /// (e.g. with [`wire::BodyWriter`]; at least one record): writes the header in front and, when sealed, the tag
    /// behind. Returns the packet length, `body_len + self.overhead()`, to send from `buf[0..]`.
    /// Rotates the send key first when it reached its packet or time limit. Hot path: does not
    /// allocate.
    pub fn seal_in_place(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        body_len: usize,
    ) -> Result<usize, SealError> {
        if body_len == 0 {
            return Err(SealError::EmptyBody);
        }
        let needed = HEADER_LEN
            .saturating_add(body_len)
            .saturating_add(self.overhead() - HEADER_LEN);
        if buf.len() < needed {
            return Err(SealError::BufferTooSmall {
                needed,
                available: buf.len(),
            });
        }
        let ids = self.ids;
        let (header, body_and_tag) = buf.split_at_mut(HEADER_LEN);
        match &mut self.state {
            State::Plain { counter, .. } => {
                if *counter == u64::MAX {
                    return Err(SealError::CounterExhausted);
                }
                let repr = HeaderRepr {
                    packet_type: PacketType::Plain,
                    key_epoch: 0,
                    flags: 0,
                    sender_index: ids.local,
                    receiver_index: ids.remote,
                    counter: *counter,
                };
                *counter += 1;
                emit_header(&repr, header);
            }
            State::Sealed(s) => {
                s.maybe_rotate_send(now, &self.config, &mut self.stats);
                let send = &mut s.send;
                let repr = HeaderRepr {
                    packet_type: s.cipher.packet_type(),
                    key_epoch: send.epoch as u8,
                    flags: if send.from_secret {
                        wire::FLAG_KEY_FROM_SECRET
                    } else {
                        0
                    },
                    sender_index: ids.local,
                    receiver_index: ids.remote,
                    counter: send.counter,
                };
                emit_header(&repr, header);
                let (body, tag_out) = body_and_tag.split_at_mut(body_len);
                let tag = send
                    .key
                    .seal_in_place_separate_tag(nonce(send.counter), Aad::from(&*header), body)
                    .map_err(|_| SealError::Aead(body_len))?;
                tag_out[..TAG_LEN].copy_from_slice(tag.as_ref());
                send.counter += 1;
            }
        }
        self.stats.sealed += 1;
        Ok(needed)
    }

    /// Opens, in place, the packet that fills `buf` (one received datagram). On success returns
    /// the range of `buf` holding the plaintext body, whose records are all well formed (iterate
    /// them with [`Records`]). On failure the packet must be dropped (its bytes may have been
    /// overwritten) and the reason was counted in [`Session::stats`]. Hot path: does not
    /// allocate; a key switch by the peer costs a few key derivations.
    pub fn open(&mut self, now: Instant, buf: &mut [u8]) -> Result<Range<usize>, OpenError> {
        let r = self.open_inner(now, buf);
        match &r {
            Ok(_) => self.stats.opened += 1,
            Err(e) => self.stats.count(e),
        }
        r
    }

    fn open_inner(&mut self, now: Instant, buf: &mut [u8]) -> Result<Range<usize>, OpenError> {
        let packet = Packet::new_checked(&*buf).map_err(OpenError::from_header)?;
        let hdr = HeaderRepr::parse(&packet).map_err(OpenError::from_header)?;
        let body = packet.body_range();
        if hdr.receiver_index != self.ids.local || hdr.sender_index != self.ids.remote {
            return Err(OpenError::UnknownSession {
                sender_index: hdr.sender_index,
                receiver_index: hdr.receiver_index,
            });
        }
        match &mut self.state {
            State::Plain { window, .. } => {
                if hdr.packet_type != PacketType::Plain {
                    return Err(OpenError::ModeMismatch(hdr.packet_type));
                }
                if hdr.key_epoch != 0 || hdr.flags != 0 {
                    return Err(OpenError::UnknownEpoch(hdr.key_epoch));
                }
                window.check(hdr.counter).map_err(OpenError::Replay)?;
                Records::validate(&buf[body.clone()]).map_err(OpenError::Malformed)?;
                window.commit(hdr.counter).map_err(OpenError::Replay)?;
                Ok(body)
            }
            State::Sealed(s) => {
                if !hdr.packet_type.is_sealed() {
                    return Err(OpenError::ModeMismatch(hdr.packet_type));
                }
                let slot = s.select(now, &hdr)?;
                let key = s.slot_mut(slot);
                // Cheap replay check before the costly decryption.
                key.window.check(hdr.counter).map_err(OpenError::Replay)?;
                let (header, rest) = buf.split_at_mut(HEADER_LEN);
                let tag_at = body.end - HEADER_LEN;
                let (ciphertext, tag) = rest.split_at_mut(tag_at);
                let tag =
                    aead::Tag::try_from(&tag[..TAG_LEN]).map_err(|_| OpenError::AuthFailed)?;
                key.key(hdr.packet_type)
                    .open_in_place_separate_tag(
                        nonce(hdr.counter),
                        Aad::from(&*header),
                        tag,
                        ciphertext,
                        0..,
                    )
                    .map_err(|_| OpenError::AuthFailed)?;
                // Authenticated: commit to the window (checked above, so this cannot fail).
                key.window.commit(hdr.counter).map_err(OpenError::Replay)?;
                if matches!(slot, Slot::Next | Slot::NextSecret) {
                    s.promote(now, slot, &self.config, &mut self.stats);
                }
                Records::validate(&buf[body.clone()]).map_err(OpenError::Malformed)?;
                Ok(body)
            }
        }
    }

    /// Installs a fresh session secret from the mesh (see the module doc for when it takes
    /// effect). A secret still pending is replaced. No effect on plain sessions.
    pub fn rekey(&mut self, new_secret: &[u8; 32], now: Instant) {
        if let State::Sealed(s) = &mut self.state {
            s.recv_next_secret = Some(RecvKey::new(
                s.recv.epoch + 1,
                s.recv.chain.mix_secret(new_secret),
            ));
            s.pending = Some(PendingSecret {
                secret: *new_secret,
                since: now,
                send_done: false,
                recv_done: false,
            });
        }
    }

    /// Moves the send key to the next epoch now (a ratchet), as the packet and time limits do.
    pub fn ratchet(&mut self, now: Instant) {
        if let State::Sealed(s) = &mut self.state {
            s.ratchet_send(now, &mut self.stats);
        }
    }

    /// When [`Session::handle_timeout`] next has work (dropping the previous receive key), if ever.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match &self.state {
            State::Plain { .. } => None,
            State::Sealed(s) => s.recv_prev.as_ref().and_then(|k| k.expires),
        }
    }

    /// Drops the previous receive key once its grace period is over (forward secrecy).
    pub fn handle_timeout(&mut self, now: Instant) {
        if let State::Sealed(s) = &mut self.state {
            if s.recv_prev
                .as_ref()
                .and_then(|k| k.expires)
                .is_some_and(|t| now >= t)
            {
                s.recv_prev = None;
            }
        }
    }
}

fn emit_header(repr: &HeaderRepr, header: &mut [u8]) {
    // Invariant: `header` is exactly HEADER_LEN bytes, split off by the caller.
    repr.emit(header)
        .expect("header slice has HEADER_LEN bytes");
}

impl SealedState {
    fn select(&mut self, now: Instant, hdr: &HeaderRepr) -> Result<Slot, OpenError> {
        let e = hdr.key_epoch;
        if e == self.recv.epoch as u8 {
            return Ok(Slot::Current);
        }
        if let Some(prev) = &self.recv_prev {
            if e == prev.epoch as u8 {
                if prev.expires.is_some_and(|t| now >= t) {
                    self.recv_prev = None;
                    return Err(OpenError::UnknownEpoch(e));
                }
                return Ok(Slot::Previous);
            }
        }
        if e == self.recv_next.epoch as u8 {
            if hdr.flags & wire::FLAG_KEY_FROM_SECRET == 0 {
                return Ok(Slot::Next);
            }
            if self.recv_next_secret.is_some() {
                return Ok(Slot::NextSecret);
            }
        }
        Err(OpenError::UnknownEpoch(e))
    }

    fn slot_mut(&mut self, slot: Slot) -> &mut RecvKey {
        match slot {
            Slot::Current => &mut self.recv,
            // Invariants: `select` returns these slots only when they are present.
            Slot::Previous => self.recv_prev.as_mut().expect("selected previous key"),
            Slot::Next => &mut self.recv_next,
            Slot::NextSecret => self.recv_next_secret.as_mut().expect("selected secret key"),
        }
    }

    /// The peer switched to the key in `slot`: make it current, keep the old one for the grace
    /// period, prepare the candidates for the epoch after.
    fn promote(&mut self, now: Instant, slot: Slot, config: &Config, stats: &mut Stats) {
        let via_secret = matches!(slot, Slot::NextSecret);
        let new = if via_secret {
            // Invariant: `select` chose NextSecret only when it is present.
            self.recv_next_secret
                .take()
                .expect("secret candidate present")
        } else {
            let after = RecvKey::new(self.recv_next.epoch + 1, self.recv_next.chain.ratchet());
            std::mem::replace(&mut self.recv_next, after)
        };
        let mut old = std::mem::replace(&mut self.recv, new);
        old.expires = Some(now + config.previous_key_grace);
        self.recv_prev = Some(old);
        stats.recv_rekeys += 1;
        if via_secret {
            self.recv_next = RecvKey::new(self.recv.epoch + 1, self.recv.chain.ratchet());
        }
        let Some(p) = &mut self.pending else { return };
        if via_secret {
            p.recv_done = true;
            // The peer has the secret, so our packets sealed with it will open.
            if !p.send_done {
                self.switch_send_to_secret(now, stats);
            }
        } else if !p.recv_done {
            // The peer ratcheted before switching: the secret now follows the new key.
            let next = RecvKey::new(self.recv.epoch + 1, self.recv.chain.mix_secret(&p.secret));
            self.recv_next_secret = Some(next);
        }
        self.clear_finished_secret();
    }

    fn maybe_rotate_send(&mut self, now: Instant, config: &Config, stats: &mut Stats) {
        if let Some(p) = &self.pending {
            if !p.send_done && now.saturating_duration_since(p.since) >= config.secret_switch_delay
            {
                self.switch_send_to_secret(now, stats);
            }
        }
        let send = &self.send;
        if send.counter >= config.rekey_after_packets
            || now.saturating_duration_since(send.created) >= config.rekey_after
        {
            self.ratchet_send(now, stats);
        }
    }

    fn ratchet_send(&mut self, now: Instant, stats: &mut Stats) {
        let chain = self.send.chain.ratchet();
        self.send = SendKey::new(self.send.epoch + 1, false, chain, self.cipher, now);
        stats.send_rekeys += 1;
    }

    fn switch_send_to_secret(&mut self, now: Instant, stats: &mut Stats) {
        let Some(p) = &mut self.pending else { return };
        p.send_done = true;
        let chain = self.send.chain.mix_secret(&p.secret);
        self.send = SendKey::new(self.send.epoch + 1, true, chain, self.cipher, now);
        stats.send_rekeys += 1;
        self.clear_finished_secret();
    }

    fn clear_finished_secret(&mut self) {
        if self
            .pending
            .as_ref()
            .is_some_and(|p| p.send_done && p.recv_done)
        {
            self.pending = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::WINDOW;
    use crate::wire::{
        BodyRecord, BodyWriter, ENVELOPE_LEN, EnvelopeRepr, FLAG_KEY_FROM_SECRET, FrameRepr,
        VnetHdr,
    };

    const SECRET: [u8; 32] = [7; 32];
    const A: SessionIds = SessionIds {
        local: 0x0a0a_0001,
        remote: 0x0b0b_0002,
    };
    const B: SessionIds = SessionIds {
        local: 0x0b0b_0002,
        remote: 0x0a0a_0001,
    };

    fn pair(config: Config, now: Instant) -> (Session, Session) {
        (
            Session::new(&SECRET, Role::Initiator, A, config, now),
            Session::new(&SECRET, Role::Responder, B, config, now),
        )
    }

    fn frame(n: usize, seed: u64) -> Vec<u8> {
        (0..n).map(|i| (seed as usize * 7 + i * 13) as u8).collect()
    }

    fn frame_repr(vnet: Option<VnetHdr>, frame: &[u8]) -> FrameRepr<'_> {
        let envelope = EnvelopeRepr {
            dst: [1; 6],
            src: [2; 6],
            hops: 16,
        };
        FrameRepr {
            vnet,
            envelope,
            frame,
        }
    }

    /// Seals one frame record carrying `seed`; returns the packet.
    fn seal(s: &mut Session, now: Instant, seed: u64) -> Vec<u8> {
        let f = frame(60, seed);
        let mut buf = vec![0u8; HEADER_LEN + 4 + ENVELOPE_LEN + f.len() + TAG_LEN];
        let body = s.body_range(buf.len());
        let mut w = BodyWriter::new(&mut buf[body]);
        w.push_frame(&frame_repr(None, &f)).unwrap();
        let body_len = w.len();
        let n = s.seal_in_place(now, &mut buf, body_len).unwrap();
        buf.truncate(n);
        buf
    }

    /// Opens a packet and checks it carries the frame for `seed`.
    fn open_expect(s: &mut Session, now: Instant, mut pkt: Vec<u8>, seed: u64) {
        let body = s
            .open(now, &mut pkt)
            .unwrap_or_else(|e| panic!("seed {seed}: {e:?}"));
        let recs: Vec<_> = Records::new(&pkt[body]).collect();
        assert_eq!(
            recs,
            vec![Ok(BodyRecord::Frame(frame_repr(None, &frame(60, seed))))]
        );
    }

    fn configs() -> Vec<Config> {
        vec![
            Config::sealed(Cipher::ChaCha20Poly1305),
            Config::sealed(Cipher::Aes256Gcm),
            Config::plain(),
        ]
    }

    /// Deterministic xorshift for shuffles.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn shuffle<T>(&mut self, v: &mut [T]) {
            for i in (1..v.len()).rev() {
                v.swap(i, (self.next() % (i as u64 + 1)) as usize);
            }
        }
    }

    #[test]
    fn round_trip_every_mode_with_super_frame() {
        let now = Instant::now();
        for config in configs() {
            let (mut a, mut b) = pair(config, now);
            let vnet = VnetHdr {
                flags: 1,
                gso_type: 1,
                hdr_len: 54,
                gso_size: 1448,
                csum_start: 34,
                csum_offset: 16,
            };
            let big = frame(60_000, 3);
            let small = frame(80, 4);
            let mut buf = vec![0u8; 64 * 1024];
            let body = a.body_range(buf.len());
            let mut w = BodyWriter::new(&mut buf[body]);
            w.push_frame(&frame_repr(Some(vnet), &big)).unwrap();
            w.push_frame(&frame_repr(None, &small)).unwrap();
            w.push_control(2, b"hb").unwrap();
            let body_len = w.len();
            let n = a.seal_in_place(now, &mut buf, body_len).unwrap();
            assert_eq!(n, body_len + a.overhead());
            if let Mode::Sealed(_) = config.mode {
                // The body really is encrypted.
                let at = HEADER_LEN + 4 + 10 + ENVELOPE_LEN;
                assert_ne!(&buf[at..at + 100], &big[..100]);
            }
            let body = b.open(now, &mut buf[..n]).unwrap();
            let recs: Vec<_> = Records::new(&buf[body]).collect::<Result<_, _>>().unwrap();
            assert_eq!(
                recs,
                vec![
                    BodyRecord::Frame(frame_repr(Some(vnet), &big)),
                    BodyRecord::Frame(frame_repr(None, &small)),
                    BodyRecord::Control {
                        flags: 2,
                        payload: b"hb"
                    },
                ]
            );
            // And the other direction.
            for seed in 0..10 {
                let p = seal(&mut b, now, seed);
                open_expect(&mut a, now, p, seed);
            }
            assert_eq!(
                (a.stats().sealed, a.stats().opened, a.stats().dropped()),
                (1, 10, 0)
            );
            assert_eq!(
                (b.stats().sealed, b.stats().opened, b.stats().dropped()),
                (10, 1, 0)
            );
        }
    }

    #[test]
    fn receiver_opens_either_cipher() {
        let now = Instant::now();
        let a = Session::new(
            &SECRET,
            Role::Initiator,
            A,
            Config::sealed(Cipher::Aes256Gcm),
            now,
        );
        let mut a = a;
        let mut b = Session::new(
            &SECRET,
            Role::Responder,
            B,
            Config::sealed(Cipher::ChaCha20Poly1305),
            now,
        );
        let p = seal(&mut a, now, 1);
        assert_eq!(
            Packet::new_checked(&p[..]).unwrap().packet_type(),
            PacketType::Aes256Gcm
        );
        open_expect(&mut b, now, p, 1);
        let p = seal(&mut b, now, 2);
        assert_eq!(
            Packet::new_checked(&p[..]).unwrap().packet_type(),
            PacketType::ChaCha20Poly1305
        );
        open_expect(&mut a, now, p, 2);
        let expect = if cpu_has_aes() {
            Cipher::Aes256Gcm
        } else {
            Cipher::ChaCha20Poly1305
        };
        assert_eq!(Config::default().mode, Mode::Sealed(expect));
    }

    #[test]
    fn every_flipped_byte_is_refused_and_counted() {
        let now = Instant::now();
        for config in configs().into_iter().take(2) {
            let (mut a, mut b) = pair(config, now);
            let pkt = seal(&mut a, now, 9);
            let mut expected = Stats::default();
            for i in 0..pkt.len() {
                for flip in [0x01u8, 0x80, 0xff] {
                    let mut bad = pkt.clone();
                    bad[i] ^= flip;
                    let err = b.open(now, &mut bad).unwrap_err();
                    match i {
                        0 => assert_eq!(err, OpenError::BadVersion(1 ^ flip)),
                        1 => assert!(matches!(
                            err,
                            OpenError::ModeMismatch(_)
                                | OpenError::Malformed(_)
                                | OpenError::AuthFailed
                        )),
                        2 => assert!(matches!(
                            err,
                            OpenError::UnknownEpoch(_) | OpenError::AuthFailed
                        )),
                        3 => assert!(matches!(
                            err,
                            OpenError::Malformed(_) | OpenError::AuthFailed
                        )),
                        4..12 => assert!(matches!(err, OpenError::UnknownSession { .. })),
                        // Counter, body and tag: only the AEAD can tell.
                        _ => assert_eq!(err, OpenError::AuthFailed, "byte {i}"),
                    }
                    expected.count(&err);
                }
            }
            assert_eq!(*b.stats(), expected);
            assert!(expected.auth_failed >= 3 * (pkt.len() - 12) as u64);
            // Failed attempts did not touch the replay window: the genuine packet still opens.
            open_expect(&mut b, now, pkt, 9);
        }
    }

    #[test]
    fn every_truncation_is_refused_and_counted() {
        let now = Instant::now();
        for config in configs() {
            let (mut a, mut b) = pair(config, now);
            let pkt = seal(&mut a, now, 5);
            for len in 0..pkt.len() {
                let mut cut = pkt[..len].to_vec();
                let err = b.open(now, &mut cut).unwrap_err();
                let min = if config.mode == Mode::Plain {
                    HEADER_LEN
                } else {
                    HEADER_LEN + TAG_LEN
                };
                if len < min {
                    assert!(matches!(err, OpenError::Truncated(_)), "{len}: {err:?}");
                } else if config.mode == Mode::Plain {
                    assert!(matches!(err, OpenError::Malformed(_)), "{len}: {err:?}");
                } else {
                    assert_eq!(err, OpenError::AuthFailed, "{len}");
                }
            }
            let s = b.stats();
            assert_eq!(s.dropped(), pkt.len() as u64);
            assert_eq!(
                s.truncated,
                pkt.len()
                    .min(if config.mode == Mode::Plain { 20 } else { 36 }) as u64
            );
            open_expect(&mut b, now, pkt, 5);
        }
    }

    #[test]
    fn replayed_reordered_and_too_old() {
        let now = Instant::now();
        for config in configs() {
            let (mut a, mut b) = pair(config, now);
            let n = 3000u64;
            let mut pkts: Vec<_> = (0..n).map(|i| (i, seal(&mut a, now, i))).collect();
            // Reordered within the window: each accepted exactly once.
            Rng(42).shuffle(&mut pkts);
            for (seed, p) in &pkts {
                open_expect(&mut b, now, p.clone(), *seed);
            }
            for (_, p) in &pkts {
                let err = b.open(now, &mut p.clone()).unwrap_err();
                assert!(matches!(err, OpenError::Replay(ReplayError::Duplicate(_))));
            }
            assert_eq!((b.stats().opened, b.stats().replayed), (n, n));

            // Too old: a packet more than WINDOW behind the newest accepted one.
            let old = seal(&mut a, now, 0);
            let mut newest = Vec::new();
            for i in 0..WINDOW {
                newest = seal(&mut a, now, i);
            }
            open_expect(&mut b, now, newest, WINDOW - 1);
            let err = b.open(now, &mut old.clone()).unwrap_err();
            assert!(
                matches!(err, OpenError::Replay(ReplayError::TooOld { .. })),
                "{err:?}"
            );
            assert_eq!(b.stats().too_old, 1);
        }
    }

    #[test]
    fn wrong_key_wrong_role_wrong_version() {
        let now = Instant::now();
        for config in configs().into_iter().take(2) {
            let mut a = Session::new(&SECRET, Role::Initiator, A, config, now);
            let mut other = Session::new(&[8; 32], Role::Responder, B, config, now);
            let mut same_role = Session::new(&SECRET, Role::Initiator, B, config, now);
            let p = seal(&mut a, now, 1);
            assert_eq!(other.open(now, &mut p.clone()), Err(OpenError::AuthFailed));
            assert_eq!(
                same_role.open(now, &mut p.clone()),
                Err(OpenError::AuthFailed)
            );
            assert_eq!(other.stats().auth_failed, 1);
            let mut v2 = p.clone();
            v2[0] = 2;
            assert_eq!(other.open(now, &mut v2), Err(OpenError::BadVersion(2)));
            assert_eq!(other.stats().bad_version, 1);
        }
    }

    #[test]
    fn authenticated_but_malformed_body_is_refused_once() {
        let now = Instant::now();
        for config in configs() {
            let (mut a, mut b) = pair(config, now);
            let mut buf = vec![0u8; 64];
            // A frame record too short to hold its envelope.
            buf[HEADER_LEN..HEADER_LEN + 6].copy_from_slice(&[1, 0, 0, 2, 0xaa, 0xbb]);
            let n = a.seal_in_place(now, &mut buf, 6).unwrap();
            let pkt = buf[..n].to_vec();
            let err = b.open(now, &mut pkt.clone()).unwrap_err();
            let short = wire::Error::Truncated {
                needed: ENVELOPE_LEN,
                available: 2,
            };
            assert_eq!(err, OpenError::Malformed(short));
            assert_eq!(b.stats().malformed, 1);
            let second = b.open(now, &mut pkt.clone()).unwrap_err();
            if config.mode == Mode::Plain {
                // Unauthenticated: not committed, refused again as malformed.
                assert_eq!(second, err);
            } else {
                // Authenticated: the counter was spent.
                assert_eq!(second, OpenError::Replay(ReplayError::Duplicate(0)));
            }
        }
    }

    #[test]
    fn modes_do_not_mix_and_foreign_packets_are_refused() {
        let now = Instant::now();
        let (mut plain_a, mut plain_b) = pair(Config::plain(), now);
        let (mut sealed_a, mut sealed_b) = pair(Config::sealed(Cipher::ChaCha20Poly1305), now);
        let p = seal(&mut plain_a, now, 1);
        assert_eq!(
            sealed_b.open(now, &mut p.clone()),
            Err(OpenError::ModeMismatch(PacketType::Plain))
        );
        let s = seal(&mut sealed_a, now, 1);
        assert_eq!(
            plain_b.open(now, &mut s.clone()),
            Err(OpenError::ModeMismatch(PacketType::ChaCha20Poly1305))
        );
        assert_eq!(sealed_b.stats().mode_mismatch, 1);
        assert_eq!(plain_b.stats().mode_mismatch, 1);

        // Right receiver index, wrong sender: foreign.
        for (mut sender, receiver) in [
            (
                Session::new(
                    &SECRET,
                    Role::Initiator,
                    SessionIds {
                        local: 99,
                        remote: B.local,
                    },
                    Config::plain(),
                    now,
                ),
                &mut plain_b,
            ),
            (
                Session::new(
                    &SECRET,
                    Role::Initiator,
                    SessionIds {
                        local: 99,
                        remote: B.local,
                    },
                    Config::sealed(Cipher::ChaCha20Poly1305),
                    now,
                ),
                &mut sealed_b,
            ),
        ] {
            let p = seal(&mut sender, now, 1);
            assert_eq!(
                receiver.open(now, &mut p.clone()),
                Err(OpenError::UnknownSession {
                    sender_index: 99,
                    receiver_index: B.local
                })
            );
            assert_eq!(receiver.stats().unknown_session, 1);
        }
        open_expect(&mut plain_b, now, p, 1);
        open_expect(&mut sealed_b, now, s, 1);
    }

    #[test]
    fn seal_refuses_small_buffer() {
        let now = Instant::now();
        let (mut a, _) = pair(Config::sealed(Cipher::ChaCha20Poly1305), now);
        let mut buf = [0u8; 40];
        assert_eq!(
            a.seal_in_place(now, &mut buf, 5),
            Err(SealError::BufferTooSmall {
                needed: 41,
                available: 40
            })
        );
        assert_eq!(a.seal_in_place(now, &mut buf, 0), Err(SealError::EmptyBody));
        assert_eq!(a.seal_in_place(now, &mut buf, 4), Ok(40));
        assert_eq!(a.max_body_len(1400), 1400 - 36);
        assert_eq!(a.body_range(1400), HEADER_LEN..1400 - TAG_LEN);
        assert_eq!(a.body_range(30), HEADER_LEN..HEADER_LEN);
        let (plain, _) = pair(Config::plain(), now);
        assert_eq!(plain.body_range(1400), HEADER_LEN..1400);
    }

    #[test]
    fn the_header_view_names_the_receiving_session() {
        let now = Instant::now();
        for config in configs() {
            let (mut a, mut b) = pair(config, now);
            let mut p = seal(&mut a, now, 1);
            let header = Packet::new_checked(&p[..]).unwrap();
            assert_eq!(
                (header.receiver_index(), header.sender_index()),
                (B.local, A.local)
            );
            assert_eq!(b.ids().local, header.receiver_index());
            assert!(b.open(now, &mut p).is_ok());
        }
    }

    /// Delivers `n` packets each way with shuffles inside blocks of `block`, advancing time by
    /// `step` per packet, calling `hook(i, a, b, now)` before each; asserts every packet opens
    /// exactly once.
    fn run_load(
        config: Config,
        n: u64,
        block: usize,
        step: Duration,
        mut hook: impl FnMut(u64, &mut Session, &mut Session, Instant),
    ) -> (Session, Session) {
        let mut now = Instant::now();
        let (mut a, mut b) = pair(config, now);
        let mut rng = Rng(7);
        let mut in_flight_ab = Vec::new();
        let mut in_flight_ba = Vec::new();
        for i in 0..n {
            hook(i, &mut a, &mut b, now);
            in_flight_ab.push((i, seal(&mut a, now, i)));
            in_flight_ba.push((i, seal(&mut b, now, i)));
            if in_flight_ab.len() == block || i + 1 == n {
                rng.shuffle(&mut in_flight_ab);
                rng.shuffle(&mut in_flight_ba);
                for (seed, p) in in_flight_ab.drain(..) {
                    open_expect(&mut b, now, p, seed);
                }
                for (seed, p) in in_flight_ba.drain(..) {
                    open_expect(&mut a, now, p, seed);
                }
            }
            now += step;
        }
        for s in [&a, &b] {
            assert_eq!(s.stats().opened, n);
            assert_eq!(s.stats().dropped(), 0);
        }
        (a, b)
    }

    #[test]
    fn rekey_under_load_by_count_and_time_loses_nothing() {
        for cipher in Cipher::ALL {
            let config = Config {
                rekey_after_packets: 300,
                ..Config::sealed(cipher)
            };
            let (a, b) = run_load(config, 6000, 97, Duration::from_millis(1), |_, _, _, _| {});
            assert_eq!(a.stats().send_rekeys, 19);
            assert_eq!(b.stats().recv_rekeys, 19);
            assert_eq!(a.send_epoch(), 19);
            assert_eq!(b.recv_epoch(), 19);

            // By time: a new key every second at 3 ms per packet; 6000 packets = 18 s.
            let config = Config {
                rekey_after: Duration::from_secs(1),
                ..Config::sealed(cipher)
            };
            let (a, b) = run_load(config, 6000, 50, Duration::from_millis(3), |_, _, _, _| {});
            assert!(a.stats().send_rekeys >= 17, "{:?}", a.stats());
            assert_eq!(b.stats().recv_rekeys, a.stats().send_rekeys);
        }
    }

    #[test]
    fn new_secret_under_load_loses_nothing() {
        const S2: [u8; 32] = [42; 32];
        let config = Config {
            rekey_after_packets: 700,
            secret_switch_delay: Duration::from_millis(500),
            ..Config::sealed(Cipher::ChaCha20Poly1305)
        };
        // The ends install the secret 300 ms apart, ratchets keep happening around the switch.
        let (a, b) = run_load(
            config,
            5000,
            64,
            Duration::from_millis(1),
            |i, a, b, now| {
                if i == 1000 {
                    a.rekey(&S2, now);
                }
                if i == 1300 {
                    b.rekey(&S2, now);
                }
            },
        );
        // a switched after its delay (t = 1.5 s), b on a's proof; both followed ratchets.
        let secret_switch = 1;
        let ratchets = 5000 / 700 - 1;
        assert!(
            a.stats().send_rekeys >= ratchets + secret_switch,
            "{:?}",
            a.stats()
        );
        assert_eq!(a.stats().recv_rekeys, b.stats().send_rekeys);
        assert_eq!(b.stats().recv_rekeys, a.stats().send_rekeys);
        for s in [&a, &b] {
            let SealedState { pending, .. } = match &s.state {
                State::Sealed(st) => &**st,
                State::Plain { .. } => unreachable!(),
            };
            assert!(pending.is_none(), "secret switch finished at both ends");
        }
    }

    #[test]
    fn new_secret_changes_the_keys() {
        let now = Instant::now();
        let config = Config {
            secret_switch_delay: Duration::from_secs(1),
            ..Config::sealed(Cipher::Aes256Gcm)
        };
        let (mut a, mut b) = pair(config, now);
        // A third party that kept the old secret and ratchets along.
        let mut eve = Session::new(&SECRET, Role::Responder, B, config, now);
        a.rekey(&[1; 32], now);
        b.rekey(&[1; 32], now);
        let later = now + Duration::from_secs(2);
        let p = seal(&mut a, later, 1);
        assert_eq!(p[2], 1, "epoch advanced");
        assert_eq!(p[3], FLAG_KEY_FROM_SECRET);
        assert_eq!(
            eve.open(later, &mut p.clone()),
            Err(OpenError::UnknownEpoch(1))
        );
        open_expect(&mut b, later, p, 1);
        // b switched on proof, without waiting.
        let q = seal(&mut b, later, 2);
        assert_eq!((q[2], q[3]), (1, FLAG_KEY_FROM_SECRET));
        open_expect(&mut a, later, q, 2);
        // A peer that never installs the secret cannot follow: the delay contract matters.
        let (mut c, mut d) = pair(config, now);
        c.rekey(&[1; 32], now);
        let p = seal(&mut c, later, 3);
        assert_eq!(
            d.open(later, &mut p.clone()),
            Err(OpenError::UnknownEpoch(1))
        );
        assert_eq!(d.stats().unknown_epoch, 1);
    }

    #[test]
    fn previous_key_expires_after_grace() {
        let now = Instant::now();
        let config = Config {
            previous_key_grace: Duration::from_secs(2),
            ..Config::sealed(Cipher::ChaCha20Poly1305)
        };
        let (mut a, mut b) = pair(config, now);
        let old1 = seal(&mut a, now, 1);
        let old2 = seal(&mut a, now, 2);
        a.ratchet(now);
        let new = seal(&mut a, now, 3);
        open_expect(&mut b, now, new, 3);
        assert_eq!(b.recv_epoch(), 1);
        assert_eq!(b.poll_timeout(), Some(now + Duration::from_secs(2)));
        open_expect(&mut b, now + Duration::from_secs(1), old1, 1);
        b.handle_timeout(now + Duration::from_secs(1));
        assert!(b.poll_timeout().is_some());
        b.handle_timeout(now + Duration::from_secs(2));
        assert_eq!(b.poll_timeout(), None);
        assert_eq!(
            b.open(now + Duration::from_secs(2), &mut old2.clone()),
            Err(OpenError::UnknownEpoch(0))
        );
        // Epochs two ahead are unknown too.
        a.ratchet(now);
        a.ratchet(now);
        let far = seal(&mut a, now, 4);
        assert_eq!(
            b.open(now, &mut far.clone()),
            Err(OpenError::UnknownEpoch(3))
        );
        assert_eq!(b.stats().unknown_epoch, 2);
    }

    #[test]
    fn random_bytes_never_open() {
        let now = Instant::now();
        let mut rng = Rng(99);
        for config in configs() {
            let (_, mut b) = pair(config, now);
            for i in 0..20_000u64 {
                let len = (rng.next() % 120) as usize;
                let mut buf: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                if i % 2 == 0 && len >= HEADER_LEN {
                    // Make half of them look plausible.
                    buf[0] = 1;
                    buf[1] = (i % 4) as u8;
                    buf[3] = 0;
                    buf[4..8].copy_from_slice(&B.remote.to_be_bytes());
                    buf[8..12].copy_from_slice(&B.local.to_be_bytes());
                    buf[2] = 0;
                }
                let r = b.open(now, &mut buf);
                if config.mode != Mode::Plain {
                    assert!(r.is_err());
                }
            }
            assert_eq!(b.stats().opened + b.stats().dropped(), 20_000);
        }
    }
}

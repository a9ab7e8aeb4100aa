//! Control messages on a mesh connection (sans-IO codec).
//!
//! Each message on the connection's control stream is framed as
//!
//! ```text
//! len u32     bytes that follow (version, kind and body): at most HANDSHAKE_MESSAGE_LEN
//!             before the connection is authenticated, MAX_MESSAGE_LEN after
//! version u8  PROTOCOL_VERSION; anything else closes the connection with a clear error
//! kind u8     see Message
//! body        kind-specific, big-endian
//! ```
//!
//! - `Hello` (1), first message each way: peer name (6), incarnation (u64), sleeve port (u16),
//!   sleeve session index (u32), flags (u8: bit 0 = has a password), nickname (u8 length +
//!   bytes), PAKE message (u8 length + bytes; [`PAKE_MESSAGE_LEN`] with a password, else 0).
//!   Version 1 carried a password proof here instead, and is refused.
//! - `Gossip` (2): a topology gossip message ([`crate::topology::wire`]), opaque here.
//! - `Ipam` (3): origin peer (6), destination peer (6; all-ones = every peer), IPAM message
//!   ([`crate::ipam::msg`]), opaque here. Relayed along mesh routes with the origin kept.
//! - `Rekey` (4): epoch (u64): both ends derive the sleeve secret of that epoch and install it.
//! - `Bye` (5): a UTF-8 reason; the sender finishes its stream after it and closes once the
//!   peer has closed the connection (the peer's acknowledgement) or after a timeout.
//! - `Confirm` (6): the PAKE key confirmation ([`CONFIRM_LEN`] bytes), once each way after the
//!   `Hello`s when there is a password (see [`super::handshake`]).
//!
//! Parsing never panics and never trusts a length: a malformed or unknown message is an error
//! that closes the connection.

use super::auth::{CONFIRM_LEN, PAKE_MESSAGE_LEN};
use crate::peer::PeerName;

/// The mesh protocol version this code speaks (2: PAKE authentication).
pub const PROTOCOL_VERSION: u8 = 2;
/// Largest framed message (length field value) on an authenticated connection.
pub const MAX_MESSAGE_LEN: usize = 4 << 20;
/// Largest framed message before the connection is authenticated: a `Hello` (at most 313
/// bytes), a `Confirm` or a `Bye` (at most 1026).
pub const HANDSHAKE_MESSAGE_LEN: usize = 2048;
/// Length of the frame's length field.
pub const LEN_FIELD: usize = 4;
/// The destination meaning "every peer".
pub const EVERYONE: PeerName = PeerName([0xff; 6]);

/// A control message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Who we are, what our sleeve needs, and our PAKE message.
    Hello(Hello),
    /// Topology gossip.
    Gossip(Vec<u8>),
    /// An IPAM message from `origin` to `dest` (or [`EVERYONE`]).
    Ipam {
        /// The peer that produced it.
        origin: PeerName,
        /// Its destination.
        dest: PeerName,
        /// The encoded IPAM message.
        payload: Vec<u8>,
    },
    /// Install the sleeve secret of this epoch.
    Rekey(u64),
    /// Closing, and why.
    Bye(String),
    /// The PAKE key confirmation.
    Confirm([u8; CONFIRM_LEN]),
}

/// The first message of each side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The sender's peer name.
    pub name: PeerName,
    /// The sender's incarnation.
    pub incarnation: u64,
    /// The sender's nickname.
    pub nickname: String,
    /// The UDP port of the sender's sleeve.
    pub sleeve_port: u16,
    /// The sleeve session index the sender chose for this connection.
    pub sleeve_index: u32,
    /// Whether the sender has a cluster password.
    pub password: bool,
    /// The PAKE message (empty without a password).
    pub pake: Vec<u8>,
}

/// Why bytes are not a valid message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// The message speaks another protocol version.
    #[error("peer speaks mesh protocol version {0}, we speak {PROTOCOL_VERSION}")]
    Version(u8),
    /// The length field is out of bounds.
    #[error("control message of {len} bytes exceeds the limit of {max}")]
    TooLong {
        /// The length field's value.
        len: usize,
        /// The limit in force.
        max: usize,
    },
    /// Unknown message kind.
    #[error("unknown control message kind {0}")]
    UnknownKind(u8),
    /// The body ends early or has bytes left over.
    #[error("malformed {kind} message: {detail}")]
    Malformed {
        /// The message kind.
        kind: &'static str,
        /// What is wrong.
        detail: &'static str,
    },
}

const HELLO: u8 = 1;
const GOSSIP: u8 = 2;
const IPAM: u8 = 3;
const REKEY: u8 = 4;
const BYE: u8 = 5;
const CONFIRM: u8 = 6;

impl Message {
    /// Appends the framed message to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; LEN_FIELD]);
        out.push(PROTOCOL_VERSION);
        match self {
            Message::Hello(h) => {
                out.push(HELLO);
                out.extend_from_slice(&h.name.0);
                out.extend_from_slice(&h.incarnation.to_be_bytes());
                out.extend_from_slice(&h.sleeve_port.to_be_bytes());
                out.extend_from_slice(&h.sleeve_index.to_be_bytes());
                out.push(u8::from(h.password));
                let nick = truncate_utf8(&h.nickname, 255);
                out.push(nick.len() as u8);
                out.extend_from_slice(nick.as_bytes());
                let pake = &h.pake[..h.pake.len().min(255)];
                out.push(pake.len() as u8);
                out.extend_from_slice(pake);
            }
            Message::Gossip(b) => {
                out.push(GOSSIP);
                out.extend_from_slice(b);
            }
            Message::Ipam { origin, dest, payload } => {
                out.push(IPAM);
                out.extend_from_slice(&origin.0);
                out.extend_from_slice(&dest.0);
                out.extend_from_slice(payload);
            }
            Message::Rekey(epoch) => {
                out.push(REKEY);
                out.extend_from_slice(&epoch.to_be_bytes());
            }
            Message::Bye(reason) => {
                out.push(BYE);
                out.extend_from_slice(truncate_utf8(reason, 1024).as_bytes());
            }
            Message::Confirm(tag) => {
                out.push(CONFIRM);
                out.extend_from_slice(tag);
            }
        }
        let len = (out.len() - start - LEN_FIELD) as u32;
        out[start..start + LEN_FIELD].copy_from_slice(&len.to_be_bytes());
    }

    /// The message's kind, for errors ("expected hello, got gossip").
    pub fn kind_name(&self) -> &'static str {
        match self {
            Message::Hello(_) => "hello",
            Message::Gossip(_) => "gossip",
            Message::Ipam { .. } => "ipam",
            Message::Rekey(_) => "rekey",
            Message::Bye(_) => "bye",
            Message::Confirm(_) => "confirm",
        }
    }

    /// The framed message as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }

    /// Checks a frame's length field (the first [`LEN_FIELD`] bytes) against `max`
    /// ([`HANDSHAKE_MESSAGE_LEN`] or [`MAX_MESSAGE_LEN`]), returning the length of what follows.
    pub fn frame_len(len_field: [u8; LEN_FIELD], max: usize) -> Result<usize, ProtoError> {
        let len = u32::from_be_bytes(len_field) as usize;
        if len > max {
            return Err(ProtoError::TooLong { len, max });
        }
        if len < 2 {
            return Err(ProtoError::Malformed { kind: "framed", detail: "shorter than version and kind" });
        }
        Ok(len)
    }

    /// Parses the bytes after the length field (version, kind, body).
    pub fn decode(frame: &[u8]) -> Result<Message, ProtoError> {
        let mut r = Reader { b: frame, kind: "framed" };
        let version = r.u8()?;
        if version != PROTOCOL_VERSION {
            return Err(ProtoError::Version(version));
        }
        let kind = r.u8()?;
        let msg = match kind {
            HELLO => {
                r.kind = "hello";
                let name = r.name()?;
                let incarnation = r.u64()?;
                let sleeve_port = u16::from_be_bytes(r.array()?);
                let sleeve_index = u32::from_be_bytes(r.array()?);
                let flags = r.u8()?;
                if flags & !1 != 0 {
                    return Err(r.bad("unknown flags"));
                }
                let n = r.u8()? as usize;
                let nickname = std::str::from_utf8(r.take(n)?).map_err(|_| r.bad("nickname is not UTF-8"))?.to_owned();
                let password = flags & 1 != 0;
                let n = r.u8()? as usize;
                if n != if password { PAKE_MESSAGE_LEN } else { 0 } {
                    return Err(r.bad("PAKE message of the wrong length"));
                }
                let pake = r.take(n)?.to_vec();
                r.end()?;
                Message::Hello(Hello { name, incarnation, nickname, sleeve_port, sleeve_index, password, pake })
            }
            GOSSIP => Message::Gossip(r.rest().to_vec()),
            IPAM => {
                r.kind = "ipam";
                let origin = r.name()?;
                let dest = r.name()?;
                Message::Ipam { origin, dest, payload: r.rest().to_vec() }
            }
            REKEY => {
                r.kind = "rekey";
                let e = r.u64()?;
                r.end()?;
                Message::Rekey(e)
            }
            BYE => Message::Bye(String::from_utf8_lossy(r.rest()).into_owned()),
            CONFIRM => {
                r.kind = "confirm";
                let tag = r.array()?;
                r.end()?;
                Message::Confirm(tag)
            }
            k => return Err(ProtoError::UnknownKind(k)),
        };
        Ok(msg)
    }
}

fn truncate_utf8(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

struct Reader<'a> {
    b: &'a [u8],
    kind: &'static str,
}

impl<'a> Reader<'a> {
    fn bad(&self, detail: &'static str) -> ProtoError {
        ProtoError::Malformed { kind: self.kind, detail }
    }
    fn take(&mut self, n: usize) -> Result<&'a [u8], ProtoError> {
        if self.b.len() < n {
            return Err(self.bad("truncated"));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], ProtoError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, ProtoError> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> Result<u64, ProtoError> {
        Ok(u64::from_be_bytes(self.array()?))
    }
    fn name(&mut self) -> Result<PeerName, ProtoError> {
        Ok(PeerName(self.array()?))
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.b)
    }
    fn end(&self) -> Result<(), ProtoError> {
        if self.b.is_empty() { Ok(()) } else { Err(self.bad("trailing bytes")) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn samples() -> Vec<Message> {
        vec![
            Message::Hello(Hello {
                name: PeerName([0x0e, 1, 2, 3, 4, 5]),
                incarnation: 7,
                nickname: "host-é".into(),
                sleeve_port: 6784,
                sleeve_index: 0xdead_beef,
                password: true,
                pake: vec![9; PAKE_MESSAGE_LEN],
            }),
            Message::Hello(Hello { name: PeerName([1; 6]), incarnation: 1, nickname: String::new(), sleeve_port: 1, sleeve_index: 2, password: false, pake: vec![] }),
            Message::Gossip(vec![1, 2, 3]),
            Message::Ipam { origin: PeerName([2; 6]), dest: EVERYONE, payload: vec![4; 10] },
            Message::Rekey(3),
            Message::Bye("shutting down".into()),
            Message::Confirm([3; CONFIRM_LEN]),
        ]
    }

    fn split(bytes: &[u8]) -> Result<Message, ProtoError> {
        let len = Message::frame_len(bytes[..4].try_into().unwrap(), HANDSHAKE_MESSAGE_LEN)?;
        assert_eq!(len, bytes.len() - 4);
        Message::decode(&bytes[4..])
    }

    #[test]
    fn every_message_round_trips() {
        for m in samples() {
            assert_eq!(split(&m.to_bytes()).unwrap(), m);
        }
    }

    #[test]
    fn another_version_and_bad_messages_are_clear_errors() {
        // A version 1 peer's hello (it carried a password proof): refused by its version.
        let mut b = Message::to_bytes(&samples()[0]);
        b[4] = 1;
        assert_eq!(split(&b), Err(ProtoError::Version(1)));
        assert_eq!(split(&b).unwrap_err().to_string(), "peer speaks mesh protocol version 1, we speak 2");
        let mut b = Message::Rekey(1).to_bytes();
        b[5] = 99;
        assert_eq!(split(&b), Err(ProtoError::UnknownKind(99)));
        assert_eq!(Message::frame_len((MAX_MESSAGE_LEN as u32 + 1).to_be_bytes(), MAX_MESSAGE_LEN), Err(ProtoError::TooLong { len: MAX_MESSAGE_LEN + 1, max: MAX_MESSAGE_LEN }));
        let hello = Message::to_bytes(&samples()[0]);
        for cut in 6..hello.len() - 1 {
            assert!(Message::decode(&hello[4..cut]).is_err(), "hello cut at {cut}");
        }
        // The PAKE message's length must match the password flag.
        let mut h = match samples()[0].clone() {
            Message::Hello(h) => h,
            _ => unreachable!(),
        };
        h.pake.pop();
        assert!(matches!(split(&Message::Hello(h).to_bytes()), Err(ProtoError::Malformed { kind: "hello", .. })));
        let mut b = Message::Confirm([1; CONFIRM_LEN]).to_bytes();
        b.push(0);
        b[3] += 1;
        assert!(split(&b).is_err(), "a confirmation with a trailing byte");
    }

    #[test]
    fn before_authentication_only_small_frames_are_accepted() {
        let largest_bye = Message::Bye("é".repeat(2000)).to_bytes();
        let largest_hello = Message::Hello(Hello { nickname: "n".repeat(300), ..match samples()[0].clone() {
            Message::Hello(h) => h,
            _ => unreachable!(),
        } })
        .to_bytes();
        assert_eq!(largest_hello.len() - LEN_FIELD, 313);
        for m in [largest_bye, largest_hello] {
            assert!(Message::frame_len(m[..4].try_into().unwrap(), HANDSHAKE_MESSAGE_LEN).is_ok());
        }
        let big = Message::Gossip(vec![0; HANDSHAKE_MESSAGE_LEN]).to_bytes();
        let e = Message::frame_len(big[..4].try_into().unwrap(), HANDSHAKE_MESSAGE_LEN).unwrap_err();
        assert_eq!(e.to_string(), "control message of 2050 bytes exceeds the limit of 2048");
        assert_eq!(Message::frame_len(big[..4].try_into().unwrap(), MAX_MESSAGE_LEN), Ok(2050));
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Message::decode(&b);
            if b.len() >= 4 {
                let _ = Message::frame_len([b[0], b[1], b[2], b[3]], MAX_MESSAGE_LEN);
            }
        }
    }
}

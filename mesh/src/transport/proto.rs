//! Control messages on a mesh connection (sans-IO codec).
//!
//! Each message on the connection's control stream is framed as
//!
//! ```text
//! len u32     bytes that follow (version, kind and body), at most MAX_MESSAGE_LEN
//! version u8  PROTOCOL_VERSION; anything else closes the connection with a clear error
//! kind u8     see Message
//! body        kind-specific, big-endian
//! ```
//!
//! - `Hello` (1), first message each way: peer name (6), incarnation (u64), sleeve port (u16),
//!   sleeve session index (u32), flags (u8: bit 0 = has a password), nickname (u8 length +
//!   bytes), proof (u8 length + bytes; 32 with a password, else 0).
//! - `Gossip` (2): a topology gossip message ([`crate::topology::wire`]), opaque here.
//! - `Ipam` (3): origin peer (6), destination peer (6; all-ones = every peer), IPAM message
//!   ([`crate::ipam::msg`]), opaque here. Relayed along mesh routes with the origin kept.
//! - `Rekey` (4): epoch (u64): both ends derive the sleeve secret of that epoch and install it.
//! - `Bye` (5): a UTF-8 reason; the sender finishes its stream after it and closes once the
//!   peer has closed the connection (the peer's acknowledgement) or after a timeout.
//!
//! Parsing never panics and never trusts a length: a malformed or unknown message is an error
//! that closes the connection.

use crate::peer::PeerName;

/// The control protocol version this code speaks.
pub const PROTOCOL_VERSION: u8 = 1;
/// Largest framed message (length field value).
pub const MAX_MESSAGE_LEN: usize = 4 << 20;
/// Length of the frame's length field.
pub const LEN_FIELD: usize = 4;
/// The destination meaning "every peer".
pub const EVERYONE: PeerName = PeerName([0xff; 6]);

/// A control message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// Who we are, what our sleeve needs, and the password proof.
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
    /// Proof of the password bound to this connection (empty without one).
    pub proof: Vec<u8>,
}

/// Why bytes are not a valid message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// The message speaks another protocol version.
    #[error("peer speaks control protocol version {0}, this router speaks {PROTOCOL_VERSION}")]
    Version(u8),
    /// The length field is out of bounds.
    #[error("control message of {0} bytes exceeds the limit of {MAX_MESSAGE_LEN}")]
    TooLong(usize),
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
                let proof = &h.proof[..h.proof.len().min(255)];
                out.push(proof.len() as u8);
                out.extend_from_slice(proof);
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
        }
        let len = (out.len() - start - LEN_FIELD) as u32;
        out[start..start + LEN_FIELD].copy_from_slice(&len.to_be_bytes());
    }

    /// The framed message as bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }

    /// Checks a frame's length field (the first [`LEN_FIELD`] bytes), returning the length of
    /// what follows.
    pub fn frame_len(len_field: [u8; LEN_FIELD]) -> Result<usize, ProtoError> {
        let len = u32::from_be_bytes(len_field) as usize;
        if len > MAX_MESSAGE_LEN {
            return Err(ProtoError::TooLong(len));
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
                let n = r.u8()? as usize;
                let proof = r.take(n)?.to_vec();
                r.end()?;
                Message::Hello(Hello { name, incarnation, nickname, sleeve_port, sleeve_index, password: flags & 1 != 0, proof })
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
                proof: vec![9; 32],
            }),
            Message::Gossip(vec![1, 2, 3]),
            Message::Ipam { origin: PeerName([2; 6]), dest: EVERYONE, payload: vec![4; 10] },
            Message::Rekey(3),
            Message::Bye("shutting down".into()),
        ]
    }

    fn split(bytes: &[u8]) -> Result<Message, ProtoError> {
        let len = Message::frame_len(bytes[..4].try_into().unwrap())?;
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
        let mut b = Message::Rekey(1).to_bytes();
        b[4] = 2;
        assert_eq!(split(&b), Err(ProtoError::Version(2)));
        assert!(split(&b).unwrap_err().to_string().contains("version 2"));
        let mut b = Message::Rekey(1).to_bytes();
        b[5] = 99;
        assert_eq!(split(&b), Err(ProtoError::UnknownKind(99)));
        assert_eq!(Message::frame_len((MAX_MESSAGE_LEN as u32 + 1).to_be_bytes()), Err(ProtoError::TooLong(MAX_MESSAGE_LEN + 1)));
        let hello = Message::to_bytes(&samples()[0]);
        for cut in 6..hello.len() - 1 {
            assert!(Message::decode(&hello[4..cut]).is_err(), "hello cut at {cut}");
        }
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(b in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Message::decode(&b);
            if b.len() >= 4 {
                let _ = Message::frame_len([b[0], b[1], b[2], b[3]]);
            }
        }
    }
}

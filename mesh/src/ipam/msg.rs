//! IPAM messages between peers, carried as opaque bytes by the mesh (format 1, big-endian).
//!
//! ```text
//! message = format:u8 (=1) kind:u8 body
//! kind 1  ring gossip:    ring                         (see ring module)
//! kind 2  proposal:       count:u16 name:[6]*count     (names heard while awaiting consensus)
//! kind 3  donate request: (empty)
//! kind 4  donate reply:   granted:u8 (0 or 1) ring
//! kind 5  hand-over:      ring                         (the sender's ring after leaving)
//! ```
//!
//! A hand-over is answered with the receiver's ring (kind 1, to the sender) once the receiver
//! has merged and persisted it: that ring is the acknowledgement. A peer that does not know
//! kind 5 refuses it as an unknown kind, so the leaving peer never takes silence for consent.
//!
//! Unknown formats and kinds, bad flags, truncation and trailing bytes are refused.

use std::collections::BTreeSet;

use super::ring::Ring;
use super::{DecodeError, Reader};
use crate::peer::PeerName;

/// The only message format this code speaks.
pub const MSG_FORMAT: u8 = 1;

const KIND_GOSSIP: u8 = 1;
const KIND_PROPOSAL: u8 = 2;
const KIND_DONATE_REQUEST: u8 = 3;
const KIND_DONATE_REPLY: u8 = 4;
const KIND_HAND_OVER: u8 = 5;

/// One IPAM message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// The sender's whole ring.
    Gossip(Ring),
    /// The sender awaits consensus and has heard of these peers (itself included).
    Proposal {
        /// Peer names the sender knows of.
        known: BTreeSet<PeerName>,
    },
    /// The sender has run out of space and asks the receiver to donate some.
    DonateRequest,
    /// The answer to a donate request: the donor's ring after the transfer (if granted).
    DonateReply {
        /// Whether space was handed over (the ring shows which).
        granted: bool,
        /// The donor's ring.
        ring: Ring,
    },
    /// The sender has left and its ring hands its space to the receiver, which merges it and
    /// answers with its own ring once that is persisted.
    HandOver(Ring),
}

impl Message {
    /// Bytes needed by [`Message::emit`].
    pub fn buffer_len(&self) -> usize {
        2 + match self {
            Message::Gossip(r) | Message::HandOver(r) => r.buffer_len(),
            Message::Proposal { known } => 2 + 6 * known.len().min(u16::MAX as usize),
            Message::DonateRequest => 0,
            Message::DonateReply { ring, .. } => 1 + ring.buffer_len(),
        }
    }

    /// Appends the encoding to `out`.
    pub fn emit(&self, out: &mut Vec<u8>) {
        out.reserve(self.buffer_len());
        out.push(MSG_FORMAT);
        match self {
            Message::Gossip(r) => {
                out.push(KIND_GOSSIP);
                r.emit(out);
            }
            Message::Proposal { known } => {
                out.push(KIND_PROPOSAL);
                let n = known.len().min(u16::MAX as usize);
                out.extend_from_slice(&(n as u16).to_be_bytes());
                for p in known.iter().take(n) {
                    out.extend_from_slice(&p.0);
                }
            }
            Message::DonateRequest => out.push(KIND_DONATE_REQUEST),
            Message::DonateReply { granted, ring } => {
                out.push(KIND_DONATE_REPLY);
                out.push(u8::from(*granted));
                ring.emit(out);
            }
            Message::HandOver(r) => {
                out.push(KIND_HAND_OVER);
                r.emit(out);
            }
        }
    }

    /// The encoding as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.emit(&mut v);
        v
    }

    /// Parses a message, checking every field.
    pub fn parse(bytes: &[u8]) -> Result<Message, DecodeError> {
        let mut r = Reader::new(bytes);
        let format = r.u8()?;
        if format != MSG_FORMAT {
            return Err(DecodeError::UnknownVersion {
                found: format,
                supported: MSG_FORMAT,
            });
        }
        let msg = match r.u8()? {
            KIND_GOSSIP => Message::Gossip(Ring::read(&mut r)?),
            KIND_PROPOSAL => {
                let n = r.u16()? as usize;
                let mut known = BTreeSet::new();
                for _ in 0..n {
                    known.insert(r.peer()?);
                }
                Message::Proposal { known }
            }
            KIND_DONATE_REQUEST => Message::DonateRequest,
            KIND_DONATE_REPLY => {
                let granted = match r.u8()? {
                    0 => false,
                    1 => true,
                    _ => return Err(DecodeError::Invalid("donate reply flag is not 0 or 1")),
                };
                Message::DonateReply {
                    granted,
                    ring: Ring::read(&mut r)?,
                }
            }
            KIND_HAND_OVER => Message::HandOver(Ring::read(&mut r)?),
            _ => return Err(DecodeError::Invalid("unknown IPAM message kind")),
        };
        r.finish()?;
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ipam::Cidr;

    #[test]
    fn round_trip_fixed_bytes() {
        let known: BTreeSet<PeerName> = [PeerName::from_u64(0x0102_0304_0506)].into();
        let m = Message::Proposal { known };
        let bytes = [1, 2, 0, 1, 1, 2, 3, 4, 5, 6];
        assert_eq!(m.to_bytes(), bytes);
        assert_eq!(m.buffer_len(), bytes.len());
        assert_eq!(Message::parse(&bytes).unwrap(), m);
        assert_eq!(Message::DonateRequest.to_bytes(), [1, 3]);
        assert_eq!(Message::parse(&[1, 3]).unwrap(), Message::DonateRequest);
        let ring = Ring::new("10.0.0.0/8".parse::<Cidr>().unwrap());
        let reply = Message::DonateReply {
            granted: false,
            ring: ring.clone(),
        };
        let bytes = [1, 4, 0, 1, 10, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0];
        assert_eq!(reply.to_bytes(), bytes);
        assert_eq!(Message::parse(&bytes).unwrap(), reply);
        let g = Message::Gossip(Ring::divide(ring.range(), &[PeerName::from_u64(7)]).unwrap());
        assert_eq!(Message::parse(&g.to_bytes()).unwrap(), g);
        let h = Message::HandOver(ring);
        let bytes = [1, 5, 1, 10, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0];
        assert_eq!(h.to_bytes(), bytes);
        assert_eq!(h.buffer_len(), bytes.len());
        assert_eq!(Message::parse(&bytes).unwrap(), h);
    }

    #[test]
    fn malformed_messages_are_errors() {
        for bad in [
            &[][..],
            &[2, 3],
            &[1],
            &[1, 9],
            &[1, 3, 0],
            &[1, 2, 0, 2, 1, 2, 3, 4, 5, 6],
            &[1, 4, 2],
            &[1, 5],
            &[1, 6],
        ] {
            assert!(Message::parse(bad).is_err(), "{bad:?}");
        }
        let g = Message::Gossip(Ring::divide(Cidr::DEFAULT, &[PeerName::from_u64(7)]).unwrap())
            .to_bytes();
        for len in 0..g.len() {
            assert!(Message::parse(&g[..len]).is_err());
        }
    }
}

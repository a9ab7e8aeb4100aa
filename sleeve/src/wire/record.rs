//! Body records: the views and parsed forms of what an opened packet body holds.

use super::{
    Error, FrameRepr, MAX_RECORD_PAYLOAD, RECORD_HEADER_LEN, Result, be, field, need, room,
};

/// The kind of a body record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordKind {
    /// A frame payload ([`FrameRepr`]): offload metadata, relay envelope, Ethernet frame.
    Frame,
    /// A piece of a frame payload; the piece header is parsed by [`crate::frag`].
    Fragment,
    /// Heartbeat / path MTU probe; payload parsed by [`crate::liveness`].
    Control,
    /// Any other value.
    Unknown(u8),
}

impl From<u8> for RecordKind {
    fn from(v: u8) -> Self {
        match v {
            1 => Self::Frame,
            2 => Self::Fragment,
            3 => Self::Control,
            other => Self::Unknown(other),
        }
    }
}

impl From<RecordKind> for u8 {
    fn from(k: RecordKind) -> u8 {
        match k {
            RecordKind::Frame => 1,
            RecordKind::Fragment => 2,
            RecordKind::Control => 3,
            RecordKind::Unknown(v) => v,
        }
    }
}

/// A view of one body record: `kind | flags | len | payload`.
#[derive(Debug, Clone)]
pub struct Record<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Record<T> {
    /// Wraps a buffer without checks.
    pub fn new_unchecked(buffer: T) -> Self {
        Self { buffer }
    }

    /// Wraps a buffer that holds at least the record header and the payload it announces
    /// (it may hold more: the following records). Then no accessor panics.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let r = Self::new_unchecked(buffer);
        let len = r.buffer.as_ref().len();
        need(RECORD_HEADER_LEN, len)?;
        need(r.total_len(), len)?;
        Ok(r)
    }

    /// The record kind.
    pub fn kind(&self) -> RecordKind {
        self.buffer.as_ref()[field::REC_KIND].into()
    }

    /// The record flags (meaning depends on the kind).
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::REC_FLAGS]
    }

    /// The payload length field.
    pub fn payload_len(&self) -> u16 {
        u16::from_be_bytes(be(&self.buffer.as_ref()[field::REC_LEN]))
    }

    /// Header plus payload length.
    pub fn total_len(&self) -> usize {
        RECORD_HEADER_LEN + usize::from(self.payload_len())
    }

    /// The payload.
    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[RECORD_HEADER_LEN..self.total_len()]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Record<T> {
    /// Writes the record header.
    pub fn set_header(&mut self, kind: RecordKind, flags: u8, len: u16) {
        let b = self.buffer.as_mut();
        b[field::REC_KIND] = kind.into();
        b[field::REC_FLAGS] = flags;
        b[field::REC_LEN].copy_from_slice(&len.to_be_bytes());
    }

    /// The payload, mutable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = self.total_len();
        &mut self.buffer.as_mut()[RECORD_HEADER_LEN..end]
    }
}

/// A parsed body record, borrowing its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyRecord<'a> {
    /// A frame payload: offload metadata, relay envelope and Ethernet frame.
    Frame(FrameRepr<'a>),
    /// A fragment record; flags and payload belong to [`crate::frag`].
    Fragment {
        /// Record flags (its frame record's).
        flags: u8,
        /// Opaque payload.
        payload: &'a [u8],
    },
    /// A control record; flags and payload belong to liveness / PMTU.
    Control {
        /// Record flags.
        flags: u8,
        /// Opaque payload.
        payload: &'a [u8],
    },
}

impl<'a> BodyRecord<'a> {
    /// Parses a checked record view.
    pub fn parse(record: &Record<&'a [u8]>) -> Result<Self> {
        let flags = record.flags();
        let payload: &'a [u8] = {
            let buf: &'a [u8] = record.buffer;
            &buf[RECORD_HEADER_LEN..record.total_len()]
        };
        match record.kind() {
            RecordKind::Frame => FrameRepr::parse(flags, payload).map(Self::Frame),
            RecordKind::Fragment => Ok(Self::Fragment { flags, payload }),
            RecordKind::Control => Ok(Self::Control { flags, payload }),
            RecordKind::Unknown(k) => Err(Error::UnknownRecordKind(k)),
        }
    }

    /// Payload length (virtio-net header and envelope included for frames).
    pub fn payload_len(&self) -> usize {
        match self {
            Self::Frame(f) => f.buffer_len(),
            Self::Fragment { payload, .. } | Self::Control { payload, .. } => payload.len(),
        }
    }

    /// Bytes the record occupies when emitted.
    pub fn buffer_len(&self) -> usize {
        RECORD_HEADER_LEN + self.payload_len()
    }

    /// Writes the record at the start of `buf`; returns the bytes written.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        let plen = self.payload_len();
        if plen > MAX_RECORD_PAYLOAD {
            return Err(Error::RecordTooLong(plen));
        }
        let total = RECORD_HEADER_LEN + plen;
        room(total, buf.len())?;
        let (kind, flags) = match self {
            Self::Frame(f) => (RecordKind::Frame, f.flags()),
            Self::Fragment { flags, .. } => (RecordKind::Fragment, *flags),
            Self::Control { flags, .. } => (RecordKind::Control, *flags),
        };
        // plen <= MAX_RECORD_PAYLOAD was checked above.
        let mut rec = Record::new_unchecked(&mut buf[..total]);
        rec.set_header(kind, flags, plen as u16);
        let out = rec.payload_mut();
        match self {
            Self::Frame(f) => {
                f.emit(out)?;
            }
            Self::Fragment { payload, .. } | Self::Control { payload, .. } => {
                out.copy_from_slice(payload)
            }
        }
        Ok(total)
    }
}

/// Iterator over the records of an opened body.
///
/// Yields `Err` for a malformed record and then stops (the length of what follows cannot be
/// trusted). Never panics.
#[derive(Debug, Clone)]
pub struct Records<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> Records<'a> {
    /// Iterates over `body`, the plaintext body of an opened packet.
    pub fn new(body: &'a [u8]) -> Self {
        Self {
            rest: body,
            failed: false,
        }
    }

    /// Walks the whole body once; `Ok(n)` with the record count when every record is well formed
    /// and there is at least one.
    pub fn validate(body: &'a [u8]) -> Result<usize> {
        let mut n = 0;
        for r in Self::new(body) {
            r?;
            n += 1;
        }
        if n == 0 { Err(Error::EmptyBody) } else { Ok(n) }
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<BodyRecord<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        let parsed = Record::new_checked(self.rest).and_then(|rec| {
            let len = rec.total_len();
            BodyRecord::parse(&rec).map(|r| (r, len))
        });
        match parsed {
            Ok((r, len)) => {
                self.rest = &self.rest[len..];
                Some(Ok(r))
            }
            Err(e) => {
                self.failed = true;
                Some(Err(e))
            }
        }
    }
}

/// Builds a body record by record in a caller-owned buffer, without allocating.
///
/// Give it the body of a datagram buffer (`&mut buf[session.body_range(len)]`, see
/// [`crate::Session::body_range`]) and pass [`BodyWriter::len`] to the session's seal.
#[derive(Debug)]
pub struct BodyWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> BodyWriter<'a> {
    /// Starts an empty body at the start of `buf`.
    pub fn new(buf: &'a mut [u8]) -> Self {
        Self { buf, len: 0 }
    }

    /// Bytes written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no record was written.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes still free.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.len
    }

    /// Appends a parsed record (copying its payload).
    pub fn push(&mut self, record: &BodyRecord<'_>) -> Result<()> {
        let n = record.emit(&mut self.buf[self.len..])?;
        self.len += n;
        Ok(())
    }

    /// Appends a frame record.
    pub fn push_frame(&mut self, frame: &FrameRepr<'_>) -> Result<()> {
        self.push(&BodyRecord::Frame(*frame))
    }

    /// Appends a fragment record with an opaque payload.
    pub fn push_fragment(&mut self, flags: u8, payload: &[u8]) -> Result<()> {
        self.push(&BodyRecord::Fragment { flags, payload })
    }

    /// Appends a control record with an opaque payload.
    pub fn push_control(&mut self, flags: u8, payload: &[u8]) -> Result<()> {
        self.push(&BodyRecord::Control { flags, payload })
    }

    /// Appends a record header and returns its `payload_len` bytes for the caller to fill in
    /// place (e.g. a TAP read straight into the buffer). For a frame, the caller writes a whole
    /// frame payload ([`FrameRepr::emit_head`], then the Ethernet frame) that agrees with `flags`.
    pub fn reserve(
        &mut self,
        kind: RecordKind,
        flags: u8,
        payload_len: usize,
    ) -> Result<&mut [u8]> {
        if payload_len > MAX_RECORD_PAYLOAD {
            return Err(Error::RecordTooLong(payload_len));
        }
        let total = RECORD_HEADER_LEN + payload_len;
        room(total, self.remaining())?;
        let start = self.len;
        self.len += total;
        let mut rec = Record::new_unchecked(&mut self.buf[start..start + total]);
        // payload_len <= u16::MAX was checked above.
        rec.set_header(kind, flags, payload_len as u16);
        Ok(&mut self.buf[start + RECORD_HEADER_LEN..start + total])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frame::tests::{VNET_BYTES, vnet};
    use crate::wire::{ENVELOPE_LEN, EnvelopeRepr, FRAME_HEAD_MAX, VNET_HDR_LEN, VnetHdr};

    // dst, src, hops 3, flags 0
    const ENVELOPE_BYTES: [u8; ENVELOPE_LEN] = [1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 3, 0];

    const ENVELOPE: EnvelopeRepr = EnvelopeRepr {
        dst: [1; 6],
        src: [2; 6],
        hops: 3,
    };

    fn frame_repr(vnet: Option<VnetHdr>, frame: &[u8]) -> FrameRepr<'_> {
        FrameRepr {
            vnet,
            envelope: ENVELOPE,
            frame,
        }
    }

    fn eth(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn body_round_trip_fixed_bytes() {
        let frame = eth(14, 0);
        let mut expected = Vec::new();
        // frame record without virtio-net header: envelope, frame
        expected.extend_from_slice(&[1, 0, 0, 28]);
        expected.extend_from_slice(&ENVELOPE_BYTES);
        expected.extend_from_slice(&frame);
        // frame record with one: vnet header, envelope, frame
        expected.extend_from_slice(&[1, 1, 0, 38]);
        expected.extend_from_slice(&VNET_BYTES);
        expected.extend_from_slice(&ENVELOPE_BYTES);
        expected.extend_from_slice(&frame);
        // fragment and control records (opaque)
        expected.extend_from_slice(&[2, 0x5a, 0, 3, 9, 8, 7]);
        expected.extend_from_slice(&[3, 0x01, 0, 0]);

        let records: Vec<_> = Records::new(&expected).collect::<Result<_>>().unwrap();
        assert_eq!(
            records,
            vec![
                BodyRecord::Frame(frame_repr(None, &frame)),
                BodyRecord::Frame(frame_repr(Some(vnet()), &frame)),
                BodyRecord::Fragment {
                    flags: 0x5a,
                    payload: &[9, 8, 7]
                },
                BodyRecord::Control {
                    flags: 1,
                    payload: &[]
                },
            ]
        );
        assert_eq!(Records::validate(&expected), Ok(4));

        let mut buf = vec![0u8; expected.len()];
        let mut w = BodyWriter::new(&mut buf);
        w.push_frame(&frame_repr(None, &frame)).unwrap();
        w.push_frame(&frame_repr(Some(vnet()), &frame)).unwrap();
        w.push_fragment(0x5a, &[9, 8, 7]).unwrap();
        w.push_control(1, &[]).unwrap();
        assert_eq!(w.remaining(), 0);
        assert_eq!(w.len(), expected.len());
        assert_eq!(buf, expected);
        for r in &records {
            let mut one = vec![0u8; r.buffer_len()];
            assert_eq!(r.emit(&mut one), Ok(r.buffer_len()));
        }
    }

    #[test]
    fn reserve_writes_in_place() {
        let mut buf = [0u8; 64];
        let mut w = BodyWriter::new(&mut buf);
        let f = frame_repr(None, &[7; 20]);
        let p = w
            .reserve(RecordKind::Frame, f.flags(), f.buffer_len())
            .unwrap();
        let head = f.emit_head(p).unwrap();
        p[head..].copy_from_slice(f.frame);
        assert_eq!(w.len(), 4 + 34);
        assert!(matches!(
            w.reserve(RecordKind::Control, 0, 23),
            Err(Error::BufferTooSmall { .. })
        ));
        assert!(matches!(
            w.reserve(RecordKind::Fragment, 0, 70_000),
            Err(Error::RecordTooLong(_))
        ));
        let recs: Vec<_> = Records::new(&buf[..38]).collect();
        assert_eq!(recs, vec![Ok(BodyRecord::Frame(f))]);
    }

    #[test]
    fn largest_frame_record() {
        let frame = eth(MAX_RECORD_PAYLOAD - ENVELOPE_LEN, 1);
        let mut buf = vec![0u8; MAX_RECORD_PAYLOAD + RECORD_HEADER_LEN];
        BodyWriter::new(&mut buf)
            .push_frame(&frame_repr(None, &frame))
            .unwrap();
        assert_eq!(Records::validate(&buf), Ok(1));
        let too_big = eth(MAX_RECORD_PAYLOAD - ENVELOPE_LEN + 1, 1);
        let mut big = vec![0u8; too_big.len() + 64];
        assert_eq!(
            BodyWriter::new(&mut big).push_frame(&frame_repr(None, &too_big)),
            Err(Error::RecordTooLong(MAX_RECORD_PAYLOAD + 1))
        );
        assert_eq!(
            BodyWriter::new(&mut big).push_frame(&frame_repr(Some(vnet()), &frame)),
            Err(Error::RecordTooLong(MAX_RECORD_PAYLOAD + VNET_HDR_LEN))
        );
    }

    #[test]
    fn malformed_records_are_errors() {
        let env = ENVELOPE_BYTES;
        let mut flagged_env = ENVELOPE_BYTES;
        flagged_env[13] = 0x10;
        let cat = |parts: &[&[u8]]| parts.concat();
        let cases: Vec<(Vec<u8>, Error)> = vec![
            (
                vec![1, 0, 0],
                Error::Truncated {
                    needed: 4,
                    available: 3,
                },
            ),
            (
                vec![1, 0, 0, 20, 0, 0],
                Error::Truncated {
                    needed: 24,
                    available: 6,
                },
            ),
            (vec![9, 0, 0, 0], Error::UnknownRecordKind(9)),
            (vec![0, 0, 0, 0], Error::UnknownRecordKind(0)),
            (
                cat(&[&[1, 2, 0, 28], &env, &[0; 14]]),
                Error::BadFrameFlags(2),
            ),
            // Envelope, then two bytes of Ethernet header.
            (
                cat(&[&[1, 0, 0, 16], &env, &[0; 2]]),
                Error::FrameTooShort(2),
            ),
            // A frame record shorter than its envelope.
            (
                cat(&[&[1, 0, 0, 10], &env[..10]]),
                Error::Truncated {
                    needed: ENVELOPE_LEN,
                    available: 10,
                },
            ),
            (
                cat(&[&[1, 0, 0, 28], &flagged_env, &[0; 14]]),
                Error::BadEnvelopeFlags(0x10),
            ),
            // The virtio-net header cut short.
            (
                vec![1, 1, 0, 5, 0, 0, 0, 0, 0],
                Error::Truncated {
                    needed: 10,
                    available: 5,
                },
            ),
            (
                cat(&[&[1, 1, 0, 26], &VNET_BYTES, &env, &[0; 2]]),
                Error::FrameTooShort(2),
            ),
        ];
        for (bytes, err) in &cases {
            let mut body = vec![3, 0, 0, 1, 0xaa]; // one good control record first
            body.extend_from_slice(bytes);
            let got: Vec<_> = Records::new(&body).collect();
            assert_eq!(got.len(), 2, "{bytes:?}");
            assert_eq!(
                got[0],
                Ok(BodyRecord::Control {
                    flags: 0,
                    payload: &[0xaa]
                })
            );
            assert_eq!(got[1], Err(*err), "{bytes:?}");
            assert_eq!(Records::validate(&body), Err(*err));
        }
        // Iteration stops at the first error even when records follow.
        let body = [9, 0, 0, 0, 3, 0, 0, 0];
        let got: Vec<_> = Records::new(&body).collect();
        assert_eq!(got, vec![Err(Error::UnknownRecordKind(9))]);
        assert_eq!(Records::validate(&[]), Err(Error::EmptyBody));
        assert_eq!(Records::new(&[]).count(), 0);
    }

    #[test]
    fn every_truncation_of_a_body_is_caught() {
        let mut buf = [0u8; 128];
        let mut w = BodyWriter::new(&mut buf);
        w.push_frame(&frame_repr(Some(vnet()), &eth(30, 2)))
            .unwrap();
        w.push_control(0, &[1, 2, 3]).unwrap();
        let n = w.len();
        let boundaries = [RECORD_HEADER_LEN + FRAME_HEAD_MAX + 30, n];
        for len in 0..=n {
            let r = Records::validate(&buf[..len]);
            assert_eq!(r.is_ok(), boundaries.contains(&len), "len {len}: {r:?}");
        }
    }
}

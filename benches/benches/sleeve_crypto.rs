//! Sleeve seal/open throughput beside raw `ring` AEAD (the ceiling), for both ciphers, at 64,
//! 1400 and 65000 bytes of Ethernet frame per packet.
//!
//! `Throughput::Bytes` is the frame bytes per packet in every case. The raw baseline seals the
//! frame bytes with a 20-byte AAD (the sleeve header's size) and nothing else; the session adds
//! the record header and relay envelope, the packet header, the counter and key bookkeeping, and
//! on open the replay window and the record validation. Opening is in place, so each open gets a
//! freshly sealed packet, prepared outside the timed routine (same batching for both).
//!
//! Ratio to report: session bytes/s ÷ raw bytes/s for the same cipher and size.
//!
//! `piece_body/*`: raw `ring` on the sealed body of a datagram carrying a full piece of a
//! super-frame on a 1472-byte datagram, as cut now (1424 bytes: whole 16-byte blocks,
//! `weft_sleeve::frag::PIECE_ALIGN`) and as cut before (1436 bytes: the last block partial);
//! `Throughput::Bytes` is the body bytes.

use std::hint::black_box;
use std::time::Instant;

use criterion::measurement::WallTime;
use criterion::{BatchSize, BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use weft_sleeve::ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey};
use weft_sleeve::wire::{ENVELOPE_LEN, EnvelopeRepr, HEADER_LEN, RecordKind, TAG_LEN};
use weft_sleeve::{BodyWriter, Cipher, Config, Role, Session, SessionIds};

const SIZES: [usize; 3] = [64, 1400, 65000];
const SECRET: [u8; 32] = [0x5a; 32];
/// Packets prepared per batch for the open benchmarks (bounded memory at 65000 bytes).
const BATCH: u64 = 128;

fn name(c: Cipher) -> &'static str {
    match c {
        Cipher::ChaCha20Poly1305 => "chacha20poly1305",
        Cipher::Aes256Gcm => "aes256gcm",
    }
}

fn raw_key(c: Cipher) -> LessSafeKey {
    LessSafeKey::new(UnboundKey::new(c.algorithm(), &SECRET).expect("32-byte key"))
}

fn nonce(counter: u64) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

fn sessions(c: Cipher, now: Instant) -> (Session, Session) {
    let config = Config::sealed(c);
    (
        Session::new(
            &SECRET,
            Role::Initiator,
            SessionIds {
                local: 1,
                remote: 2,
            },
            config,
            now,
        ),
        Session::new(
            &SECRET,
            Role::Responder,
            SessionIds {
                local: 2,
                remote: 1,
            },
            config,
            now,
        ),
    )
}

/// Writes one frame record with a frame of `size` bytes into `buf` and seals it; returns the
/// packet length. The record starts with a relay envelope; the frame bytes are whatever the
/// buffer holds, as after a TAP read in place.
fn seal_frame(s: &mut Session, now: Instant, buf: &mut [u8], size: usize) -> usize {
    let body = s.body_range(buf.len());
    let mut w = BodyWriter::new(&mut buf[body]);
    let p = w
        .reserve(RecordKind::Frame, 0, ENVELOPE_LEN + size)
        .expect("buffer sized for the frame");
    let envelope = EnvelopeRepr {
        dst: [1; 6],
        src: [2; 6],
        hops: 16,
    };
    envelope.emit(p).expect("a frame record holds its envelope");
    let body_len = w.len();
    s.seal_in_place(now, buf, body_len).expect("seal")
}

/// Raw `ring` sealing `size` bytes with a sleeve header's worth of AAD, as `raw_ring/{size}`.
fn raw_seal(g: &mut BenchmarkGroup<'_, WallTime>, cipher: Cipher, size: usize) {
    let key = raw_key(cipher);
    let header = [0u8; HEADER_LEN];
    let mut frame = vec![0xabu8; size];
    let mut counter = 0u64;
    g.bench_function(format!("raw_ring/{size}"), |b| {
        b.iter(|| {
            counter += 1;
            let tag = key
                .seal_in_place_separate_tag(nonce(counter), Aad::from(&header), &mut frame)
                .expect("seal");
            black_box(&tag);
        })
    });
}

/// Raw `ring` opening `size` bytes sealed as [`raw_seal`] seals them, as `raw_ring/{size}`.
fn raw_open(g: &mut BenchmarkGroup<'_, WallTime>, cipher: Cipher, size: usize) {
    let key = raw_key(cipher);
    let header = [0u8; HEADER_LEN];
    let mut counter = 0u64;
    g.bench_function(format!("raw_ring/{size}"), |b| {
        b.iter_batched_ref(
            || {
                counter += 1;
                let mut p = vec![0xabu8; size + TAG_LEN];
                let tag = key
                    .seal_in_place_separate_tag(
                        nonce(counter),
                        Aad::from(&header),
                        &mut p[..size],
                    )
                    .expect("seal");
                p[size..].copy_from_slice(tag.as_ref());
                (counter, p)
            },
            |(n, p)| {
                let plain = key
                    .open_in_place(nonce(*n), Aad::from(&header), p)
                    .expect("open");
                black_box(plain.len());
            },
            BatchSize::NumIterations(BATCH),
        )
    });
}

fn seal(c: &mut Criterion) {
    let now = Instant::now();
    for cipher in Cipher::ALL {
        let mut g = c.benchmark_group(format!("seal/{}", name(cipher)));
        for size in SIZES {
            g.throughput(Throughput::Bytes(size as u64));
            raw_seal(&mut g, cipher, size);
            let (mut tx, _) = sessions(cipher, now);
            let mut buf = vec![0xabu8; size + 64];
            g.bench_function(format!("session/{size}"), |b| {
                b.iter(|| black_box(seal_frame(&mut tx, now, &mut buf, size)))
            });
        }
        g.finish();
    }
}

fn open(c: &mut Criterion) {
    let now = Instant::now();
    for cipher in Cipher::ALL {
        let mut g = c.benchmark_group(format!("open/{}", name(cipher)));
        for size in SIZES {
            g.throughput(Throughput::Bytes(size as u64));
            raw_open(&mut g, cipher, size);
            let (mut tx, mut rx) = sessions(cipher, now);
            g.bench_function(format!("session/{size}"), |b| {
                b.iter_batched_ref(
                    || {
                        let mut p = vec![0xabu8; size + 64];
                        let n = seal_frame(&mut tx, now, &mut p, size);
                        p.truncate(n);
                        p
                    },
                    |p| {
                        let body = rx.open(now, p).expect("open");
                        black_box(body);
                    },
                    BatchSize::NumIterations(BATCH),
                )
            });
        }
        g.finish();
    }
}

/// A full piece's body as cut now and as cut before (see the module doc), sealed and opened.
const PIECE_BODIES: [usize; 2] = [1424, 1436];

fn piece_body(c: &mut Criterion) {
    for cipher in Cipher::ALL {
        for (op, bench) in [("seal", raw_seal as fn(&mut BenchmarkGroup<'_, WallTime>, Cipher, usize)), ("open", raw_open)] {
            let mut g = c.benchmark_group(format!("piece_body/{}/{op}", name(cipher)));
            for size in PIECE_BODIES {
                g.throughput(Throughput::Bytes(size as u64));
                bench(&mut g, cipher, size);
            }
            g.finish();
        }
    }
}

criterion_group!(benches, seal, open, piece_body);
criterion_main!(benches);

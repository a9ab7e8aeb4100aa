//! The handshake on a mesh connection's control stream (sans-IO): `Hello`s, then with a
//! password the PAKE key confirmations ([`super::auth`]).
//!
//! ```text
//! dialler                                   listener
//!   Hello (PAKE message X)  ──────────────►
//!                           ◄──────────────  Hello (PAKE message Y)
//!   Confirm (dialler's)     ──────────────►  verifies it, else Bye "wrong cluster password"
//!                           ◄──────────────  Confirm (listener's)
//! verifies it, else Bye
//! ```
//!
//! Both `Hello`s are sent at once. The listener confirms only after it has verified the
//! dialler, so a dialler without the password learns nothing but the refusal; a fake listener
//! gets the dialler's confirmation, which tests only the one guess its own PAKE message was made
//! with. Without a password on both ends there are no confirmations and the connection is up
//! after the `Hello`s (the mesh is open); a password on one end only is refused by both.
//!
//! The caller sends [`Handshake::start`]'s `Hello`, then feeds each received frame (at most
//! [`HANDSHAKE_MESSAGE_LEN`](super::proto::HANDSHAKE_MESSAGE_LEN) bytes) to
//! [`Handshake::handle`] and sends what it returns, until it returns the authenticated peer or
//! a [`Failure`]; a failure carries the `Bye` to send the peer, if any. Nothing the peer sent is
//! handed on before the peer is authenticated.

use super::auth::{self, End, Pake, PakeError, PasswordKey, SessionKeys};
use super::proto::{Hello, LEN_FIELD, Message, ProtoError};
use crate::peer::PeerName;

/// Why a handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The peer's key confirmation does not verify: it has another password, or is a man in the
    /// middle.
    #[error("wrong cluster password")]
    WrongPassword,
    /// We have a password and the peer has none.
    #[error("peer has no cluster password but this router requires one")]
    PeerHasNoPassword,
    /// The peer has a password and we have none.
    #[error("peer requires a cluster password but this router has none")]
    PeerNeedsPassword,
    /// We dialled ourselves.
    #[error("connected to itself")]
    Itself,
    /// The peer closed with this reason (its `Bye`).
    #[error("peer refused us: {0}")]
    Refused(String),
    /// A message out of order.
    #[error("expected {expected}, got {got}")]
    Unexpected {
        /// What the handshake waited for.
        expected: &'static str,
        /// What came.
        got: &'static str,
    },
    /// An unreadable message, or another protocol version.
    #[error(transparent)]
    Proto(#[from] ProtoError),
    /// The peer's PAKE message is malformed.
    #[error(transparent)]
    Pake(#[from] PakeError),
}

impl HandshakeError {
    /// Whether this failure was a password attempt (counted against the source's attempts).
    pub fn password_attempt(&self) -> bool {
        matches!(self, HandshakeError::WrongPassword | HandshakeError::Pake(_))
    }
}

/// A failed handshake.
#[derive(Debug)]
pub struct Failure {
    /// The peer, if it said who it is.
    pub peer: Option<PeerName>,
    /// Why.
    pub error: HandshakeError,
    /// What to tell the peer before closing.
    pub bye: Option<Message>,
}

/// An authenticated peer.
#[derive(Debug)]
pub struct Authenticated {
    /// Its `Hello`.
    pub peer: Hello,
    /// The PAKE session's keys, with a password.
    pub keys: Option<SessionKeys>,
}

/// What to do after a frame.
#[derive(Debug, Default)]
pub struct Step {
    /// A message to send now.
    pub send: Option<Message>,
    /// The peer, once authenticated (after `send` is sent).
    pub done: Option<Authenticated>,
}

enum State {
    Hello(Option<Pake>),
    Confirm { peer: Hello, keys: Box<SessionKeys> },
    Done,
}

/// One end's handshake.
pub struct Handshake {
    end: End,
    name: PeerName,
    hello: Vec<u8>,
    state: State,
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshake").field("end", &self.end).field("name", &self.name).finish_non_exhaustive()
    }
}

impl Handshake {
    /// Starts the handshake of `end` on the connection whose exporter value (label
    /// [`auth::AUTH_LABEL`]) is `exporter`. `hello` is ours without its PAKE fields, which are
    /// filled in here; returns the handshake and the `Hello` to send.
    pub fn start(mut hello: Hello, password: Option<&PasswordKey>, end: End, exporter: &[u8; 32]) -> (Handshake, Message) {
        let pake = password.map(|k| Pake::start(k, exporter));
        hello.password = pake.is_some();
        hello.pake = pake.as_ref().map(|(_, m)| m.clone()).unwrap_or_default();
        let name = hello.name;
        let msg = Message::Hello(hello);
        let body = msg.to_bytes().split_off(LEN_FIELD);
        let hs = Handshake { end, name, hello: body, state: State::Hello(pake.map(|(p, _)| p)) };
        (hs, msg)
    }

    /// Handles one received frame (the bytes after its length field).
    pub fn handle(&mut self, frame: &[u8]) -> Result<Step, Failure> {
        let mut peer_name = match &self.state {
            State::Confirm { peer, .. } => Some(peer.name),
            _ => None,
        };
        let r = self.step(frame, &mut peer_name);
        r.map_err(|error| {
            self.state = State::Done;
            let bye = match &error {
                HandshakeError::Refused(_) => None,
                e => Some(Message::Bye(reason(e))),
            };
            Failure { peer: peer_name, error, bye }
        })
    }

    fn step(&mut self, frame: &[u8], peer_name: &mut Option<PeerName>) -> Result<Step, HandshakeError> {
        let msg = Message::decode(frame)?;
        if let Message::Bye(reason) = msg {
            return Err(HandshakeError::Refused(reason));
        }
        match (std::mem::replace(&mut self.state, State::Done), msg) {
            (State::Hello(pake), Message::Hello(peer)) => {
                *peer_name = Some(peer.name);
                if peer.name == self.name {
                    return Err(HandshakeError::Itself);
                }
                let pake = match (pake, peer.password) {
                    (Some(p), true) => p,
                    (Some(_), false) => return Err(HandshakeError::PeerHasNoPassword),
                    (None, true) => return Err(HandshakeError::PeerNeedsPassword),
                    (None, false) => return Ok(Step { send: None, done: Some(Authenticated { peer, keys: None }) }),
                };
                let transcript = match self.end {
                    End::Dialer => auth::transcript_hash(&self.hello, frame),
                    End::Listener => auth::transcript_hash(frame, &self.hello),
                };
                let keys = pake.finish(&peer.pake, &transcript)?;
                let send = (self.end == End::Dialer).then(|| Message::Confirm(keys.confirmation(End::Dialer)));
                self.state = State::Confirm { peer, keys: Box::new(keys) };
                Ok(Step { send, done: None })
            }
            (State::Confirm { peer, keys }, Message::Confirm(tag)) => {
                if !keys.verify(self.end.peer(), &tag) {
                    return Err(HandshakeError::WrongPassword);
                }
                let send = (self.end == End::Listener).then(|| Message::Confirm(keys.confirmation(End::Listener)));
                Ok(Step { send, done: Some(Authenticated { peer, keys: Some(*keys) }) })
            }
            (State::Hello(_), m) => Err(HandshakeError::Unexpected { expected: "hello", got: m.kind_name() }),
            (State::Confirm { .. }, m) => Err(HandshakeError::Unexpected { expected: "confirm", got: m.kind_name() }),
            (State::Done, m) => Err(HandshakeError::Unexpected { expected: "nothing", got: m.kind_name() }),
        }
    }
}

/// An error and its causes on one line (`outer: cause: cause`), for reasons shown to operators
/// and sent to peers.
pub fn reason(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::auth::{CONFIRM_LEN, PAKE_MESSAGE_LEN};
    use ring::{hkdf, hmac};
    use sha2::{Digest, Sha256};
    use spake2::{Ed25519Group as G, Group};

    const EXPORTER: [u8; 32] = [0x42; 32];

    fn hello(n: u8) -> Hello {
        Hello { name: PeerName([0x0e, 0, 0, 0, 0, n]), incarnation: 1, nickname: format!("host{n}"), sleeve_port: 6784, sleeve_index: u32::from(n), password: false, pake: vec![] }
    }

    fn start(n: u8, password: Option<&[u8]>, end: End) -> (Handshake, Vec<u8>) {
        let (h, m) = Handshake::start(hello(n), password.map(PasswordKey::new).as_ref(), end, &EXPORTER);
        (h, m.to_bytes())
    }

    /// What each end sent (whole frames), and how each ended.
    struct Run {
        dialer_sent: Vec<Vec<u8>>,
        listener_sent: Vec<Vec<u8>>,
        dialer: Result<Authenticated, Failure>,
        listener: Result<Authenticated, Failure>,
    }

    /// Runs two handshakes against each other in process, as the endpoint drives them: both
    /// `Hello`s at once, then each frame answered in order; a failure sends its `Bye`.
    fn run(d: (Handshake, Vec<u8>), l: (Handshake, Vec<u8>)) -> Run {
        let (mut dh, dhello) = d;
        let (mut lh, lhello) = l;
        let mut sent = [vec![dhello], vec![lhello]];
        let mut read = [0usize; 2];
        let mut result: [Option<Result<Authenticated, Failure>>; 2] = [None, None];
        for _ in 0..10 {
            for me in 0..2 {
                let other = 1 - me;
                while result[me].is_none() && read[me] < sent[other].len() {
                    let frame = sent[other][read[me]].clone();
                    read[me] += 1;
                    let hs = if me == 0 { &mut dh } else { &mut lh };
                    match hs.handle(&frame[LEN_FIELD..]) {
                        Ok(step) => {
                            sent[me].extend(step.send.map(|m| m.to_bytes()));
                            if let Some(a) = step.done {
                                result[me] = Some(Ok(a));
                            }
                        }
                        Err(f) => {
                            sent[me].extend(f.bye.as_ref().map(Message::to_bytes));
                            result[me] = Some(Err(f));
                        }
                    }
                }
            }
        }
        let [ds, ls] = sent;
        let [dr, lr] = result;
        Run { dialer_sent: ds, listener_sent: ls, dialer: dr.expect("the dialler finished"), listener: lr.expect("the listener finished") }
    }

    fn pake_message(frame: &[u8]) -> Vec<u8> {
        match Message::decode(&frame[LEN_FIELD..]).unwrap() {
            Message::Hello(h) => h.pake,
            m => panic!("expected a hello, got {m:?}"),
        }
    }

    fn failed(r: &Result<Authenticated, Failure>) -> String {
        match r {
            Ok(a) => panic!("authenticated {:?}", a.peer.name),
            Err(f) => reason(&f.error),
        }
    }

    #[test]
    fn the_same_password_authenticates_both_ends_with_one_sleeve_mix() {
        let r = run(start(1, Some(b"s3cret"), End::Dialer), start(2, Some(b"s3cret"), End::Listener));
        let (d, l) = (r.dialer.unwrap(), r.listener.unwrap());
        assert_eq!((d.peer.name, l.peer.name), (hello(2).name, hello(1).name));
        assert_eq!(d.keys.unwrap().sleeve_mix(), l.keys.unwrap().sleeve_mix());
        assert_eq!((r.dialer_sent.len(), r.listener_sent.len()), (2, 2), "a hello and a confirmation each");

        let r = run(start(1, None, End::Dialer), start(2, None, End::Listener));
        assert!(r.dialer.unwrap().keys.is_none() && r.listener.unwrap().keys.is_none(), "an open mesh has no PAKE");
        assert_eq!((r.dialer_sent.len(), r.listener_sent.len()), (1, 1));
    }

    #[test]
    fn mismatches_are_refused_on_both_ends_with_their_reason() {
        let r = run(start(1, Some(b"wrong!"), End::Dialer), start(2, Some(b"s3cret"), End::Listener));
        assert_eq!(failed(&r.listener), "wrong cluster password");
        assert!(r.listener.as_ref().err().unwrap().error.password_attempt());
        assert_eq!(r.listener.as_ref().err().unwrap().peer, Some(hello(1).name));
        assert_eq!(failed(&r.dialer), "peer refused us: wrong cluster password");

        let r = run(start(1, Some(b"s3cret"), End::Dialer), start(2, Some(b"wrong!"), End::Listener));
        assert_eq!(failed(&r.listener), "wrong cluster password", "the listener verifies first");
        assert_eq!(failed(&r.dialer), "peer refused us: wrong cluster password");

        let r = run(start(1, None, End::Dialer), start(2, Some(b"pw"), End::Listener));
        assert_eq!(failed(&r.listener), "peer has no cluster password but this router requires one");
        assert!(failed(&r.dialer).contains("password"));
        assert!(!r.listener.as_ref().err().unwrap().error.password_attempt());
        let r = run(start(1, Some(b"pw"), End::Dialer), start(2, None, End::Listener));
        assert_eq!(failed(&r.listener), "peer requires a cluster password but this router has none");

        let r = run(start(1, Some(b"pw"), End::Dialer), start(1, Some(b"pw"), End::Listener));
        assert!(failed(&r.dialer).contains("connected to itself"));

        // Anything but a hello first, or anything but a confirmation next, is refused.
        let (mut l, _) = start(2, Some(b"pw"), End::Listener);
        let e = l.handle(&Message::Gossip(vec![1]).to_bytes()[LEN_FIELD..]).unwrap_err();
        assert_eq!(reason(&e.error), "expected hello, got gossip");
        assert!(matches!(e.bye, Some(Message::Bye(ref b)) if b == "expected hello, got gossip"));
        let (mut l, _) = start(2, Some(b"pw"), End::Listener);
        let (_, d_hello) = start(1, Some(b"pw"), End::Dialer);
        assert!(l.handle(&d_hello[LEN_FIELD..]).unwrap().send.is_none(), "the listener waits for the dialler's confirmation");
        let e = l.handle(&Message::Gossip(vec![1]).to_bytes()[LEN_FIELD..]).unwrap_err();
        assert_eq!(reason(&e.error), "expected confirm, got gossip");

        // A malformed PAKE message is a failed attempt.
        let (mut l, _) = start(2, Some(b"pw"), End::Listener);
        let mut h = hello(1);
        h.password = true;
        h.pake = vec![b'S'; PAKE_MESSAGE_LEN];
        h.pake[1..].fill(0);
        h.pake[1] = 2; // y = 2 is no curve point
        assert!(<G as Group>::bytes_to_element(&h.pake[1..]).is_none());
        let e = l.handle(&Message::Hello(h).to_bytes()[LEN_FIELD..]).unwrap_err();
        assert_eq!(reason(&e.error), "malformed PAKE message: corrupt message");
        assert!(e.error.password_attempt());
    }

    #[test]
    fn a_version_1_peer_is_told_apart_from_a_misparse() {
        let (mut l, _) = start(2, Some(b"pw"), End::Listener);
        let e = l.handle(&v1_hello(&[7; 32])).unwrap_err();
        assert_eq!(reason(&e.error), "peer speaks mesh protocol version 1, we speak 2");
    }

    // ---- A party without the password, and what it can learn from one attempt. ----

    /// A version 1 `Hello` frame body: its last field was the password proof.
    fn v1_hello(proof: &[u8; 32]) -> Vec<u8> {
        let h = hello(1);
        let mut b = vec![1, 1];
        b.extend_from_slice(&h.name.0);
        b.extend_from_slice(&h.incarnation.to_be_bytes());
        b.extend_from_slice(&h.sleeve_port.to_be_bytes());
        b.extend_from_slice(&h.sleeve_index.to_be_bytes());
        b.push(1);
        b.push(h.nickname.len() as u8);
        b.extend_from_slice(h.nickname.as_bytes());
        b.push(32);
        b.extend_from_slice(proof);
        b
    }

    /// The version 1 proof: `HMAC-SHA256(HKDF-SHA256(password), role || exporter)`.
    fn v1_proof(password: &[u8], end: End, exporter: &[u8; 32]) -> [u8; 32] {
        struct Len32;
        impl hkdf::KeyType for Len32 {
            fn len(&self) -> usize {
                32
            }
        }
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"weft mesh password v1").extract(password);
        let mut k = [0u8; 32];
        prk.expand(&[b"proof key"], Len32).unwrap().fill(&mut k).unwrap();
        let tag: &[u8] = if end == End::Dialer { b"weft proof: dialer" } else { b"weft proof: listener" };
        let mut out = [0u8; 32];
        out.copy_from_slice(hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &k), &[tag, exporter].concat()).as_ref());
        out
    }

    /// The attacker: its guess and the secret scalar it blinded its PAKE message with, which
    /// it keeps. It knows the exporter too (it is an end of the TLS session).
    struct Attacker {
        guess: Vec<u8>,
        y: <G as Group>::Scalar,
        message: Vec<u8>,
    }

    impl Attacker {
        fn new(guess: &[u8]) -> Attacker {
            let y = G::random_scalar(&mut rand_core::OsRng);
            let blind = G::scalarmult(&G::const_s(), &G::hash_to_scalar(PasswordKey::new(guess).pake_input()));
            let message = [&[b'S'][..], &G::element_to_bytes(&G::add(&G::basepoint_mult(&y), &blind))].concat();
            Attacker { guess: guess.to_vec(), y, message }
        }

        fn hello(&self, n: u8) -> Vec<u8> {
            Message::Hello(Hello { password: true, pake: self.message.clone(), ..hello(n) }).to_bytes()
        }

        /// The PAKE key the honest end derived, as far as the attacker can compute it under the
        /// assumption that the password is `candidate`: the Diffie-Hellman value it can form
        /// from its own secret and the honest message unblinded with the candidate, hashed as
        /// SPAKE2's symmetric mode does (`SHA256(SHA256(pw) || SHA256(id) || sorted messages ||
        /// K)`).
        fn pake_key(&self, candidate: &[u8], honest_message: &[u8]) -> Vec<u8> {
            let pw = PasswordKey::new(candidate);
            let x = G::bytes_to_element(&honest_message[1..]).expect("the honest message is a point");
            let unblind = G::scalarmult(&G::const_s(), &G::scalar_neg(&G::hash_to_scalar(pw.pake_input())));
            let k = G::element_to_bytes(&G::scalarmult(&G::add(&x, &unblind), &self.y));
            let (a, b) = (&honest_message[1..], &self.message[1..]);
            let (lo, hi) = if a < b { (a, b) } else { (b, a) };
            let mut h = Sha256::new();
            h.update(Sha256::digest(pw.pake_input()));
            h.update(Sha256::digest(auth::pake_identity(&EXPORTER)));
            h.update(lo);
            h.update(hi);
            h.update(&k);
            h.finalize().to_vec()
        }
    }

    /// The attacker's offline test of `candidate` against a recorded attempt: everything it can
    /// compute from the candidate (the v1 proofs; the v2 key confirmations of both ends under
    /// the PAKE key it can form for the candidate, and under the password alone as if it were
    /// the key) — does any of it occur in what the honest end sent?
    fn offline_test(attacker: Option<&Attacker>, honest_sent: &[Vec<u8>], dialer_hello: &[u8], listener_hello: &[u8], candidate: &[u8]) -> bool {
        let mut values: Vec<[u8; 32]> = vec![v1_proof(candidate, End::Dialer, &EXPORTER), v1_proof(candidate, End::Listener, &EXPORTER)];
        if let Some(a) = attacker {
            let honest_message = pake_message(&honest_sent[0]);
            let transcript = auth::transcript_hash(&dialer_hello[LEN_FIELD..], &listener_hello[LEN_FIELD..]);
            for key in [a.pake_key(candidate, &honest_message), PasswordKey::new(candidate).pake_input().to_vec()] {
                let keys = SessionKeys::derive(&key, &EXPORTER, &transcript);
                values.push(keys.confirmation(End::Dialer));
                values.push(keys.confirmation(End::Listener));
            }
        }
        let sent = honest_sent.concat();
        values.iter().any(|v| sent.windows(CONFIRM_LEN).any(|w| w == v))
    }

    #[test]
    fn a_recorded_attempt_without_the_password_lets_no_guess_be_tested_offline() {
        let (right, wrong, guess): (&[u8], &[u8], &[u8]) = (b"the cluster's password", b"another password", b"the attacker's guess");

        // Version 1, for contrast: the dialler's hello carried its proof, so a fake listener
        // tells the right password from a wrong one offline.
        let recorded = vec![[&[0, 0, 0, 0][..], &v1_hello(&v1_proof(right, End::Dialer, &EXPORTER))].concat()];
        assert!(offline_test(None, &recorded, &recorded[0], &[], right), "the v1 proof confirms the right password");
        assert!(!offline_test(None, &recorded, &recorded[0], &[], wrong));

        for attacker_guess in [guess, right] {
            let lucky = attacker_guess == right;

            // The attacker listens (a fake listener, or one that answers a dialling router): it
            // gets the dialler's hello and confirmation.
            let a = Attacker::new(attacker_guess);
            let (mut d, d_hello) = start(1, Some(right), End::Dialer);
            let a_hello = a.hello(9);
            let step = d.handle(&a_hello[LEN_FIELD..]).unwrap();
            let confirm = step.send.expect("the dialler confirms after the listener's hello").to_bytes();
            let honest = vec![d_hello.clone(), confirm];
            for (candidate, confirms) in [(right, lucky), (wrong, false), (guess, false)] {
                assert_eq!(offline_test(Some(&a), &honest, &d_hello, &a_hello, candidate), confirms, "listening attacker guessed {:?}, tested {:?}", String::from_utf8_lossy(&a.guess), String::from_utf8_lossy(candidate));
            }

            // The attacker dials: it must confirm first, and gets a refusal or, with the right
            // guess, the listener's confirmation.
            let a = Attacker::new(attacker_guess);
            let (mut l, l_hello) = start(2, Some(right), End::Listener);
            let a_hello = a.hello(9);
            assert!(l.handle(&a_hello[LEN_FIELD..]).unwrap().send.is_none());
            let transcript = auth::transcript_hash(&a_hello[LEN_FIELD..], &l_hello[LEN_FIELD..]);
            let a_keys = SessionKeys::derive(&a.pake_key(attacker_guess, &pake_message(&l_hello)), &EXPORTER, &transcript);
            let mut honest = vec![l_hello.clone()];
            match l.handle(&Message::Confirm(a_keys.confirmation(End::Dialer)).to_bytes()[LEN_FIELD..]) {
                Ok(step) => {
                    assert!(lucky, "the listener accepted a wrong guess");
                    honest.push(step.send.unwrap().to_bytes());
                }
                Err(f) => {
                    assert!(!lucky && f.error.password_attempt(), "{:?}", f.error);
                    honest.push(f.bye.unwrap().to_bytes());
                }
            }
            for (candidate, confirms) in [(right, lucky), (wrong, false), (guess, false)] {
                assert_eq!(offline_test(Some(&a), &honest, &a_hello, &l_hello, candidate), confirms, "dialling attacker guessed {:?}, tested {:?}", String::from_utf8_lossy(&a.guess), String::from_utf8_lossy(candidate));
            }
        }

        // A passive observer of a successful handshake between two honest ends, knowing even
        // the exporter, has no secret scalar of its own: the v1 test finds nothing either.
        let r = run(start(1, Some(right), End::Dialer), start(2, Some(right), End::Listener));
        assert!(r.dialer.is_ok() && r.listener.is_ok());
        let all: Vec<Vec<u8>> = r.dialer_sent.iter().chain(&r.listener_sent).cloned().collect();
        assert!(!offline_test(None, &all, &r.dialer_sent[0], &r.listener_sent[0], right));
    }
}

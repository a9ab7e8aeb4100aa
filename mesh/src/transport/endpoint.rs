//! The QUIC driver: one endpoint on the mesh port, one connection per directly connected peer,
//! one bidirectional control stream per connection.
//!
//! A connection is handed to the router only after the handshake ([`super::handshake`]: both
//! `Hello`s and, with a password, the PAKE and both key confirmations) within
//! [`MeshConfig::handshake_timeout`] ([`Event::Up`]); a peer that fails is told why (`Bye`),
//! closed, reported in [`Event::Down`], and nothing it sent reaches the router. Afterwards every
//! control message arrives as [`Event::Message`], in order. The dialling end starts a new sleeve
//! epoch every [`MeshConfig::rekey_interval`]; both ends report the new secret as
//! [`Event::Rekey`].
//!
//! Before authentication a connection holds little: frames of at most
//! [`HANDSHAKE_MESSAGE_LEN`] bytes, a QUIC receive window of [`PRE_AUTH_WINDOW`] bytes (opened
//! to the full window once authenticated), no QUIC datagrams. Inbound connections must first
//! prove their source address (a QUIC retry), then pass [`admission`](super::admission): a
//! refused one is turned away before the TLS handshake and any PAKE work, and the refusal is
//! logged (rate-limited).
//!
//! A duplicate is refused as soon as the peer's `Hello` says who it is, before the PAKE: a
//! connection whose peer, address and incarnation are those of another authenticated
//! connection of this endpoint (not one still in its handshake, which may yet fail) is closed with a `Bye` when the other
//! was dialled by the peer with the smaller name and this one was not. Both ends
//! apply the same rule, so the connection the router would keep after its own duplicate
//! resolution is the one that comes up, and the loser never does (no `Up`, no topology churn).
//!
//! Closing is acknowledged: the closing end sends `Bye`, finishes its control stream and waits
//! for the peer to close the connection (which it does once it has read the `Bye`), or for the
//! peer's own `Bye`, at most [`MeshConfig::bye_timeout`]; a timeout is logged and the connection
//! closed anyway.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::admission::{Admission, Limits, Outcome};
use super::auth::{self, End, PasswordKey};
use super::handshake::{Handshake, reason};
use super::proto::{HANDSHAKE_MESSAGE_LEN, Hello, MAX_MESSAGE_LEN, Message, ProtoError};
use super::tls::{self, Credentials, TlsError};
use crate::peer::PeerName;
use crate::topology::Direction;

/// How the endpoint runs.
#[derive(Clone, Debug)]
pub struct MeshConfig {
    /// Our peer name.
    pub name: PeerName,
    /// Our nickname.
    pub nickname: String,
    /// Our incarnation.
    pub incarnation: u64,
    /// The cluster password's key, if there is a password.
    pub password: Option<PasswordKey>,
    /// Our sleeve's UDP port, announced to peers.
    pub sleeve_port: u16,
    /// Where to listen (UDP).
    pub listen: SocketAddr,
    /// How often the dialling end starts a new sleeve epoch.
    pub rekey_interval: Duration,
    /// Keep-alive on idle connections (default 400 ms: a fifth of `idle_timeout`, so a few
    /// lost packets do not kill a live connection).
    pub keep_alive: Duration,
    /// A connection silent this long is dead (default 2 s). QUIC counts the silence from the
    /// last packet received or the first keep-alive sent after it, so a dead peer is known
    /// within `idle_timeout + keep_alive` (2.4 s).
    pub idle_timeout: Duration,
    /// How long the QUIC handshake, and then the mesh handshake, may take each.
    pub handshake_timeout: Duration,
    /// How long a closing end waits for the peer to acknowledge its `Bye`.
    pub bye_timeout: Duration,
    /// Limits on inbound connections that are not yet authenticated.
    pub admission: Limits,
}

impl MeshConfig {
    /// Defaults for everything but identity and addresses.
    pub fn new(name: PeerName, nickname: String, incarnation: u64, listen: SocketAddr, sleeve_port: u16) -> MeshConfig {
        MeshConfig {
            name,
            nickname,
            incarnation,
            password: None,
            sleeve_port,
            listen,
            rekey_interval: Duration::from_secs(600),
            keep_alive: Duration::from_millis(400),
            idle_timeout: Duration::from_secs(2),
            handshake_timeout: Duration::from_secs(10),
            bye_timeout: Duration::from_secs(2),
            admission: Limits::default(),
        }
    }
}

/// What the sleeve needs for one connection.
#[derive(Clone, Debug)]
pub struct SleeveParams {
    /// The secret of epoch 0.
    pub secret: [u8; 32],
    /// Whether we dialled (the sleeve's initiator role).
    pub initiator: bool,
    /// The session index we chose.
    pub local_index: u32,
    /// The session index the peer chose.
    pub remote_index: u32,
    /// The peer's sleeve address: its address as this connection sees it, with its sleeve port.
    pub remote: SocketAddr,
}

/// An authenticated connection.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// Unique per endpoint.
    pub id: u64,
    /// The peer.
    pub peer: PeerName,
    /// Its nickname.
    pub nickname: String,
    /// Its incarnation.
    pub incarnation: u64,
    /// Its address as this connection sees it (the outside address of a NAT).
    pub remote: SocketAddr,
    /// Who dialled.
    pub direction: Direction,
    /// Keys and addresses for the sleeve.
    pub sleeve: SleeveParams,
}

/// Sends on, or closes, one connection.
#[derive(Clone, Debug)]
pub struct ConnHandle {
    tx: mpsc::UnboundedSender<Message>,
    conn: quinn::Connection,
    bye_timeout: Duration,
}

impl ConnHandle {
    /// Queues a message (dropped if the connection is gone).
    pub fn send(&self, msg: Message) {
        let _ = self.tx.send(msg);
    }

    /// Says why (`Bye`, after the messages already queued), then closes once the peer has
    /// acknowledged it or [`MeshConfig::bye_timeout`] has passed; [`ConnHandle::closed`] tells
    /// when. Should the `Bye` not even get out (the peer reads nothing), the connection is closed
    /// after twice that time.
    pub fn close(&self, reason: &str) {
        let _ = self.tx.send(Message::Bye(reason.to_owned()));
        let conn = self.conn.clone();
        let limit = self.bye_timeout * 2;
        tokio::spawn(async move {
            if tokio::time::timeout(limit, conn.closed()).await.is_err() {
                tracing::warn!(remote = %conn.remote_address(), "bye not delivered within {limit:?}: closing the connection");
                conn.close(1u32.into(), b"bye");
            }
        });
    }

    /// Completes when the connection is closed, by either end.
    pub async fn closed(&self) {
        self.conn.closed().await;
    }

    /// The smoothed round-trip time QUIC measures.
    pub fn rtt(&self) -> Duration {
        self.conn.rtt()
    }

    /// UDP datagrams received on this connection so far (keep-alives included): whether the
    /// peer is still heard, whatever the sleeve says.
    pub fn datagrams_received(&self) -> u64 {
        self.conn.stats().udp_rx.datagrams
    }
}

/// What the endpoint reports.
#[derive(Debug)]
pub enum Event {
    /// A connection is authenticated and up.
    Up(ConnInfo, ConnHandle),
    /// A message on an up connection.
    Message {
        /// The connection.
        id: u64,
        /// From whom.
        peer: PeerName,
        /// The message.
        msg: Message,
    },
    /// A new sleeve secret for a connection.
    Rekey {
        /// The connection.
        id: u64,
        /// The peer.
        peer: PeerName,
        /// The secret's epoch.
        epoch: u64,
        /// The secret.
        secret: [u8; 32],
    },
    /// A connection (or an attempt) ended.
    Down {
        /// The connection, if it had come up.
        id: Option<u64>,
        /// The peer, if it said who it is.
        peer: Option<PeerName>,
        /// The remote address (for a dial, the address dialled).
        remote: SocketAddr,
        /// Who dialled.
        direction: Direction,
        /// Why.
        reason: String,
    },
}

/// Why the endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// TLS setup.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The UDP socket.
    #[error("mesh socket {addr}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

struct Shared {
    config: MeshConfig,
    events: mpsc::UnboundedSender<Event>,
    next_id: AtomicU64,
    admission: Mutex<Admission>,
    /// Connections past the peer's `Hello`, for the early duplicate check.
    past_hello: Mutex<Vec<(u64, Said, bool)>>,
}

impl Shared {
    fn admission(&self) -> std::sync::MutexGuard<'_, Admission> {
        // The admission state stays consistent even if a holder panicked mid-update: counters only.
        self.admission.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn past_hello(&self) -> std::sync::MutexGuard<'_, Vec<(u64, Said, bool)>> {
        // A list of entries, each pushed or removed whole: consistent after a panic.
        self.past_hello.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// What a connection's `Hello` said, and where it came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Said {
    peer: PeerName,
    remote: SocketAddr,
    incarnation: u64,
    direction: Direction,
}

/// Whether connection `new` is a duplicate that loses to one of `others` (connections past their
/// `Hello`): same peer, address and incarnation, the other dialled by the peer with the smaller
/// name (of `me` and the peer) and `new` not. The router's own resolution of two connections up
/// at once decides the same way, so refusing `new` early changes which connection stays in no
/// case, only how soon the loser is gone.
fn loses_to<'a>(me: PeerName, new: &Said, others: impl IntoIterator<Item = &'a Said>) -> bool {
    let dialler = |s: &Said| if s.direction == Direction::Outbound { me } else { s.peer };
    let preferred = me.min(new.peer);
    dialler(new) != preferred
        && others.into_iter().any(|o| o.peer == new.peer && o.remote == new.remote && o.incarnation == new.incarnation && dialler(o) == preferred)
}

/// A connection's place in [`Shared::past_hello`], given up when dropped.
struct Claim {
    shared: Arc<Shared>,
    token: u64,
}

impl Claim {
    /// The connection is authenticated: from now on it wins over a duplicate at its `Hello`.
    fn up(&self) {
        if let Some(e) = self.shared.past_hello().iter_mut().find(|(t, _, _)| *t == self.token) {
            e.2 = true;
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.shared.past_hello().retain(|(t, _, _)| *t != self.token);
    }
}

/// An admitted inbound handshake; releases its place when dropped.
struct Ticket {
    shared: Arc<Shared>,
    remote: SocketAddr,
    outcome: Outcome,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(blocked) = self.shared.admission().release(self.remote.ip(), self.outcome, Instant::now()) {
            tracing::warn!(remote = %self.remote, "refusing further mesh connections: {blocked}");
        }
    }
}

/// Why a handshake failed.
struct Refused {
    peer: Option<PeerName>,
    reason: String,
    password_attempt: bool,
}

impl Refused {
    fn other(reason: impl Into<String>) -> Refused {
        Refused { peer: None, reason: reason.into(), password_attempt: false }
    }
}

/// How the reason of a duplicate refused at its `Hello` begins.
pub const DUPLICATE: &str = "duplicate connection refused at its hello";

/// The QUIC connection-level receive window before authentication.
pub const PRE_AUTH_WINDOW: u32 = 16 * 1024;

/// The mesh endpoint.
#[derive(Clone)]
pub struct MeshEndpoint {
    endpoint: quinn::Endpoint,
    shared: Arc<Shared>,
}

impl MeshEndpoint {
    /// Binds the endpoint and starts accepting; events go to the returned receiver. Must run
    /// inside a tokio runtime.
    pub fn start(config: MeshConfig, creds: &Credentials) -> Result<(MeshEndpoint, mpsc::UnboundedReceiver<Event>), EndpointError> {
        let socket = std::net::UdpSocket::bind(config.listen).map_err(|source| EndpointError::Bind { addr: config.listen, source })?;
        Self::start_on(socket, config, creds)
    }

    /// As [`start`](Self::start), on a socket the caller bound (e.g. inside a network namespace).
    pub fn start_on(socket: std::net::UdpSocket, config: MeshConfig, creds: &Credentials) -> Result<(MeshEndpoint, mpsc::UnboundedReceiver<Event>), EndpointError> {
        let addr = socket.local_addr().unwrap_or(config.listen);
        let transport = tls::transport(config.keep_alive, config.idle_timeout, PRE_AUTH_WINDOW)?;
        let server = tls::server_config(creds, transport.clone())?;
        let runtime = quinn::default_runtime().ok_or_else(|| EndpointError::Bind { addr, source: std::io::Error::other("no async runtime") })?;
        let mut endpoint = quinn::Endpoint::new(quinn::EndpointConfig::default(), Some(server), socket, runtime).map_err(|source| EndpointError::Bind { addr, source })?;
        endpoint.set_default_client_config(tls::client_config(transport)?);
        let (tx, rx) = mpsc::unbounded_channel();
        let admission = Mutex::new(Admission::new(config.admission.clone()));
        let shared = Arc::new(Shared { config, events: tx, next_id: AtomicU64::new(1), admission, past_hello: Mutex::new(Vec::new()) });
        let me = MeshEndpoint { endpoint, shared };
        let acceptor = me.clone();
        tokio::spawn(async move { acceptor.accept_loop().await });
        Ok((me, rx))
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// Whether an inbound connection from `ip` is being handshaken now (admitted, not yet
    /// authenticated): dialling that address would only race it.
    pub fn handshaking_with(&self, ip: std::net::IpAddr) -> bool {
        self.shared.admission().pending_from(ip) > 0
    }

    /// Dials `addr`; the outcome arrives as [`Event::Up`] or [`Event::Down`].
    pub fn connect(&self, addr: SocketAddr) {
        self.connect_within(addr, self.shared.config.handshake_timeout)
    }

    /// Dials `addr`, giving up when the QUIC handshake has not completed within `timeout` (a
    /// redial soon after is likelier to reach a peer that has just restarted than the late
    /// retransmissions of a long handshake); otherwise as [`connect`](Self::connect).
    pub fn connect_within(&self, addr: SocketAddr, timeout: Duration) {
        let me = self.clone();
        tokio::spawn(async move {
            let result = match me.endpoint.connect(addr, tls::SERVER_NAME) {
                Ok(connecting) => match tokio::time::timeout(timeout, connecting).await {
                    Ok(Ok(conn)) => Ok(conn),
                    Ok(Err(quinn::ConnectionError::ConnectionClosed(c))) if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED => Err(
                        "peer refused the connection before the handshake (too many failed password attempts from this address, or too many unauthenticated connections; see its log)".to_owned(),
                    ),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("no answer (QUIC handshake timed out)".to_owned()),
                },
                Err(e) => Err(e.to_string()),
            };
            match result {
                Ok(conn) => me.run(conn, Direction::Outbound, None).await,
                Err(reason) => {
                    let _ = me.shared.events.send(Event::Down { id: None, peer: None, remote: addr, direction: Direction::Outbound, reason });
                }
            }
        });
    }

    /// Closes every connection (peers are told) and stops accepting.
    pub async fn shutdown(&self) {
        self.endpoint.close(2u32.into(), b"peer shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
    }

    async fn accept_loop(self) {
        while let Some(incoming) = self.endpoint.accept().await {
            let remote = incoming.remote_address();
            // A source address must be proved (one round trip, no state kept here) before it is
            // counted against its limits: nobody can use them up with spoofed packets.
            if !incoming.remote_address_validated() && incoming.may_retry() {
                if let Err(e) = incoming.retry() {
                    e.into_incoming().ignore();
                }
                continue;
            }
            let admitted = self.shared.admission().admit(remote.ip(), Instant::now());
            if let Err((refusal, log)) = admitted {
                if log {
                    tracing::warn!(%remote, "refusing mesh connection before the handshake: {refusal}");
                } else {
                    tracing::debug!(%remote, "refusing mesh connection before the handshake: {refusal}");
                }
                incoming.refuse();
                continue;
            }
            let ticket = Ticket { shared: self.shared.clone(), remote, outcome: Outcome::Other };
            let me = self.clone();
            tokio::spawn(async move {
                let accepted = match incoming.accept() {
                    Ok(connecting) => tokio::time::timeout(me.shared.config.handshake_timeout, connecting).await.unwrap_or_else(|_| Err(quinn::ConnectionError::TimedOut)),
                    Err(e) => Err(e),
                };
                match accepted {
                    Ok(conn) => me.run(conn, Direction::Inbound, Some(ticket)).await,
                    Err(e) => tracing::info!(%remote, "inbound mesh connection failed: {e}"),
                }
            });
        }
    }

    async fn run(self, conn: quinn::Connection, direction: Direction, mut ticket: Option<Ticket>) {
        let remote = conn.remote_address();
        let events = self.shared.events.clone();
        match self.handshake(&conn, direction).await {
            Err(Refused { peer, reason, .. }) if reason.contains(DUPLICATE) => {
                tracing::info!(%remote, peer = ?peer, "{reason}");
                conn.close(3u32.into(), reason.as_bytes());
                drop(ticket);
                let _ = events.send(Event::Down { id: None, peer, remote, direction, reason });
            }
            Err(Refused { peer, reason, password_attempt }) => {
                tracing::warn!(%remote, peer = ?peer, "mesh connection refused: {reason}");
                conn.close(3u32.into(), reason.as_bytes());
                if let Some(t) = ticket.as_mut().filter(|_| password_attempt) {
                    t.outcome = Outcome::PasswordFailed;
                }
                drop(ticket);
                let _ = events.send(Event::Down { id: None, peer, remote, direction, reason });
            }
            Ok((info, send, recv, mix, _claim)) => {
                drop(ticket);
                conn.set_receive_window(quinn::VarInt::MAX);
                let reason = self.serve(conn.clone(), info.clone(), send, recv, mix).await;
                tracing::info!(peer = %info.peer, nickname = %info.nickname, %remote, "mesh connection down: {reason}");
                conn.close(0u32.into(), b"");
                let _ = events.send(Event::Down { id: Some(info.id), peer: Some(info.peer), remote, direction, reason });
            }
        }
    }

    fn exporter(conn: &quinn::Connection, label: &[u8], context: &[u8]) -> Result<[u8; 32], String> {
        let mut out = [0u8; 32];
        conn.export_keying_material(&mut out, label, context).map_err(|e| format!("TLS exporter: {e:?}"))?;
        Ok(out)
    }

    /// Whether connection `new` loses to another past its `Hello` (see [`loses_to`]); if not,
    /// it is listed among them until the returned claim is dropped.
    fn claim(&self, new: Said) -> Result<Claim, ()> {
        let mut list = self.shared.past_hello();
        // Only an authenticated connection wins early: one still in its handshake may yet fail
        // (a dial the peer gave up on), and the duplicate must not be refused in its favour.
        if loses_to(self.shared.config.name, &new, list.iter().filter(|(_, _, up)| *up).map(|(_, s, _)| s)) {
            return Err(());
        }
        let token = self.shared.next_id.fetch_add(1, Ordering::Relaxed);
        list.push((token, new, false));
        Ok(Claim { shared: self.shared.clone(), token })
    }

    #[allow(clippy::type_complexity)]
    async fn handshake(&self, conn: &quinn::Connection, direction: Direction) -> Result<(ConnInfo, quinn::SendStream, quinn::RecvStream, Option<[u8; 32]>, Claim), Refused> {
        let cfg = &self.shared.config;
        let outbound = direction == Direction::Outbound;
        let end = if outbound { End::Dialer } else { End::Listener };
        let exporter = Self::exporter(conn, auth::AUTH_LABEL, b"").map_err(Refused::other)?;
        let local_index = random_u32();
        let ours = Hello {
            name: cfg.name,
            incarnation: cfg.incarnation,
            nickname: cfg.nickname.clone(),
            sleeve_port: cfg.sleeve_port,
            sleeve_index: local_index,
            password: false,
            pake: Vec::new(),
        };
        let (mut hs, hello) = Handshake::start(ours, cfg.password.as_ref(), end, &exporter);
        let remote = conn.remote_address();
        let exchange = async {
            let mut claim = None;
            let (mut send, mut recv) = if outbound { conn.open_bi().await } else { conn.accept_bi().await }.map_err(|e| Refused::other(e.to_string()))?;
            send.write_all(&hello.to_bytes()).await.map_err(|e| Refused::other(e.to_string()))?;
            loop {
                let frame = read_frame(&mut recv, HANDSHAKE_MESSAGE_LEN).await;
                // The peer's Hello says who it is: a duplicate goes now, before the PAKE.
                if claim.is_none()
                    && let Ok(Some(f)) = &frame
                    && let Ok(Message::Hello(h)) = Message::decode(f)
                {
                    let said = Said { peer: h.name, remote, incarnation: h.incarnation, direction };
                    match self.claim(said) {
                        Ok(c) => claim = Some(c),
                        Err(()) => {
                            let why = format!("{DUPLICATE} (the connection dialled by the peer with the smaller name is kept)");
                            let refused = Refused { peer: Some(h.name), reason: why.clone(), password_attempt: false };
                            self.say_bye(conn, &mut send, Message::Bye(why)).await;
                            return Err(refused);
                        }
                    }
                }
                let (result, bye) = match frame {
                    Ok(Some(frame)) => match hs.handle(&frame) {
                        Ok(step) => {
                            if let Some(m) = step.send {
                                send.write_all(&m.to_bytes()).await.map_err(|e| Refused::other(e.to_string()))?;
                            }
                            match (step.done, claim.take()) {
                                (Some(a), Some(c)) => return Ok((send, recv, a, c)),
                                (Some(_), None) => return Err(Refused::other("protocol error: authenticated without a hello")),
                                (None, c) => {
                                    claim = c;
                                    continue;
                                }
                            }
                        }
                        Err(f) => (Refused { peer: f.peer, reason: reason(&f.error), password_attempt: f.error.password_attempt() }, f.bye),
                    },
                    Ok(None) => (Refused::other("peer closed the control stream during the handshake"), None),
                    Err(ReadError::Proto(e)) => (Refused::other(e.to_string()), Some(Message::Bye(e.to_string()))),
                    Err(e) => (Refused::other(reason(&e)), None),
                };
                if let Some(bye) = bye {
                    self.say_bye(conn, &mut send, bye).await;
                }
                return Err(result);
            }
        };
        let (send, recv, peer, claim) = match tokio::time::timeout(cfg.handshake_timeout, exchange).await {
            Ok(r) => r?,
            Err(_) => return Err(Refused::other("mesh handshake timed out")),
        };
        let mix = peer.keys.as_ref().map(|k| *k.sleeve_mix());
        let peer = peer.peer;
        let secret = Self::sleeve_secret(conn, mix.as_ref(), 0).map_err(|reason| Refused { peer: Some(peer.name), reason, password_attempt: false })?;
        let remote = conn.remote_address();
        let info = ConnInfo {
            id: self.shared.next_id.fetch_add(1, Ordering::Relaxed),
            peer: peer.name,
            nickname: peer.nickname,
            incarnation: peer.incarnation,
            remote,
            direction,
            sleeve: SleeveParams { secret, initiator: outbound, local_index, remote_index: peer.sleeve_index, remote: SocketAddr::new(remote.ip(), peer.sleeve_port) },
        };
        claim.up();
        Ok((info, send, recv, mix, claim))
    }

    /// Sends `bye` during the handshake and waits until the peer has it (QUIC acknowledges the
    /// finished stream) or has closed the connection, at most [`MeshConfig::bye_timeout`].
    async fn say_bye(&self, conn: &quinn::Connection, send: &mut quinn::SendStream, bye: Message) {
        let _ = send.write_all(&bye.to_bytes()).await;
        let _ = send.finish();
        let acknowledged = async {
            tokio::select! {
                _ = send.stopped() => {}
                _ = conn.closed() => {}
            }
        };
        if tokio::time::timeout(self.shared.config.bye_timeout, acknowledged).await.is_err() {
            tracing::info!(remote = %conn.remote_address(), "the refused peer did not close within {:?}", self.shared.config.bye_timeout);
        }
    }

    fn sleeve_secret(conn: &quinn::Connection, mix: Option<&[u8; 32]>, epoch: u64) -> Result<[u8; 32], String> {
        let x = Self::exporter(conn, auth::SLEEVE_LABEL, &auth::epoch_context(epoch))?;
        Ok(auth::sleeve_secret(&x, mix))
    }

    /// Runs an up connection until it ends; returns why it ended.
    async fn serve(&self, conn: quinn::Connection, info: ConnInfo, mut send: quinn::SendStream, mut recv: quinn::RecvStream, mix: Option<[u8; 32]>) -> String {
        let events = &self.shared.events;
        let cfg = &self.shared.config;
        let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
        let handle = ConnHandle { tx: tx.clone(), conn: conn.clone(), bye_timeout: cfg.bye_timeout };
        // Set once our Bye is out: the connection then ends with its reason, however the peer's
        // acknowledgement shows (it closes, its own Bye, its stream ends) or the wait times out.
        let bye: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        tracing::info!(peer = %info.peer, nickname = %info.nickname, remote = %info.remote, direction = ?info.direction, authenticated = cfg.password.is_some(), "mesh connection up");
        let _ = events.send(Event::Up(info.clone(), handle));
        let writer = async {
            let mut buf = Vec::new();
            while let Some(m) = rx.recv().await {
                buf.clear();
                m.encode(&mut buf);
                if let Err(e) = send.write_all(&buf).await {
                    return Some(format!("send: {e}"));
                }
                if let Message::Bye(reason) = m {
                    let _ = send.finish();
                    let _ = bye.set(reason);
                    tokio::time::sleep(cfg.bye_timeout).await;
                    return None;
                }
            }
            Some("closed by this router".to_owned())
        };
        let initiator = info.direction == Direction::Outbound;
        let rekeyer = async {
            let mut epoch = 0u64;
            loop {
                tokio::time::sleep(cfg.rekey_interval).await;
                if initiator {
                    epoch += 1;
                    let _ = tx.send(Message::Rekey(epoch));
                    match Self::sleeve_secret(&conn, mix.as_ref(), epoch) {
                        Ok(secret) => {
                            let _ = events.send(Event::Rekey { id: info.id, peer: info.peer, epoch, secret });
                        }
                        Err(e) => return e,
                    }
                }
            }
        };
        let reader = async {
            loop {
                match read_message(&mut recv).await {
                    Ok(Some(Message::Bye(reason))) => return format!("peer closed: {reason}"),
                    Ok(Some(m @ (Message::Hello(_) | Message::Confirm(_)))) => return format!("protocol error: a {} after the handshake", m.kind_name()),
                    Ok(Some(Message::Rekey(epoch))) if !initiator => match Self::sleeve_secret(&conn, mix.as_ref(), epoch) {
                        Ok(secret) => {
                            let _ = events.send(Event::Rekey { id: info.id, peer: info.peer, epoch, secret });
                        }
                        Err(e) => return e,
                    },
                    Ok(Some(Message::Rekey(_))) => return "protocol error: rekey from the listening end".to_owned(),
                    Ok(Some(msg)) => {
                        let _ = events.send(Event::Message { id: info.id, peer: info.peer, msg });
                    }
                    Ok(None) => return "peer closed the control stream".to_owned(),
                    Err(ReadError::Proto(e)) => {
                        // The writer says why, after what it has queued, and waits for the peer.
                        let reason = format!("protocol error: {e}");
                        let _ = tx.send(Message::Bye(reason.clone()));
                        tokio::time::sleep(cfg.bye_timeout * 2).await;
                        return reason;
                    }
                    Err(e) => return reason(&e),
                }
            }
        };
        // `None`: the peer did not acknowledge our Bye in time.
        let ended: Option<String> = tokio::select! {
            r = writer => r,
            r = reader => Some(r),
            r = rekeyer => Some(r),
            e = conn.closed() => Some(format!("connection lost: {e}")),
        };
        match (bye.get(), ended) {
            (Some(reason), None) => {
                tracing::info!(peer = %info.peer, "no acknowledgement of our bye within {:?}: closing", cfg.bye_timeout);
                format!("closed by this router: {reason} (not acknowledged within {:?})", cfg.bye_timeout)
            }
            (Some(reason), Some(_)) => format!("closed by this router: {reason}"),
            (None, ended) => ended.unwrap_or_else(|| "closed by this router".to_owned()),
        }
    }
}

/// Why reading the control stream failed.
#[derive(Debug, thiserror::Error)]
enum ReadError {
    #[error(transparent)]
    Proto(#[from] ProtoError),
    #[error("read")]
    Read(#[source] quinn::ReadExactError),
}

/// Reads one frame of at most `max` bytes after its length field, and returns those bytes;
/// `None` when the stream ended cleanly between frames.
async fn read_frame(recv: &mut quinn::RecvStream, max: usize) -> Result<Option<Vec<u8>>, ReadError> {
    let mut len = [0u8; 4];
    match recv.read_exact(&mut len).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(e) => return Err(ReadError::Read(e)),
    }
    let n = Message::frame_len(len, max)?;
    let mut body = vec![0u8; n];
    recv.read_exact(&mut body).await.map_err(ReadError::Read)?;
    Ok(Some(body))
}

/// Reads one message on an authenticated connection; `None` when the stream ended cleanly.
async fn read_message(recv: &mut quinn::RecvStream) -> Result<Option<Message>, ReadError> {
    match read_frame(recv, MAX_MESSAGE_LEN).await? {
        Some(body) => Ok(Some(Message::decode(&body)?)),
        None => Ok(None),
    }
}

fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).expect("the system random source works");
    u32::from_ne_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: PeerName = PeerName([0x0e, 0, 0, 0, 0, 1]);
    const LARGE: PeerName = PeerName([0x0e, 0, 0, 0, 0, 9]);

    fn said(peer: PeerName, ip: u8, incarnation: u64, direction: Direction) -> Said {
        Said { peer, remote: SocketAddr::from(([192, 0, 2, ip], 6783)), incarnation, direction }
    }

    #[test]
    fn the_connection_the_smaller_name_dialled_wins_at_both_ends() {
        // SMALL's view: its dial (outbound) is preferred; LARGE's dial (inbound here) loses.
        let ours = said(LARGE, 2, 5, Direction::Outbound);
        let theirs = said(LARGE, 2, 5, Direction::Inbound);
        assert!(loses_to(SMALL, &theirs, [&ours]));
        assert!(!loses_to(SMALL, &ours, [&theirs]), "the preferred one is never refused");
        // LARGE's view of the same two connections: SMALL's dial is inbound here.
        let small_dialled = said(SMALL, 1, 3, Direction::Inbound);
        let large_dialled = said(SMALL, 1, 3, Direction::Outbound);
        assert!(loses_to(LARGE, &large_dialled, [&small_dialled]));
        assert!(!loses_to(LARGE, &small_dialled, [&large_dialled]));
    }

    #[test]
    fn only_a_true_duplicate_of_the_same_router_run_is_refused() {
        let kept = said(LARGE, 2, 5, Direction::Outbound);
        assert!(!loses_to(SMALL, &said(LARGE, 2, 5, Direction::Inbound), []), "nothing to lose to");
        assert!(!loses_to(SMALL, &said(LARGE, 2, 6, Direction::Inbound), [&kept]), "a restart (newer incarnation) is the router's to judge");
        assert!(!loses_to(SMALL, &said(LARGE, 3, 5, Direction::Inbound), [&kept]), "another address is the router's to judge");
        assert!(!loses_to(SMALL, &said(PeerName([0x0e, 0, 0, 0, 0, 5]), 2, 5, Direction::Inbound), [&kept]), "another peer");
        // Two connections dialled by the same end: neither is the preferred kind; the router decides.
        assert!(!loses_to(SMALL, &said(LARGE, 2, 5, Direction::Inbound), [&said(LARGE, 2, 5, Direction::Inbound)]));
    }
}

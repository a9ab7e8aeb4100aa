//! Prometheus metrics on `127.0.0.1:6782/metrics` (`--metrics-addr`), in the text exposition
//! format. Names carry the `weft_` prefix (but the standard `process_` ones), counters end in
//! `_total`, sizes are in bytes.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `weft_connections` | gauge | `state` (established, pending, failed: those retrying), `overlay`, `encryption` |
//! | `weft_peers` | gauge | |
//! | `weft_frames_total` | counter | `direction` (in, out), `overlay` |
//! | `weft_frame_bytes_total` | counter | `direction`, `overlay` |
//! | `weft_datagrams_total` | counter | `direction` |
//! | `weft_udp_syscalls_total` | counter | `direction` |
//! | `weft_relayed_frames_total` | counter | |
//! | `weft_sleeve_rekeys_total` | counter | |
//! | `weft_tap_frames_total` | counter | `direction` (from_bridge, to_bridge) |
//! | `weft_udp_merged_datagrams_total` | counter | |
//! | `weft_gathered_frames_total` | counter | |
//! | `weft_reassembled_frames_total` | counter | |
//! | `weft_reassembly_dropped_frames_total` | counter | `reason` (timeout, evicted) |
//! | `weft_pod_udp_held_ports` | gauge | (with pods' UDP held only while they send fast: `--pod-udp-coalesce-above`) |
//! | `weft_drops_total` | counter | `reason` (no_route, malformed, unknown_session, auth, replay, mtu, io, switch, other) |
//! | `weft_ipam_addresses_owned`, `weft_ipam_addresses_allocated` | gauge | |
//! | `weft_route_recomputations_total` | counter | |
//! | `weft_local_connections`, `weft_local_connection_limit` | gauge | `server` (api, metrics) |
//! | `weft_local_connections_refused_total`, `weft_local_accept_errors_total` | counter | `server` |
//! | `weft_policy_dropped_packets_total`, `weft_policy_dropped_bytes_total` | counter | `direction` (ingress, egress), `namespace`, `policy` (with NetworkPolicy on) |
//! | `process_open_fds`, `process_max_fds` | gauge | |
//!
//! `GET /healthz` and `GET /readyz` answer 200 `ok`, or 503 with the reasons one a line (see
//! [`super::health`]): for the kubelet's liveness and readiness probes.
//!
//! The server holds at most its connection budget ([`guard`]); a request must arrive within 5 s
//! and a connection ends within 10 s.
//!
//! Frames dropped on links that have since closed stay counted in the data plane's totals;
//! per-session reasons (auth, replay) count sessions that are still up.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use weft_api::types::ConnectionState;

use crate::daemon::Daemon;
use crate::daemon::guard::{self, Budget};

/// Renders every metric.
pub fn render(d: &Daemon) -> String {
    let mut out = String::new();
    let counts = d.control().counts();
    let enc = if d.encrypted() { "on" } else { "off" };
    header(&mut out, "weft_connections", "gauge", "Mesh connections by state, overlay and encryption.");
    let (established, pending) = (ConnectionState::Established.as_str(), ConnectionState::Pending.as_str());
    for (state, n, overlay) in [(established, counts.established, "sleeve"), (pending, counts.pending, "none"), ("failed", counts.failed, "none")] {
        let _ = writeln!(out, "weft_connections{{state=\"{state}\",overlay=\"{overlay}\",encryption=\"{enc}\"}} {n}");
    }
    if let Some(f) = d.fastpath() {
        header(&mut out, "weft_fastpath_changes_total", "counter", "Fast-path state changes, by the state entered.");
        let _ = writeln!(out, "weft_fastpath_changes_total{{to=\"established\"}} {}", f.to_established.load(std::sync::atomic::Ordering::Relaxed));
        let _ = writeln!(out, "weft_fastpath_changes_total{{to=\"on_hold\"}} {}", f.to_on_hold.load(std::sync::atomic::Ordering::Relaxed));
        header(&mut out, "weft_fastpath_peers", "gauge", "Directly connected peers by fast-path state.");
        let counts = f.counts();
        for state in ["established", "probing", "on hold", "not candidate"] {
            let _ = writeln!(out, "weft_fastpath_peers{{state=\"{}\"}} {}", state.replace(' ', "_"), counts.get(state).copied().unwrap_or(0));
        }
    }
    header(&mut out, "weft_peers", "gauge", "Peers in the topology, this one included.");
    let _ = writeln!(out, "weft_peers {}", d.control().topology().len());
    let g = d.control().topology().stats();
    header(&mut out, "weft_gossip_sent_messages_total", "counter", "Topology gossip messages sent.");
    let _ = writeln!(out, "weft_gossip_sent_messages_total {}", g.messages_sent);
    header(&mut out, "weft_gossip_sent_bytes_total", "counter", "Bytes of topology gossip sent.");
    let _ = writeln!(out, "weft_gossip_sent_bytes_total {}", g.bytes_sent);
    header(&mut out, "weft_gossip_received_messages_total", "counter", "Topology gossip messages received (well formed).");
    let _ = writeln!(out, "weft_gossip_received_messages_total {}", g.messages_received);
    header(&mut out, "weft_gossip_entries_learned_total", "counter", "Topology entries received that were new or newer than ours.");
    let _ = writeln!(out, "weft_gossip_entries_learned_total {}", g.entries_learned);
    header(&mut out, "weft_gossip_digest_mismatches_total", "counter", "Gossip digests received that differed from ours.");
    let _ = writeln!(out, "weft_gossip_digest_mismatches_total {}", g.digest_mismatches);

    let dp = d.dataplane();
    let s = &dp.stats;
    let get = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
    let (mut f_in, mut f_out, mut b_in, mut b_out, mut d_in, mut d_out) = (0, 0, 0, 0, 0, 0);
    let (mut auth, mut replay, mut other, mut rekeys) = (0, 0, 0, 0);
    let mut reasm = weft_sleeve::frag::ReasmStats::default();
    for l in dp.links.all() {
        let r = l.reassembler().stats();
        reasm.completed += r.completed;
        reasm.timed_out += r.timed_out;
        reasm.evicted += r.evicted;
        f_in += get(&l.stats.frames_in);
        f_out += get(&l.stats.frames_out);
        b_in += get(&l.stats.bytes_in);
        b_out += get(&l.stats.bytes_out);
        d_in += get(&l.stats.datagrams_in);
        d_out += get(&l.stats.datagrams_out);
        let st = *l.session().stats();
        auth += st.auth_failed;
        replay += st.replayed + st.too_old;
        other += st.dropped() - st.auth_failed - st.replayed - st.too_old;
        rekeys += st.send_rekeys + st.recv_rekeys;
    }
    header(&mut out, "weft_frames_total", "counter", "Frames carried to and from peers.");
    let _ = writeln!(out, "weft_frames_total{{direction=\"in\",overlay=\"sleeve\"}} {f_in}");
    let _ = writeln!(out, "weft_frames_total{{direction=\"out\",overlay=\"sleeve\"}} {f_out}");
    header(&mut out, "weft_frame_bytes_total", "counter", "Bytes of frames carried to and from peers.");
    let _ = writeln!(out, "weft_frame_bytes_total{{direction=\"in\",overlay=\"sleeve\"}} {b_in}");
    let _ = writeln!(out, "weft_frame_bytes_total{{direction=\"out\",overlay=\"sleeve\"}} {b_out}");
    header(&mut out, "weft_datagrams_total", "counter", "Sleeve datagrams (authenticated on receive).");
    let _ = writeln!(out, "weft_datagrams_total{{direction=\"in\"}} {d_in}");
    let _ = writeln!(out, "weft_datagrams_total{{direction=\"out\"}} {d_out}");
    let sum = |c: fn(&weft_sleeve::udp::IoStats) -> &std::sync::atomic::AtomicU64| dp.queues.iter().map(|q| get(c(q.sock.stats()))).sum::<u64>();
    header(&mut out, "weft_udp_syscalls_total", "counter", "Sleeve send and receive system calls (datagrams per call = datagrams / calls).");
    let _ = writeln!(out, "weft_udp_syscalls_total{{direction=\"in\"}} {}", sum(|s| &s.recv_calls));
    let _ = writeln!(out, "weft_udp_syscalls_total{{direction=\"out\"}} {}", sum(|s| &s.send_calls));
    header(&mut out, "weft_dataplane_queue_datagrams_total", "counter", "Sleeve datagrams received and sent on each data plane queue's socket.");
    for (i, q) in dp.queues.iter().enumerate() {
        let io = q.sock.stats();
        let _ = writeln!(out, "weft_dataplane_queue_datagrams_total{{queue=\"{i}\",direction=\"in\"}} {}", get(&io.datagrams_received));
        let _ = writeln!(out, "weft_dataplane_queue_datagrams_total{{queue=\"{i}\",direction=\"out\"}} {}", get(&io.datagrams_sent));
    }
    header(&mut out, "weft_dataplane_queue_tap_frames_total", "counter", "Frames read from each queue of the TAP (since the TAP was last opened).");
    for (i, q) in dp.queues.iter().enumerate() {
        let _ = writeln!(out, "weft_dataplane_queue_tap_frames_total{{queue=\"{i}\"}} {}", q.tap.load().frames_read());
    }
    header(&mut out, "weft_sleeve_rekeys_total", "counter", "Sleeve keys replaced (ratchets and new secrets, both directions) on current links.");
    let _ = writeln!(out, "weft_sleeve_rekeys_total {rekeys}");
    header(&mut out, "weft_relayed_frames_total", "counter", "Frames relayed for other peers.");
    let _ = writeln!(out, "weft_relayed_frames_total {}", get(&s.relayed));
    header(&mut out, "weft_tap_frames_total", "counter", "Frames read from and written to the bridge's TAP port.");
    let _ = writeln!(out, "weft_tap_frames_total{{direction=\"from_bridge\"}} {}", get(&s.tap_frames_in));
    let _ = writeln!(out, "weft_tap_frames_total{{direction=\"to_bridge\"}} {}", get(&s.tap_frames_out));
    header(&mut out, "weft_udp_merged_datagrams_total", "counter", "UDP datagrams from the sleeve written to the TAP merged with others of their flow into one frame.");
    let _ = writeln!(out, "weft_udp_merged_datagrams_total {}", get(&s.udp_merged));
    header(&mut out, "weft_reassembled_frames_total", "counter", "Fragmented frames copied together by a reassembler (pieces out of order, or a frame that is no super-frame) on current links.");
    let _ = writeln!(out, "weft_reassembled_frames_total {}", reasm.completed);
    header(&mut out, "weft_reassembly_dropped_frames_total", "counter", "Partial fragmented frames dropped by a reassembler on current links: after its timeout, or evicted for a newer one.");
    let _ = writeln!(out, "weft_reassembly_dropped_frames_total{{reason=\"timeout\"}} {}", reasm.timed_out);
    let _ = writeln!(out, "weft_reassembly_dropped_frames_total{{reason=\"evicted\"}} {}", reasm.evicted);
    header(&mut out, "weft_gathered_frames_total", "counter", "Fragmented super-frames written to the TAP from their pieces where they were received, not copied together.");
    let _ = writeln!(out, "weft_gathered_frames_total {}", get(&s.frames_gathered));
    if let Some(held) = &d.udp_held {
        let n = held.lock().unwrap_or_else(|p| p.into_inner()).len();
        header(&mut out, "weft_pod_udp_held_ports", "gauge", "Pods' host ports whose UDP is held for coalescing now (their pod sends at least --pod-udp-coalesce-above packets/s).");
        let _ = writeln!(out, "weft_pod_udp_held_ports {n}");
    }
    header(&mut out, "weft_drops_total", "counter", "Frames and datagrams dropped, by reason.");
    for (reason, n) in [
        ("no_route", get(&s.drop_no_route)),
        ("malformed", get(&s.drop_malformed)),
        ("unknown_session", get(&s.drop_unknown_session)),
        ("auth", auth),
        ("replay", replay),
        ("mtu", get(&s.drop_too_big)),
        ("io", get(&s.drop_io)),
        ("switch", get(&s.drop_switch)),
        ("other", other),
    ] {
        let _ = writeln!(out, "weft_drops_total{{reason=\"{reason}\"}} {n}");
    }
    let ipam = d.ipam.summary();
    header(&mut out, "weft_ipam_addresses_owned", "gauge", "Addresses of the pod range this peer owns.");
    let _ = writeln!(out, "weft_ipam_addresses_owned {}", ipam.owned);
    header(&mut out, "weft_ipam_addresses_allocated", "gauge", "Addresses allocated to pods on this peer.");
    let _ = writeln!(out, "weft_ipam_addresses_allocated {}", ipam.allocated);
    header(&mut out, "weft_route_recomputations_total", "counter", "Times routes were recomputed.");
    let _ = writeln!(out, "weft_route_recomputations_total {}", d.control().recomputations());
    let servers = [&d.budgets.api, &d.budgets.metrics];
    header(&mut out, "weft_local_connections", "gauge", "Connections the local servers hold now.");
    for b in servers {
        let _ = writeln!(out, "weft_local_connections{{server=\"{}\"}} {}", b.server(), b.open());
    }
    header(&mut out, "weft_local_connection_limit", "gauge", "Connections each local server may hold at once.");
    for b in servers {
        let _ = writeln!(out, "weft_local_connection_limit{{server=\"{}\"}} {}", b.server(), b.limit());
    }
    header(&mut out, "weft_local_connections_refused_total", "counter", "Connections closed at once because the server held its limit.");
    for b in servers {
        let _ = writeln!(out, "weft_local_connections_refused_total{{server=\"{}\"}} {}", b.server(), b.refused());
    }
    header(&mut out, "weft_local_accept_errors_total", "counter", "Failed accepts (such as running out of file handles), retried.");
    for b in servers {
        let _ = writeln!(out, "weft_local_accept_errors_total{{server=\"{}\"}} {}", b.server(), b.accept_errors());
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        header(&mut out, "process_open_fds", "gauge", "Open file handles.");
        let _ = writeln!(out, "process_open_fds {}", fds.count());
    }
    if let Ok((soft, _)) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        header(&mut out, "process_max_fds", "gauge", "The file handle limit (soft RLIMIT_NOFILE).");
        let _ = writeln!(out, "process_max_fds {soft}");
    }
    out
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// How long a client may take to send its request (all of it, not each read).
const READ_DEADLINE: Duration = Duration::from_secs(5);
/// How long a connection may last in all.
const CONN_DEADLINE: Duration = Duration::from_secs(10);

/// Serves `GET /metrics` on `addr` until the task is dropped: at most `budget` connections at
/// once (see [`guard`]); only failing to bind ends it.
pub async fn serve(addr: SocketAddr, d: Arc<Daemon>, budget: Arc<Budget>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(connections = budget.limit(), "metrics on http://{addr}/metrics");
    let refusal = response("503 Service Unavailable", "text/plain", "too many connections to the metrics server; try again\n");
    guard::accept_loop(listener, budget, CONN_DEADLINE, Arc::from(refusal), move |s| answer(s, d.clone())).await;
    Ok(())
}

async fn answer(mut s: tokio::net::TcpStream, d: Arc<Daemon>) {
    let mut buf = [0u8; 2048];
    let mut n = 0;
    let read = async {
        while n < buf.len() {
            match s.read(&mut buf[n..]).await {
                Ok(0) | Err(_) => return false,
                Ok(r) => n += r,
            }
            if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        true
    };
    if !matches!(tokio::time::timeout(READ_DEADLINE, read).await, Ok(true)) {
        return;
    }
    let req = String::from_utf8_lossy(&buf[..n]);
    let reply = match req.split_whitespace().take(2).collect::<Vec<_>>()[..] {
        ["GET", "/metrics"] => {
            let mut body = render(&d);
            if d.policy.is_some() {
                // Reads the policy table's counters with nft, off the async workers.
                if let Ok(text) = tokio::task::spawn_blocking(|| {
                    let mut t = String::new();
                    crate::daemon::policy::metrics(&mut t);
                    t
                })
                .await
                {
                    body.push_str(&text);
                }
            }
            response("200 OK", "text/plain; version=0.0.4", &body)
        }
        ["GET", "/healthz"] => verdict(d.health.healthz(std::time::Instant::now())),
        ["GET", "/readyz"] => verdict(crate::daemon::health::readyz(&d)),
        ["GET", _] => response("404 Not Found", "text/plain", "only /metrics, /healthz and /readyz are here\n"),
        _ => response("405 Method Not Allowed", "text/plain", "GET /metrics, /healthz or /readyz\n"),
    };
    let _ = s.write_all(&reply).await;
}

fn verdict(v: Result<(), Vec<String>>) -> Vec<u8> {
    match v {
        Ok(()) => response("200 OK", "text/plain", "ok\n"),
        Err(why) => response("503 Service Unavailable", "text/plain", &(why.join("\n") + "\n")),
    }
}

fn response(status: &str, ctype: &str, body: &str) -> Vec<u8> {
    format!("HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).into_bytes()
}

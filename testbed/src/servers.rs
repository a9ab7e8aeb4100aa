//! Servers and probes for connectivity matrices (NetworkPolicy tests): TCP servers that greet
//! every connection with one byte (`k`) and then echo, a UDP echo server, and the probes that
//! tell whether a TCP connect is greeted or a UDP datagram comes back. The servers run on
//! threads whose sockets live in a node's namespace, and stop when dropped.

use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use weft_kernel::netns::NetNs;

/// The byte a server sends on accept.
const GREETING: u8 = b'k';
/// How often the server threads look at the stop flag.
const POLL: Duration = Duration::from_millis(50);

/// TCP and UDP echo servers in namespaces, stopped on drop.
#[derive(Default)]
pub struct EchoServers {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl EchoServers {
    /// Starts TCP servers on `tcp_ports` and a UDP echo server on `udp_port` at `addr` in `ns`.
    pub fn start(&mut self, ns: &NetNs, addr: Ipv4Addr, tcp_ports: &[u16], udp_port: u16) -> std::io::Result<()> {
        for &port in tcp_ports {
            let l = ns.run(|| TcpListener::bind((addr, port))).map_err(std::io::Error::other)??;
            l.set_nonblocking(true)?;
            let stop = self.stop.clone();
            self.threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match l.accept() {
                        Ok((s, _)) => {
                            let stop = stop.clone();
                            std::thread::spawn(move || echo(s, &stop));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            }));
        }
        let u = ns.run(|| UdpSocket::bind((addr, udp_port))).map_err(std::io::Error::other)??;
        u.set_read_timeout(Some(POLL))?;
        let stop = self.stop.clone();
        self.threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = u.recv_from(&mut buf) {
                    let _ = u.send_to(&buf[..n], from);
                }
            }
        }));
        Ok(())
    }
}

/// Greets one connection, then echoes what it sends until it closes or the servers stop.
fn echo(mut s: TcpStream, stop: &AtomicBool) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(POLL));
    if s.write_all(&[GREETING]).is_err() {
        return;
    }
    let mut buf = [0u8; 64];
    while !stop.load(Ordering::Relaxed) {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) if s.write_all(&buf[..n]).is_err() => break,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
}

impl Drop for EchoServers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Whether a TCP connection from `ns` to `to:port` gets the server's greeting within `wait`
/// (for the connect and again for the byte).
pub fn tcp_greeted(ns: &NetNs, to: Ipv4Addr, port: u16, wait: Duration) -> bool {
    let addr = SocketAddr::from((to, port));
    let Ok(Ok(mut s)) = ns.run(|| TcpStream::connect_timeout(&addr, wait)) else { return false };
    let _ = s.set_read_timeout(Some(wait));
    let mut b = [0u8; 1];
    matches!(s.read(&mut b), Ok(1) if b[0] == GREETING)
}

/// Whether a UDP datagram from `ns` to `to:port` comes back, in `tries` tries of `wait` each.
pub fn udp_echoed(ns: &NetNs, to: Ipv4Addr, port: u16, wait: Duration, tries: usize) -> bool {
    let Ok(Ok(s)) = ns.run(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))) else { return false };
    let _ = s.set_read_timeout(Some(wait));
    let mut buf = [0u8; 16];
    (0..tries).any(|_| s.send_to(b"hello", (to, port)).is_ok() && matches!(s.recv_from(&mut buf), Ok((5, _))))
}

//! A blocking rtnetlink handle: one `NETLINK_ROUTE` socket, opened in one namespace and kept.
//!
//! Each request waits for the kernel's acknowledgement (or the end of a dump) before returning,
//! so operations are applied in order and their errors are reported where they were caused.
//! The operations are grouped by object in private modules: `link`, `addr`, `route`, `fdb`.

mod addr;
mod fdb;
mod link;
mod route;

pub use fdb::{BridgeFdbEntry, BridgeFdbKind, FdbEntry};
pub use link::{Link, LinkKind, PortFlags, VxlanConfig};
pub use route::Route;

use netlink_packet_core::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};

use crate::error::{Error, Result};
use crate::netns::NetNs;

/// An rtnetlink socket bound to one network namespace.
pub struct Handle {
    socket: Socket,
    ns: String,
    seq: u32,
    buf: Vec<u8>,
}

impl std::fmt::Debug for Handle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle").field("ns", &self.ns).finish_non_exhaustive()
    }
}

/// The receive buffer: large enough for any single rtnetlink datagram the kernel sends.
const RECV_BUF: usize = 1 << 16;

impl Handle {
    /// Opens a handle in the caller's own namespace (named `host` in messages).
    pub fn open() -> Result<Handle> {
        Self::open_here("host".to_owned())
    }

    /// Opens a handle inside `ns`: the socket is created on a thread that entered `ns`, so every
    /// request made through it applies there, whichever thread makes it.
    pub fn open_in(ns: &NetNs) -> Result<Handle> {
        let name = ns.name().to_owned();
        ns.run(move || Self::open_here(name))?
    }

    fn open_here(ns: String) -> Result<Handle> {
        let err = |e| Error::Namespace { op: "open netlink socket in", ns: ns.clone(), source: e };
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(err)?;
        socket.bind_auto().map_err(err)?;
        socket.connect(&SocketAddr::new(0, 0)).map_err(err)?;
        Ok(Handle { socket, ns, seq: 0, buf: Vec::with_capacity(RECV_BUF) })
    }

    /// The socket, for the ioctls that act in its namespace (`crate::offload`).
    pub(crate) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        std::os::fd::AsFd::as_fd(&self.socket)
    }

    /// The error for `op` on `target` in this handle's namespace.
    pub(crate) fn kernel_error(&self, op: &'static str, target: &str, source: std::io::Error) -> Error {
        Error::Kernel { op, target: target.to_owned(), ns: self.ns.clone(), source }
    }

    /// The name of the namespace this handle works in.
    pub fn namespace(&self) -> &str {
        &self.ns
    }

    /// Sends one request and waits for its acknowledgement; returns the messages of a dump.
    fn request(
        &mut self,
        op: &'static str,
        target: &str,
        msg: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>> {
        let kernel = |source| Error::Kernel { op, target: target.to_owned(), ns: self.ns.clone(), source };
        let dump = flags & NLM_F_DUMP == NLM_F_DUMP;
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags | if dump { 0 } else { NLM_F_ACK };
        header.sequence_number = seq;
        let mut req = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        req.finalize();
        let mut out = vec![0u8; req.buffer_len()];
        req.serialize(&mut out);
        self.socket.send(&out, 0).map_err(kernel)?;

        let mut answers = Vec::new();
        loop {
            self.buf.clear();
            self.socket.recv(&mut self.buf, 0).map_err(kernel)?;
            let mut offset = 0;
            while offset < self.buf.len() {
                let bytes = &self.buf[offset..];
                let parsed = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes).map_err(|e| {
                    Error::Decode { op, ns: self.ns.clone(), detail: e.to_string() }
                })?;
                let len = parsed.header.length as usize;
                if len == 0 {
                    return Err(Error::Decode { op, ns: self.ns.clone(), detail: "zero-length message".into() });
                }
                offset += (len + 3) & !3;
                if parsed.header.sequence_number != seq {
                    continue; // a late answer to an earlier request
                }
                match parsed.payload {
                    NetlinkPayload::Error(e) => match e.code {
                        None => return Ok(answers),
                        Some(code) => {
                            return Err(kernel(std::io::Error::from_raw_os_error(-code.get())));
                        }
                    },
                    NetlinkPayload::Done(_) => return Ok(answers),
                    NetlinkPayload::InnerMessage(m) => answers.push(m),
                    NetlinkPayload::Noop | NetlinkPayload::Overrun(_) => {}
                    _ => {}
                }
            }
        }
    }
}

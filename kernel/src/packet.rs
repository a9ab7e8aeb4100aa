//! Raw link-layer sockets (`AF_PACKET`): whole Ethernet frames of one EtherType, sent out of and
//! received on one interface, bypassing the IP stack.
//!
//! Contract: the socket is bound to one interface by index at open; it is non-blocking (reads
//! with nothing queued return [`std::io::ErrorKind::WouldBlock`]); a socket opened with
//! EtherType 0 receives nothing and is for sending only. Frames are written whole, Ethernet
//! header included.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};

/// A raw `AF_PACKET` socket bound to one interface.
#[derive(Debug)]
pub struct PacketSocket {
    file: File,
    ifindex: u32,
}

impl PacketSocket {
    /// Opens a socket on interface `ifindex` receiving frames of `ethertype` (0: none).
    pub fn open(ifindex: u32, ethertype: u16) -> io::Result<PacketSocket> {
        let fd = crate::sys::packet_socket(ifindex, ethertype)?;
        Ok(PacketSocket { file: File::from(fd), ifindex })
    }

    /// The interface it is bound to.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Sends one Ethernet frame out of the interface.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        let n = (&self.file).write(frame)?;
        if n != frame.len() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, format!("sent {n} of {} bytes", frame.len())));
        }
        Ok(())
    }

    /// Receives one frame into `buf` (truncated to its length); `WouldBlock` when none is queued.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }
}

impl AsFd for PacketSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

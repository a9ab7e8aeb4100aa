//! Batched I/O on the TAP: wait once, then read every frame that is ready (up to a batch) so one
//! wakeup serves many frames; frames carry their virtio-net header and may be 64 KB super-frames.
//! Buffers are allocated once per reader. The sender copies each frame once, from here into its
//! datagram buffer, where it is sealed in place.

use std::io;
use std::os::fd::AsFd;
use std::time::Duration;

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use weft_kernel::tap::Tap;

use super::vnet;

/// Largest frame the TAP hands over: a 64 KB IP super-frame, its Ethernet header and vnet header.
pub const MAX_FRAME: usize = vnet::LEN + 14 + 65535;

/// A frame buffer allocated once and reused: the vnet header and frame.
pub struct FrameBuf {
    data: Box<[u8]>,
    len: usize,
}

impl Default for FrameBuf {
    fn default() -> Self {
        FrameBuf { data: vec![0u8; MAX_FRAME].into_boxed_slice(), len: 0 }
    }
}

impl FrameBuf {
    /// The vnet header and frame that were read.
    pub fn packet(&self) -> &[u8] {
        &self.data[..self.len]
    }
}

/// The TAP, non-blocking, read in batches.
pub struct TapIo {
    tap: Tap,
}

impl TapIo {
    /// Takes over `tap` and makes it non-blocking.
    pub fn new(tap: Tap) -> io::Result<TapIo> {
        let flags = OFlag::from_bits_truncate(fcntl(tap.as_fd(), FcntlArg::F_GETFL)?);
        fcntl(tap.as_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        Ok(TapIo { tap })
    }

    /// The TAP's name.
    pub fn name(&self) -> &str {
        self.tap.name()
    }

    /// Waits up to `timeout` for frames, then reads as many as are ready into `bufs`; returns how
    /// many buffers were filled (0 on timeout).
    pub fn read_batch(&self, bufs: &mut [FrameBuf], timeout: Duration) -> io::Result<usize> {
        if !self.wait_readable(timeout)? {
            return Ok(0);
        }
        self.read_ready(bufs)
    }

    /// Waits up to `timeout` for a frame to read; true if one is ready (false on timeout or a
    /// signal).
    pub fn wait_readable(&self, timeout: Duration) -> io::Result<bool> {
        let mut fds = [PollFd::new(self.tap.as_fd(), PollFlags::POLLIN)];
        let t = PollTimeout::try_from(timeout).unwrap_or(PollTimeout::MAX);
        match poll(&mut fds, t) {
            Ok(n) => Ok(n > 0),
            Err(nix::errno::Errno::EINTR) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads the frames that are ready into `bufs`, without waiting; returns how many buffers
    /// were filled (0 if none was ready).
    pub fn read_ready(&self, bufs: &mut [FrameBuf]) -> io::Result<usize> {
        let mut n = 0;
        while n < bufs.len() {
            let b = &mut bufs[n];
            match self.tap.read(&mut b.data) {
                Ok(len) if len > vnet::LEN => {
                    b.len = len;
                    n += 1;
                }
                Ok(_) => continue, // a runt without a frame: nothing to forward
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return if n > 0 { Ok(n) } else { Err(e) },
            }
        }
        Ok(n)
    }

    /// Writes one packet (vnet header, then frame) to the bridge. A full TAP queue drops the
    /// frame (as a full NIC ring would) and says so: `Ok(false)`.
    pub fn write(&self, packet: &[u8]) -> io::Result<bool> {
        queued(self.tap.write(packet))
    }

    /// As [`write`](Self::write), with the vnet header (host order) and the frame gathered by
    /// one `writev` instead of copied together.
    pub fn write_frame(&self, vnet_hdr: &[u8; vnet::LEN], frame: &[u8]) -> io::Result<bool> {
        queued(self.tap.write_parts(&[io::IoSlice::new(vnet_hdr), io::IoSlice::new(frame)]))
    }
}

fn queued(r: io::Result<usize>) -> io::Result<bool> {
    match r {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(e),
    }
}

//! Opening a TAP device with the virtio-net header and the TCP/UDP offloads, so TCP and UDP
//! super-frames of up to 64 KB cross it whole.
//!
//! The device lives as long as the returned [`Tap`] (it is not persistent); with several
//! queues ([`Tap::open_queues`]), as long as one of them. Open it inside a
//! namespace with [`crate::NetNs::run`] to create it there.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};

use crate::error::{Error, Result};
use crate::sys;

/// Checksum offload: frames may carry a partial checksum (`VIRTIO_NET_HDR_F_NEEDS_CSUM`).
pub const TUN_F_CSUM: u32 = 0x01;
/// TCP segmentation offload for IPv4.
pub const TUN_F_TSO4: u32 = 0x02;
/// TCP segmentation offload for IPv6.
pub const TUN_F_TSO6: u32 = 0x04;
/// UDP segmentation offload for IPv4 (the kernel accepts it only together with USO6).
pub const TUN_F_USO4: u32 = 0x20;
/// UDP segmentation offload for IPv6 (only together with USO4).
pub const TUN_F_USO6: u32 = 0x40;

/// Size of the virtio-net header (`struct virtio_net_hdr_v1`, with `num_buffers`).
pub const VNET_HDR_LEN: usize = 12;

/// An open TAP device.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    offloads: u32,
}

impl Tap {
    /// Creates (or attaches to) the TAP `name` with the virtio-net header, and enables the
    /// widest offload set the kernel accepts: CSUM|TSO4|TSO6|USO4|USO6, else CSUM|TSO4|TSO6.
    pub fn open(name: &str) -> Result<Tap> {
        Tap::open_one(name, sys::IFF_TAP | sys::IFF_NO_PI | sys::IFF_VNET_HDR, None)
    }

    /// Creates the TAP `name` with `queues` queues, one descriptor each (the kernel spreads
    /// frames from the bridge over them, one flow to one queue), all with the virtio-net header
    /// and the offloads [`open`](Self::open) picks for the first. One queue is
    /// [`open`](Self::open)'s single-queue device; more use `IFF_MULTI_QUEUE`, and the device
    /// lives while any of them is open.
    pub fn open_queues(name: &str, queues: usize) -> Result<Vec<Tap>> {
        if queues <= 1 {
            if queues == 0 {
                let e = io::Error::new(io::ErrorKind::InvalidInput, "a TAP needs at least one queue");
                return Err(Error::Kernel { op: "open TAP queues", target: name.to_owned(), ns: "current".into(), source: e });
            }
            return Ok(vec![Tap::open(name)?]);
        }
        let flags = sys::IFF_TAP | sys::IFF_NO_PI | sys::IFF_VNET_HDR | sys::IFF_MULTI_QUEUE;
        let first = Tap::open_one(name, flags, None)?;
        let offloads = first.offloads;
        let mut taps = vec![first];
        for _ in 1..queues {
            taps.push(Tap::open_one(&taps[0].name, flags, Some(offloads))?);
        }
        Ok(taps)
    }

    /// Opens one descriptor of `name` with `flags`; with `offloads`, exactly those, else the
    /// widest set accepted.
    fn open_one(name: &str, flags: i16, offloads: Option<u32>) -> Result<Tap> {
        let err = |op: &'static str, e: io::Error| Error::Kernel {
            op,
            target: name.to_owned(),
            ns: "current".into(),
            source: e,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .map_err(|e| err("open /dev/net/tun for TAP", e))?;
        let name = sys::tun_set_iff(file.as_fd(), name, flags).map_err(|e| err("create TAP", e))?;
        sys::tun_set_vnet_hdr_size(file.as_fd(), VNET_HDR_LEN as i32)
            .map_err(|e| err("set virtio-net header size of TAP", e))?;
        let tcp = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6;
        let offloads = match offloads {
            Some(o) => {
                sys::tun_set_offload(file.as_fd(), o).map_err(|e| err("set offloads of TAP queue", e))?;
                o
            }
            None => match sys::tun_set_offload(file.as_fd(), tcp | TUN_F_USO4 | TUN_F_USO6) {
                Ok(()) => tcp | TUN_F_USO4 | TUN_F_USO6,
                Err(_) => {
                    sys::tun_set_offload(file.as_fd(), tcp).map_err(|e| err("set offloads of TAP", e))?;
                    tcp
                }
            },
        };
        Ok(Tap { file, name, offloads })
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The TUN_F_* offloads the kernel accepted.
    pub fn offloads(&self) -> u32 {
        self.offloads
    }

    /// Reads one frame, preceded by its virtio-net header, into `buf`. Blocks.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        (&self.file).read(buf)
    }

    /// Reads one frame, preceded by its virtio-net header, scattered over `parts` in order
    /// (one `readv`). Blocks.
    pub fn read_parts(&self, parts: &mut [io::IoSliceMut<'_>]) -> io::Result<usize> {
        (&self.file).read_vectored(parts)
    }

    /// Writes one frame, preceded by its virtio-net header.
    pub fn write(&self, buf: &[u8]) -> io::Result<usize> {
        (&self.file).write(buf)
    }

    /// Writes one frame gathered from `parts` (the virtio-net header first): one `writev`,
    /// one packet, no copy into a contiguous buffer.
    pub fn write_parts(&self, parts: &[io::IoSlice<'_>]) -> io::Result<usize> {
        (&self.file).write_vectored(parts)
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

//! The few ioctls the TAP device needs, which no maintained crate exposes with the virtio-net
//! header, and the raw `AF_PACKET` socket. All unsafe code of this crate is here.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// `_IOW('T', 202, int)`.
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `_IOW('T', 208, unsigned int)`.
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
/// `_IOW('T', 216, int)`.
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;

pub(crate) const IFF_TAP: i16 = 0x0002;
pub(crate) const IFF_NO_PI: i16 = 0x1000;
pub(crate) const IFF_MULTI_QUEUE: i16 = 0x0100;
pub(crate) const IFF_VNET_HDR: i16 = 0x4000;

/// `struct ifreq` as TUNSETIFF reads and writes it: a name and the flags member of the union.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: i16,
    _pad: [u8; 22],
}

/// Attaches the open `/dev/net/tun` descriptor to a TAP named `name` (created if absent) with
/// `flags`; returns the name the kernel gave it.
pub(crate) fn tun_set_iff(fd: BorrowedFd<'_>, name: &str, flags: i16) -> io::Result<String> {
    let mut req = IfReq { name: [0; libc::IFNAMSIZ], flags, _pad: [0; 22] };
    if name.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "interface name longer than 15 bytes"));
    }
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: `fd` is an open descriptor; `req` is a properly sized, initialised `struct ifreq`
    // that lives across the call, and TUNSETIFF reads and writes only within it.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut req as *mut IfReq) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let len = req.name.iter().position(|&b| b == 0).unwrap_or(libc::IFNAMSIZ);
    Ok(String::from_utf8_lossy(&req.name[..len]).into_owned())
}

/// Sets the size of the virtio-net header the TAP prepends to every frame.
pub(crate) fn tun_set_vnet_hdr_size(fd: BorrowedFd<'_>, size: i32) -> io::Result<()> {
    // SAFETY: TUNSETVNETHDRSZ reads one `int` through the pointer, which points at `size`.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETVNETHDRSZ, &size as *const i32) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Tells the TAP which offloads the reader handles (TUN_F_* bits).
pub(crate) fn tun_set_offload(fd: BorrowedFd<'_>, flags: u32) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes the flags by value in the argument; no memory is passed.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETOFFLOAD, flags as libc::c_ulong) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Opens a raw `AF_PACKET` socket (non-blocking, close-on-exec) for frames of `ethertype`
/// (0: none received), bound to the interface `ifindex`.
pub(crate) fn packet_socket(ifindex: u32, ethertype: u16) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    let proto = ethertype.to_be();
    // SAFETY: plain socket(2) call with constant arguments; no memory is passed.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, i32::from(proto)) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2) and is owned by nothing else.
    let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: `sockaddr_ll` is plain old data; all zeros is a valid value.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex = ifindex as i32;
    // SAFETY: `addr` is an initialised `sockaddr_ll` that lives across the call, and the length
    // passed is its size.
    let rc = unsafe {
        libc::bind(owned.as_raw_fd(), &addr as *const libc::sockaddr_ll as *const libc::sockaddr, std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t)
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(owned)
}

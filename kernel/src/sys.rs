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

/// `SIOCETHTOOL`: an ethtool command on the interface an `ifreq` names.
const SIOCETHTOOL: libc::c_ulong = 0x8946;
/// `SIOCGSKNS`: a descriptor of the network namespace a socket belongs to.
const SIOCGSKNS: libc::c_ulong = 0x894c;
/// `ETHTOOL_GSTRINGS`: the names of a string set.
const ETHTOOL_GSTRINGS: u32 = 0x1b;
/// `ETHTOOL_GSSET_INFO`: the sizes of string sets.
const ETHTOOL_GSSET_INFO: u32 = 0x37;
/// `ETHTOOL_GFEATURES`: a device's feature words.
const ETHTOOL_GFEATURES: u32 = 0x3a;
/// `ETHTOOL_SFEATURES`: changes a device's wanted features.
const ETHTOOL_SFEATURES: u32 = 0x3b;
/// The string set of feature names.
const ETH_SS_FEATURES: u32 = 4;
/// Length of one ethtool name.
const ETH_GSTRING_LEN: usize = 32;
/// More features than any kernel has (6.x has about 70): the bound of [`ethtool_feature_names`].
const MAX_FEATURES: u32 = 1024;

/// `struct ifreq` with the `ifr_data` pointer member of the union.
#[repr(C)]
struct IfReqData {
    name: [u8; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    _pad: [u8; 16],
}

/// Runs the ethtool command whose struct is `cmd` (u32 words, the command first; the kernel
/// reads and writes it in place) on `ifname` through the socket `sock` (its namespace's device).
/// Returns the ioctl's non-negative result.
fn ethtool(sock: BorrowedFd<'_>, ifname: &str, cmd: &mut [u32]) -> io::Result<i32> {
    if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "interface name empty or longer than 15 bytes"));
    }
    let mut req = IfReqData { name: [0; libc::IFNAMSIZ], data: cmd.as_mut_ptr().cast(), _pad: [0; 16] };
    req.name[..ifname.len()].copy_from_slice(ifname.as_bytes());
    // SAFETY: `req` is an initialised `struct ifreq` whose data pointer points at `cmd`, which
    // lives across the call. Each caller below sizes `cmd` for what its command writes: the
    // kernel writes GFEATURES' words only up to the `size` the caller set, GSSET_INFO one word
    // per requested set, and GSTRINGS as many names as the set has, which
    // `ethtool_feature_names` learnt from GSSET_INFO and bounded before sizing `cmd`.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL, &mut req as *mut IfReqData) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

/// The names of the device features, by bit (what `ethtool -k` lists, e.g. `rx-gro`).
pub(crate) fn ethtool_feature_names(sock: BorrowedFd<'_>, ifname: &str) -> io::Result<Vec<String>> {
    // struct ethtool_sset_info: cmd, reserved, sset_mask (u64), then one u32 per set asked.
    let mask = (1u64 << ETH_SS_FEATURES).to_ne_bytes();
    let word = |b: &[u8]| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]);
    let mut info = [ETHTOOL_GSSET_INFO, 0, word(&mask[..4]), word(&mask[4..]), 0];
    ethtool(sock, ifname, &mut info)?;
    let mut answered = [0u8; 8];
    answered[..4].copy_from_slice(&info[2].to_ne_bytes());
    answered[4..].copy_from_slice(&info[3].to_ne_bytes());
    if u64::from_ne_bytes(answered) & (1 << ETH_SS_FEATURES) == 0 {
        return Err(io::Error::new(io::ErrorKind::Unsupported, "the kernel names no features"));
    }
    let count = info[4];
    if count == 0 || count > MAX_FEATURES {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("the kernel names {count} features")));
    }
    // struct ethtool_gstrings: cmd, string_set, len, then len names of 32 bytes.
    let mut strings = vec![0u32; 3 + count as usize * ETH_GSTRING_LEN / 4];
    strings[..3].copy_from_slice(&[ETHTOOL_GSTRINGS, ETH_SS_FEATURES, count]);
    ethtool(sock, ifname, &mut strings)?;
    let len = strings[2].min(count) as usize;
    let bytes: Vec<u8> = strings[3..].iter().flat_map(|w| w.to_ne_bytes()).collect();
    Ok(bytes
        .chunks(ETH_GSTRING_LEN)
        .take(len)
        .map(|name| String::from_utf8_lossy(&name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())]).into_owned())
        .collect())
}

/// The device's active feature bits, as `words` 32-bit words.
pub(crate) fn ethtool_active_features(sock: BorrowedFd<'_>, ifname: &str, words: usize) -> io::Result<Vec<u32>> {
    // struct ethtool_gfeatures: cmd, size, then per word: available, requested, active,
    // never_changed.
    let mut get = vec![0u32; 2 + 4 * words];
    get[..2].copy_from_slice(&[ETHTOOL_GFEATURES, words as u32]);
    ethtool(sock, ifname, &mut get)?;
    Ok((0..words).map(|w| get[2 + 4 * w + 2]).collect())
}

/// Changes the wanted features: bits set in `valid[w]` become as in `requested[w]`. Returns the
/// kernel's flags (non-zero: some wish was not granted as asked).
pub(crate) fn ethtool_set_features(sock: BorrowedFd<'_>, ifname: &str, valid: &[u32], requested: &[u32]) -> io::Result<i32> {
    // struct ethtool_sfeatures: cmd, size, then per word: valid, requested.
    let mut set = vec![ETHTOOL_SFEATURES, valid.len() as u32];
    for (v, r) in valid.iter().zip(requested) {
        set.extend([*v, *r]);
    }
    ethtool(sock, ifname, &mut set)
}

/// A descriptor of the network namespace the socket `sock` belongs to.
pub(crate) fn socket_netns(sock: BorrowedFd<'_>) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: SIOCGSKNS takes no argument memory and returns a new descriptor.
    let fd = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCGSKNS, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by the kernel and is owned by nothing else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

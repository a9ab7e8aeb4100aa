//! weft's kernel layer: everything that programs the Linux kernel over netlink.
//!
//! - [`netns`]: named network namespaces (as `ip netns` makes them) and running code inside one;
//! - [`netlink`]: a blocking rtnetlink [`Handle`], opened in the current
//!   namespace or inside another one, with typed operations on links (veth, bridge, VXLAN, TAP
//!   attach, namespace moves, MTU, up/down, bridge ports with hairpin, isolation, learning and flooding), addresses,
//!   routes and FDB entries (a device's own, and the bridge's);
//! - [`tap`]: opening a TAP device with the virtio-net header and offloads;
//! - [`offload`]: receive offloads of a link (features by name, the GRO flush timeout), and
//!   what weft gives a pod's host-side veth so the pod's UDP reaches the router coalesced;
//! - [`packet`]: raw `AF_PACKET` sockets (the fast path's heartbeats).
//!
//! The namespace test bed built on this layer is its own crate (`weft-testbed`).
//!
//! Contract: every operation takes effect in the namespace its handle was opened in, never
//! elsewhere; errors name the operation, the link and the namespace.

pub mod error;
pub mod netlink;
pub mod netns;
pub mod offload;
pub mod packet;
mod sys;
pub mod tap;

pub use error::{Error, Result, chain};
pub use netlink::Handle;
pub use netns::NetNs;

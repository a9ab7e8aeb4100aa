//! The router: `weft`, the per-host daemon and its command line.
//!
//! What it owns, by module (as they land):
//! - the TAP driver (batched reads and writes of `weft-tap` with the virtio-net header);
//! - [`switch`]: MAC learning, aging, forwarding decisions (local / unicast / flood along the
//!   broadcast tree) and relaying for other peers;
//! - the overlay choice per peer (kernel VXLAN fast path or the encrypted sleeve);
//! - the local API (HTTP on a unix socket), metrics, the daemon and the CLI;
//! - [`demo`]: `weft demo`, a whole virtual cluster in network namespaces.
//!
//! Present so far: [`ethernet`], [`vnet`], [`switch`], [`plumbing`], [`demo`].

pub mod api;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod control;
pub mod dataplane;
pub mod daemon;
pub mod demo;
pub mod ethernet;
pub mod icmp;
pub mod ipam;
pub mod logging;
pub mod metrics;
pub mod peering;
pub mod plumbing;
pub mod switch;
pub mod vnet;

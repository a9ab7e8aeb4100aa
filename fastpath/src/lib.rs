//! weft's fast path: frames to a peer's pods cross the kernel's VXLAN device `weft-vxlan`
//! (UDP 6785) instead of the router's sleeve, for peers where that path is proven to work.
//!
//! - [`wire`]: the heartbeat, a small Ethernet frame of EtherType [`wire::ETHERTYPE`] sent into
//!   the VXLAN device towards one peer's heartbeat MAC ([`wire::heartbeat_mac`]);
//! - [`path`]: the per-peer state (sans-IO): heartbeats every [`path::INTERVAL`], the path
//!   *established* once heartbeats have crossed it both ways, *on hold* after [`path::HOLD`]
//!   without that proof (while the peer's router still answers on the sleeve), retried by
//!   itself.
//!
//! Contract: nothing here does I/O or reads a clock; the router's fast-path thread sends and
//! receives the heartbeats and programs the kernel from the state changes.

pub mod path;
pub mod wire;

//! The router: `weft`, the per-host daemon and its command line, grouped by role.
//!
//! - [`daemon`]: `weft router` — start-up and shutdown, configuration, host plumbing, the mesh
//!   and its control plane (gossip, routes, connection records), IPAM, the local API server,
//!   metrics;
//! - [`dataplane`]: the threads that move frames — TAP reads and writes, the switch, relaying,
//!   sealing and opening on the sleeve;
//! - [`cli`]: `weft status`, `connect`, `forget`, `rmpeer`: clients of the local API;
//! - [`reset`]: `weft reset`, removing what the router left on a node (uninstall);
//! - [`demo`]: `weft demo`, a whole virtual cluster in network namespaces (on `weft-testbed`).

pub mod cli;
pub mod daemon;
pub mod dataplane;
pub mod demo;
pub mod reset;

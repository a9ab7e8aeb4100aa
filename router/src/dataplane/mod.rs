//! The data plane: dedicated OS threads moving frames between the TAP and the sleeve.
//!
//! - [`tapio`]: batched reads and writes of `weft-tap`, buffers with headroom.
//! - [`envelope`]: origin, destination and hop limit before each frame on the sleeve.
//! - [`forward`]: which next hops (and whether the bridge) get a frame.
pub mod envelope;
pub mod forward;
pub mod peers;
pub mod tapio;

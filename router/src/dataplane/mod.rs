//! The data plane: dedicated OS threads moving frames between the TAP and the sleeve.
//!
//! - [`tapio`]: batched reads and writes of `weft-tap`, buffers with headroom.
pub mod tapio;

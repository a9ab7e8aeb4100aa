//! weft's benchmarks live in `benches/benches/`; this library only holds helpers they share.
//!
//! Run them with `cargo bench -p weft-benches`. End-to-end comparisons (overlay throughput as a
//! ratio to kernel VXLAN over the same veth) are scripts in `benches/e2e/`.

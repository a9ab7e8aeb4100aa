//! weft-cni
fn main() {}

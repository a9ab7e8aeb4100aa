//! Topology gossip on arbitrary bytes: checking a message never panics, what checks re-encodes
//! to the bytes it came from, and a topology core handling it (then sending and running its
//! timers) never panics.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use weft_mesh::peer::PeerName;
use weft_mesh::topology::{Capabilities, Config, Direction, GossipPacket, GossipRepr, Topology};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = GossipPacket::new_checked(data) {
        assert_eq!(p.entries().count(), p.entry_count() as usize);
        let mut out = Vec::new();
        GossipRepr::parse(&p).emit(&mut out);
        assert_eq!(out, data);
    }
    let now = Instant::now();
    let me = PeerName([0x0e, 0, 0, 0, 0, 1]);
    let from = PeerName([0x0e, 0, 0, 0, 0, 2]);
    let mut t = Topology::new(now, Config::default(), me, "me".into(), 1, Capabilities::default());
    t.set_connection(now, from, "192.0.2.2:6783".parse().unwrap(), Direction::Outbound, true);
    while t.poll_transmit(now).is_some() {}
    let _ = t.handle(now, from, data);
    while t.poll_transmit(now).is_some() {}
    t.handle_timeout(now + Duration::from_secs(60));
    while t.poll_transmit(now).is_some() {}
});

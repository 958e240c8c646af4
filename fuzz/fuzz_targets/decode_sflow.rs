//! Fuzz the sFlow v5 decoder: the input's first four bytes are forced to version 5 and
//! the whole input is decoded as one datagram, flow records and interface counters both
//! collected. Nothing is asserted but that decoding returns: no panic, no hang, no
//! unbounded allocation.

#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use flowstage::decode::{decode_datagram_with_counters, Decoder, Limits};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut datagram = data.to_vec();
    if let Some(v) = datagram.get_mut(..4) {
        v.copy_from_slice(&5u32.to_be_bytes());
    }
    let mut decoder = Decoder::new(Limits::default());
    let mut flows = Vec::new();
    let mut counters = Vec::new();
    let _ = decode_datagram_with_counters(
        &mut decoder,
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
        1_717_243_200_000,
        &datagram,
        &mut flows,
        &mut counters,
    );
});

//! Fuzz the IPFIX decoder: the input is forced to version 10, decoded whole, then cut
//! at every `SPLT` into datagrams replayed through one decoder (template state).

#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| common::run(data, 10, true));

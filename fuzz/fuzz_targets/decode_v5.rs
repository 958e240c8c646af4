//! Fuzz the NetFlow v5 decoder: the input is forced to version 5 and decoded.

#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| common::run(data, 5, false));

//! Byte, packet and flow counters: the unit every aggregate, report and expectation adds up.

use serde::{Deserialize, Serialize};

/// bytes / packets / flows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub bytes: u64,
    pub packets: u64,
    pub flows: u64,
}

impl Totals {
    pub fn add(&mut self, bytes: u64, packets: u64, flows: u64) {
        self.bytes += bytes;
        self.packets += packets;
        self.flows += flows;
    }
}

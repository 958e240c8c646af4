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
    /// Saturating: a counter pinned at its maximum is visible, a wrapped one is not.
    pub fn add(&mut self, bytes: u64, packets: u64, flows: u64) {
        self.bytes = self.bytes.saturating_add(bytes);
        self.packets = self.packets.saturating_add(packets);
        self.flows = self.flows.saturating_add(flows);
    }
}

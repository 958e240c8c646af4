//! A batch of finished minute buckets (and of sFlow interface counter rows): the unit
//! that is written to PostgreSQL in one transaction, spooled to disk while the database
//! is away, and recorded by id so that it is never counted twice.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::totals::Totals;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Direction {
    In = 0,
    Out = 1,
}

/// Which report a dimension row belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Dimension {
    SrcAs,
    DstAs,
    SrcIp,
    DstIp,
    SrcPort,
    DstPort,
    Proto,
}

impl Dimension {
    pub const ALL: [Dimension; 7] = [
        Dimension::SrcAs,
        Dimension::DstAs,
        Dimension::SrcIp,
        Dimension::DstIp,
        Dimension::SrcPort,
        Dimension::DstPort,
        Dimension::Proto,
    ];

    /// Source = 0, destination = 1 (the `side` column).
    pub fn side(self) -> i16 {
        match self {
            Dimension::SrcAs | Dimension::SrcIp | Dimension::SrcPort | Dimension::Proto => 0,
            Dimension::DstAs | Dimension::DstIp | Dimension::DstPort => 1,
        }
    }
}

/// A key of a dimension row; `Other` is everything beyond the bucket's top N.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Key {
    As(u32),
    Ip(IpAddr),
    Port(u16),
    Proto(u8),
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DimensionRows {
    pub dimension: Dimension,
    pub rows: Vec<(Key, Totals)>,
}

/// One (minute, exporter, interface, direction) bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    /// Start of the minute, Unix seconds (UTC).
    pub minute: i64,
    pub exporter: IpAddr,
    pub ifindex: u32,
    pub direction: Direction,
    /// Totals per sampling rate in effect.
    pub totals: Vec<(u32, Totals)>,
    pub dimensions: Vec<DimensionRows>,
}

/// One sFlow counter sample of one interface, as the writer stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterRow {
    /// When the sample arrived, Unix ms; the delta covers the interval before it.
    pub time_ms: i64,
    pub exporter: IpAddr,
    pub ifindex: u32,
    /// ifSpeed; 0 when the agent does not know it.
    pub speed_bps: u64,
    pub oper_up: bool,
    /// `None` for an interface's first sample and after a counter reset: the interface
    /// (speed, status) is recorded, no traffic.
    pub delta: Option<CounterDelta>,
}

/// Counter increments since the interface's previous sample. Packet and error counts
/// are `None` when the agent does not have them (it sends all ones).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CounterDelta {
    pub interval_ms: u64,
    pub in_octets: u64,
    pub out_octets: u64,
    /// Unicast + multicast + broadcast.
    pub in_packets: Option<u64>,
    pub out_packets: Option<u64>,
    pub in_errors: Option<u64>,
    pub out_errors: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    /// Unique forever: `<collector instance>-<worker>-<sequence>`.
    pub id: String,
    pub buckets: Vec<Bucket>,
    /// sFlow interface counters; absent in batches spooled before sFlow was decoded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub counters: Vec<CounterRow>,
}

impl Batch {
    /// Flows in the batch, counted once (input direction).
    pub fn flows(&self) -> u64 {
        self.buckets
            .iter()
            .filter(|b| b.direction == Direction::In)
            .flat_map(|b| b.totals.iter())
            .map(|(_, t)| t.flows)
            .sum()
    }

    pub fn rows(&self) -> usize {
        self.buckets
            .iter()
            .map(|b| b.totals.len() + b.dimensions.iter().map(|d| d.rows.len()).sum::<usize>())
            .sum::<usize>()
            + self.counters.len()
    }
}

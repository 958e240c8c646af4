//! Flowstage: a NetFlow/IPFIX collection and reporting appliance.
//!
//! The library holds everything; the binaries in `src/bin` only parse arguments and
//! call in here. The data path is [`decode`] (pure datagram decoding) →
//! [`collector`] (UDP receive, per-exporter counters, minute aggregation, spool and
//! PostgreSQL writer) → [`report`] (queries over the aggregates). [`gen`] and
//! [`encode`] produce traffic with known totals for tests and benchmarks. [`setup`] is
//! the installer and configuration manager; [`web`] the web daemon.

pub mod alerts;
pub mod archive;
pub mod cli;
pub mod collector;
pub mod config;
pub mod db;
pub mod decode;
pub mod encode;
pub mod gen;
pub mod mail;
pub mod report;
pub mod rollup;
pub mod setup;
pub mod snmp;
pub mod timespec;
pub mod totals;
pub mod users;
pub mod web;

//! The integration tests, in one binary so that they share one build, one link and one
//! throwaway PostgreSQL cluster (see `support`). Run a part with a filter, e.g.
//! `cargo test --test it end_to_end::` or `cargo test --test it decode::`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

mod alerts;
mod archive;
mod browser;
mod captures;
mod decode;
mod end_to_end;
mod install;
mod peers;
mod resilience;
mod rollup;
mod routers;
mod setup;
mod sflow;
mod sflow_peer;
mod snmp;
mod users;
mod web;
mod writer;

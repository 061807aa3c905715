//! The binary's own commands beyond the node and its clients: the demo tree, the load
//! generator the benchmarks drive, and the node's operations (config checks, tokens, reload).

pub mod demo;
pub mod loadgen;
mod loadgen_engine;
pub mod loadgen_http;
mod loadgen_wt;
pub mod ops;
pub mod output;

pub use quicast::io_reason;

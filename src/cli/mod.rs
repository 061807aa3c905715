//! The binary's own commands beyond running a node: listen and publish (and how they reach
//! their nodes), the demo tree, the load generator the benchmarks drive, and the node's
//! operations (config checks, tokens, reload).

pub mod connect;
pub mod demo;
pub mod listen;
pub mod loadgen;
pub mod loadgen_cmd;
mod loadgen_engine;
pub mod loadgen_http;
mod loadgen_wt;
pub mod ops;
pub mod output;
pub mod publish;

pub use quicast::io_reason;

//! The binary's own commands beyond the node and its clients: the demo tree, and the load
//! generator the benchmarks drive.

pub mod demo;
pub mod loadgen;

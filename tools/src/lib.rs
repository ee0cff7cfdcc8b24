//! order-saga-tools: the developer tools around the service.
//!
//! # Layout
//!
//! This crate depends on the service (`order-saga`), never the reverse: nothing here
//! ships in the service's binary or image.
//!
//! - [`simulate`]: the four downstream services as a test double that answers commands.
//! - [`load`]: an upstream service that publishes sample orders.
//! - the `order-saga-tools` binary (`src/main.rs`): `simulate` and `load` as commands.
//! - the `bench` binary (`src/bin/bench.rs`): throughput, latency, memory and restore
//!   speed of the service, which it runs as child processes.

pub mod load;
pub mod simulate;

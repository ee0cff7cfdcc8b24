//! Kafka plumbing shared by every command: client settings, error classification, and
//! topic administration.

pub mod admin;
pub mod classify;
pub mod clients;
pub mod flush;
pub mod partitioner;
pub mod read;

pub use classify::{classify, ErrorClass};

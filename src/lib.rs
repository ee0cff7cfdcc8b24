//! order-saga: a Kafka Streams-style, exactly-once order saga processor.
//!
//! # Layout
//!
//! The workspace has three crates, and dependencies point one way only:
//! `order-saga-tools` (tools/) → `order-saga` (this crate, the service) →
//! `order-saga-core` (core/). The core is kept apart so that the rules cannot reach for
//! I/O: its manifest has no async, Kafka or PostgreSQL crate in it. The tools are
//! kept apart so that what only tests and benchmarks need (a simulator, a load
//! generator, charts) never ships in the service binary.
//!
//! This crate:
//!
//! - [`saga`]: `order-saga-core` re-exported, so `saga::decide` reads the same from here.
//! - [`topics`]: the fixed topic names and which step each belongs to.
//! - [`contracts`]: the Avro records of every topic, the schema-registry wire format, and
//!   registering and checking the schemas.
//! - [`config`]: the settings, from flags and environment: one group of flags per
//!   concern, so each command takes only its own, and the validated [`config::Config`].
//! - [`kafka`]: client settings, the classification of Kafka errors into retry / abort /
//!   fatal, and topic administration.
//! - [`processor`]: the exactly-once transaction loop: consume, decide, produce, commit;
//!   state restore from the changelog, rebalances, dead letters.
//! - [`sink`]: the exactly-once PostgreSQL sink of `order-status`.
//! - [`db`]: PostgreSQL connections and migrations.
//! - [`report`]: reading orders and summaries back from PostgreSQL.
//! - [`explain`]: one order's story from the Kafka topics alone.
//! - [`telemetry`]: metrics pushed over OTLP: the meter provider and every instrument.
//! - [`cli`]: the commands of the binary, each with the flags it reads; [`signals`]:
//!   shutdown on SIGTERM/SIGINT; [`retry`]: backoff.
//! - [`security`]: TLS, SASL and credentials of every connection; redaction of secrets.
//! - [`health`]: heartbeat files and the `order-saga health` probe.

pub mod cli;
pub mod config;
pub mod contracts;
pub mod db;
pub mod explain;
pub mod health;
pub mod kafka;
pub mod processor;
pub mod report;
pub mod retry;
pub use order_saga_core as saga;
pub mod security;
pub mod signals;
pub mod sink;
pub mod telemetry;
pub mod topics;

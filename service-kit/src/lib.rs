//! What every microblog service starts with, the bus included: configuration,
//! telemetry, server start-up and shutdown, the one JSON error type, the bus client, the
//! transactional outbox and its relay, and the consumer cursor. The event contract
//! itself is the `contract` crate.

pub mod backoff;
pub mod bus;
pub mod config;
pub mod consumer;
pub mod db;
pub mod error;
pub mod http;
pub mod metrics;
pub mod notify;
pub mod otlp;
pub mod outbox;
pub mod server;
pub mod shutdown;
pub mod startup;
pub mod telemetry;
pub mod text;

//! What every microblog service shares: the event contract, the bus client, the
//! transactional outbox and its relay, the consumer cursor, configuration, telemetry,
//! server start-up and the one JSON error type.

pub mod backoff;
pub mod bus;
pub mod config;
pub mod consumer;
pub mod db;
pub mod error;
pub mod events;
pub mod http;
pub mod outbox;
pub mod pg_cluster;
pub mod server;
pub mod shutdown;
pub mod startup;
pub mod telemetry;
pub mod text;

#[cfg(feature = "test-support")]
pub mod testing;

//! The bus's answer to a publish, which producers read back.

use serde::{Deserialize, Serialize};

/// The bus's answer for each published event: its place in the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Accepted {
    pub id: uuid::Uuid,
    pub seq: i64,
    /// True when the id was already in the log (an idempotent re-publish).
    pub duplicate: bool,
}

/// The body of a successful `POST /events`: `{"status":"OK","events":[Accepted…]}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PublishAnswer {
    pub status: String,
    pub events: Vec<Accepted>,
}

impl PublishAnswer {
    pub fn ok(events: Vec<Accepted>) -> Self {
        Self {
            status: "OK".into(),
            events,
        }
    }
}

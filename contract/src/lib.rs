//! The event contract of the microblog: the typed events, the envelope the bus stores
//! and delivers, the bus's answer to a publish, the live stream's messages, batch limits,
//! the trace context and the OpenAPI documents of the public and the bus's APIs.
//! Plain data and JSON only — no web framework, no database — so anything can depend
//! on it: every service, the bus, the tests and the load tool.

mod batch;
mod events;
mod published;
mod stream;
mod trace;
mod validate;

pub use batch::{
    cap_batch_bytes, json_array, OneOrMany, BATCH_BYTES, ENVELOPE_OVERHEAD, EVENTS_BODY_LIMIT,
    PUBLISH_LIMIT,
};
pub use events::{
    CommentCreated, CommentModerated, CommentStatus, CommentUpdated, Decoded, Envelope, Event,
    PostCreated, Publication,
};
pub use published::{Accepted, PublishAnswer};
pub use stream::{NewPost, StreamChange, RESYNC};
pub use trace::TraceParent;
pub use validate::{InvalidEvent, MAX_ID_LEN, MAX_TYPE_LEN};

/// The most comments a post carries in the public API's answers (a comment's create
/// response, each post of `GET /posts`), the latest ones; the rest are paged with
/// `GET /posts/{id}/comments?before=`. One busy post must not make every answer grow.
pub const LATEST_COMMENTS: i64 = 100;

/// The public API's OpenAPI document (also at docs/openapi/public.json), served by each
/// public service at `GET /openapi.json` and held to by scripts/fuzz-api.
pub const PUBLIC_API: &str = include_str!("../openapi/public.json");

/// The bus's internal API's OpenAPI document (also at docs/openapi/bus.json): publish,
/// replay, subscriptions, and the delivery every consumer accepts. Served by the bus at
/// `GET /openapi.json` and held to by `scripts/fuzz-api --bus`.
pub const BUS_API: &str = include_str!("../openapi/bus.json");

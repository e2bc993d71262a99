//! The event contract shared by every service: the typed events and the envelope the bus
//! stores and delivers. The JSON shapes are pinned by tests in `tests/event_json.rs`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;
use uuid::Uuid;

/// Every event type the microblog's services understand. Ids are strings, not UUIDs,
/// because the course's Node services use short hex ids and we interoperate with them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum Event {
    PostCreated(PostCreated),
    CommentCreated(CommentCreated),
    CommentModerated(CommentModerated),
    CommentUpdated(CommentUpdated),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PostCreated {
    pub id: String,
    pub title: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommentCreated {
    pub id: String,
    pub post_id: String,
    pub content: String,
    pub status: CommentStatus,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommentModerated {
    pub id: String,
    pub post_id: String,
    pub content: String,
    pub status: CommentStatus,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CommentUpdated {
    pub id: String,
    pub post_id: String,
    pub content: String,
    pub status: CommentStatus,
    /// Bumped by the comments service on every change, so a reader that sees an older
    /// version after a newer one (redelivery, replay) can ignore it.
    #[serde(default, deserialize_with = "integral")]
    pub version: i64,
}

const EXACT_FLOATS: f64 = 9_007_199_254_740_992.0; // 2^53

/// A whole number however JSON writes it: `2` and `2.0` are the same number to JSON (and
/// to JSON Schema's `integer`), though serde's i64 takes only the first.
fn integral<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<i64, D::Error> {
    use serde::de::Error;
    let number = serde_json::Number::deserialize(deserializer)?;
    if let Some(whole) = number.as_i64() {
        return Ok(whole);
    }
    match number.as_f64() {
        // Within ±2^53 a float with no fraction is exactly one integer; beyond it, it may
        // be a rounded larger one (-2^63-1 parses as the float -2^63).
        Some(float) if float.fract() == 0.0 && float.abs() <= EXACT_FLOATS => Ok(float as i64),
        _ => Err(D::Error::custom(format!(
            "version must be an integer, not {number}"
        ))),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CommentStatus {
    Pending,
    Approved,
    Rejected,
}

impl CommentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved => "approved",
            Self::Rejected => "rejected",
        }
    }
}

impl Event {
    /// Every type the contract defines, by its wire name.
    pub const KINDS: [&'static str; 4] = [
        "PostCreated",
        "CommentCreated",
        "CommentModerated",
        "CommentUpdated",
    ];

    /// `kind` as one of the contract's types, if it is one: a label that stays bounded
    /// whatever types publishers invent.
    pub fn known_kind(kind: &str) -> Option<&'static str> {
        Self::KINDS.iter().copied().find(|known| *known == kind)
    }

    /// The wire name of the event's type, as in the envelope's `type` field.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::PostCreated(_) => "PostCreated",
            Self::CommentCreated(_) => "CommentCreated",
            Self::CommentModerated(_) => "CommentModerated",
            Self::CommentUpdated(_) => "CommentUpdated",
        }
    }

    /// The post and (for comment events) the comment the event is about, for logs.
    pub fn subject(&self) -> (&str, Option<&str>) {
        match self {
            Self::PostCreated(post) => (&post.id, None),
            Self::CommentCreated(c) => (&c.post_id, Some(&c.id)),
            Self::CommentModerated(c) => (&c.post_id, Some(&c.id)),
            Self::CommentUpdated(c) => (&c.post_id, Some(&c.id)),
        }
    }

    fn data(&self) -> Map<String, Value> {
        let value = match self {
            Self::PostCreated(data) => serde_json::to_value(data),
            Self::CommentCreated(data) => serde_json::to_value(data),
            Self::CommentModerated(data) => serde_json::to_value(data),
            Self::CommentUpdated(data) => serde_json::to_value(data),
        };
        match value {
            Ok(Value::Object(map)) => map,
            // Plain structs of strings and numbers always serialise to an object.
            _ => Map::new(),
        }
    }
}

/// What a producer publishes. Only `type` and `data` are required (that is all the
/// course's services send); the bus fills in `id` and `occurredAt` when they are absent,
/// and always assigns `seq` itself — a `seq` in a publication is ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Publication {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    #[serde(rename = "type")]
    pub kind: String,
    pub data: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(
        default,
        with = "time::serde::rfc3339::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub occurred_at: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

impl Publication {
    /// A new event from one of our services: a fresh time-ordered id, stamped now.
    pub fn new(event: &Event, source: &str, traceparent: Option<String>) -> Self {
        Self {
            id: Some(Uuid::now_v7()),
            kind: event.kind().to_owned(),
            data: event.data(),
            source: Some(source.to_owned()),
            occurred_at: Some(OffsetDateTime::now_utc()),
            traceparent,
        }
    }

    /// An event caused by handling `cause`: it continues the cause's trace, one hop on,
    /// and its id is derived from the cause, so handling the same cause again (after the
    /// consumer's transaction was lost and the cause redelivered) publishes the same id,
    /// which the bus keeps once.
    pub fn caused_by(event: &Event, source: &str, cause: &Envelope) -> Self {
        let trace = cause
            .traceparent
            .as_deref()
            .and_then(crate::TraceParent::parse)
            .map(|t| t.child().to_string());
        Self {
            id: Some(derived_id(cause, source, event.kind())),
            ..Self::new(event, source, trace)
        }
    }
}

/// A uuid v7 stamped with the cause's time whose random bits are a name-based (v5) hash
/// of the cause's id, the source and the event type: stable across restarts and builds.
fn derived_id(cause: &Envelope, source: &str, kind: &str) -> Uuid {
    const NAMESPACE: Uuid = Uuid::from_u128(0x6d1c_2f1e_5b7a_4c3d_9e8f_0a1b_2c3d_4e5f);
    let name = format!("{}/{source}/{kind}", cause.id);
    let hash = Uuid::new_v5(&NAMESPACE, name.as_bytes());
    let millis = u64::try_from(cause.occurred_at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    let mut random = [0u8; 10];
    random.copy_from_slice(&hash.as_bytes()[..10]);
    uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid()
}

/// An event as the bus stores and delivers it: always with `id`, `seq` and `occurredAt`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    pub id: Uuid,
    pub seq: i64,
    #[serde(rename = "type")]
    pub kind: String,
    pub data: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// How a delivered envelope reads to a consumer.
#[derive(Debug)]
pub enum Decoded {
    Known(Event),
    /// A type this build does not know (a newer producer, another app on the bus).
    Unknown,
    /// A known type whose data does not fit the contract.
    Malformed(serde_json::Error),
}

impl Envelope {
    pub fn decode(&self) -> Decoded {
        fn parse<T: serde::de::DeserializeOwned>(
            data: &Map<String, Value>,
            wrap: fn(T) -> Event,
        ) -> Decoded {
            // Read in place: a copy of the map first cost more than the reading.
            match T::deserialize(data) {
                Ok(payload) => Decoded::Known(wrap(payload)),
                Err(error) => Decoded::Malformed(error),
            }
        }
        match self.kind.as_str() {
            "PostCreated" => parse(&self.data, Event::PostCreated),
            "CommentCreated" => parse(&self.data, Event::CommentCreated),
            "CommentModerated" => parse(&self.data, Event::CommentModerated),
            "CommentUpdated" => parse(&self.data, Event::CommentUpdated),
            _ => Decoded::Unknown,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cause(id: Uuid) -> Envelope {
        Envelope {
            id,
            seq: 7,
            kind: "CommentCreated".into(),
            data: Map::new(),
            source: Some("comments".into()),
            occurred_at: OffsetDateTime::now_utc(),
            traceparent: None,
        }
    }

    #[test]
    fn every_event_names_the_post_and_comment_it_is_about() {
        let post = Event::PostCreated(PostCreated {
            id: "p1".into(),
            title: "t".into(),
        });
        assert_eq!(post.subject(), ("p1", None));
        let updated = Event::CommentUpdated(CommentUpdated {
            id: "c1".into(),
            post_id: "p1".into(),
            content: "x".into(),
            status: CommentStatus::Approved,
            version: 2,
        });
        assert_eq!(updated.subject(), ("p1", Some("c1")));
    }

    #[test]
    fn an_event_caused_by_the_same_cause_gets_the_same_v7_id() {
        let event = Event::PostCreated(PostCreated {
            id: "p".into(),
            title: "t".into(),
        });
        let first = cause(Uuid::now_v7());
        let again = Publication::caused_by(&event, "moderation", &first).id;
        assert_eq!(
            Publication::caused_by(&event, "moderation", &first).id,
            again
        );
        let id = again.expect("an id");
        assert_eq!(id.get_version_num(), 7);
        let other_cause = Publication::caused_by(&event, "moderation", &cause(Uuid::now_v7())).id;
        assert_ne!(other_cause, again, "a different cause, a different id");
        let other_source = Publication::caused_by(&event, "comments", &first).id;
        assert_ne!(other_source, again, "a different service, a different id");
    }
}

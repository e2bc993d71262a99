//! What the bus checks before it stores a publication: nothing goes into the log that a
//! consumer could not store. PostgreSQL's text refuses NUL; the consumers' ids are
//! indexed keys of bounded length; a known type must carry its type's data.

use serde_json::Value;

use crate::{Decoded, Envelope, Publication};

/// The longest id (a post's or a comment's) any consumer keeps.
pub const MAX_ID_LEN: usize = 100;
/// The longest event type name.
pub const MAX_TYPE_LEN: usize = 100;

/// Why a publication is refused, and where in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidEvent {
    /// A path into the publication, e.g. `data.title`.
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for InvalidEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

fn invalid(field: impl Into<String>, message: impl Into<String>) -> InvalidEvent {
    InvalidEvent {
        field: field.into(),
        message: message.into(),
    }
}

impl Publication {
    /// Refuses what no consumer could store or read.
    pub fn check(&self) -> Result<(), InvalidEvent> {
        let kind = self.kind.as_str();
        if kind.trim().is_empty()
            || kind.chars().count() > MAX_TYPE_LEN
            || kind.chars().any(char::is_control)
        {
            return Err(invalid(
                "type",
                format!("must be 1 to {MAX_TYPE_LEN} printable characters"),
            ));
        }
        for (field, text) in [("source", &self.source), ("traceparent", &self.traceparent)] {
            if text.as_deref().is_some_and(|t| t.contains('\0')) {
                return Err(invalid(field, "contains a NUL character"));
            }
        }
        for (key, value) in &self.data {
            no_nul(&format!("data.{key}"), key, value)?;
        }
        self.check_known_type()
    }

    fn check_known_type(&self) -> Result<(), InvalidEvent> {
        // Decoded the way a consumer decodes it: seq and time do not matter here.
        let probe = Envelope {
            id: uuid::Uuid::nil(),
            seq: 0,
            kind: self.kind.clone(),
            data: self.data.clone(),
            source: None,
            occurred_at: time::OffsetDateTime::UNIX_EPOCH,
            traceparent: None,
        };
        match probe.decode() {
            Decoded::Unknown => Ok(()),
            Decoded::Malformed(error) => Err(invalid(
                "data",
                format!("does not fit {}: {error}", self.kind),
            )),
            Decoded::Known(_) => {
                for key in ["id", "postId"] {
                    if let Some(id) = self.data.get(key).and_then(Value::as_str) {
                        if id.is_empty() || id.chars().count() > MAX_ID_LEN {
                            return Err(invalid(
                                format!("data.{key}"),
                                format!("must be 1 to {MAX_ID_LEN} characters"),
                            ));
                        }
                    }
                }
                Ok(())
            }
        }
    }
}

fn no_nul(path: &str, key: &str, value: &Value) -> Result<(), InvalidEvent> {
    if key.contains('\0') {
        return Err(invalid(path, "a key contains a NUL character"));
    }
    match value {
        Value::String(text) if text.contains('\0') => {
            Err(invalid(path, "contains a NUL character"))
        }
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, item)| no_nul(&format!("{path}[{i}]"), "", item)),
        Value::Object(map) => map
            .iter()
            .try_for_each(|(k, v)| no_nul(&format!("{path}.{k}"), k, v)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publication(kind: &str, data: Value) -> Publication {
        serde_json::from_value(serde_json::json!({"type": kind, "data": data}))
            .unwrap_or_else(|e| panic!("a publication: {e}"))
    }

    fn field_of(p: &Publication) -> Option<String> {
        p.check().err().map(|e| e.field)
    }

    #[test]
    fn what_a_consumer_cannot_store_is_refused_naming_the_field() {
        let nul = publication(
            "PostCreated",
            serde_json::json!({"id": "p", "title": "a\u{0}b"}),
        );
        assert_eq!(field_of(&nul).as_deref(), Some("data.title"));
        let long_id = publication(
            "PostCreated",
            serde_json::json!({"id": "x".repeat(MAX_ID_LEN + 1), "title": "t"}),
        );
        assert_eq!(field_of(&long_id).as_deref(), Some("data.id"));
        let wrong_shape = publication("CommentCreated", serde_json::json!({"id": "c"}));
        assert_eq!(field_of(&wrong_shape).as_deref(), Some("data"));
        let nested = publication("Custom", serde_json::json!({"a": [{"b": "\u{0}"}]}));
        assert_eq!(field_of(&nested).as_deref(), Some("data.a[0].b"));
        let blank_type = publication(" ", serde_json::json!({}));
        assert_eq!(field_of(&blank_type).as_deref(), Some("type"));
    }

    #[test]
    fn well_formed_events_and_unknown_types_pass() {
        let post = publication(
            "PostCreated",
            serde_json::json!({"id": "x".repeat(MAX_ID_LEN), "title": "t"}),
        );
        assert_eq!(post.check(), Ok(()));
        let unknown = publication("SomethingNew", serde_json::json!({"anything": [1, "two"]}));
        assert_eq!(unknown.check(), Ok(()));
    }
}

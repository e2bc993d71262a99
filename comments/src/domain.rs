use serde::Serialize;
use service_kit::error::ApiError;
use uuid::Uuid;

/// A comment's text: 1 to 1000 characters after trimming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content(String);

impl Content {
    pub const MAX: usize = 1000;

    pub fn parse(raw: &str) -> Result<Self, ApiError> {
        service_kit::text::bounded("content", raw, Self::MAX).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A post id from a URL: ours are uuids, the course's short hex strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PostId(String);

impl PostId {
    pub fn parse(raw: &str) -> Result<Self, ApiError> {
        let valid = !raw.is_empty()
            && raw.len() <= contract::MAX_ID_LEN
            && raw
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if valid {
            Ok(Self(raw.to_owned()))
        } else {
            Err(ApiError::NotFound(format!("no post {raw:?}")))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A comment as the API shows it (the course's shape).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Comment {
    pub id: Uuid,
    pub content: String,
    pub status: String,
}

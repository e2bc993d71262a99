use serde::Serialize;
use service_kit::error::ApiError;
use uuid::Uuid;

/// A post title: 1 to 200 characters after trimming.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Title(String);

impl Title {
    pub const MAX: usize = 200;

    pub fn parse(raw: &str) -> Result<Self, ApiError> {
        service_kit::text::bounded("title", raw, Self::MAX).map(Self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Post {
    pub id: Uuid,
    pub title: String,
}

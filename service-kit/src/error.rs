//! The one error type every HTTP handler returns, mapped to a status and the JSON body
//! `{"error":{"code","message"}}` here and nowhere else.

use std::sync::Arc;

use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON at all.
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// JSON, but not the shape the endpoint takes (missing field, wrong type).
    #[error("{0}")]
    InvalidBody(String),
    /// Well-formed, but a value breaks a rule (e.g. a title too long).
    #[error("{message}")]
    Validation { field: String, message: String },
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    NotFound(String),
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("expected Content-Type: application/json")]
    UnsupportedMediaType,
    #[error("missing or wrong bearer token")]
    Unauthorized,
    /// A database error, answered by its kind (`DatabaseFailure::of`). Shared, so that
    /// one failed group commit can answer every request in the group with its cause.
    #[error("{}", DatabaseFailure::of(.0).message())]
    Database(#[source] Arc<sqlx::Error>),
    #[error("a dependency is unavailable: {0}")]
    Unavailable(String),
    /// A consumer refuses a bus whose log is not the one it applied (see `consumer`).
    #[error("{0}")]
    LogDiverged(String),
    /// A mistake in our code or wiring, never the client's: 500, logged.
    #[error("internal error")]
    Bug(String),
}

/// The error code of a consumer's refusal of a rewound log; the bus looks for it.
pub const LOG_DIVERGED: &str = "log_diverged";

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::MalformedJson(_) => "malformed_json",
            Self::InvalidBody(_) => "invalid_body",
            Self::Validation { .. } => "validation_failed",
            Self::BadRequest(_) => "bad_request",
            Self::NotFound(_) => "not_found",
            Self::PayloadTooLarge { .. } => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::Unauthorized => "unauthorized",
            Self::Database(error) => DatabaseFailure::of(error).code(),
            Self::Unavailable(_) => "unavailable",
            Self::LogDiverged(_) => LOG_DIVERGED,
            Self::Bug(_) => "internal",
        }
    }

    /// Maps a serde_json failure: syntax errors are 400, shape errors 422.
    pub fn from_json(error: serde_json::Error) -> Self {
        use serde_json::error::Category;
        match error.classify() {
            Category::Data => Self::InvalidBody(error.to_string()),
            Category::Syntax | Category::Eof | Category::Io => {
                Self::MalformedJson(error.to_string())
            }
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::MalformedJson(_) | Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::InvalidBody(_) | Self::Validation { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Database(error) => DatabaseFailure::of(error).status(),
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::LogDiverged(_) => StatusCode::CONFLICT,
            Self::Bug(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        // The cause chain goes to the log, never to the client.
        if status.is_server_error() {
            tracing::error!(error = %error_chain(self), code = self.code(), "request failed");
        } else if matches!(self, Self::Bug(_) | Self::Database(_)) {
            tracing::warn!(error = %error_chain(self), code = self.code(), "request refused by the database");
        }
        let mut error = json!({ "code": self.code(), "message": self.to_string() });
        if let Self::Validation { field, .. } = self {
            error["field"] = json!(field);
        }
        HttpResponse::build(status).json(json!({ "error": error }))
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(error: sqlx::Error) -> Self {
        Self::Database(Arc::new(error))
    }
}

/// What a database error means for the request that met it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatabaseFailure {
    /// The database cannot be reached or is shutting down: 503, retry later.
    Unavailable,
    /// A constraint or a concurrent transaction refused the change: 409, retry or rethink.
    Conflict,
    /// A value PostgreSQL cannot store (e.g. text with a NUL character): 422.
    InvalidValue,
    /// Anything else is our mistake (a broken query, a missing column): 500.
    Bug,
}

impl DatabaseFailure {
    pub fn of(error: &sqlx::Error) -> Self {
        match error {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => Self::Unavailable,
            sqlx::Error::Database(db) => Self::of_sqlstate(db.code().as_deref().unwrap_or("")),
            _ => Self::Bug,
        }
    }

    /// By SQLSTATE (PostgreSQL's Appendix A): the class is the first two characters.
    fn of_sqlstate(code: &str) -> Self {
        match (code.get(..2).unwrap_or(""), code) {
            (_, "40001" | "40P01") | ("23", _) => Self::Conflict,
            ("22", _) => Self::InvalidValue,
            // Connection exceptions, insufficient resources, operator intervention
            // (shutdown, cancelled by a statement timeout).
            ("08" | "53" | "57", _) => Self::Unavailable,
            _ => Self::Bug,
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Conflict => StatusCode::CONFLICT,
            Self::InvalidValue => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Bug => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn code(self) -> &'static str {
        match self {
            Self::Unavailable => "unavailable",
            Self::Conflict => "conflict",
            Self::InvalidValue => "invalid_value",
            Self::Bug => "internal",
        }
    }

    fn message(self) -> &'static str {
        match self {
            Self::Unavailable => "the database is unavailable",
            Self::Conflict => "the change conflicts with another one; try again",
            Self::InvalidValue => "a value in the request cannot be stored",
            Self::Bug => "internal error",
        }
    }
}

/// `outer: inner: root`, for logs.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_errors_answer_by_kind() {
        for (code, failure) in [
            ("40001", DatabaseFailure::Conflict),
            ("40P01", DatabaseFailure::Conflict),
            ("23505", DatabaseFailure::Conflict),
            ("22021", DatabaseFailure::InvalidValue),
            ("22001", DatabaseFailure::InvalidValue),
            ("08006", DatabaseFailure::Unavailable),
            ("57P01", DatabaseFailure::Unavailable),
            ("53300", DatabaseFailure::Unavailable),
            ("42P01", DatabaseFailure::Bug),
            ("42703", DatabaseFailure::Bug),
            ("", DatabaseFailure::Bug),
        ] {
            assert_eq!(DatabaseFailure::of_sqlstate(code), failure, "{code}");
        }
        assert_eq!(
            DatabaseFailure::of(&sqlx::Error::PoolTimedOut),
            DatabaseFailure::Unavailable
        );
        assert_eq!(
            DatabaseFailure::of(&sqlx::Error::RowNotFound),
            DatabaseFailure::Bug
        );
        let bug = ApiError::from(sqlx::Error::ColumnNotFound("x".into()));
        assert_eq!(bug.status_code(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(bug.code(), "internal");
    }
}

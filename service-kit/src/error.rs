//! The one error type every HTTP handler returns, mapped to a status and the JSON body
//! `{"error":{"code","message"}}` here and nowhere else.

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
    Validation {
        field: &'static str,
        message: String,
    },
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
    #[error("the database is unavailable")]
    Database(#[from] sqlx::Error),
    #[error("a dependency is unavailable: {0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

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
            Self::Database(_) | Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal",
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
            Self::Database(_) | Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        if status.is_server_error() {
            // The cause chain goes to the log, never to the client.
            tracing::error!(error = %error_chain(self), code = self.code(), "request failed");
        }
        let mut error = json!({ "code": self.code(), "message": self.to_string() });
        if let Self::Validation { field, .. } = self {
            error["field"] = json!(field);
        }
        HttpResponse::build(status).json(json!({ "error": error }))
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

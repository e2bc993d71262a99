//! HTTP building blocks shared by every service: the JSON body extractor (limit, content
//! type, error mapping), bearer-token checks, per-request logging with a request id and
//! trace context, and the health endpoints.

use std::future::{ready, Ready};
use std::time::Instant;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Payload, ServiceRequest, ServiceResponse};
use actix_web::http::header;
use actix_web::middleware::Next;
use actix_web::{web, FromRequest, HttpMessage, HttpRequest};
use bytes::BytesMut;
use futures_util::future::LocalBoxFuture;
use futures_util::{FutureExt, StreamExt};
use serde::de::DeserializeOwned;
use tracing::Instrument;

use crate::error::ApiError;
use contract::TraceParent;

/// The largest request body a service accepts, as app data; 64 KiB unless set.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

pub const DEFAULT_BODY_LIMIT: usize = 64 * 1024;

/// A JSON request body. Unlike actix's `Json`, every failure (wrong content type, too
/// large, malformed, wrong shape) becomes our JSON error with the right status.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned + 'static> FromRequest for JsonBody<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let limit = req
            .app_data::<BodyLimit>()
            .map_or(DEFAULT_BODY_LIMIT, |l| l.0);
        let declared_length = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        let is_json = is_json_content_type(req);
        let mut payload = payload.take();
        async move {
            if !is_json {
                return Err(ApiError::UnsupportedMediaType);
            }
            if declared_length.is_some_and(|n| n > limit) {
                return Err(ApiError::PayloadTooLarge { limit });
            }
            let mut body = BytesMut::with_capacity(declared_length.unwrap_or(1024).min(limit));
            while let Some(chunk) = payload.next().await {
                let chunk =
                    chunk.map_err(|e| ApiError::BadRequest(format!("reading body: {e}")))?;
                if body.len() + chunk.len() > limit {
                    return Err(ApiError::PayloadTooLarge { limit });
                }
                body.extend_from_slice(&chunk);
            }
            serde_json::from_slice(&body)
                .map(JsonBody)
                .map_err(ApiError::from_json)
        }
        .boxed_local()
    }
}

fn is_json_content_type(req: &HttpRequest) -> bool {
    let Some(value) = req.headers().get(header::CONTENT_TYPE) else {
        return false;
    };
    let essence = value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

/// Checks `Authorization: Bearer <expected>`.
fn require_bearer(req: &HttpRequest, expected: &str) -> Result<(), ApiError> {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(presented.as_bytes(), expected.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The trace context of the current request (from its `traceparent` header, or a new
/// trace), which handlers pass on in the events they emit.
#[derive(Debug, Clone)]
pub struct RequestTrace(pub TraceParent);

impl FromRequest for RequestTrace {
    type Error = actix_web::Error;
    type Future = Ready<Result<Self, Self::Error>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let trace = req.extensions().get::<TraceParent>().cloned();
        ready(Ok(Self(trace.unwrap_or_else(TraceParent::new_root))))
    }
}

/// Middleware: one log line per request (method, path, status, latency) inside a span
/// that carries the request id and trace id, so every line a handler logs has them too;
/// and the request counted in the HTTP metrics by its route's template.
pub async fn log_requests(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let started = Instant::now();
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let caller = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(TraceParent::parse);
    // This request's span: its id is the parent id of what the request passes on.
    let trace = caller
        .as_ref()
        .map(TraceParent::child)
        .unwrap_or_else(TraceParent::new_root);
    let method = req.method().clone();
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        trace_id = %trace.trace_id,
        span_id = %trace.parent_id,
        parent_span_id = caller.as_ref().map(|c| c.parent_id.as_str()),
        method = %method,
        route = tracing::field::Empty,
        status = tracing::field::Empty,
    );
    req.extensions_mut().insert(trace);
    let path = req.path().to_owned();
    let quiet = is_operational(&path);
    let result = next.call(req).instrument(span.clone()).await;
    let took = started.elapsed();
    let latency_ms = took.as_secs_f64() * 1000.0;
    let (status, route) = match &result {
        Ok(res) => (res.status().as_u16(), res.request().match_pattern()),
        Err(err) => (err.as_response_error().status_code().as_u16(), None),
    };
    crate::metrics::HTTP.answered(&method, route.as_deref(), status, took);
    if let Some(route) = &route {
        span.record("route", route.as_str());
    }
    span.record("status", status);
    span.in_scope(|| {
        // Probes come many times a minute; their answers are in /readyz itself.
        if quiet {
            tracing::debug!(%method, %path, status, latency_ms, "request");
        } else {
            tracing::info!(%method, %path, status, latency_ms, "request");
        }
    });
    result
}

/// The health checks and the metrics: asked for many times a minute by probes and
/// scrapers (so logged at debug level), and answered while the service starts.
fn is_operational(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/metrics")
}

/// Middleware: until the schema is up to date, every request but the health checks and
/// the metrics is answered 503 with `Retry-After`, as a proxy answers for a Service with
/// no ready pod — never a 500 from a query against tables that do not exist yet.
pub async fn until_schema_ready(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let starting = req
        .app_data::<web::Data<crate::server::Readiness>>()
        .is_some_and(|readiness| !readiness.schema_ready());
    if starting && !is_operational(req.path()) {
        let error = ApiError::Unavailable("starting: the database is not reachable yet".into());
        let mut response = actix_web::ResponseError::error_response(&error);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        return Ok(req.into_response(response).map_into_right_body());
    }
    next.call(req)
        .await
        .map(ServiceResponse::map_into_left_body)
}

/// `GET /openapi.json`: the OpenAPI document of the API the service serves
/// (`contract::PUBLIC_API`, or the bus's `contract::BUS_API`).
pub fn openapi_document(document: &'static str) -> actix_web::Route {
    web::get().to(move || async move {
        actix_web::HttpResponse::Ok()
            .content_type("application/json")
            .body(document)
    })
}

/// Registers `GET /healthz` (the process is alive) and `GET /readyz` (database reachable,
/// migrations applied, caught up), shared by every service.
pub fn health_routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/healthz", web::get().to(healthz))
        .route("/readyz", web::get().to(readyz));
}

/// Alive, with what an operator should know even while it is (e.g. the bus refusing
/// this service's events).
async fn healthz(readiness: web::Data<crate::server::Readiness>) -> actix_web::HttpResponse {
    actix_web::HttpResponse::Ok().json(readiness.detail())
}

async fn readyz(readiness: web::Data<crate::server::Readiness>) -> actix_web::HttpResponse {
    match readiness.check().await {
        Ok(()) => actix_web::HttpResponse::Ok().json(serde_json::json!({ "status": "ready" })),
        // Not ready is an answer, not a failure: probes ask many times a minute, and
        // why it is not ready is logged where it happens (the database, the catch-up).
        Err(not_ready) => actix_web::HttpResponse::ServiceUnavailable().json(
            serde_json::json!({ "error": { "code": not_ready.code(), "message": not_ready.to_string() } }),
        ),
    }
}

/// Who may use `/events`: the holder of the shared secret (`EVENT_BUS_TOKEN`), or —
/// only when it is configured so, as in local runs and tests — anyone. Registered as app
/// data next to every `/events` route; a route registered without it refuses everything.
#[derive(Debug, Clone)]
pub enum EventsAuth {
    Token(String),
    Open,
}

impl EventsAuth {
    /// From the configured token: none configured is the explicit open mode.
    pub fn from_token(token: Option<&str>) -> Self {
        match token {
            Some(token) => Self::Token(token.to_owned()),
            None => Self::Open,
        }
    }
}

/// An extractor that passes only requests carrying the configured bearer token; put it
/// first among a handler's arguments so a forged request is refused before its body is
/// read. Fails closed: without `EventsAuth` registered, nothing passes.
#[derive(Debug)]
pub struct Authorized;

impl FromRequest for Authorized {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let checked = match req.app_data::<EventsAuth>() {
            Some(EventsAuth::Open) => Ok(Authorized),
            Some(EventsAuth::Token(token)) => require_bearer(req, token).map(|()| Authorized),
            None => Err(ApiError::Bug(format!(
                "{} is served without EventsAuth registered",
                req.path()
            ))),
        };
        ready(checked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::{test, App, HttpResponse};

    async fn guarded(_: Authorized) -> HttpResponse {
        HttpResponse::Ok().finish()
    }

    async fn status(auth: Option<EventsAuth>, bearer: Option<&str>) -> u16 {
        let mut app = App::new();
        if let Some(auth) = auth {
            app = app.app_data(auth);
        }
        let app = test::init_service(app.route("/events", web::post().to(guarded))).await;
        let mut request = test::TestRequest::post().uri("/events");
        if let Some(token) = bearer {
            request = request.insert_header((header::AUTHORIZATION, format!("Bearer {token}")));
        }
        test::call_service(&app, request.to_request())
            .await
            .status()
            .as_u16()
    }

    #[actix_web::test]
    async fn events_routes_fail_closed_without_their_auth_registered() {
        assert_eq!(status(None, None).await, 500);
        assert_eq!(status(None, Some("anything")).await, 500);
        assert_eq!(status(Some(EventsAuth::Open), None).await, 200);
        let token = || Some(EventsAuth::Token("s3cret".into()));
        assert_eq!(status(token(), None).await, 401);
        assert_eq!(status(token(), Some("wrong")).await, 401);
        assert_eq!(status(token(), Some("s3cret")).await, 200);
    }
}

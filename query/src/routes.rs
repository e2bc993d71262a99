use std::sync::Arc;
use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use serde::Deserialize;
use service_kit::error::ApiError;
use service_kit::shutdown::ShutdownSignal;
use sqlx::PgPool;
use tokio::sync::broadcast;

use crate::cache::ViewCache;
use crate::metrics::StreamClient;
use crate::store;

pub struct QueryState {
    pub pool: PgPool,
    pub changes: broadcast::Sender<String>,
    pub cache: Arc<ViewCache>,
    pub shutdown: ShutdownSignal,
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/posts", web::get().to(view))
        .route("/posts/stream", web::get().to(stream))
        .route("/posts/{id}", web::get().to(one_post))
        .route(
            "/openapi.json",
            service_kit::http::openapi_document(contract::PUBLIC_API),
        );
}

#[derive(Debug, Deserialize)]
struct Paging {
    limit: Option<i64>,
    before: Option<String>,
}

async fn view(req: HttpRequest, state: web::Data<QueryState>) -> Result<HttpResponse, ApiError> {
    let paging = web::Query::<Paging>::from_query(req.query_string())
        .map_err(|e| ApiError::BadRequest(format!("query string: {e}")))?
        .into_inner();
    if paging.limit.is_some_and(|l| !(1..=1000).contains(&l)) {
        return Err(ApiError::BadRequest(
            "`limit` must be between 1 and 1000".into(),
        ));
    }
    // A cursor PostgreSQL cannot even compare (a NUL) names no post: the page is empty.
    if paging.before.as_deref().is_some_and(|id| !storable(id)) {
        return Ok(HttpResponse::Ok()
            .content_type("application/json")
            .body("{}"));
    }
    let json = match (paging.limit, paging.before) {
        (None, None) => {
            let pool = &state.pool;
            state
                .cache
                .whole(|ids| async move { store::whole_view(pool, ids.as_deref()).await })
                .await?
        }
        key => {
            state
                .cache
                .page(key.clone(), || {
                    store::view(&state.pool, key.0, key.1.as_deref())
                })
                .await?
        }
    };
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(json))
}

async fn one_post(
    state: web::Data<QueryState>,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    if !storable(&id) {
        return Err(ApiError::NotFound(format!("no post {:?}", id.as_str())));
    }
    match store::post(&state.pool, &id).await? {
        Some(json) => Ok(HttpResponse::Ok()
            .content_type("application/json")
            .body(json)),
        None => Err(ApiError::NotFound(format!("no post {:?}", id.as_str()))),
    }
}

/// Whether PostgreSQL text can hold `id`: no id with a NUL was ever stored.
fn storable(id: &str) -> bool {
    !id.contains('\0')
}

/// Server-Sent Events: every change to the view, as it commits. A client that falls too
/// far behind gets a `Resync` event and should reload the view.
async fn stream(state: web::Data<QueryState>) -> HttpResponse {
    struct Live {
        changes: broadcast::Receiver<String>,
        shutdown: ShutdownSignal,
        heartbeat: tokio::time::Interval,
        greeted: bool,
        _counted: StreamClient,
    }
    let live = Live {
        _counted: StreamClient::connected(),
        changes: state.changes.subscribe(),
        shutdown: state.shutdown.clone(),
        heartbeat: tokio::time::interval(Duration::from_secs(15)),
        greeted: false,
    };
    let events = futures_util::stream::unfold(live, |mut live| async move {
        if !live.greeted {
            live.greeted = true;
            return Some((
                Ok::<_, ApiError>(Bytes::from_static(
                    b"retry: 1000\nevent: ready\ndata: {}\n\n",
                )),
                live,
            ));
        }
        let chunk = tokio::select! {
            change = live.changes.recv() => match change {
                Ok(json) => format!("data: {json}\n\n"),
                Err(broadcast::error::RecvError::Lagged(_)) => "data: {\"type\":\"Resync\"}\n\n".to_owned(),
                Err(broadcast::error::RecvError::Closed) => return None,
            },
            _ = live.heartbeat.tick() => ": keep-alive\n\n".to_owned(),
            // Open streams must not hold up a graceful shutdown.
            _ = live.shutdown.draining() => return None,
        };
        Some((Ok(Bytes::from(chunk)), live))
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(events)
}

//! The bus's HTTP API: publish, read (replay) the log, and subscription status.

use actix_web::{web, HttpRequest, HttpResponse};
use bytes::Bytes;
use contract::{OneOrMany, Publication, PublishAnswer};
use futures_util::Stream;
use serde::{Deserialize, Serialize};
use serde_json::json;
use service_kit::bus::HEAD_HEADER;
use service_kit::error::ApiError;
use service_kit::http::{Authorized, JsonBody};
use tokio::sync::watch;

use crate::store::{Store, Subscription};
use crate::writer::{AppendError, LogWriter};

pub struct BusState {
    pub writer: LogWriter,
    pub store: Store,
    /// The configured subscribers, by name.
    pub subscribers: Vec<String>,
    /// This replica's name, and whether it leads the deliveries now.
    pub replica: String,
    pub leading: watch::Receiver<bool>,
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/events", web::post().to(publish))
        .route("/events", web::get().to(read_log))
        .route("/subscriptions", web::get().to(subscriptions))
        .route(
            "/openapi.json",
            service_kit::http::openapi_document(contract::BUS_API),
        );
}

/// Events per page when streaming the log (a catching-up consumer's whole request), and
/// the bytes a page may hold.
const PAGE: i64 = 5_000;
const PAGE_BYTES: usize = 4 * 1024 * 1024;
/// A read with `?limit=` ends after this much (always after at least one event): a
/// reader catching up asks again from the last seq it got, so it never holds a huge page.
const LIMITED_READ_BYTES: usize = 8 * 1024 * 1024;

async fn publish(
    _auth: Authorized,
    state: web::Data<BusState>,
    JsonBody(OneOrMany(publications)): JsonBody<OneOrMany<Publication>>,
) -> Result<HttpResponse, ApiError> {
    for (index, publication) in publications.iter().enumerate() {
        publication
            .check()
            .map_err(|invalid| ApiError::Validation {
                message: format!("event {index}: {invalid}"),
                field: invalid.field,
            })?;
    }
    let accepted = state
        .writer
        .append(publications)
        .await
        .map_err(|e| match e {
            AppendError::Database(e) => ApiError::Database(e),
            AppendError::ShuttingDown => ApiError::Unavailable(e.to_string()),
        })?;
    Ok(HttpResponse::Ok().json(PublishAnswer::ok(accepted)))
}

#[derive(Debug, Deserialize)]
struct LogQuery {
    after: Option<i64>,
    limit: Option<i64>,
}

/// `GET /events`: the whole log as a JSON array (course-compatible replay), or a page
/// with `?after=SEQ&limit=N`. Streamed page by page, never collected in memory.
async fn read_log(
    _auth: Authorized,
    req: HttpRequest,
    state: web::Data<BusState>,
) -> Result<HttpResponse, ApiError> {
    let query = web::Query::<LogQuery>::from_query(req.query_string())
        .map_err(|e| ApiError::BadRequest(format!("query string: {e}")))?
        .into_inner();
    let after = query.after.unwrap_or(0);
    if after < 0 {
        return Err(ApiError::BadRequest("`after` must be 0 or more".into()));
    }
    if query.limit.is_some_and(|l| !(1..=100_000).contains(&l)) {
        return Err(ApiError::BadRequest(
            "`limit` must be between 1 and 100000".into(),
        ));
    }
    // Read first: every event up to it is committed, so the stream below holds them all.
    let head = state.store.head().await?;
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .insert_header((HEAD_HEADER, head.to_string()))
        .streaming(log_stream(state.store.clone(), after, query.limit)))
}

struct Cursor {
    store: Store,
    sent_bytes: usize,
    after: i64,
    remaining: Option<i64>,
    wrote_any: bool,
    opened: bool,
    finished: bool,
}

fn log_stream(
    store: Store,
    after: i64,
    limit: Option<i64>,
) -> impl Stream<Item = Result<Bytes, ApiError>> {
    let start = Cursor {
        store,
        sent_bytes: 0,
        after,
        remaining: limit,
        wrote_any: false,
        opened: false,
        finished: false,
    };
    futures_util::stream::unfold(start, |mut cursor| async move {
        if cursor.finished {
            return None;
        }
        let page_size = cursor.remaining.map_or(PAGE, |r| r.min(PAGE));
        let page = match cursor
            .store
            .joined_page_after(cursor.after, page_size, PAGE_BYTES)
            .await
        {
            Ok(page) => page,
            Err(error) => {
                // The response is already under way: ending it early leaves invalid JSON,
                // which a reader detects, rather than a silently short log.
                cursor.finished = true;
                return Some((Err(ApiError::from(error)), cursor));
            }
        };
        let mut chunk = String::with_capacity(page.json.len() + 2);
        if !cursor.opened {
            chunk.push('[');
            cursor.opened = true;
        }
        if let Some(last) = page.last {
            if cursor.wrote_any {
                chunk.push(',');
            }
            chunk.push_str(&page.json);
            cursor.wrote_any = true;
            cursor.after = last;
        }
        if let Some(remaining) = cursor.remaining.as_mut() {
            *remaining -= page.count;
        }
        cursor.sent_bytes += chunk.len();
        let read_enough = cursor.remaining.is_some() && cursor.sent_bytes >= LIMITED_READ_BYTES;
        // A short page may have been cut by its byte cap: only an empty one ends the log.
        if page.count == 0 || cursor.remaining == Some(0) || read_enough {
            chunk.push(']');
            cursor.finished = true;
        }
        Some((Ok(Bytes::from(chunk)), cursor))
    })
}

#[derive(Serialize)]
struct SubscriptionView {
    #[serde(flatten)]
    subscription: Subscription,
    lag: i64,
}

/// `GET /subscriptions`: from the database, so every replica tells the same: the head,
/// per subscriber its cursor, lag, last success and last error, and who leads.
async fn subscriptions(state: web::Data<BusState>) -> Result<HttpResponse, ApiError> {
    let head = state.store.head().await?;
    let subscriptions: Vec<SubscriptionView> = state
        .store
        .subscriptions(&state.subscribers)
        .await?
        .into_iter()
        .map(|subscription| SubscriptionView {
            lag: head - subscription.cursor,
            subscription,
        })
        .collect();
    let leader = state.store.leader().await?;
    Ok(HttpResponse::Ok().json(json!({
        "head": head,
        "subscriptions": subscriptions,
        "leader": leader,
        "replica": state.replica,
        "leading": *state.leading.borrow(),
    })))
}

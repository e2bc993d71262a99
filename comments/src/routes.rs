use std::time::Duration;

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use service_kit::error::ApiError;
use service_kit::http::{JsonBody, RequestTrace};
use service_kit::outbox::OutboxWaker;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::domain::{Content, PostId};
use crate::store::{self, Comments};

/// The header that carries how many comments the post has in all; the body keeps the
/// course's shape, an array of comments.
pub const TOTAL_HEADER: &str = "X-Total-Count";

/// How long a comment on a post we have not heard of yet waits for its `PostCreated`:
/// a user who comments right after creating a post never sees a false 404.
const NEW_POST_GRACE: Duration = Duration::from_secs(3);

pub struct CommentsState {
    pub pool: PgPool,
    pub outbox: OutboxWaker,
    pub posts_learned: watch::Receiver<u64>,
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/posts/{id}/comments", web::post().to(create_comment))
        .route("/posts/{id}/comments", web::get().to(list_comments))
        .route(
            "/openapi.json",
            service_kit::http::openapi_document(contract::PUBLIC_API),
        );
}

#[derive(Debug, Deserialize)]
struct NewComment {
    content: String,
}

#[tracing::instrument(skip_all, fields(post_id = %path))]
async fn create_comment(
    state: web::Data<CommentsState>,
    path: web::Path<String>,
    RequestTrace(trace): RequestTrace,
    JsonBody(body): JsonBody<NewComment>,
) -> Result<HttpResponse, ApiError> {
    let post_id = PostId::parse(&path)?;
    let content = Content::parse(&body.content)?;
    // A post created a moment ago may not have reached this service yet: wait for the
    // posts it learns (up to NEW_POST_GRACE) before answering 404.
    let mut learned = state.posts_learned.clone();
    let deadline = tokio::time::Instant::now() + NEW_POST_GRACE;
    loop {
        learned.borrow_and_update();
        if let Some(created) =
            store::create_comment(&state.pool, &post_id, &content, &trace).await?
        {
            state.outbox.hand(created.row);
            tracing::info!(comment_id = %created.id, "comment created");
            return Ok(answer(HttpResponse::Created(), created.comments));
        }
        let changed = tokio::time::timeout_at(deadline, learned.changed()).await;
        if !matches!(changed, Ok(Ok(()))) {
            return Err(ApiError::NotFound(format!(
                "no post {:?}",
                post_id.as_str()
            )));
        }
    }
}

#[derive(Debug, Deserialize)]
struct Paging {
    before: Option<String>,
    limit: Option<i64>,
}

/// The post's comments, oldest first: the latest `limit` (at most and by default
/// `LATEST_COMMENTS`), or those created before comment `before`. An unknown post has none
/// (the course answers `[]`).
async fn list_comments(
    req: HttpRequest,
    state: web::Data<CommentsState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let paging = web::Query::<Paging>::from_query(req.query_string())
        .map_err(|e| ApiError::BadRequest(format!("query string: {e}")))?
        .into_inner();
    let limit = paging.limit.unwrap_or(contract::LATEST_COMMENTS);
    if !(1..=contract::LATEST_COMMENTS).contains(&limit) {
        return Err(ApiError::BadRequest(format!(
            "`limit` must be between 1 and {}",
            contract::LATEST_COMMENTS
        )));
    }
    let before = paging
        .before
        .map(|id| {
            uuid::Uuid::parse_str(&id)
                .map_err(|_| ApiError::BadRequest(format!("`before` is not a comment id: {id:?}")))
        })
        .transpose()?;
    let Ok(post_id) = PostId::parse(&path) else {
        return Ok(answer(HttpResponse::Ok(), Comments::default()));
    };
    let comments = store::comments_of(&state.pool, &post_id, before, limit).await?;
    Ok(answer(HttpResponse::Ok(), comments))
}

fn answer(mut response: actix_web::HttpResponseBuilder, comments: Comments) -> HttpResponse {
    response
        .insert_header((TOTAL_HEADER, comments.total.to_string()))
        .json(comments.listed)
}

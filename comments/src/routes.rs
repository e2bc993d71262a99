use std::time::Duration;

use actix_web::{web, HttpResponse};
use serde::Deserialize;
use service_kit::error::ApiError;
use service_kit::http::{JsonBody, RequestTrace};
use service_kit::outbox::OutboxWaker;
use sqlx::PgPool;
use tokio::sync::watch;

use crate::domain::{Content, PostId};
use crate::store;

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
        .route("/posts/{id}/comments", web::get().to(list_comments));
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
            return Ok(HttpResponse::Created().json(created.comments));
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

async fn list_comments(
    state: web::Data<CommentsState>,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let Ok(post_id) = PostId::parse(&path) else {
        return Ok(HttpResponse::Ok().json(Vec::<()>::new()));
    };
    Ok(HttpResponse::Ok().json(store::comments_of(&state.pool, &post_id).await?))
}

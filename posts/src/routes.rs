use actix_web::{web, HttpResponse};
use serde::Deserialize;
use service_kit::error::ApiError;
use service_kit::http::{JsonBody, RequestTrace};
use service_kit::outbox::OutboxWaker;
use sqlx::PgPool;

use crate::domain::Title;
use crate::store;

pub struct PostsState {
    pub pool: PgPool,
    pub outbox: OutboxWaker,
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/posts/create", web::post().to(create_post))
        .route("/posts", web::post().to(create_post))
        .route("/posts", web::get().to(list_posts))
        .route(
            "/openapi.json",
            service_kit::http::openapi_document(contract::PUBLIC_API),
        );
}

#[derive(Debug, Deserialize)]
struct NewPost {
    title: String,
}

#[tracing::instrument(skip_all, fields(post_id))]
async fn create_post(
    state: web::Data<PostsState>,
    RequestTrace(trace): RequestTrace,
    JsonBody(body): JsonBody<NewPost>,
) -> Result<HttpResponse, ApiError> {
    let title = Title::parse(&body.title)?;
    let (post, row) = store::create_post(&state.pool, title, &trace).await?;
    state.outbox.hand(row);
    tracing::Span::current().record("post_id", tracing::field::display(post.id));
    tracing::info!(post_id = %post.id, "post created");
    Ok(HttpResponse::Created().json(post))
}

/// The course's shape: an object keyed by post id, in creation order.
async fn list_posts(state: web::Data<PostsState>) -> Result<HttpResponse, ApiError> {
    let posts = store::all_posts(&state.pool).await?;
    let by_id: serde_json::Map<String, serde_json::Value> = posts
        .into_iter()
        .map(|post| {
            (
                post.id.to_string(),
                serde_json::json!({ "id": post.id, "title": post.title }),
            )
        })
        .collect();
    Ok(HttpResponse::Ok().json(by_id))
}

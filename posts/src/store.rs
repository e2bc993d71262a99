//! All of the posts service's SQL.

use contract::TraceParent;
use contract::{Event, PostCreated, Publication};
use service_kit::outbox::{self, OutboxRow};
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::{Post, Title};

/// Creates the post and its `PostCreated` event in one transaction: both or neither.
/// Returns the committed outbox row too, for the relay.
pub async fn create_post(
    pool: &PgPool,
    title: Title,
    trace: &TraceParent,
) -> Result<(Post, OutboxRow), sqlx::Error> {
    let post = Post {
        id: Uuid::now_v7(),
        title: title.as_str().to_owned(),
    };
    let event = Event::PostCreated(PostCreated {
        id: post.id.to_string(),
        title: post.title.clone(),
    });
    let row = outbox::prepare(&Publication::new(&event, "posts", Some(trace.to_string())))?;
    // One statement is one implicit transaction: the post and its event, or neither —
    // at a quarter of the round trips of BEGIN, two INSERTs and COMMIT.
    sqlx::query(
        "WITH post AS (INSERT INTO posts (id, title) VALUES ($1, $2))
         INSERT INTO outbox (event_id, publication) VALUES ($3, $4::json)",
    )
    .bind(post.id)
    .bind(&post.title)
    .bind(row.event_id)
    .bind(&row.publication)
    .execute(pool)
    .await?;
    Ok((post, row))
}

pub async fn all_posts(pool: &PgPool) -> Result<Vec<Post>, sqlx::Error> {
    sqlx::query_as("SELECT id, title FROM posts ORDER BY position")
        .fetch_all(pool)
        .await
}

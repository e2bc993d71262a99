//! All of the comments service's SQL.

use contract::TraceParent;
use contract::{CommentCreated, CommentStatus, Event, Publication};
use service_kit::outbox::{self, OutboxRow};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use crate::domain::{Comment, Content, PostId};

pub async fn post_is_known(pool: &PgPool, post_id: &PostId) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM known_posts WHERE id = $1)")
        .bind(post_id.as_str())
        .fetch_one(pool)
        .await
}

pub async fn remember_post(conn: &mut PgConnection, post_id: &str) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO known_posts (id) VALUES ($1) ON CONFLICT (id) DO NOTHING")
        .bind(post_id)
        .execute(conn)
        .await?;
    Ok(())
}

/// Creates the comment and its `CommentCreated` event in one transaction; returns the
/// comment's id and the committed outbox row, for the relay.
pub async fn create_comment(
    pool: &PgPool,
    post_id: &PostId,
    content: Content,
    trace: &TraceParent,
) -> Result<(Uuid, OutboxRow), sqlx::Error> {
    let id = Uuid::now_v7();
    let event = Event::CommentCreated(CommentCreated {
        id: id.to_string(),
        post_id: post_id.as_str().to_owned(),
        content: content.as_str().to_owned(),
        status: CommentStatus::Pending,
    });
    let row = outbox::prepare(&Publication::new(
        &event,
        "comments",
        Some(trace.to_string()),
    ))?;
    // One statement, one implicit transaction: the comment and its event, or neither.
    sqlx::query(
        "WITH comment AS (INSERT INTO comments (id, post_id, content) VALUES ($1, $2, $3))
         INSERT INTO outbox (event_id, publication) VALUES ($4, $5::json)",
    )
    .bind(id)
    .bind(post_id.as_str())
    .bind(content.as_str())
    .bind(row.event_id)
    .bind(&row.publication)
    .execute(pool)
    .await?;
    Ok((id, row))
}

pub async fn comments_of(pool: &PgPool, post_id: &PostId) -> Result<Vec<Comment>, sqlx::Error> {
    sqlx::query_as("SELECT id, content, status FROM comments WHERE post_id = $1 ORDER BY position")
        .bind(post_id.as_str())
        .fetch_all(pool)
        .await
}

/// The comment after a status change.
#[derive(Debug, sqlx::FromRow)]
pub struct Changed {
    pub post_id: String,
    pub content: String,
    pub version: i64,
}

/// Sets the status and bumps the version, unless the status is already that.
pub async fn set_status(
    conn: &mut PgConnection,
    id: Uuid,
    status: CommentStatus,
) -> Result<Option<Changed>, sqlx::Error> {
    sqlx::query_as(
        "UPDATE comments SET status = $2, version = version + 1
         WHERE id = $1 AND status <> $2
         RETURNING post_id, content, version",
    )
    .bind(id)
    .bind(status.as_str())
    .fetch_optional(conn)
    .await
}

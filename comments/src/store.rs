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

/// A comment just created, with its committed outbox row (for the relay) and the post's
/// comments as they stand after it (the create response).
pub struct Created {
    pub id: Uuid,
    pub row: OutboxRow,
    pub comments: Vec<Comment>,
}

/// Creates the comment and its `CommentCreated` event, if this service knows the post:
/// one statement, one implicit transaction — the comment and its event, or neither —
/// which also answers the post's comments. `None` when the post is not known (yet).
pub async fn create_comment(
    pool: &PgPool,
    post_id: &PostId,
    content: &Content,
    trace: &TraceParent,
) -> Result<Option<Created>, sqlx::Error> {
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
    // The statement's snapshot does not show the row it inserts: the new comment is added
    // to the list as the last one, which its position makes it.
    let comments: Vec<Comment> = sqlx::query_as(
        "WITH known AS (
             SELECT EXISTS (SELECT 1 FROM known_posts WHERE id = $2) AS yes
         ), comment AS (
             INSERT INTO comments (id, post_id, content) SELECT $1, $2, $3 FROM known WHERE yes
             RETURNING position
         ), event AS (
             INSERT INTO outbox (event_id, publication) SELECT $4, $5::json FROM known WHERE yes
         )
         SELECT id, content, status FROM (
             SELECT c.id, c.content, c.status, c.position FROM comments c, known
             WHERE known.yes AND c.post_id = $2
             UNION ALL
             SELECT $1, $3, 'pending', position FROM comment
         ) listed ORDER BY position",
    )
    .bind(id)
    .bind(post_id.as_str())
    .bind(content.as_str())
    .bind(row.event_id)
    .bind(&row.publication)
    .fetch_all(pool)
    .await?;
    // Known, the list holds at least the new comment.
    Ok((!comments.is_empty()).then_some(Created { id, row, comments }))
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

//! All of the comments service's SQL.

use contract::TraceParent;
use contract::{CommentCreated, CommentStatus, Event, Publication, LATEST_COMMENTS};
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

/// Remembers the posts and, if any is new here, announces that on `channel` (once, on
/// commit), in one statement.
pub async fn remember_posts(
    conn: &mut PgConnection,
    post_ids: &[&str],
    channel: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH remembered AS (
             INSERT INTO known_posts (id) SELECT * FROM UNNEST($1::text[])
             ON CONFLICT (id) DO NOTHING RETURNING 1
         )
         SELECT pg_notify($2, '') WHERE EXISTS (SELECT 1 FROM remembered)",
    )
    .bind(post_ids)
    .bind(channel)
    .execute(conn)
    .await?;
    Ok(())
}

/// A comment just created, with its committed outbox row (for the relay) and the post's
/// latest comments as they stand after it (the create response).
pub struct Created {
    pub id: Uuid,
    pub row: OutboxRow,
    pub comments: Comments,
}

/// Some of a post's comments, oldest first, and how many the post has in all.
#[derive(Debug, Default)]
pub struct Comments {
    pub listed: Vec<Comment>,
    pub total: i64,
}

#[derive(sqlx::FromRow)]
struct ListedRow {
    total: i64,
    id: Option<Uuid>,
    content: Option<String>,
    status: Option<String>,
}

impl Comments {
    fn from_rows(rows: Vec<ListedRow>) -> Self {
        let total = rows.first().map_or(0, |row| row.total);
        let listed = rows
            .into_iter()
            .filter_map(|row| {
                Some(Comment {
                    id: row.id?,
                    content: row.content?,
                    status: row.status?,
                })
            })
            .collect();
        Self { listed, total }
    }
}

/// Creates the comment and its `CommentCreated` event, if this service knows the post:
/// one statement, one implicit transaction — the comment, its event and the post's count,
/// or none of them — which also answers the post's latest comments. `None` when the post
/// is not known (yet).
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
    // to the list as the last one, which its position makes it. Counting in `known_posts`
    // also orders comments on one post: the row lock is held until the statement commits.
    let rows: Vec<ListedRow> = sqlx::query_as(
        "WITH known AS (
             UPDATE known_posts SET comment_count = comment_count + 1 WHERE id = $2
             RETURNING comment_count
         ), comment AS (
             INSERT INTO comments (id, post_id, content) SELECT $1, $2, $3 FROM known
             RETURNING position
         ), event AS (
             INSERT INTO outbox (event_id, publication) SELECT $4, $5::json FROM known
         )
         SELECT known.comment_count AS total, listed.id, listed.content, listed.status FROM (
             (SELECT c.id, c.content, c.status, c.position FROM comments c
              WHERE c.post_id = $2 AND EXISTS (SELECT 1 FROM known)
              ORDER BY c.position DESC LIMIT $6 - 1)
             UNION ALL
             SELECT $1, $3, 'pending', position FROM comment
         ) listed CROSS JOIN known ORDER BY listed.position",
    )
    .bind(id)
    .bind(post_id.as_str())
    .bind(content.as_str())
    .bind(row.event_id)
    .bind(&row.publication)
    .bind(LATEST_COMMENTS)
    .fetch_all(pool)
    .await?;
    // Known, the list holds at least the new comment.
    Ok((!rows.is_empty()).then(|| Created {
        id,
        row,
        comments: Comments::from_rows(rows),
    }))
}

/// The post's latest `limit` comments created before comment `before` (all if `None`),
/// oldest first. A `before` that is not a comment of this post lists nothing.
pub async fn comments_of(
    pool: &PgPool,
    post_id: &PostId,
    before: Option<Uuid>,
    limit: i64,
) -> Result<Comments, sqlx::Error> {
    let rows: Vec<ListedRow> = sqlx::query_as(
        "SELECT k.comment_count AS total, c.id, c.content, c.status
         FROM known_posts k LEFT JOIN LATERAL (
             SELECT id, content, status, position FROM comments
             WHERE post_id = k.id
               AND ($2::uuid IS NULL
                    OR position < (SELECT position FROM comments WHERE id = $2 AND post_id = k.id))
             ORDER BY position DESC LIMIT $3
         ) c ON true
         WHERE k.id = $1
         ORDER BY c.position",
    )
    .bind(post_id.as_str())
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(Comments::from_rows(rows))
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

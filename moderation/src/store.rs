//! All of the moderation service's SQL.

use contract::CommentStatus;
use service_kit::outbox::OutboxRow;
use sqlx::PgConnection;

/// Records the decision unless one exists, and with it, in the same statement, `event`
/// (the decision's `CommentModerated`) in the outbox; true if this call made the
/// decision. A redelivered comment gets neither a second decision nor a second event.
pub async fn record_decision(
    conn: &mut PgConnection,
    comment_id: &str,
    post_id: &str,
    status: CommentStatus,
    event: &OutboxRow,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "WITH decided AS (
             INSERT INTO decisions (comment_id, post_id, status) VALUES ($1, $2, $3)
             ON CONFLICT (comment_id) DO NOTHING
             RETURNING 1
         )
         INSERT INTO outbox (event_id, publication) SELECT $4, $5::json FROM decided",
    )
    .bind(comment_id)
    .bind(post_id)
    .bind(status.as_str())
    .bind(event.event_id)
    .bind(&event.publication)
    .execute(conn)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

//! All of the moderation service's SQL.

use contract::CommentStatus;
use sqlx::PgConnection;

/// Records the decision unless one exists; true if this call made it.
pub async fn record_decision(
    conn: &mut PgConnection,
    comment_id: &str,
    post_id: &str,
    status: CommentStatus,
) -> Result<bool, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO decisions (comment_id, post_id, status) VALUES ($1, $2, $3) ON CONFLICT (comment_id) DO NOTHING",
    )
    .bind(comment_id)
    .bind(post_id)
    .bind(status.as_str())
    .execute(conn)
    .await?;
    Ok(inserted.rows_affected() == 1)
}

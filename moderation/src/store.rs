//! All of the moderation service's SQL.

use std::sync::LazyLock;

use contract::CommentStatus;
use service_kit::consumer::CursorStep;
use service_kit::outbox::OutboxRow;
use sqlx::{PgConnection, Row};

/// Records the decision unless one exists, and with it, in the same statement, `event`
/// (the decision's `CommentModerated`) in the outbox; whether this call made the
/// decision. A redelivered comment gets neither a second decision nor a second event.
/// With a `step`, the statement also moves the cursor and commits alone
/// (`Reactions::apply_stepping`); None if the step was not taken: nothing changed.
pub async fn record_decision(
    conn: &mut PgConnection,
    comment_id: &str,
    post_id: &str,
    status: CommentStatus,
    event: &OutboxRow,
    step: Option<CursorStep>,
) -> Result<Option<bool>, sqlx::Error> {
    static STATEMENT: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH {steps}, decided AS (
                 INSERT INTO decisions (comment_id, post_id, status) SELECT $4, $5, $6 FROM step
                 ON CONFLICT (comment_id) DO NOTHING
                 RETURNING 1
             ), queued AS (
                 INSERT INTO outbox (event_id, publication) SELECT $7, $8::json FROM decided
                 RETURNING 1
             )
             SELECT EXISTS (SELECT FROM step) AS stepped, EXISTS (SELECT FROM queued) AS decided",
            steps = CursorStep::CTES
        )
    });
    let row = CursorStep::bind(step, sqlx::query(&STATEMENT))
        .bind(comment_id)
        .bind(post_id)
        .bind(status.as_str())
        .bind(event.event_id)
        .bind(&event.publication)
        .fetch_one(conn)
        .await?;
    let stepped: bool = row.try_get("stepped")?;
    stepped.then(|| row.try_get("decided")).transpose()
}

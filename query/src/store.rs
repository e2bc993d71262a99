//! All of the query service's SQL. The view's JSON is built by PostgreSQL in one
//! statement, in the course's shape.

use contract::{CommentCreated, CommentUpdated, PostCreated};
use sqlx::{PgConnection, PgPool};

pub async fn add_post(conn: &mut PgConnection, post: &PostCreated) -> Result<bool, sqlx::Error> {
    let done =
        sqlx::query("INSERT INTO posts (id, title) VALUES ($1, $2) ON CONFLICT (id) DO NOTHING")
            .bind(&post.id)
            .bind(&post.title)
            .execute(conn)
            .await?;
    Ok(done.rows_affected() == 1)
}

pub async fn add_comment(
    conn: &mut PgConnection,
    comment: &CommentCreated,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO comments (id, post_id, content, status, version) VALUES ($1, $2, $3, $4, 0)
         ON CONFLICT (id) DO NOTHING",
    )
    .bind(&comment.id)
    .bind(&comment.post_id)
    .bind(&comment.content)
    .bind(comment.status.as_str())
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Applies an update unless the view already has a newer version, or this very state.
/// An equal version with a different state still applies: the course's services send
/// `CommentUpdated` without a version (read as 0, the version of `CommentCreated`), and
/// their moderation result must not be dropped as stale.
pub async fn update_comment(
    conn: &mut PgConnection,
    comment: &CommentUpdated,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO comments (id, post_id, content, status, version) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (id) DO UPDATE SET content = EXCLUDED.content, status = EXCLUDED.status, version = EXCLUDED.version
         WHERE comments.version < EXCLUDED.version
            OR (comments.version = EXCLUDED.version
                AND (comments.status, comments.content) IS DISTINCT FROM (EXCLUDED.status, EXCLUDED.content))",
    )
    .bind(&comment.id)
    .bind(&comment.post_id)
    .bind(&comment.content)
    .bind(comment.status.as_str())
    .bind(comment.version)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

const POST_JSON: &str = "json_build_object('id', p.id, 'title', p.title, 'comments', COALESCE(
    (SELECT json_agg(json_build_object('id', c.id, 'content', c.content, 'status', c.status) ORDER BY c.position)
     FROM comments c WHERE c.post_id = p.id), '[]'::json))";

/// `{postId: {id, title, comments}}` in creation order: all posts, or the `limit` newest
/// created before post `before`.
pub async fn view(
    pool: &PgPool,
    limit: Option<i64>,
    before: Option<&str>,
) -> Result<String, sqlx::Error> {
    let sql = format!(
        "SELECT COALESCE(json_object_agg(p.id, {POST_JSON} ORDER BY p.position), '{{}}'::json)::text
         FROM (SELECT * FROM posts
               WHERE $2::text IS NULL OR position < COALESCE((SELECT position FROM posts WHERE id = $2), 0)
               ORDER BY position DESC LIMIT $1) p"
    );
    sqlx::query_scalar(&sql)
        .bind(limit)
        .bind(before)
        .fetch_one(pool)
        .await
}

pub async fn post(pool: &PgPool, id: &str) -> Result<Option<String>, sqlx::Error> {
    let sql = format!("SELECT ({POST_JSON})::text FROM posts p WHERE p.id = $1");
    sqlx::query_scalar(&sql).bind(id).fetch_optional(pool).await
}

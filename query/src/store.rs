//! All of the query service's SQL, and the view's JSON in the course's shape.

use std::ops::Range;
use std::sync::LazyLock;

use contract::{CommentCreated, CommentUpdated, PostCreated, LATEST_COMMENTS};
use futures_util::{Stream, TryStreamExt};
use serde::de::IgnoredAny;
use service_kit::consumer::CursorStep;
use sqlx::postgres::PgArguments;
use sqlx::{Arguments, Connection, PgConnection, PgPool, Row};

/// A change's announcement (`pg_notify`), sent by the very statement that makes the
/// change, and only if it does: the transaction saves the round trip of its own.
#[derive(Debug, Clone, Copy)]
pub struct Announcement<'a> {
    pub channel: &'a str,
    pub payload: &'a str,
}

/// A one-event statement (`add_post`, `add_comment`, `update_comment`): the cursor's
/// step (`CursorStep::CTES`, `$1`–`$3`), the change's own CTEs, which write `FROM step`
/// and end in an `applied` CTE returning a row per change, and the answer: whether the
/// step was taken (always, without one) and whether the change was new — announced on
/// the channel `$4` with the payload `$5`. The change's own parameters start at `$6`.
fn one_event_statement(change: &str) -> String {
    format!(
        "WITH {steps}, {change}
         SELECT EXISTS (SELECT FROM step) AS stepped, EXISTS (SELECT FROM applied) AS applied,
                (SELECT pg_notify($4, $5) FROM applied WHERE $5::text IS NOT NULL) AS announced",
        steps = CursorStep::CTES,
    )
}

/// Runs a one-event statement: None when `step` was not taken (the cursor was elsewhere,
/// nothing changed), else whether the change was new (and so announced).
async fn apply_one_event<'q>(
    conn: &mut PgConnection,
    statement: &'q str,
    step: Option<CursorStep>,
    announcement: Option<Announcement<'q>>,
    bind: impl FnOnce(Query<'q>) -> Query<'q>,
) -> Result<Option<bool>, sqlx::Error> {
    let query = CursorStep::bind(step, sqlx::query(statement))
        .bind(announcement.map(|a| a.channel))
        .bind(announcement.map(|a| a.payload));
    let row = bind(query).fetch_one(conn).await?;
    let stepped: bool = row.try_get("stepped")?;
    stepped.then(|| row.try_get("applied")).transpose()
}

type Query<'q> = sqlx::query::Query<'q, sqlx::Postgres, PgArguments>;

/// Adds the post unless the view has it; whether it did (and if so, announced it). With
/// a `step`, the statement also moves the cursor, and commits alone (see `apply_one_event`).
pub async fn add_post(
    conn: &mut PgConnection,
    post: &PostCreated,
    announcement: Option<Announcement<'_>>,
    step: Option<CursorStep>,
) -> Result<Option<bool>, sqlx::Error> {
    static STATEMENT: LazyLock<String> = LazyLock::new(|| {
        one_event_statement(
            "early AS (
                 DELETE FROM early_comment_counts
                 WHERE post_id = $6 AND EXISTS (SELECT FROM step) RETURNING n
             ), applied AS (
                 INSERT INTO posts (id, title, comment_count)
                 SELECT $6, $7, COALESCE((SELECT n FROM early), 0) FROM step
                 ON CONFLICT (id) DO NOTHING RETURNING 1
             )",
        )
    });
    apply_one_event(conn, &STATEMENT, step, announcement, |q| {
        q.bind(&post.id).bind(&post.title)
    })
    .await
}

/// Adds the comment unless the view has it; whether it did (and if so, announced it).
pub async fn add_comment(
    conn: &mut PgConnection,
    comment: &CommentCreated,
    announcement: Option<Announcement<'_>>,
    step: Option<CursorStep>,
) -> Result<Option<bool>, sqlx::Error> {
    static STATEMENT: LazyLock<String> = LazyLock::new(|| {
        one_event_statement(
            "applied AS (
                 INSERT INTO comments (id, post_id, content, status, version)
                 SELECT $6, $7, $8, $9, 0 FROM step
                 ON CONFLICT (id) DO NOTHING RETURNING 1
             )",
        )
    });
    apply_one_event(conn, &STATEMENT, step, announcement, |q| {
        q.bind(&comment.id)
            .bind(&comment.post_id)
            .bind(&comment.content)
            .bind(comment.status.as_str())
    })
    .await
}

/// Applies an update unless the view already has a newer version, or this very state.
/// An equal version with a different state still applies: the course's services send
/// `CommentUpdated` without a version (read as 0, the version of `CommentCreated`), and
/// their moderation result must not be dropped as stale.
pub async fn update_comment(
    conn: &mut PgConnection,
    comment: &CommentUpdated,
    announcement: Option<Announcement<'_>>,
    step: Option<CursorStep>,
) -> Result<Option<bool>, sqlx::Error> {
    static STATEMENT: LazyLock<String> = LazyLock::new(|| {
        one_event_statement(
            "applied AS (
                 INSERT INTO comments (id, post_id, content, status, version)
                 SELECT $6, $7, $8, $9, $10 FROM step
                 ON CONFLICT (id) DO UPDATE SET content = EXCLUDED.content, status = EXCLUDED.status, version = EXCLUDED.version
                 WHERE comments.version < EXCLUDED.version
                    OR (comments.version = EXCLUDED.version
                        AND (comments.status, comments.content) IS DISTINCT FROM (EXCLUDED.status, EXCLUDED.content))
                 RETURNING 1
             )"
        )
    });
    apply_one_event(conn, &STATEMENT, step, announcement, |q| {
        q.bind(&comment.id)
            .bind(&comment.post_id)
            .bind(&comment.content)
            .bind(comment.status.as_str())
            .bind(comment.version)
    })
    .await
}

/// From this many rows on, a bulk add first tries the rows as all new (see `bulk_insert`).
const BULK_ROWS: usize = 64;

/// Runs `insert` with `ON CONFLICT (id) DO NOTHING` appended, so rows already there are
/// skipped. A big one (a catch-up page) is first run as it is, in a savepoint: when no
/// row is there yet, as in a replay, the unique index checks each row once as it is
/// inserted, where `ON CONFLICT` makes each a speculative insertion that costs about as
/// much again (30 of 75 ms for 5,000 posts). A duplicate rolls the savepoint back and
/// the statement runs again with `ON CONFLICT`. How many rows were new.
async fn bulk_insert(
    conn: &mut PgConnection,
    rows: usize,
    insert: &str,
    arguments: PgArguments,
) -> Result<u64, sqlx::Error> {
    if rows >= BULK_ROWS {
        let mut attempt = conn.begin().await?;
        match sqlx::query_with(insert, arguments.clone())
            .execute(&mut *attempt)
            .await
        {
            Ok(done) => {
                attempt.commit().await?;
                return Ok(done.rows_affected());
            }
            Err(sqlx::Error::Database(error)) if error.is_unique_violation() => {
                attempt.rollback().await?;
            }
            Err(error) => return Err(error),
        }
    }
    let skipping = format!("{insert} ON CONFLICT (id) DO NOTHING");
    Ok(sqlx::query_with(&skipping, arguments)
        .execute(conn)
        .await?
        .rows_affected())
}

/// The arrays a bulk statement takes, as its arguments in order.
fn arrays(columns: &[&[&str]]) -> Result<PgArguments, sqlx::Error> {
    let mut arguments = PgArguments::default();
    for column in columns {
        arguments.add(column).map_err(sqlx::Error::Encode)?;
    }
    Ok(arguments)
}

/// Adds posts in the order given (their position in the view); the ones already there
/// stay as they are. How many were new.
pub async fn add_posts(conn: &mut PgConnection, posts: &[PostCreated]) -> Result<u64, sqlx::Error> {
    if posts.is_empty() {
        return Ok(0);
    }
    let ids: Vec<&str> = posts.iter().map(|p| p.id.as_str()).collect();
    let titles: Vec<&str> = posts.iter().map(|p| p.title.as_str()).collect();
    bulk_insert(
        conn,
        posts.len(),
        "WITH early AS (
             DELETE FROM early_comment_counts WHERE post_id = ANY($1) RETURNING post_id, n
         )
         INSERT INTO posts (id, title, comment_count)
         SELECT t.id, t.title, COALESCE(early.n, 0)
         FROM UNNEST($1::text[], $2::text[]) WITH ORDINALITY AS t(id, title, n)
         LEFT JOIN early ON early.post_id = t.id
         ORDER BY t.n",
        arrays(&[&ids, &titles])?,
    )
    .await
}

/// Adds comments in the order given, as `add_comment` does each. How many were new.
pub async fn add_comments(
    conn: &mut PgConnection,
    comments: &[CommentCreated],
) -> Result<u64, sqlx::Error> {
    if comments.is_empty() {
        return Ok(0);
    }
    let ids: Vec<&str> = comments.iter().map(|c| c.id.as_str()).collect();
    let posts: Vec<&str> = comments.iter().map(|c| c.post_id.as_str()).collect();
    let contents: Vec<&str> = comments.iter().map(|c| c.content.as_str()).collect();
    let statuses: Vec<&str> = comments.iter().map(|c| c.status.as_str()).collect();
    bulk_insert(
        conn,
        comments.len(),
        "INSERT INTO comments (id, post_id, content, status, version)
         SELECT id, post_id, content, status, 0
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[]) WITH ORDINALITY AS t(id, post_id, content, status, n)
         ORDER BY n",
        arrays(&[&ids, &posts, &contents, &statuses])?,
    )
    .await
}

/// Of consecutive updates, the one per comment that applying them all in order with
/// `update_comment` would leave: a higher version wins, and at an equal version the
/// later one. (Each comment once, as one statement may change a row only once.)
pub fn latest_updates(updates: Vec<CommentUpdated>) -> Vec<CommentUpdated> {
    let mut latest: Vec<CommentUpdated> = Vec::new();
    let mut index: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
    for update in updates {
        match index.get(&update.id) {
            Some(&at) if latest[at].version > update.version => {}
            Some(&at) => latest[at] = update,
            None => {
                index.insert(update.id.clone(), latest.len());
                latest.push(update);
            }
        }
    }
    latest
}

/// `update_comment` for many comments, each at most once. How many changed.
pub async fn update_comments(
    conn: &mut PgConnection,
    updates: &[CommentUpdated],
) -> Result<u64, sqlx::Error> {
    if updates.is_empty() {
        return Ok(0);
    }
    let ids: Vec<&str> = updates.iter().map(|c| c.id.as_str()).collect();
    let posts: Vec<&str> = updates.iter().map(|c| c.post_id.as_str()).collect();
    let contents: Vec<&str> = updates.iter().map(|c| c.content.as_str()).collect();
    let statuses: Vec<&str> = updates.iter().map(|c| c.status.as_str()).collect();
    let versions: Vec<i64> = updates.iter().map(|c| c.version).collect();
    let done = sqlx::query(
        "INSERT INTO comments (id, post_id, content, status, version)
         SELECT id, post_id, content, status, version
         FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[]) WITH ORDINALITY AS t(id, post_id, content, status, version, n)
         ORDER BY n
         ON CONFLICT (id) DO UPDATE SET content = EXCLUDED.content, status = EXCLUDED.status, version = EXCLUDED.version
         WHERE comments.version < EXCLUDED.version
            OR (comments.version = EXCLUDED.version
                AND (comments.status, comments.content) IS DISTINCT FROM (EXCLUDED.status, EXCLUDED.content))",
    )
    .bind(&ids)
    .bind(&posts)
    .bind(&contents)
    .bind(&statuses)
    .bind(&versions)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// `{postId: {id, title, comments, commentCount}}` in creation order: all posts, or the
/// `limit` newest created before post `before`; each with its latest `LATEST_COMMENTS`
/// comments, oldest first.
///
/// PostgreSQL reads the page's rows in order; the JSON is written here. Building it with
/// PostgreSQL's JSON functions (a subquery per post, then per-post aggregates) cost five
/// to twenty times as much.
pub async fn view(
    pool: &PgPool,
    limit: Option<i64>,
    before: Option<&str>,
) -> Result<String, sqlx::Error> {
    let written = view_rows(pool, limit, before).await?;
    into_text(written.text).map_err(decode_error)
}

async fn view_rows(
    pool: &PgPool,
    limit: Option<i64>,
    before: Option<&str>,
) -> Result<Written, sqlx::Error> {
    let rows = sqlx::query_as(
        "WITH page AS (
             SELECT position, id, title, comment_count FROM posts
             WHERE $2::text IS NULL OR position < COALESCE((SELECT position FROM posts WHERE id = $2), 0)
             ORDER BY position DESC LIMIT $1
         )
         SELECT p.position, p.id AS post_id, p.title, p.comment_count, c.id AS comment_id, c.content, c.status
         FROM page p LEFT JOIN LATERAL (
             SELECT id, content, status, position FROM comments
             WHERE post_id = p.id ORDER BY position DESC LIMIT $3
         ) c ON true
         ORDER BY p.position, c.position",
    )
    .bind(limit)
    .bind(before)
    .bind(LATEST_COMMENTS)
    .fetch(pool);
    Written::from_stream(rows).await
}

/// The whole view's posts, in creation order: every post, or those of `ids` the view has
/// (a comment's post may not have arrived yet).
pub async fn whole_view(pool: &PgPool, ids: Option<&[String]>) -> Result<Written, sqlx::Error> {
    let Some(ids) = ids else {
        return view_rows(pool, None, None).await;
    };
    let rows = sqlx::query_as(
        "SELECT p.position, p.id AS post_id, p.title, p.comment_count, c.id AS comment_id, c.content, c.status
         FROM posts p LEFT JOIN LATERAL (
             SELECT id, content, status, position FROM comments
             WHERE post_id = p.id ORDER BY position DESC LIMIT $2
         ) c ON true
         WHERE p.id = ANY($1)
         ORDER BY p.position, c.position",
    )
    .bind(ids)
    .bind(LATEST_COMMENTS)
    .fetch(pool);
    Written::from_stream(rows).await
}

/// One post, `{id, title, comments, commentCount}`, as the view shows it.
pub async fn post(pool: &PgPool, id: &str) -> Result<Option<String>, sqlx::Error> {
    let written = whole_view(pool, Some(&[id.to_owned()])).await?;
    let post = written.members.first().and_then(|(_, at)| written.post(at));
    post.map(|post| into_text(post.to_vec()).map_err(decode_error))
        .transpose()
}

/// A post, with one of its comments if it has any.
#[derive(sqlx::FromRow)]
struct ViewRow {
    position: i64,
    post_id: String,
    title: String,
    comment_count: i64,
    comment_id: Option<String>,
    content: Option<String>,
    status: Option<String>,
}

/// Posts of the view written as the view's object, `{"id":{id, title, comments,
/// commentCount},…}`, with each post's place in creation order and where its member
/// `"id":{…}` is in the text, in the order written.
///
/// Written straight from the rows as they arrive: reading every post holds the rows of
/// one post at a time and the text, not every row and then every post as strings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub text: Vec<u8>,
    pub members: Vec<(i64, Range<usize>)>,
}

impl Default for Written {
    fn default() -> Self {
        Self {
            text: b"{".to_vec(),
            members: Vec::new(),
        }
    }
}

impl Written {
    /// Rows ordered by post, then comment.
    async fn from_stream(
        rows: impl Stream<Item = Result<ViewRow, sqlx::Error>>,
    ) -> Result<Self, sqlx::Error> {
        let mut rows = std::pin::pin!(rows);
        let mut written = Self::default();
        let mut post: Vec<ViewRow> = Vec::new();
        while let Some(row) = rows.try_next().await? {
            if post
                .first()
                .is_some_and(|first| first.post_id != row.post_id)
            {
                written.push(&post).map_err(decode_error)?;
                post.clear();
            }
            post.push(row);
        }
        written.push(&post).map_err(decode_error)?;
        Ok(written.finish())
    }

    /// As `from_stream` writes them as they arrive.
    #[cfg(test)]
    fn from_rows(rows: Vec<ViewRow>) -> Self {
        use futures_util::FutureExt;
        let rows = futures_util::stream::iter(rows.into_iter().map(Ok));
        match Self::from_stream(rows).now_or_never() {
            Some(Ok(written)) => written,
            other => panic!(
                "rows in memory were not written at once: {:?}",
                other.map(|r| r.err())
            ),
        }
    }

    /// Adds one post from its rows.
    fn push(&mut self, rows: &[ViewRow]) -> Result<(), serde_json::Error> {
        let Some(first) = rows.first() else {
            return Ok(());
        };
        if !self.members.is_empty() {
            self.text.push(b',');
        }
        let at = self.text.len();
        serde_json::to_writer(&mut self.text, &first.post_id)?;
        self.text.push(b':');
        write_post(&mut self.text, rows)?;
        self.members.push((first.position, at..self.text.len()));
        Ok(())
    }

    /// Closes the object; what grew by doubling gives back what it does not use.
    fn finish(mut self) -> Self {
        self.text.push(b'}');
        self.text.shrink_to_fit();
        self.members.shrink_to_fit();
        self
    }

    /// The member `"id":{…}` at `at`.
    pub fn member(&self, at: &Range<usize>) -> &[u8] {
        &self.text[at.clone()]
    }

    /// The key and colon `"id":` of the member at `at`.
    pub fn key(&self, at: &Range<usize>) -> Option<&[u8]> {
        let member = self.member(at);
        let mut key = serde_json::Deserializer::from_slice(member).into_iter::<IgnoredAny>();
        key.next()?.ok()?;
        member.get(..key.byte_offset() + 1)
    }

    /// The post `{…}` of the member at `at`: what follows its key and colon.
    pub fn post(&self, at: &Range<usize>) -> Option<&[u8]> {
        let key = self.key(at)?;
        self.member(at).get(key.len()..)
    }
}

/// Posts with no comments, as `whole_view` reads them: (position, id, title) each.
#[cfg(test)]
pub(crate) fn test_written(posts: &[(i64, &str, &str)]) -> Written {
    let rows: Vec<ViewRow> = posts
        .iter()
        .map(|(position, id, title)| ViewRow {
            position: *position,
            post_id: (*id).into(),
            title: (*title).into(),
            comment_count: 0,
            comment_id: None,
            content: None,
            status: None,
        })
        .collect();
    Written::from_rows(rows)
}

/// `{id, title, comments, commentCount}` from one post's rows, its comments in order.
fn write_post(out: &mut Vec<u8>, rows: &[ViewRow]) -> Result<(), serde_json::Error> {
    let Some(first) = rows.first() else {
        return Ok(());
    };
    out.extend_from_slice(b"{\"id\":");
    serde_json::to_writer(&mut *out, &first.post_id)?;
    out.extend_from_slice(b",\"title\":");
    serde_json::to_writer(&mut *out, &first.title)?;
    out.extend_from_slice(b",\"comments\":[");
    let comments =
        rows.iter()
            .filter_map(|row| match (&row.comment_id, &row.content, &row.status) {
                (Some(id), Some(content), Some(status)) => Some((id, content, status)),
                _ => None,
            });
    for (n, (id, content, status)) in comments.enumerate() {
        if n > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"id\":");
        serde_json::to_writer(&mut *out, id)?;
        out.extend_from_slice(b",\"content\":");
        serde_json::to_writer(&mut *out, content)?;
        out.extend_from_slice(b",\"status\":");
        serde_json::to_writer(&mut *out, status)?;
        out.push(b'}');
    }
    out.extend_from_slice(b"],\"commentCount\":");
    out.extend_from_slice(first.comment_count.to_string().as_bytes());
    out.push(b'}');
    Ok(())
}

/// Only bytes of UTF-8 strings and ASCII punctuation were written.
fn into_text(out: Vec<u8>) -> Result<String, serde_json::Error> {
    String::from_utf8(out).map_err(|e| serde::de::Error::custom(e.to_string()))
}

fn decode_error(error: serde_json::Error) -> sqlx::Error {
    sqlx::Error::Decode(Box::new(error))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn row(post: &str, title: &str, count: i64, comment: Option<(&str, &str, &str)>) -> ViewRow {
        ViewRow {
            position: post[1..].parse().unwrap(),
            post_id: post.into(),
            title: title.into(),
            comment_count: count,
            comment_id: comment.map(|c| c.0.into()),
            content: comment.map(|c| c.1.into()),
            status: comment.map(|c| c.2.into()),
        }
    }

    #[test]
    fn the_view_is_written_in_the_courses_shape_with_every_string_escaped() {
        assert_eq!(
            into_text(Written::from_rows(Vec::new()).text).unwrap(),
            "{}"
        );
        let rows = [
            row("p1", "plain", 0, None),
            row(
                "p2",
                "a \"quote\", a \\ and a\nnewline é",
                250,
                Some(("c1", "first", "approved")),
            ),
            row(
                "p2",
                "a \"quote\", a \\ and a\nnewline é",
                250,
                Some(("c2", "</script>", "pending")),
            ),
            row("p3", "", 1, Some(("c3", "x", "rejected"))),
        ];
        let written = Written::from_rows(rows.into());
        let text = into_text(written.text.clone()).unwrap();
        let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            parsed,
            serde_json::json!({
                "p1": {"id": "p1", "title": "plain", "comments": [], "commentCount": 0},
                "p2": {"id": "p2", "title": "a \"quote\", a \\ and a\nnewline é", "comments": [
                    {"id": "c1", "content": "first", "status": "approved"},
                    {"id": "c2", "content": "</script>", "status": "pending"},
                ], "commentCount": 250},
                "p3": {"id": "p3", "title": "", "comments": [{"id": "c3", "content": "x", "status": "rejected"}], "commentCount": 1},
            })
        );
        // Each post's place and member, in the order written; a member's post is the
        // view's, as `GET /posts/{id}` serves it.
        let positions: Vec<i64> = written.members.iter().map(|(p, _)| *p).collect();
        assert_eq!(positions, [1, 2, 3]);
        assert!(written
            .member(&written.members[2].1)
            .starts_with(b"\"p3\":{"));
        let p2: serde_json::Value =
            serde_json::from_slice(written.post(&written.members[1].1).unwrap()).unwrap();
        assert_eq!(p2, parsed["p2"]);
        // Creation order is the order of the keys.
        assert!(text.find("\"p1\"").unwrap() < text.find("\"p2\"").unwrap());
        assert!(text.find("\"p2\":").unwrap() < text.find("\"p3\":").unwrap());
    }
}

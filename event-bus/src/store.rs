//! All of the bus's SQL: appending to the log, reading it, and subscriber cursors.

use std::collections::HashMap;

use contract::Accepted;
use contract::{Envelope, Publication};
use sqlx::{PgPool, Row};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::tail::Tail;

#[derive(Debug, Clone)]
pub struct Store {
    pool: PgPool,
    /// What this replica appended last, for readers near the head.
    tail: Tail,
}

/// The events after `$1`, at most `$2`, each with the bytes up to and including it: a
/// page keeps those that start within its byte cap.
const PAGE: &str =
    "SELECT seq, id, type, envelope, bytes, sum(bytes) OVER (ORDER BY seq) AS running
                    FROM events WHERE seq > $1 ORDER BY seq LIMIT $2";

/// A page of the log as its events' JSON joined by commas (no brackets: a stream of pages
/// is one array), the seq of its last event and how many it holds.
#[derive(Debug)]
pub struct JoinedPage {
    pub json: String,
    pub last: Option<i64>,
    pub count: i64,
}

/// One stored event, as the JSON text that is delivered and replayed.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct StoredEvent {
    pub seq: i64,
    pub id: Uuid,
    pub kind: String,
    pub envelope: String,
}

impl Store {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            tail: Tail::default(),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Appends publications in order, atomically. An id already in the log (or earlier in
    /// the same call) is not appended again: it answers with its original seq.
    ///
    /// `head_hint` is the head as this replica knows it. When it is right (no other
    /// replica appended since) and every id is new, the append is one statement that
    /// commits on its own: no transaction to open, no lock to take first, no lookup.
    /// Otherwise it takes the head's lock and looks the ids up.
    pub async fn append(
        &self,
        publications: &[Publication],
        head_hint: i64,
    ) -> Result<Vec<Accepted>, sqlx::Error> {
        let ids: Vec<Uuid> = publications
            .iter()
            .map(|p| p.id.unwrap_or_else(Uuid::now_v7))
            .collect();
        let distinct = ids.iter().collect::<std::collections::HashSet<_>>().len() == ids.len();
        let appended = async {
            if distinct {
                if let Some(accepted) = self.append_after(publications, &ids, head_hint).await? {
                    return Ok(accepted);
                }
            }
            self.append_locked(publications, ids).await
        }
        .await;
        self.tail.settled();
        appended
    }

    /// Whether the announcement of `seq` is of this replica's append that has not
    /// returned yet (see `Tail::is_being_committed`). If that append then fails, the
    /// caller reads the head again: it may have committed.
    pub fn is_being_committed(&self, seq: i64) -> bool {
        self.tail.is_being_committed(seq)
    }

    /// The one-statement append, if the head is still `head` and no id is in the log.
    async fn append_after(
        &self,
        publications: &[Publication],
        ids: &[Uuid],
        head: i64,
    ) -> Result<Option<Vec<Accepted>>, sqlx::Error> {
        let (rows, accepted, next) = numbered(publications, ids.to_vec(), head, HashMap::new())?;
        // The update waits for a concurrent append and then finds the head moved; the ids
        // are looked up in a snapshot that holds every event up to `head`, since this
        // replica saw `head` committed before the statement began.
        let logged = logged_ids("$2");
        self.tail.committing(next);
        let sql = format!(
            "WITH head AS (
                 UPDATE log_head SET seq = $7
                 WHERE seq = $9 AND NOT EXISTS ({logged})
                 RETURNING seq
             ), appended AS (
                 {INSERT_ROWS} WHERE EXISTS (SELECT 1 FROM head)
             ), announced AS (
                 SELECT pg_notify($8, $7::text) FROM head
             )
             SELECT count(*) FROM announced"
        );
        let appended: i64 = with_rows(&sql, &rows, next)
            .bind(head)
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        if appended == 0 {
            return Ok(None);
        }
        self.tail.extend(rows.into_stored());
        Ok(Some(accepted))
    }

    /// The append under the head's lock, held until commit, so seqs commit in order,
    /// gap-free.
    async fn append_locked(
        &self,
        publications: &[Publication],
        ids: Vec<Uuid>,
    ) -> Result<Vec<Accepted>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let head: i64 = sqlx::query_scalar("SELECT seq FROM log_head FOR UPDATE")
            .fetch_one(&mut *tx)
            .await?;
        let known: HashMap<Uuid, i64> = sqlx::query_as::<_, (Uuid, i64)>(&logged_ids("$1"))
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await?
            .into_iter()
            .collect();
        let (rows, accepted, next) = numbered(publications, ids, head, known)?;
        if next > head {
            self.tail.committing(next);
            // The rows, the new head and the announcement (delivered on commit to every
            // replica's listener: the leader's delivery loops wake whichever replica took
            // the publish), in one statement.
            let sql = format!(
                "WITH appended AS (
                     {INSERT_ROWS}
                 ), head AS (
                     UPDATE log_head SET seq = $7
                 )
                 SELECT pg_notify($8, $7::text)"
            );
            with_rows(&sql, &rows, next).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        self.tail.extend(rows.into_stored());
        Ok(accepted)
    }

    pub async fn head(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT seq FROM log_head")
            .fetch_one(&self.pool)
            .await
    }

    /// Up to `limit` events after `after`, in seq order, and no more of them than fit in
    /// `max_bytes` (but always one): a backlog of large events never fills memory.
    pub async fn page_after(
        &self,
        after: i64,
        limit: i64,
        max_bytes: usize,
    ) -> Result<Vec<StoredEvent>, sqlx::Error> {
        if let Some(page) = self.tail.after(after, limit, max_bytes) {
            return Ok(page);
        }
        sqlx::query_as(&format!(
            "SELECT seq, id, type AS kind, envelope::text AS envelope FROM ({PAGE}) page
             WHERE running - bytes < $3
             ORDER BY seq"
        ))
        .bind(after)
        .bind(limit)
        .bind(i64::try_from(max_bytes).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
    }

    /// The same page as the JSON text a reader is sent, joined by PostgreSQL: a reader
    /// of the log needs no event apart, and decoding each row cost the bus more than
    /// reading them cost PostgreSQL.
    pub async fn joined_page_after(
        &self,
        after: i64,
        limit: i64,
        max_bytes: usize,
    ) -> Result<JoinedPage, sqlx::Error> {
        if let Some(page) = self.tail.after(after, limit, max_bytes) {
            return Ok(JoinedPage {
                json: page
                    .iter()
                    .map(|e| e.envelope.as_str())
                    .collect::<Vec<_>>()
                    .join(","),
                last: page.last().map(|e| e.seq),
                count: page.len() as i64,
            });
        }
        // Unordered aggregates take the rows as the subquery sends them, in seq order,
        // and a sort would cost a third of the read; but SQL does not promise that order.
        // Every aggregate of one query sees the rows in the same order, so the seqs tell
        // whether the envelopes came in order, and if not (never seen), they are read
        // again, sorted.
        let (json, seqs): (String, Vec<i64>) =
            self.joined_page(after, limit, max_bytes, "").await?;
        let (json, seqs) = if seqs.windows(2).all(|pair| pair[0] < pair[1]) {
            (json, seqs)
        } else {
            self.joined_page(after, limit, max_bytes, "ORDER BY seq")
                .await?
        };
        Ok(JoinedPage {
            json,
            last: seqs.iter().max().copied(),
            count: seqs.len() as i64,
        })
    }

    async fn joined_page(
        &self,
        after: i64,
        limit: i64,
        max_bytes: usize,
        order: &str,
    ) -> Result<(String, Vec<i64>), sqlx::Error> {
        sqlx::query_as(&format!(
            "SELECT coalesce(string_agg(envelope::text, ',' {order}), ''),
                    coalesce(array_agg(seq {order}), '{{}}')
             FROM ({PAGE}) page
             WHERE running - bytes < $3"
        ))
        .bind(after)
        .bind(limit)
        .bind(i64::try_from(max_bytes).unwrap_or(i64::MAX))
        .fetch_one(&self.pool)
        .await
    }

    /// Registers a subscriber (or updates its URL) and returns its durable cursor.
    pub async fn subscribe(&self, name: &str, url: &str) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar(
            "INSERT INTO subscriptions (name, url) VALUES ($1, $2)
             ON CONFLICT (name) DO UPDATE SET url = EXCLUDED.url
             RETURNING cursor",
        )
        .bind(name)
        .bind(url)
        .fetch_one(&self.pool)
        .await
    }

    /// Records that a subscriber acknowledged everything up to `cursor`. Never moves a
    /// cursor backwards. Not waiting for the flush (it would queue before the next
    /// append's commit): a cursor a crash loses only redelivers what the subscriber
    /// skips as already applied.
    pub async fn acknowledge(&self, name: &str, cursor: i64) -> Result<(), sqlx::Error> {
        sqlx::query(
            "WITH acknowledged AS (
                 UPDATE subscriptions SET cursor = GREATEST(cursor, $2), last_success_at = now(), consecutive_failures = 0, diverged = NULL WHERE name = $1
             )
             SELECT set_config('synchronous_commit', 'off', true)",
        )
        .bind(name)
        .bind(cursor)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records a failed delivery attempt, for `GET /subscriptions` on any replica.
    pub async fn record_failure(&self, name: &str, error: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE subscriptions SET last_error = $2, last_error_at = now(), consecutive_failures = consecutive_failures + 1 WHERE name = $1",
        )
        .bind(name)
        .bind(error)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Records that a subscriber refused this log as diverged from what it applied; true
    /// the first time (until it acknowledges a delivery again).
    pub async fn record_divergence(&self, name: &str, why: &str) -> Result<bool, sqlx::Error> {
        Ok(sqlx::query(
            "UPDATE subscriptions SET diverged = $2 WHERE name = $1 AND diverged IS NULL",
        )
        .bind(name)
        .bind(why)
        .execute(&self.pool)
        .await?
        .rows_affected()
            > 0)
    }

    /// The state of the subscribers `names`, in that order (one not yet subscribed is
    /// left out).
    pub async fn subscriptions(&self, names: &[String]) -> Result<Vec<Subscription>, sqlx::Error> {
        sqlx::query_as(
            "SELECT name, url, cursor, last_success_at, last_error, last_error_at, consecutive_failures, diverged
             FROM subscriptions JOIN UNNEST($1::text[]) WITH ORDINALITY AS wanted(name, position) USING (name)
             ORDER BY position",
        )
        .bind(names)
        .fetch_all(&self.pool)
        .await
    }

    /// Who runs the delivery loops, as last recorded.
    pub async fn leader(&self) -> Result<Option<Leader>, sqlx::Error> {
        sqlx::query_as("SELECT replica, since, heartbeat_at FROM delivery_leader")
            .fetch_optional(&self.pool)
            .await
    }
}

/// The channel every append is announced on, with the new head as payload.
pub const LOG_APPENDED: &str = "event_bus_log_appended";

/// One subscriber's delivery state, as `GET /subscriptions` shows it.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Subscription {
    pub name: String,
    pub url: String,
    pub cursor: i64,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_success_at: Option<OffsetDateTime>,
    pub last_error: Option<String>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_error_at: Option<OffsetDateTime>,
    pub consecutive_failures: i32,
    /// Why the subscriber refuses this log, if it does: it was rewound under it.
    pub diverged: Option<String>,
}

/// The replica that leads the deliveries.
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Leader {
    pub replica: String,
    #[serde(with = "time::serde::rfc3339")]
    pub since: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub heartbeat_at: OffsetDateTime,
}

/// The events of the ids in the array parameter `ids` that the log holds, as (id, seq),
/// each looked up on its own through the index. `id = ANY(ids)` would be planned as one
/// scan, and a connection keeps the plan it first made: made while the log was nearly
/// empty, that is a scan of the whole log on every publish ever after.
fn logged_ids(ids: &str) -> String {
    format!(
        "SELECT logged.id, logged.seq FROM unnest({ids}::uuid[]) AS wanted(id)
         CROSS JOIN LATERAL (SELECT id, seq FROM events WHERE id = wanted.id LIMIT 1) logged"
    )
}

/// The rows of an append, from the parameters `$1`–`$6`.
const INSERT_ROWS: &str = "INSERT INTO events (seq, id, type, source, occurred_at, envelope, bytes)
     SELECT seq, id, type, source, occurred_at, envelope::json, octet_length(envelope)
     FROM UNNEST($1::bigint[], $2::uuid[], $3::text[], $4::text[], $5::timestamptz[], $6::text[])
       AS t(seq, id, type, source, occurred_at, envelope)";

/// `sql` with the rows bound as `$1`–`$6`, the new head as `$7` and the channel that
/// announces it as `$8`.
fn with_rows<'q>(
    sql: &'q str,
    rows: &'q NewRows,
    next: i64,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(sql)
        .bind(&rows.seqs)
        .bind(&rows.ids)
        .bind(&rows.kinds)
        .bind(&rows.sources)
        .bind(&rows.occurred)
        .bind(&rows.envelopes)
        .bind(next)
        .bind(LOG_APPENDED)
}

/// Numbers the publications after `head`, skipping the ids `known` (with their seq)
/// and any id seen earlier in the call: the rows to insert, every publication's answer,
/// and the new head.
fn numbered(
    publications: &[Publication],
    ids: Vec<Uuid>,
    head: i64,
    mut known: HashMap<Uuid, i64>,
) -> Result<(NewRows, Vec<Accepted>, i64), sqlx::Error> {
    let now = OffsetDateTime::now_utc();
    let mut rows = NewRows::with_capacity(publications.len());
    let mut accepted = Vec::with_capacity(publications.len());
    let mut next = head;
    for (publication, id) in publications.iter().zip(ids) {
        if let Some(&seq) = known.get(&id) {
            accepted.push(Accepted {
                id,
                seq,
                duplicate: true,
            });
            continue;
        }
        next += 1;
        known.insert(id, next);
        accepted.push(Accepted {
            id,
            seq: next,
            duplicate: false,
        });
        let envelope = Envelope {
            id,
            seq: next,
            kind: publication.kind.clone(),
            data: publication.data.clone(),
            source: publication.source.clone(),
            occurred_at: publication.occurred_at.unwrap_or(now),
            traceparent: publication.traceparent.clone(),
        };
        rows.push(envelope)
            .map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    }
    Ok((rows, accepted, next))
}

/// Column-wise rows for one `INSERT … SELECT FROM UNNEST`: one statement per append,
/// however many events it carries.
struct NewRows {
    seqs: Vec<i64>,
    ids: Vec<Uuid>,
    kinds: Vec<String>,
    sources: Vec<Option<String>>,
    occurred: Vec<OffsetDateTime>,
    envelopes: Vec<String>,
}

impl NewRows {
    fn with_capacity(n: usize) -> Self {
        Self {
            seqs: Vec::with_capacity(n),
            ids: Vec::with_capacity(n),
            kinds: Vec::with_capacity(n),
            sources: Vec::with_capacity(n),
            occurred: Vec::with_capacity(n),
            envelopes: Vec::with_capacity(n),
        }
    }

    fn into_stored(self) -> Vec<StoredEvent> {
        (self
            .seqs
            .into_iter()
            .zip(self.ids)
            .zip(self.kinds)
            .zip(self.envelopes))
        .map(|(((seq, id), kind), envelope)| StoredEvent {
            seq,
            id,
            kind,
            envelope,
        })
        .collect()
    }

    fn push(&mut self, envelope: Envelope) -> Result<(), serde_json::Error> {
        self.envelopes.push(serde_json::to_string(&envelope)?);
        self.seqs.push(envelope.seq);
        self.ids.push(envelope.id);
        self.kinds.push(envelope.kind);
        self.sources.push(envelope.source);
        self.occurred.push(envelope.occurred_at);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Pages read from PostgreSQL (a store that appended nothing has no tail), unordered
    /// and sorted, against the log as appended.
    #[tokio::test]
    async fn a_page_joined_in_postgresql_is_the_log_in_seq_order_either_way() {
        let db = testkit::TestDatabase::new(&crate::MIGRATOR).await;
        let writer = Store::new(db.pool.clone());
        for chunk in 0..3 {
            let publications: Vec<Publication> = (0..1000)
                .map(|n| testkit::bus::numbered(chunk * 1000 + n))
                .collect();
            let head = writer.head().await.unwrap();
            writer.append(&publications, head).await.unwrap();
        }
        let reader = Store::new(db.pool.clone());
        let all = reader.page_after(0, 3000, usize::MAX).await.unwrap();
        assert_eq!(all.len(), 3000);
        let expected = |from: usize, to: usize| {
            all[from..to]
                .iter()
                .map(|e| e.envelope.as_str())
                .collect::<Vec<_>>()
                .join(",")
        };
        for order in ["", "ORDER BY seq"] {
            let (json, seqs) = reader
                .joined_page(1200, 500, usize::MAX, order)
                .await
                .unwrap();
            assert_eq!(seqs, (1201..=1700).collect::<Vec<i64>>(), "{order}");
            assert_eq!(json, expected(1200, 1700), "{order}");
            // Cut by bytes: the events that start within the cap, and always one.
            let (json, seqs) = reader.joined_page(1200, 500, 1, order).await.unwrap();
            assert_eq!((json, seqs), (expected(1200, 1201), vec![1201]), "{order}");
            let (json, seqs) = reader
                .joined_page(3000, 500, usize::MAX, order)
                .await
                .unwrap();
            assert_eq!((json.as_str(), seqs.len()), ("", 0), "{order}");
        }
        // From PostgreSQL, and from the tail of the replica that appended: the same text.
        for store in [&reader, &writer] {
            let page = store
                .joined_page_after(2990, 100, usize::MAX)
                .await
                .unwrap();
            assert_eq!((page.last, page.count), (Some(3000), 10));
            assert_eq!(page.json, expected(2990, 3000));
        }
    }
}

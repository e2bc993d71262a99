//! The transactional outbox. A producer writes its change and the event describing it in
//! one transaction (`append`), so an event exists if and only if the change does; the
//! relay then publishes the outbox to the bus in order, in batches, retrying until the
//! bus has committed them. An API can answer 201 while the bus is down: nothing is lost.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::{PgConnection, PgPool};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::backoff::Backoff;
use crate::bus::{BusClient, BusError};
use crate::db::Database;
use crate::error::error_chain;
use crate::metrics;
use crate::otlp;
use crate::shutdown::ShutdownSignal;
use contract::{cap_batch_bytes, json_array, Accepted, Publication};

/// Rows a relay publishes in one request.
const BATCH: i64 = 500;
/// A safety net, not the wake-up path: rows left by a replica that died between its
/// commit and its relay's wake-up are picked up within this time.
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);
/// Only one relay publishes at a time across replicas, so the outbox leaves in order.
const RELAY_LOCK: i64 = 0x6f75_7462_6f78; // "outbox"

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("could not serialise an event: {0}")]
    Serialise(#[from] serde_json::Error),
}

/// Adds an event to the outbox inside the caller's transaction. Inside `collecting`, the
/// row is also kept for the relay, to be handed over once that transaction commits.
pub async fn append(conn: &mut PgConnection, publication: &Publication) -> Result<(), sqlx::Error> {
    let row = prepare(publication)?;
    sqlx::query("INSERT INTO outbox (event_id, publication) VALUES ($1, $2::json)")
        .bind(row.event_id)
        .bind(&row.publication)
        .execute(conn)
        .await?;
    appended(row);
    Ok(())
}

/// Registers a row the caller wrote to the outbox in a statement of its own (`WITH change
/// AS (…) INSERT INTO outbox …`), in a consumer's reactions: it is handed to the relay if
/// the transaction commits, as `append`'s rows are.
pub fn appended(row: OutboxRow) {
    let _outside = APPENDED.try_with(|appended| appended.borrow_mut().push(row));
}

tokio::task_local! {
    static APPENDED: std::cell::RefCell<Vec<OutboxRow>>;
}

/// Runs `work` (one transaction's worth: a consumer's reactions) and returns, with its
/// output, the rows it appended with `append`: the caller hands them to the relay if the
/// transaction commits, and drops them if it does not.
pub async fn collecting<F: std::future::Future>(work: F) -> (F::Output, Vec<OutboxRow>) {
    APPENDED
        .scope(std::cell::RefCell::new(Vec::new()), async {
            let output = work.await;
            (output, APPENDED.with(|appended| appended.take()))
        })
        .await
}

/// An outbox row's `event_id` and `publication`, for a service that writes its change and
/// its event in one statement (`WITH change AS (…) INSERT INTO outbox …`) and then hands
/// the committed row to the relay (`OutboxWaker::hand`).
#[derive(Debug, Clone)]
pub struct OutboxRow {
    pub event_id: uuid::Uuid,
    pub publication: String,
}

pub fn prepare(publication: &Publication) -> Result<OutboxRow, sqlx::Error> {
    Ok(OutboxRow {
        event_id: publication.id.unwrap_or_else(uuid::Uuid::now_v7),
        publication: serde_json::to_string(publication)
            .map_err(|e| sqlx::Error::Encode(Box::new(e)))?,
    })
}

/// Wakes the relay after a commit that appended to the outbox; cheap, never blocks,
/// and a wake-up while the relay is busy is remembered, never lost.
#[derive(Debug, Clone, Default)]
pub struct OutboxWaker {
    notify: Arc<Notify>,
    handed: Arc<std::sync::Mutex<Handed>>,
}

/// Rows handed over and not yet taken by the relay, and whether any had to be left to
/// the table since the relay last took them (beyond `HANDED_LIMIT`).
#[derive(Debug, Default)]
struct Handed {
    rows: Vec<OutboxRow>,
    overflowed: bool,
}

impl OutboxWaker {
    pub fn wake(&self) {
        self.notify.notify_one();
    }

    /// Wakes the relay with a row this process has just committed, so that it can
    /// publish it at once instead of reading it back (the row stays the durable copy).
    pub fn hand(&self, row: OutboxRow) {
        if let Ok(mut handed) = self.handed.lock() {
            if handed.rows.len() < HANDED_LIMIT {
                handed.rows.push(row);
            } else {
                handed.overflowed = true;
            }
        }
        self.wake();
    }

    /// The rows handed over since the last call, and whether only they were (no row was
    /// left to the table meanwhile).
    fn take_handed(&self) -> (Vec<OutboxRow>, bool) {
        match self.handed.lock() {
            Ok(mut handed) => {
                let Handed { rows, overflowed } = std::mem::take(&mut *handed);
                (rows, !overflowed)
            }
            // A relay that cannot tell reads the table.
            Err(_) => (Vec::new(), false),
        }
    }
}

/// Rows kept for the relay's fast path; beyond, they wait in the table (read in order).
pub const HANDED_LIMIT: usize = 1_000;

/// What one turn of the relay published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// The table held nothing to publish.
    Nothing,
    /// This many rows, the oldest in the table.
    Rows(usize),
    /// Rows handed over after their commit; `all` unless some did not fit one request
    /// (they wait in the table, older than anything handed next).
    Handed { all: bool },
}

pub struct OutboxRelay {
    database: Database,
    bus: BusClient,
    waker: OutboxWaker,
    refusals: Arc<Refusals>,
}

/// How often the bus refused this service's publishes (a 4xx: a wrong token, a body
/// too large, an event it will not store), for the health detail and the logs.
#[derive(Debug, Default)]
pub struct Refusals {
    count: AtomicU64,
    last: std::sync::Mutex<Option<String>>,
}

impl Refusals {
    fn record(&self, refusal: &str) {
        self.count.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = self.last.lock() {
            *last = Some(refusal.to_owned());
        }
    }

    /// `{"refusedByBus": n, "lastRefusal": "…"}`.
    pub fn detail(&self) -> serde_json::Value {
        let last = self.last.lock().ok().and_then(|l| l.clone());
        serde_json::json!({
            "refusedByBus": self.count.load(Ordering::Relaxed),
            "lastRefusal": last,
        })
    }
}

impl OutboxRelay {
    pub fn new(database: Database, bus: BusClient) -> Self {
        Self {
            database,
            bus,
            waker: OutboxWaker::default(),
            refusals: Arc::default(),
        }
    }

    pub fn refusals(&self) -> Arc<Refusals> {
        self.refusals.clone()
    }

    pub fn waker(&self) -> OutboxWaker {
        self.waker.clone()
    }

    /// Runs until shutdown, then makes a last attempt to flush what is left.
    pub fn spawn(self, signal: ShutdownSignal) -> JoinHandle<()> {
        tokio::spawn(self.run(signal))
    }

    async fn run(self, mut signal: ShutdownSignal) {
        if !self.database.until_schema_ready(&mut signal).await {
            return;
        }
        let mut backoff = Backoff::default();
        // Whether the table held nothing older than what is handed over: only then may
        // handed rows go first (else they wait their turn in the table).
        let mut caught_up = false;
        loop {
            if signal.is_triggered() {
                self.flush_on_shutdown().await;
                return;
            }
            let (handed, only_handed) = self.waker.take_handed();
            let published = if caught_up && !handed.is_empty() {
                self.publish_handed(handed).await
            } else {
                self.publish_batch().await
            };
            match published {
                Ok(Published::Rows(_)) => {
                    caught_up = false;
                    backoff.reset();
                }
                Ok(Published::Handed { all }) => {
                    backoff.reset();
                    // Rows left to the table (too many handed, or too big for one
                    // request) are older than anything handed next: the table goes first.
                    // (Reading the table even after all went, when nothing new is
                    // handed, gathers what other requests committed meanwhile into one
                    // bigger publish: skipping that read cost 15 % of the write figure.)
                    caught_up = all && only_handed;
                }
                Ok(Published::Nothing) => {
                    caught_up = true;
                    tokio::select! {
                        _ = self.waker.notify.notified() => {}
                        _ = tokio::time::sleep(SWEEP_INTERVAL) => {}
                        _ = signal.triggered() => {}
                    }
                }
                Err(RelayError::Bus(BusError::Status { status, body }))
                    if (400..500).contains(&status) =>
                {
                    // Not an outage: the bus says this service is misconfigured or sends
                    // what the contract forbids. Loud, counted, and retried at the capped
                    // backoff, so that fixing the cause (a token) heals it.
                    caught_up = false;
                    let delay = backoff.next_delay();
                    self.refusals.record(&format!("{status}: {body}"));
                    tracing::error!(status, bus_answer = %body, retry_in_ms = delay.as_millis() as u64, "outbox relay: the event bus refuses this service's events (check EVENT_BUS_TOKEN and the event contract); nothing is published until it accepts them");
                    signal.sleep(delay).await;
                }
                Err(error) => {
                    caught_up = false;
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %error_chain(&error), retry_in_ms = delay.as_millis() as u64, "outbox relay: publish failed");
                    signal.sleep(delay).await;
                }
            }
        }
    }

    /// Publishes rows handed over right after their commit, without reading them back,
    /// then deletes them. What does not fit one request stays for the table's turn.
    async fn publish_handed(&self, mut handed: Vec<OutboxRow>) -> Result<Published, RelayError> {
        let taken = handed.len();
        cap_batch_bytes(&mut handed, |row| &row.publication);
        let body = json_array(handed.iter().map(|row| row.publication.as_str()));
        self.publish(body, handed.len()).await?;
        let ids: Vec<uuid::Uuid> = handed.iter().map(|row| row.event_id).collect();
        // Not waiting for the flush: a lost delete publishes the row again, and the bus
        // keeps one copy of an id. One statement is its own transaction, and the setting
        // holds for that transaction's commit: no BEGIN and COMMIT round trips.
        sqlx::query(
            "WITH published AS (DELETE FROM outbox WHERE event_id = ANY($1))
             SELECT set_config('synchronous_commit', 'off', true)",
        )
        .bind(&ids)
        .execute(&self.database.pool)
        .await?;
        Ok(Published::Handed {
            all: handed.len() == taken,
        })
    }

    async fn flush_on_shutdown(&self) {
        loop {
            match self.publish_batch().await {
                Ok(Published::Nothing) => return,
                Ok(_) => continue,
                Err(error) => {
                    tracing::warn!(error = %error_chain(&error), "outbox relay: stopping with events still in the outbox; they are published on the next start");
                    return;
                }
            }
        }
    }

    /// Publishes the oldest rows and deletes exactly those.
    pub async fn publish_batch(&self) -> Result<Published, RelayError> {
        let mut tx = self.database.pool.begin().await?;
        // The delete need not wait for the flush either (see `publish_handed`).
        sqlx::query(
            "SELECT pg_advisory_xact_lock($1), set_config('synchronous_commit', 'off', true)",
        )
        .bind(RELAY_LOCK)
        .execute(&mut *tx)
        .await?;
        let mut rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT position, publication::text FROM outbox ORDER BY position LIMIT $1",
        )
        .bind(BATCH)
        .fetch_all(&mut *tx)
        .await?;
        if rows.is_empty() {
            tx.commit().await?;
            return Ok(Published::Nothing);
        }
        cap_batch_bytes(&mut rows, |(_, publication)| publication);
        let body = json_array(rows.iter().map(|(_, p)| p.as_str()));
        let accepted = self.publish(body, rows.len()).await?;
        // Delete by position, never by range: a transaction still in flight may own a
        // lower position, and its row must stay until it is published.
        let positions: Vec<i64> = rows.iter().map(|(p, _)| *p).collect();
        sqlx::query("DELETE FROM outbox WHERE position = ANY($1)")
            .bind(&positions)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        if let (Some(first), Some(last)) = (accepted.first(), accepted.last()) {
            tracing::debug!(
                count = rows.len(),
                first_seq = first.seq,
                last_seq = last.seq,
                "outbox relay: published"
            );
        }
        Ok(Published::Rows(rows.len()))
    }

    /// One publish of `events` events, timed and counted by how the bus answered.
    async fn publish(&self, body: String, events: usize) -> Result<Vec<Accepted>, BusError> {
        let started = Instant::now();
        let (span, traceparent) = otlp::call_span("outbox publish", &body);
        let answer = tracing::Instrument::instrument(
            self.bus.publish_json_array(body, traceparent.as_deref()),
            span,
        )
        .await;
        let outbox = &metrics::OUTBOX;
        outbox
            .publish_duration
            .observe(started.elapsed().as_secs_f64());
        match &answer {
            Ok(_) => {
                outbox.published.inc_by(events as u64);
            }
            Err(error) => {
                let status = match error {
                    BusError::Status { status, .. } => status.to_string(),
                    BusError::Transport(_) => "unreachable".to_owned(),
                    BusError::Decode(_) => "unreadable".to_owned(),
                };
                outbox
                    .failures
                    .get_or_create(&metrics::StatusLabels { status })
                    .inc();
            }
        }
        answer
    }

    /// Rows still waiting to be published.
    pub async fn pending(pool: &PgPool) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(pool)
            .await
    }
}

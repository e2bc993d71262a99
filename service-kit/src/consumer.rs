//! The consumer side of the bus: apply each event and advance this service's cursor in
//! one transaction, so an event's effect happens exactly once however often it is
//! delivered, and strictly in seq order — a delivery that starts past a hole (the
//! database was restored or wiped) never jumps it: the missing range is read from the
//! bus first. The cursor keeps the id of the event it points at, so a bus whose log was
//! rewound (restored from a backup, recreated) is refused, never trusted: its reused seq
//! numbers would otherwise be skipped as duplicates.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

use crate::backoff::Backoff;
use crate::bus::{BusClient, BusError, LogPage};
use crate::error::{error_chain, ApiError, DatabaseFailure};
use crate::http::{Authorized, BodyLimit, EventsAuth, JsonBody};
use crate::metrics;
use crate::outbox::{self, OutboxWaker};
use crate::server::Readiness;
use crate::shutdown::ShutdownSignal;
use contract::{Decoded, Envelope, Event, OneOrMany, EVENTS_BODY_LIMIT};

/// How a service reacts to the events it cares about (its `reactions` module). `apply`
/// runs inside the cursor's transaction: whatever it writes (including outbox rows)
/// commits with the cursor.
pub trait Reactions: Send + Sync + 'static {
    fn apply(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
        event: Event,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// The event types `apply` acts on, told to the bus with every answer so that it
    /// sends only these (each delivery still covers every seq, see `Covers`); None: all.
    /// Only these reach `apply`, whether the bus filtered or not.
    fn wants(&self) -> Option<&'static [&'static str]> {
        None
    }

    /// Applies a run of consecutive events at once (a catch-up page, a filled hole, a
    /// big delivery), to the same effect as `apply` on each in order: a service whose
    /// reactions can be written as a few set-based statements overrides this.
    fn apply_many(
        &self,
        conn: &mut PgConnection,
        events: Vec<(&Envelope, Event)>,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send {
        async move {
            for (envelope, event) in events {
                self.apply(&mut *conn, envelope, event).await?;
            }
            Ok(())
        }
    }

    /// Whether `apply_stepping` is written: a service whose reaction to each event is one
    /// statement can take the cursor's step in that statement too.
    fn steps_cursor(&self) -> bool {
        false
    }

    /// Applies the one event of a delivery that follows the cursor and moves the cursor
    /// by `step`, in a single statement committed by itself (`CursorStep::CTES`): one
    /// round trip where the cursor's transaction takes four. When the cursor was not at
    /// `step.from` (another replica moved it, a hole), the statement changes nothing and
    /// this returns false: the delivery then takes the transaction's way.
    fn apply_stepping(
        &self,
        conn: &mut PgConnection,
        step: CursorStep,
        envelope: &Envelope,
        event: Event,
    ) -> impl Future<Output = Result<bool, sqlx::Error>> + Send {
        let _ = (conn, step, envelope, event);
        async { Ok(false) }
    }
}

/// The cursor's step over a delivery of one event (`Reactions::apply_stepping`): from
/// `from`, where it must be, to `to`, the event `to_id` (the event itself, or the end of
/// the range its delivery covers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CursorStep {
    pub from: i64,
    pub to: i64,
    pub to_id: uuid::Uuid,
}

impl CursorStep {
    /// The first common table expressions of a statement that applies an event with or
    /// without the cursor's step, binding `$1`–`$3` (`CursorStep::bind`); the statement's
    /// own parameters start at `$4`. `step` has one row, of no columns, when the change
    /// is to be made: always without a step (inside the cursor's transaction), and with
    /// one only if the cursor was at `from` and has moved. Its writes go `FROM step`; it
    /// returns `EXISTS (SELECT FROM step) AS stepped`. Like the transaction's, the commit
    /// does not wait for the WAL flush (see `Consumer::apply_in`).
    pub const CTES: &'static str = "step_from AS (
             SELECT seq, diverged, set_config('synchronous_commit', 'off', true)
             FROM consumer_cursor WHERE $3::bigint IS NOT NULL FOR UPDATE
         ), stepped AS (
             UPDATE consumer_cursor SET seq = $1, event_id = $2, updated_at = now()
             FROM step_from WHERE step_from.diverged IS NULL AND step_from.seq = $3
             RETURNING 1
         ), step AS (
             SELECT WHERE $3::bigint IS NULL OR EXISTS (SELECT FROM stepped)
         )";

    /// Binds `step` (none: the change is made in the cursor's transaction) to a statement
    /// that starts with `CTES`.
    pub fn bind<'q>(
        step: Option<Self>,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        query
            .bind(step.map(|s| s.to))
            .bind(step.map(|s| s.to_id))
            .bind(step.map(|s| s.from))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("reading missing events from the bus: {0}")]
    Bus(#[from] BusError),
    /// The task reading the catch-up pages ahead stopped before the last one.
    #[error("reading the next page of the log stopped: {0}")]
    Reading(String),
    #[error("the bus has no event {expected} (it sent {found:?}); refusing to skip it")]
    Hole { expected: i64, found: Option<i64> },
    /// The bus's log is not the one this service applied: refused until `resync`.
    #[error("{0}")]
    Diverged(String),
    /// Applying a run of events together failed; applied one by one, the failing event
    /// is found (and counted, and parked if it keeps failing).
    #[error("applying events {first}..={last} together: {source}")]
    Together {
        first: i64,
        last: i64,
        source: sqlx::Error,
    },
    /// Applying one event failed; the delivery's transaction rolled back.
    #[error("applying event {} (seq {}): {source}", .envelope.id, .envelope.seq)]
    Apply {
        envelope: Box<Envelope>,
        source: sqlx::Error,
    },
}

impl From<ConsumerError> for ApiError {
    fn from(error: ConsumerError) -> Self {
        match error {
            ConsumerError::Database(e)
            | ConsumerError::Apply { source: e, .. }
            | ConsumerError::Together { source: e, .. } => ApiError::from(e),
            ConsumerError::Diverged(divergence) => ApiError::LogDiverged(divergence),
            other => ApiError::Unavailable(error_chain(&other)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DeliveryOutcome {
    pub applied: usize,
    pub skipped: usize,
    pub cursor: i64,
}

/// Failed attempts at one event (not counting outages) before it is parked.
pub const PARK_AFTER_ATTEMPTS: i32 = 5;

/// Events read from the bus per request when catching up or filling a hole.
const PAGE: i64 = 5000;
/// Runs at least this long are applied together (`Reactions::apply_many`); shorter ones
/// one by one, each with its own log line and live-stream change.
const TOGETHER_FROM: usize = 16;

pub struct Consumer<H> {
    pool: PgPool,
    bus: BusClient,
    handler: H,
    /// Run after each delivery that applied something commits, in this process.
    after_commit: Vec<Box<dyn Fn() + Send + Sync>>,
    /// The relay the reactions' outbox rows are handed to once they commit.
    relay: Option<OutboxWaker>,
    // Deliveries and catch-up serialise here first, so two of them never both fetch
    // the same missing range; the row lock on the cursor guards across replicas.
    apply_lock: Mutex<()>,
}

impl<H: Reactions> Consumer<H> {
    pub fn new(pool: PgPool, bus: BusClient, handler: H) -> Self {
        Self {
            pool,
            bus,
            handler,
            after_commit: Vec::new(),
            relay: None,
            apply_lock: Mutex::new(()),
        }
    }

    /// For a handler that appends to the outbox: the rows each delivery appended are
    /// handed to the relay once it commits, to be published without being read back.
    pub fn waking(mut self, waker: OutboxWaker) -> Self {
        self.relay = Some(waker);
        self
    }

    /// Runs `then` in this process after each delivery that applied something commits:
    /// what the replica that applied it must know at once (the others hear it by
    /// `notify`, a moment later).
    pub fn after_commit(mut self, then: impl Fn() + Send + Sync + 'static) -> Self {
        self.after_commit.push(Box::new(then));
        self
    }

    pub async fn cursor(&self) -> Result<i64, sqlx::Error> {
        sqlx::query_scalar("SELECT seq FROM consumer_cursor")
            .fetch_one(&self.pool)
            .await
    }

    /// The cursor and how many events are parked, as the metrics show them.
    pub async fn position(&self) -> Result<(i64, i64), sqlx::Error> {
        sqlx::query_as("SELECT seq, (SELECT count(*) FROM parked_events) FROM consumer_cursor")
            .fetch_one(&self.pool)
            .await
    }

    /// Applies a delivered batch: events at or below the cursor are skipped, a hole
    /// before the first new event is filled from the bus, and the cursor moves to the
    /// last applied seq — all in one transaction.
    pub async fn deliver(&self, batch: Vec<Envelope>) -> Result<DeliveryOutcome, ConsumerError> {
        self.deliver_covering(batch, None).await
    }

    /// As `deliver`, for a delivery that stands for the whole range `covers`, holding
    /// only the events of the types this service takes.
    pub async fn deliver_covering(
        &self,
        mut batch: Vec<Envelope>,
        covers: Option<Covers>,
    ) -> Result<DeliveryOutcome, ConsumerError> {
        batch.sort_by_key(|e| e.seq);
        batch.dedup_by_key(|e| e.seq);
        let _serial = self.apply_lock.lock().await;
        let mut together = true;
        let result = loop {
            match self.apply_batch(&batch, covers, together).await {
                Err(ConsumerError::Together { source, .. })
                    if DatabaseFailure::of(&source) != DatabaseFailure::Unavailable =>
                {
                    // Somewhere in the run is an event that does not apply: one by one
                    // finds it.
                    together = false;
                }
                Err(ConsumerError::Apply { envelope, source })
                    if DatabaseFailure::of(&source) != DatabaseFailure::Unavailable =>
                {
                    // Not an outage: this event may never apply. A few attempts (across
                    // replicas and redeliveries), then it is parked and the stream goes on.
                    if self.count_failure(&envelope, &source).await? < PARK_AFTER_ATTEMPTS {
                        break Err(ConsumerError::Apply { envelope, source });
                    }
                    // What came before it in the batch rolled back with it: apply that
                    // first, so that the poison event is the next one, then park it.
                    let before: Vec<Envelope> = batch
                        .iter()
                        .filter(|e| e.seq < envelope.seq)
                        .cloned()
                        .collect();
                    if !before.is_empty() {
                        self.apply_batch(&before, None, false).await?;
                    }
                    self.park(&envelope, &source).await?;
                }
                Err(ConsumerError::Diverged(divergence)) => {
                    self.record_divergence(&divergence).await?;
                    break Err(ConsumerError::Diverged(divergence));
                }
                other => break other,
            }
        };
        if matches!(&result, Ok(outcome) if outcome.applied > 0) {
            self.committed();
        }
        result
    }

    /// Remembers, for every replica's `/readyz` and every later delivery, that the bus's
    /// log diverged from this service's; said at error level once.
    async fn record_divergence(&self, divergence: &str) -> Result<(), sqlx::Error> {
        let first = sqlx::query("UPDATE consumer_cursor SET diverged = $1 WHERE diverged IS NULL")
            .bind(divergence)
            .execute(&self.pool)
            .await?
            .rows_affected()
            > 0;
        if first {
            tracing::error!(
                divergence,
                "refusing the event bus: its log is not the one this service applied (restored from a backup or recreated?); nothing more is applied until an operator resyncs (POST /resync, docs/operations.md)"
            );
        }
        Ok(())
    }

    /// Forgets the divergence and re-reads the whole log from seq 1, applying what this
    /// service lacks: reactions are idempotent by natural key, so what it applied before
    /// changes nothing, and the events the restored bus took since are applied. Returns
    /// the cursor reached.
    pub async fn resync(&self) -> Result<i64, ConsumerError> {
        {
            let _serial = self.apply_lock.lock().await;
            let mut tx = self.pool.begin().await?;
            let (was, divergence): (i64, Option<String>) =
                sqlx::query_as("SELECT seq, diverged FROM consumer_cursor FOR UPDATE")
                    .fetch_one(&mut *tx)
                    .await?;
            sqlx::query(
                "UPDATE consumer_cursor SET seq = 0, event_id = NULL, diverged = NULL, updated_at = now()",
            )
            .execute(&mut *tx)
            .await?;
            // Counted against seqs of the old log: meaningless now.
            sqlx::query("DELETE FROM delivery_failures")
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            tracing::warn!(
                was,
                divergence = divergence.as_deref().unwrap_or(""),
                "resync by an operator: re-reading the bus's whole log"
            );
        }
        let cursor = self.catch_up().await?;
        tracing::info!(cursor, "resynced with the event bus");
        Ok(cursor)
    }

    fn committed(&self) {
        for then in &self.after_commit {
            then();
        }
    }

    /// Records a failed attempt at `envelope`; how many there have been.
    async fn count_failure(
        &self,
        envelope: &Envelope,
        error: &sqlx::Error,
    ) -> Result<i32, sqlx::Error> {
        sqlx::query_scalar(
            "INSERT INTO delivery_failures (seq, attempts, last_error) VALUES ($1, 1, $2)
             ON CONFLICT (seq) DO UPDATE
             SET attempts = delivery_failures.attempts + 1, last_error = EXCLUDED.last_error, updated_at = now()
             RETURNING attempts",
        )
        .bind(envelope.seq)
        .bind(error_chain(error))
        .fetch_one(&self.pool)
        .await
    }

    /// Sets `envelope` aside with its error and moves the cursor past it — only if it is
    /// the next event (another replica may have parked it already).
    async fn park(&self, envelope: &Envelope, error: &sqlx::Error) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let cursor: i64 = sqlx::query_scalar("SELECT seq FROM consumer_cursor FOR UPDATE")
            .fetch_one(&mut *tx)
            .await?;
        if cursor != envelope.seq - 1 {
            // Another replica parked it, or the cursor is elsewhere: nothing to do here.
            tx.rollback().await?;
            return Ok(());
        }
        let envelope_json =
            serde_json::to_string(envelope).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        let attempts: i32 = sqlx::query_scalar(
            "WITH failed AS (DELETE FROM delivery_failures WHERE seq = $1 RETURNING attempts)
             INSERT INTO parked_events (seq, event_id, type, envelope, error, attempts)
             SELECT $1, $2, $3, $4::json, $5, COALESCE((SELECT attempts FROM failed), 0)
             ON CONFLICT (seq) DO UPDATE SET event_id = EXCLUDED.event_id, type = EXCLUDED.type,
               envelope = EXCLUDED.envelope, error = EXCLUDED.error, attempts = EXCLUDED.attempts, parked_at = now()
             RETURNING attempts",
        )
        .bind(envelope.seq)
        .bind(envelope.id)
        .bind(&envelope.kind)
        .bind(envelope_json)
        .bind(error_chain(error))
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query("UPDATE consumer_cursor SET seq = $1, event_id = $2, updated_at = now()")
            .bind(envelope.seq)
            .bind(envelope.id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        metrics::CONSUMER.count(metrics::event_type(&envelope.kind), "parked", 1);
        tracing::error!(
            seq = envelope.seq,
            event_id = %envelope.id,
            r#type = %envelope.kind,
            attempts,
            error = %error_chain(error),
            "event parked: this service cannot apply it, and the stream goes on without it (GET /parked lists it; POST /parked/<seq>/retry once the cause is fixed, or DELETE /parked/<seq>)"
        );
        Ok(())
    }

    /// The parked events, oldest first.
    pub async fn parked(&self) -> Result<Vec<ParkedEvent>, sqlx::Error> {
        sqlx::query_as(
            "SELECT seq, event_id, type AS kind, error, attempts, parked_at, envelope::text AS envelope
             FROM parked_events ORDER BY seq",
        )
        .fetch_all(&self.pool)
        .await
    }

    /// Applies parked event `seq` now (after the events that followed it) and forgets it;
    /// if it fails again it stays parked with the new error. None: no such parked event.
    pub async fn retry_parked(&self, seq: i64) -> Result<Option<()>, ConsumerError> {
        let _serial = self.apply_lock.lock().await;
        let mut tx = self.pool.begin().await?;
        let stored: Option<String> =
            sqlx::query_scalar("DELETE FROM parked_events WHERE seq = $1 RETURNING envelope::text")
                .bind(seq)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(stored) = stored else {
            return Ok(None);
        };
        let envelope: Envelope =
            serde_json::from_str(&stored).map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        if let Err(failed) = self.apply_one(&mut tx, &envelope).await {
            let _ = tx.rollback().await;
            let cause = match &failed {
                ConsumerError::Apply { source, .. } => error_chain(source),
                other => error_chain(other),
            };
            sqlx::query(
                "UPDATE parked_events SET error = $2, attempts = attempts + 1 WHERE seq = $1",
            )
            .bind(seq)
            .bind(cause)
            .execute(&self.pool)
            .await?;
            return Err(failed);
        }
        tx.commit().await?;
        tracing::info!(seq, event_id = %envelope.id, "parked event retried and applied");
        self.committed();
        Ok(Some(()))
    }

    /// Forgets parked event `seq` for good. False: no such parked event.
    pub async fn discard_parked(&self, seq: i64) -> Result<bool, sqlx::Error> {
        let discarded = sqlx::query("DELETE FROM parked_events WHERE seq = $1")
            .bind(seq)
            .execute(&self.pool)
            .await?
            .rows_affected()
            > 0;
        if discarded {
            tracing::warn!(seq, "parked event discarded by an operator");
        }
        Ok(discarded)
    }

    async fn apply_batch(
        &self,
        batch: &[Envelope],
        covers: Option<Covers>,
        together: bool,
    ) -> Result<DeliveryOutcome, ConsumerError> {
        if let Some(outcome) = self.apply_stepping(batch, covers).await? {
            return Ok(outcome);
        }
        let started = Instant::now();
        let mut tx = self.pool.begin().await?;
        let (applied, appended) =
            outbox::collecting(self.apply_in(&mut tx, batch, covers, together)).await;
        match applied {
            Ok((outcome, tally)) => {
                tx.commit().await?;
                self.delivered(appended, tally, started);
                Ok(outcome)
            }
            Err(error) => {
                // At once, not when the connection is next used: the cursor row's lock
                // must go now, or parking the event would wait for it.
                let _ = tx.rollback().await;
                Err(error)
            }
        }
    }

    /// A delivery of the one event after the cursor, to reactions that take the cursor's
    /// step themselves: applied and committed by one statement. None when it is not such a
    /// delivery, or the cursor was elsewhere: nothing changed, the transaction decides.
    async fn apply_stepping(
        &self,
        batch: &[Envelope],
        covers: Option<Covers>,
    ) -> Result<Option<DeliveryOutcome>, ConsumerError> {
        let ([envelope], true) = (batch, self.handler.steps_cursor()) else {
            return Ok(None);
        };
        let from = covers.map_or(envelope.seq, |c| c.from);
        let Some((to, to_id)) = planned_cursor(batch, covers).filter(|_| from <= envelope.seq)
        else {
            return Ok(None);
        };
        let Some(event) = handled(envelope, self.handler.wants()) else {
            return Ok(None);
        };
        let started = Instant::now();
        let step = CursorStep {
            from: from - 1,
            to,
            to_id,
        };
        let span = event_span(envelope, &event);
        let mut conn = self.pool.acquire().await?;
        let (stepped, appended) = outbox::collecting(tracing::Instrument::instrument(
            self.handler
                .apply_stepping(&mut conn, step, envelope, event),
            span.clone(),
        ))
        .await;
        let stepped = stepped.map_err(|source| ConsumerError::Apply {
            envelope: Box::new(envelope.clone()),
            source,
        })?;
        if !stepped {
            return Ok(None);
        }
        let mut tally = Tally::default();
        tally.taken(envelope, self.handler.wants());
        self.delivered(appended, tally, started);
        span.in_scope(|| {
            tracing::info!(
                latency_ms = started.elapsed().as_secs_f64() * 1000.0,
                "event applied"
            );
        });
        Ok(Some(DeliveryOutcome {
            applied: 1,
            skipped: 0,
            cursor: to,
        }))
    }

    /// After a delivery committed: the outbox rows it appended go to the relay, what it
    /// did to the metrics.
    fn delivered(&self, appended: Vec<outbox::OutboxRow>, tally: Tally, started: Instant) {
        if let Some(relay) = &self.relay {
            for row in appended {
                relay.hand(row);
            }
        }
        tally.count();
        metrics::CONSUMER
            .apply_duration
            .observe(started.elapsed().as_secs_f64());
    }

    async fn apply_in(
        &self,
        tx: &mut PgConnection,
        batch: &[Envelope],
        covers: Option<Covers>,
        together: bool,
    ) -> Result<(DeliveryOutcome, Tally), ConsumerError> {
        // Committed without waiting for the WAL flush: a commit that a crash of the
        // database loses leaves the cursor behind the bus's, and that range is read again
        // from the bus (the hole filling below, or the next catch-up); what it published
        // is published again with the same ids. The producers' own writes stay durable.
        //
        // Every delivery that commits leaves the cursor at its last event (or the end of
        // the range it covers): the statement that locks the cursor moves it there at
        // once, saving the transaction a round trip; a delivery that fails rolls it back.
        let planned = planned_cursor(batch, covers);
        let position: CursorPosition = sqlx::query_as(
            "WITH old AS (SELECT seq, event_id, diverged FROM consumer_cursor FOR UPDATE),
             moved AS (
                 UPDATE consumer_cursor SET seq = $1, event_id = $2, updated_at = now()
                 FROM old WHERE old.diverged IS NULL AND old.seq < $1
                 RETURNING consumer_cursor.seq
             )
             SELECT old.seq, old.event_id, old.diverged, (SELECT seq FROM moved) AS moved_to,
                    set_config('synchronous_commit', 'off', true) AS commit
             FROM old",
        )
        .bind(planned.map(|(seq, _)| seq))
        .bind(planned.map(|(_, id)| id))
        .fetch_one(&mut *tx)
        .await?;
        if let Some(divergence) = position.diverged {
            return Err(ConsumerError::Diverged(divergence));
        }
        let start = position.seq;
        let mut filling = Filling {
            cursor: start,
            run: Vec::new(),
            applied: 0,
            tally: Tally::default(),
        };
        let mut skipped = 0;
        let mut last_applied = None;
        // Whether the delivery showed which event the bus has at our cursor.
        let mut checked_start = start == 0;
        if let Some(covers) = covers {
            // The events the delivery stands for start at `from`: anything missing before
            // that is a hole; inside it, absent seqs are types this service does not take.
            self.fill_hole(&mut *tx, &mut filling, covers.from, together)
                .await?;
            if covers.through == start {
                check_same(start, position.event_id, covers.through_id)?;
                checked_start = true;
            }
        }
        for envelope in batch {
            if envelope.seq <= filling.cursor {
                if envelope.seq == start {
                    check_same(start, position.event_id, envelope.id)?;
                    checked_start = true;
                }
                skipped += 1;
                filling.tally.skipped(envelope);
                continue;
            }
            if covers.is_none() {
                self.fill_hole(&mut *tx, &mut filling, envelope.seq, together)
                    .await?;
            }
            filling.cursor = envelope.seq;
            last_applied = Some(envelope.id);
            filling.push(envelope.clone(), self.handler.wants());
        }
        filling.applied += self.apply_run(&mut *tx, &filling.run, together).await?;
        let mut cursor = filling.cursor;
        if let Some(covers) = covers.filter(|c| c.through > cursor) {
            cursor = covers.through;
            last_applied = Some(covers.through_id);
        }
        let first_shown = covers
            .map(|c| c.from)
            .or_else(|| batch.first().map(|e| e.seq));
        if !checked_start && first_shown.is_none_or(|first| first <= start) {
            // A delivery of what we had already, or of nothing: a redelivery, or a rewound
            // log reusing seqs we passed. The bus's event at our cursor tells which.
            let at_cursor = self.bus.events_after(start - 1, 1).await?;
            match at_cursor.first() {
                Some(found) if found.seq == start => {
                    check_same(start, position.event_id, found.id)?
                }
                _ => {
                    return Err(ConsumerError::Diverged(format!(
                        "the bus's log ends before seq {start}, the last event this service applied: the bus's database was restored from an older backup or recreated"
                    )))
                }
            }
        }
        if cursor > start && position.moved_to != Some(cursor) {
            sqlx::query("UPDATE consumer_cursor SET seq = $1, event_id = $2, updated_at = now()")
                .bind(cursor)
                .bind(last_applied)
                .execute(&mut *tx)
                .await?;
        }
        let outcome = DeliveryOutcome {
            applied: filling.applied,
            skipped,
            cursor,
        };
        Ok((outcome, filling.tally))
    }

    /// Reads what the bus has between the cursor and `next` (exclusive) into the run,
    /// applying it a page at a time; refuses to skip anything the bus cannot give.
    async fn fill_hole(
        &self,
        tx: &mut PgConnection,
        filling: &mut Filling,
        next: i64,
        together: bool,
    ) -> Result<(), ConsumerError> {
        while next > filling.cursor + 1 {
            let wanted = (next - 1 - filling.cursor).min(PAGE);
            let missing = self.bus.events_after(filling.cursor, wanted as u32).await?;
            tracing::info!(
                from_seq = filling.cursor + 1,
                to_seq = next - 1,
                fetched = missing.len(),
                "filling a hole before the delivered events"
            );
            if missing.is_empty() {
                return Err(ConsumerError::Hole {
                    expected: filling.cursor + 1,
                    found: None,
                });
            }
            for earlier in missing.into_iter().take_while(|e| e.seq < next) {
                if earlier.seq != filling.cursor + 1 {
                    return Err(ConsumerError::Hole {
                        expected: filling.cursor + 1,
                        found: Some(earlier.seq),
                    });
                }
                filling.cursor = earlier.seq;
                filling.push(earlier, self.handler.wants());
            }
            if filling.run.len() >= PAGE as usize {
                filling.applied += self.apply_run(&mut *tx, &filling.run, together).await?;
                filling.run.clear();
            }
        }
        Ok(())
    }

    /// Applies consecutive events in the caller's transaction: together when there are
    /// enough of them and `together`, else one by one. Returns how many.
    async fn apply_run(
        &self,
        conn: &mut PgConnection,
        run: &[Envelope],
        together: bool,
    ) -> Result<usize, ConsumerError> {
        let (Some(first), Some(last)) = (run.first(), run.last()) else {
            return Ok(0);
        };
        if !together || run.len() < TOGETHER_FROM {
            for envelope in run {
                self.apply_one(&mut *conn, envelope).await?;
            }
            return Ok(run.len());
        }
        let started = Instant::now();
        let known: Vec<(&Envelope, Event)> = run
            .iter()
            .filter_map(|envelope| {
                handled(envelope, self.handler.wants()).map(|event| (envelope, event))
            })
            .collect();
        self.handler
            .apply_many(conn, known)
            .await
            .map_err(|source| ConsumerError::Together {
                first: first.seq,
                last: last.seq,
                source,
            })?;
        tracing::info!(
            first_seq = first.seq,
            last_seq = last.seq,
            count = run.len(),
            latency_ms = started.elapsed().as_secs_f64() * 1000.0,
            "events applied together"
        );
        Ok(run.len())
    }

    /// Applies one event in the caller's transaction; a failure names the event.
    async fn apply_one(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
    ) -> Result<(), ConsumerError> {
        let started = Instant::now();
        let Some(event) = handled(envelope, self.handler.wants()) else {
            return Ok(());
        };
        let span = event_span(envelope, &event);
        tracing::Instrument::instrument(self.handler.apply(conn, envelope, event), span.clone())
            .await
            .map_err(|source| ConsumerError::Apply {
                envelope: Box::new(envelope.clone()),
                source,
            })?;
        span.in_scope(|| {
            tracing::info!(
                latency_ms = started.elapsed().as_secs_f64() * 1000.0,
                "event applied"
            );
        });
        Ok(())
    }

    /// Reads and applies everything the bus had when catch-up began, a page at a time
    /// (the bus may answer a page short, when its events are large). Each page starts at
    /// the event before it, so a rewound log is caught here.
    ///
    /// The goal is the head the first answer names, not "nothing newer": under steady
    /// writes there is always something newer, and a replica starting beside a live one
    /// would chase the deliveries for as long as the writes go on.
    ///
    /// The pages after the first are read on a task of their own, up to `READ_AHEAD` of
    /// them ahead of the one being applied, so that reading and applying overlap; each
    /// starts at the last event of the page before, which is the cursor once that page is
    /// in (a replica that moved the shared cursor further meanwhile only makes part of it
    /// a redelivery).
    pub async fn catch_up(&self) -> Result<i64, ConsumerError> {
        let mut cursor = self.cursor().await?;
        let mut page = self
            .bus
            .page_after((cursor - 1).max(0), PAGE as u32)
            .await?;
        let goal = page.head;
        if let Some(goal) = goal {
            metrics::CONSUMER.catch_up_goal.set(goal);
        }
        if cursor == 0 && page.events.is_empty() {
            return Ok(cursor);
        }
        let mut reader: Option<PageReader> = None;
        loop {
            let newest = page.events.last().map(|e| e.seq);
            let more = newest.filter(|&newest| newest > cursor && goal.is_none_or(|g| newest < g));
            let Some(newest) = more else {
                // The last page (or an empty one past 0, checked too: the log would end
                // before our cursor).
                return Ok(self.deliver(page.events).await?.cursor);
            };
            let reader =
                reader.get_or_insert_with(|| PageReader::start(self.bus.clone(), newest, goal));
            let outcome = self.deliver(page.events).await?;
            if goal.is_some_and(|goal| outcome.cursor >= goal) {
                return Ok(outcome.cursor);
            }
            cursor = outcome.cursor;
            page = reader.next().await?;
        }
    }
}

/// Pages read after a catch-up page while it is applied, in order, until one reaches
/// the goal, ends the log or makes no progress. Dropped, it stops reading.
struct PageReader {
    pages: tokio::sync::mpsc::Receiver<Result<LogPage, BusError>>,
    task: JoinHandle<()>,
}

/// Pages read ahead of the one being applied: one waiting, one being read.
const READ_AHEAD: usize = 1;

impl PageReader {
    fn start(bus: BusClient, mut newest: i64, goal: Option<i64>) -> Self {
        let (sender, pages) = tokio::sync::mpsc::channel(READ_AHEAD);
        let task = tokio::spawn(async move {
            loop {
                let page = bus.page_after(newest - 1, PAGE as u32).await;
                let next = page
                    .as_ref()
                    .ok()
                    .and_then(|p| p.events.last().map(|e| e.seq))
                    .filter(|&next| next > newest && goal.is_none_or(|g| next < g));
                if sender.send(page).await.is_err() {
                    return;
                }
                match next {
                    Some(next) => newest = next,
                    None => return,
                }
            }
        });
        Self { pages, task }
    }

    async fn next(&mut self) -> Result<LogPage, ConsumerError> {
        match self.pages.recv().await {
            Some(page) => Ok(page?),
            // It sends every page it reads, the last one included, before it ends: it
            // stopped early only if it panicked or was cancelled.
            None => Err(ConsumerError::Reading(match (&mut self.task).await {
                Err(stopped) => stopped.to_string(),
                Ok(()) => "it ended after its last page".into(),
            })),
        }
    }
}

impl Drop for PageReader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An event's span while it is applied: a child of the span that published it.
fn event_span(envelope: &Envelope, event: &Event) -> tracing::Span {
    let cause = envelope
        .traceparent
        .as_deref()
        .and_then(contract::TraceParent::parse);
    let applying = cause.as_ref().map(contract::TraceParent::child);
    let (post_id, comment_id) = event.subject();
    tracing::info_span!(
        "event",
        event_id = %envelope.id,
        seq = envelope.seq,
        r#type = %envelope.kind,
        trace_id = applying.as_ref().map_or("", |t| t.trace_id.as_str()),
        span_id = applying.as_ref().map(|t| t.parent_id.as_str()),
        parent_span_id = cause.as_ref().map(|t| t.parent_id.as_str()),
        post_id,
        comment_id,
    )
}

/// The event an envelope carries, if it is one of the contract's types this service
/// takes; an unknown or malformed one is passed over (and a malformed one said).
fn handled(envelope: &Envelope, wants: Option<&[&str]>) -> Option<Event> {
    match envelope.decode() {
        // What the bus would not have sent, had it known: the same whether it filtered.
        Decoded::Known(event) if wants.is_some_and(|wants| !wants.contains(&event.kind())) => None,
        Decoded::Known(event) => Some(event),
        Decoded::Unknown => {
            tracing::debug!(seq = envelope.seq, r#type = %envelope.kind, "event type not handled here; skipped");
            None
        }
        Decoded::Malformed(error) => {
            // Blocking the whole stream on one bad event would stop the service; the
            // event stays in the bus's log for inspection and replay.
            tracing::warn!(seq = envelope.seq, event_id = %envelope.id, %error, "event data does not match its type; skipped");
            None
        }
    }
}

/// Why this service refuses the bus, if it does: for `/readyz`.
pub async fn divergence(pool: &PgPool) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT diverged FROM consumer_cursor")
        .fetch_one(pool)
        .await
}

/// Where the cursor is, and what it points at.
#[derive(sqlx::FromRow)]
struct CursorPosition {
    seq: i64,
    event_id: Option<uuid::Uuid>,
    diverged: Option<String>,
    /// Where the locking statement moved the cursor (`planned_cursor`), if it did.
    moved_to: Option<i64>,
}

/// Where the cursor ends when `batch` (sorted by seq) covering `covers` is applied: its
/// last event, or the end of the range it covers if that is later; none for an empty
/// delivery. Holes before or inside it are filled, so this holds however far behind the
/// cursor was; a cursor already there or beyond does not move.
fn planned_cursor(batch: &[Envelope], covers: Option<Covers>) -> Option<(i64, uuid::Uuid)> {
    let last = batch.last().map(|e| (e.seq, e.id));
    match (last, covers) {
        (Some((seq, _)), Some(c)) if c.through > seq => Some((c.through, c.through_id)),
        (None, Some(c)) => Some((c.through, c.through_id)),
        (last, _) => last,
    }
}

/// The bus's event at our cursor must be the one we applied there.
fn check_same(
    seq: i64,
    applied: Option<uuid::Uuid>,
    found: uuid::Uuid,
) -> Result<(), ConsumerError> {
    match applied {
        Some(applied) if applied != found => Err(ConsumerError::Diverged(format!(
            "the bus's event at seq {seq} is {found}, but this service applied {applied} there: the bus's log was rewound (restored from an older backup or recreated) and reuses seq numbers"
        ))),
        _ => Ok(()),
    }
}

/// The events a delivery from the bus stands for (`Event-Bus-Covers: FROM-THROUGH ID`):
/// every seq from `from` through `through` (the event `through_id`), of which the body
/// holds the ones of the types this service said it takes (`Reactions::wants`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Covers {
    pub from: i64,
    pub through: i64,
    pub through_id: uuid::Uuid,
}

impl Covers {
    /// The header's value, as the bus writes it.
    pub fn header_value(&self) -> String {
        format!("{}-{} {}", self.from, self.through, self.through_id)
    }

    pub fn parse(value: &str) -> Option<Self> {
        let (range, id) = value.trim().split_once(' ')?;
        let (from, through) = range.split_once('-')?;
        let covers = Self {
            from: from.parse().ok()?,
            through: through.parse().ok()?,
            through_id: id.trim().parse().ok()?,
        };
        (covers.from >= 1 && covers.through >= covers.from).then_some(covers)
    }
}

/// The header a delivery names its range in.
pub const COVERS_HEADER: &str = "event-bus-covers";

/// Events read from the bus to fill a hole, not applied yet, and where they end.
struct Filling {
    cursor: i64,
    run: Vec<Envelope>,
    applied: usize,
    tally: Tally,
}

impl Filling {
    fn push(&mut self, envelope: Envelope, wants: Option<&[&str]>) {
        self.tally.taken(&envelope, wants);
        self.run.push(envelope);
    }
}

/// What a delivery did with the events of each type, counted in the metrics once it
/// commits.
#[derive(Default)]
struct Tally(std::collections::HashMap<(&'static str, &'static str), u64>);

impl Tally {
    /// An event past the cursor: applied if this service takes its type, else passed over.
    fn taken(&mut self, envelope: &Envelope, wants: Option<&[&str]>) {
        let takes = Event::known_kind(&envelope.kind)
            .is_some_and(|kind| wants.is_none_or(|wants| wants.contains(&kind)));
        self.add(envelope, if takes { "applied" } else { "skipped" });
    }

    /// An event at or below the cursor: a redelivery.
    fn skipped(&mut self, envelope: &Envelope) {
        self.add(envelope, "skipped");
    }

    fn add(&mut self, envelope: &Envelope, outcome: &'static str) {
        let r#type = metrics::event_type(&envelope.kind);
        *self.0.entry((r#type, outcome)).or_default() += 1;
    }

    fn count(self) {
        for ((r#type, outcome), events) in self.0 {
            metrics::CONSUMER.count(r#type, outcome, events);
        }
    }
}

/// Catches up with the bus (retrying while it is unreachable), then marks the service
/// ready: a consumer never serves a view older than the log it could have read.
pub fn spawn_catch_up<H: Reactions>(
    consumer: Arc<Consumer<H>>,
    readiness: Readiness,
    mut signal: ShutdownSignal,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        if !readiness
            .database_handle()
            .until_schema_ready(&mut signal)
            .await
        {
            return;
        }
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            match consumer.catch_up().await {
                Ok(cursor) => {
                    tracing::info!(cursor, "caught up with the event bus; ready");
                    readiness.mark_ready();
                    break;
                }
                Err(error) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %error_chain(&error), retry_in_ms = delay.as_millis() as u64, "catch-up failed; not ready yet");
                    if signal.sleep(delay).await {
                        return;
                    }
                }
            }
        }
        // A safety net, not the delivery path: what a commit lost in a database crash
        // would otherwise wait for the next delivery, and a bus rewound while no events
        // flow would go unnoticed until one does.
        while !signal.sleep(CATCH_UP_SWEEP).await {
            // Given up on shutdown: a sweep waiting on a bus that is restarting too must not
            // hold up a graceful stop (its transaction rolls back).
            tokio::select! {
                swept = consumer.catch_up() => {
                    if let Err(error) = swept {
                        tracing::debug!(error = %error_chain(&error), "catch-up sweep failed");
                    }
                }
                _ = signal.triggered() => return,
            }
        }
    })
}

/// How often a ready consumer checks the bus for anything it missed.
const CATCH_UP_SWEEP: Duration = Duration::from_secs(5);

/// `POST /events`, where the bus delivers batches to this consumer, together with who
/// may deliver: the two cannot be registered apart.
pub struct ConsumerRoutes<H> {
    consumer: web::Data<Consumer<H>>,
    auth: EventsAuth,
}

impl<H> Clone for ConsumerRoutes<H> {
    fn clone(&self) -> Self {
        Self {
            consumer: self.consumer.clone(),
            auth: self.auth.clone(),
        }
    }
}

impl<H: Reactions> ConsumerRoutes<H> {
    pub fn new(consumer: Arc<Consumer<H>>, auth: EventsAuth) -> Self {
        Self {
            consumer: web::Data::from(consumer),
            auth,
        }
    }

    pub fn register(&self, cfg: &mut web::ServiceConfig) {
        cfg.service(
            web::resource("/events")
                .app_data(self.consumer.clone())
                .app_data(self.auth.clone())
                // A delivery is a batch of events, each of which the bus accepted.
                .app_data(BodyLimit(EVENTS_BODY_LIMIT))
                .route(web::post().to(receive::<H>)),
        )
        .service(
            web::scope("/parked")
                .app_data(self.consumer.clone())
                .app_data(self.auth.clone())
                .route("", web::get().to(list_parked::<H>))
                .route("/{seq}/retry", web::post().to(retry_parked::<H>))
                .route("/{seq}", web::delete().to(discard_parked::<H>)),
        )
        .service(
            web::resource("/resync")
                .app_data(self.consumer.clone())
                .app_data(self.auth.clone())
                .route(web::post().to(resync::<H>)),
        );
    }
}

/// One parked event, as `GET /parked` shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct ParkedEvent {
    pub seq: i64,
    pub event_id: uuid::Uuid,
    #[serde(rename = "type")]
    pub kind: String,
    pub error: String,
    pub attempts: i32,
    #[serde(with = "time::serde::rfc3339")]
    pub parked_at: time::OffsetDateTime,
    /// The event as it was delivered, JSON text.
    pub envelope: String,
}

async fn list_parked<H: Reactions>(
    _auth: Authorized,
    consumer: web::Data<Consumer<H>>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(consumer.parked().await?))
}

async fn retry_parked<H: Reactions>(
    _auth: Authorized,
    consumer: web::Data<Consumer<H>>,
    seq: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    match consumer.retry_parked(*seq).await? {
        Some(()) => Ok(HttpResponse::Ok().json(serde_json::json!({ "retried": *seq }))),
        None => Err(ApiError::NotFound(format!("no parked event {seq}"))),
    }
}

async fn discard_parked<H: Reactions>(
    _auth: Authorized,
    consumer: web::Data<Consumer<H>>,
    seq: web::Path<i64>,
) -> Result<HttpResponse, ApiError> {
    if consumer.discard_parked(*seq).await? {
        Ok(HttpResponse::Ok().json(serde_json::json!({ "discarded": *seq })))
    } else {
        Err(ApiError::NotFound(format!("no parked event {seq}")))
    }
}

async fn resync<H: Reactions>(
    _auth: Authorized,
    consumer: web::Data<Consumer<H>>,
) -> Result<HttpResponse, ApiError> {
    let cursor = consumer.resync().await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "resynced": true, "cursor": cursor })))
}

async fn receive<H: Reactions>(
    _auth: Authorized,
    req: HttpRequest,
    consumer: web::Data<Consumer<H>>,
    JsonBody(OneOrMany(batch)): JsonBody<OneOrMany<Envelope>>,
) -> Result<HttpResponse, ApiError> {
    let covers = match req.headers().get(COVERS_HEADER) {
        None => None,
        Some(value) => Some(value.to_str().ok().and_then(Covers::parse).ok_or_else(|| {
            ApiError::BadRequest(format!(
                "{COVERS_HEADER} must read FROM-THROUGH EVENT-ID (e.g. `21-25 01a2…`)"
            ))
        })?),
    };
    // The log counts from 1; anything else is not from a bus (and would overflow below).
    if let Some(index) = batch.iter().position(|envelope| envelope.seq < 1) {
        return Err(ApiError::Validation {
            message: format!("event {index}: seq must be 1 or more"),
            field: format!("[{index}].seq"),
        });
    }
    let outcome = consumer.deliver_covering(batch, covers).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({
        "applied": outcome.applied,
        "skipped": outcome.skipped,
        "cursor": outcome.cursor,
        "wants": consumer.handler.wants(),
    })))
}

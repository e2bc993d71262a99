//! Test support: a fresh database per test on a throwaway
//! cluster, a service app served on port 0, a recording subscriber, waiting on conditions
//! with deadlines, and the checks every service's tests make of what it wrote.

mod app;
pub mod bus;
mod cluster;
mod subscriber;

use std::future::Future;
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};

use contract::TraceParent;
use contract::{Envelope, Event};

pub use app::{service_env, service_env_with, unreachable_bus_url, RunningApp};
pub use subscriber::{RecordingSubscriber, SubscriberMode};

/// A database of its own for one test, cloned from a migrated template and dropped when
/// this value is dropped.
pub struct TestDatabase {
    pub url: String,
    pub pool: PgPool,
    name: String,
    server: String,
}

/// The server tests use: `DATABASE_URL`'s server if set, else the run's shared cluster.
pub fn server_url() -> String {
    static SERVER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SERVER
        .get_or_init(|| match std::env::var("DATABASE_URL") {
            Ok(url) if !url.trim().is_empty() => {
                let url = url.trim().trim_end_matches('/');
                // Keep scheme, credentials and host; we name the databases ourselves.
                match url.rfind('/') {
                    Some(i) if i > "postgres://".len() => url[..i].to_owned(),
                    _ => url.to_owned(),
                }
            }
            _ => cluster::shared_cluster_url()
                .unwrap_or_else(|e| panic!("cannot start the test PostgreSQL cluster: {e}")),
        })
        .clone()
}

impl TestDatabase {
    /// A fresh database with `migrator`'s schema.
    pub async fn new(migrator: &Migrator) -> Self {
        // A stuck server must fail the test with a reason, not hang it.
        tokio::time::timeout(Duration::from_secs(60), Self::create(migrator))
            .await
            .expect("creating a test database took over 60 s")
    }

    async fn create(migrator: &Migrator) -> Self {
        let server = server_url();
        let template = ensure_template(&server, migrator).await;
        let name = format!("t_{}", uuid::Uuid::now_v7().simple());
        let mut admin = admin_connection(&server).await;
        sqlx::query(&format!(
            r#"CREATE DATABASE "{name}" TEMPLATE "{template}""#
        ))
        .execute(&mut admin)
        .await
        .expect("create test database");
        let url = format!("{server}/{name}");
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .connect(&url)
            .await
            .expect("connect to test database");
        Self {
            url,
            pool,
            name,
            server,
        }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let server = self.server.clone();
        let name = self.name.clone();
        // Drop cannot await; a short-lived runtime on its own thread does the DROP.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            runtime.block_on(async {
                let mut admin = PgConnection::connect(&format!("{server}/postgres"))
                    .await
                    .ok()?;
                sqlx::query(&format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#))
                    .execute(&mut admin)
                    .await
                    .ok()
            })
        });
        let _ = dropped.join();
    }
}

async fn admin_connection(server: &str) -> PgConnection {
    PgConnection::connect(&format!("{server}/postgres"))
        .await
        .expect("connect to the test server's postgres database")
}

/// The migrated template for this exact set of migrations, built once per cluster.
async fn ensure_template(server: &str, migrator: &Migrator) -> String {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for migration in migrator.iter() {
        migration.version.hash(&mut hasher);
        migration.checksum.hash(&mut hasher);
    }
    let key = hasher.finish();
    let template = format!("tpl_{key:016x}");
    let mut admin = admin_connection(server).await;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(key as i64)
        .execute(&mut admin)
        .await
        .expect("template lock");
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&template)
            .fetch_one(&mut admin)
            .await
            .expect("look up template");
    if !exists {
        let building = format!("{template}_building");
        for statement in [
            format!(r#"DROP DATABASE IF EXISTS "{building}" WITH (FORCE)"#),
            format!(r#"CREATE DATABASE "{building}""#),
        ] {
            sqlx::query(&statement)
                .execute(&mut admin)
                .await
                .expect("create template");
        }
        // One plain connection, closed explicitly: a pooled one may linger and block the
        // rename below.
        let mut conn = PgConnection::connect(&format!("{server}/{building}"))
            .await
            .expect("connect to template");
        migrator
            .run_direct(&mut conn)
            .await
            .expect("migrate template");
        conn.close().await.expect("close template connection");
        // The migrator's backend may still be exiting after close: rename once it has.
        let rename = format!(r#"ALTER DATABASE "{building}" RENAME TO "{template}""#);
        let mut attempts = 0;
        while let Err(error) = sqlx::query(&rename).execute(&mut admin).await {
            attempts += 1;
            assert!(attempts < 500, "publish template: {error}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(key as i64)
        .execute(&mut admin)
        .await
        .expect("template unlock");
    template
}

/// Polls `condition` until it holds, failing the test with `what` after `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Logs from code under test go to the test's captured output.
pub fn init_test_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// `event` as the bus delivers it: numbered `seq`, from `source`, starting a trace of its
/// own.
pub fn delivered(seq: i64, event: &Event, source: &str) -> Envelope {
    let tagged = serde_json::to_value(event).expect("events serialize");
    serde_json::from_value(serde_json::json!({
        "id": uuid::Uuid::now_v7(),
        "seq": seq,
        "type": tagged["type"],
        "data": tagged["data"],
        "source": source,
        "occurredAt": "2026-11-22T18:00:00Z",
        "traceparent": TraceParent::new_root().to_string(),
    }))
    .expect("a valid envelope")
}

/// How many rows `table` holds.
pub async fn count_rows(pool: &PgPool, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(pool)
        .await
        .unwrap_or_else(|error| panic!("count the rows of {table}: {error}"))
}

/// How every session of a test database but this one read a table: counted once those
/// sessions have ended (a backend reports its counts when it exits).
#[derive(Debug, sqlx::FromRow)]
pub struct TableScans {
    /// Rows read by sequential scans.
    pub sequential_rows: i64,
    /// Index scans started.
    pub indexed: i64,
}

/// How `table` of `db` was read; stop every app using `db` first. Closes `db.pool`.
///
/// How tests prove a lookup goes through its index on a table that grew after the
/// statement was first planned (a plan a connection kept from an empty table reads it
/// whole).
pub async fn table_scans(db: &TestDatabase, table: &str) -> TableScans {
    sqlx::query_as(
        "SELECT seq_tup_read AS sequential_rows, COALESCE(idx_scan, 0) AS indexed
         FROM pg_stat_user_tables WHERE relname = $1",
    )
    .bind(table)
    .fetch_one(&mut alone_on(db).await)
    .await
    .unwrap_or_else(|error| panic!("read the scans of {table}: {error}"))
}

/// How many scans every session of `db` but this one started on `index`; stop every app
/// using `db` first. Closes `db.pool`.
pub async fn index_scans(db: &TestDatabase, index: &str) -> i64 {
    sqlx::query_scalar("SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = $1")
        .bind(index)
        .fetch_one(&mut alone_on(db).await)
        .await
        .unwrap_or_else(|error| panic!("read the scans of {index}: {error}"))
}

/// A connection to `db` once every other session has ended (a backend reports what it
/// read when it exits).
async fn alone_on(db: &TestDatabase) -> PgConnection {
    db.pool.close().await;
    let mut conn = PgConnection::connect(&db.url)
        .await
        .expect("connect to count the scans");
    let others = "SELECT count(*) FROM pg_stat_activity
                  WHERE datname = current_database() AND pid <> pg_backend_pid()";
    let deadline = Instant::now() + Duration::from_secs(30);
    while sqlx::query_scalar::<_, i64>(others)
        .fetch_one(&mut conn)
        .await
        .expect("count the other sessions")
        > 0
    {
        assert!(
            Instant::now() < deadline,
            "sessions of the test database still open after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    conn
}

/// What the outbox holds, oldest first: each row's publication as JSON.
pub async fn outbox_publications(pool: &PgPool) -> Vec<Value> {
    let rows: Vec<String> =
        sqlx::query_scalar("SELECT publication::text FROM outbox ORDER BY position")
            .fetch_all(pool)
            .await
            .expect("read the outbox");
    rows.iter()
        .map(|row| serde_json::from_str(row).expect("a publication is JSON"))
        .collect()
}

/// Makes every write to the outbox fail (the table is renamed away) until
/// `restore_outbox`: how tests prove a change and its event are written both or neither.
pub async fn hide_outbox(pool: &PgPool) {
    sqlx::query("ALTER TABLE outbox RENAME TO outbox_gone")
        .execute(pool)
        .await
        .expect("rename the outbox away");
}

/// Undoes `hide_outbox`.
pub async fn restore_outbox(pool: &PgPool) {
    sqlx::query("ALTER TABLE outbox_gone RENAME TO outbox")
        .execute(pool)
        .await
        .expect("rename the outbox back");
}

/// Asserts that every row of each of `sources` (a table, optionally followed by a
/// `WHERE`) was last written by one and the same transaction: a row's `xmin` is the id of
/// the transaction that wrote it. `what` names the rows in the failure message.
pub async fn assert_written_in_one_transaction(pool: &PgPool, sources: &[&str], what: &str) {
    let mut xmins = Vec::new();
    for source in sources {
        let written: Vec<String> = sqlx::query_scalar(&format!("SELECT xmin::text FROM {source}"))
            .fetch_all(pool)
            .await
            .unwrap_or_else(|error| panic!("read the xmin of {source}: {error}"));
        // An empty source would make the check hold by saying nothing.
        assert!(!written.is_empty(), "no rows in {source}");
        xmins.extend(written.into_iter().map(|xmin| (*source, xmin)));
    }
    assert!(
        xmins.iter().all(|(_, xmin)| *xmin == xmins[0].1),
        "{what} written in different transactions: {xmins:?}"
    );
}

/// Asserts that an event caused by another carries on the cause's trace.
#[track_caller]
pub fn assert_trace_continued(cause_traceparent: Option<&str>, event_traceparent: Option<&str>) {
    let cause = cause_traceparent
        .and_then(TraceParent::parse)
        .expect("the cause has a valid traceparent");
    let continued = event_traceparent
        .and_then(TraceParent::parse)
        .expect("the event has a valid traceparent");
    assert_eq!(
        continued.trace_id, cause.trace_id,
        "the trace was not carried on"
    );
}

//! A service's database: a pool that survives the database being late or restarting,
//! and migrations run as soon as it answers.

use std::time::Duration;

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::backoff::Backoff;
use crate::shutdown::ShutdownSignal;

/// The shared crate's own tables (outbox, consumer cursor). Their versions are below 100;
/// a service's own migrations start at 100.
pub static SHARED_MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

const FIRST_SERVICE_VERSION: i64 = 100;

/// An owned copy of `migrator`, for a service (the bus) that has no shared tables.
pub fn only(migrator: &Migrator) -> Migrator {
    Migrator {
        migrations: migrator.migrations.clone(),
        ..Migrator::DEFAULT
    }
}

/// A service's migrations together with the shared ones, as one migrator, so that one
/// `_sqlx_migrations` table describes the whole schema.
pub fn with_shared_migrations(service: &Migrator) -> Migrator {
    let mut migrations: Vec<_> = SHARED_MIGRATIONS.iter().cloned().collect();
    for migration in service.iter() {
        assert!(
            migration.version >= FIRST_SERVICE_VERSION,
            "service migration {} must be numbered {FIRST_SERVICE_VERSION} or higher",
            migration.version
        );
        migrations.push(migration.clone());
    }
    Migrator {
        migrations: migrations.into(),
        ..Migrator::DEFAULT
    }
}

/// Connections per service process: enough for its handlers and background tasks.
const MAX_CONNECTIONS: u32 = 16;
/// How long a request waits for a connection before it is answered 503.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection idle this long is pinged before it is handed out, and replaced if the
/// database hung up meanwhile. One used more recently is handed out as it is: pinging
/// every connection on every acquire cost each statement a second round trip (0.24 ms
/// against 0.09 ms here), paid several times on every hop of a post. After a database
/// restart, such a connection fails its first statement (a 503, or a retried event)
/// and is dropped from the pool.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// A service's database: a pool that connects when it is first used (and reconnects
/// after the server restarts: a connection that failed is dropped, one idle for a while
/// is tested before it is handed out), and whether the schema is up to date yet.
#[derive(Debug, Clone)]
pub struct Database {
    pub pool: PgPool,
    schema: watch::Receiver<bool>,
}

impl Database {
    /// Never waits for the database: a service starts, serves `/healthz`, and is not
    /// ready until the returned task — which retries with capped backoff for as long as
    /// it takes, logging each attempt — has brought the schema up to date.
    pub fn open(
        url: &str,
        migrator: Migrator,
        signal: ShutdownSignal,
    ) -> Result<(Self, JoinHandle<()>), sqlx::Error> {
        let options: PgConnectOptions = url.parse()?;
        let pool = PgPoolOptions::new()
            .max_connections(MAX_CONNECTIONS)
            .min_connections(0)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    if meta.idle_for >= PING_IF_IDLE_FOR {
                        sqlx::Connection::ping(conn).await?;
                    }
                    Ok(true)
                })
            })
            .connect_lazy_with(options);
        let (ready, schema) = watch::channel(false);
        let task = tokio::spawn(bring_up_to_date(pool.clone(), migrator, ready, signal));
        Ok((Self { pool, schema }, task))
    }

    /// A database whose schema is known to be up to date (tests build them so).
    pub fn migrated(pool: PgPool) -> Self {
        Self {
            pool,
            schema: watch::channel(true).1,
        }
    }

    pub fn schema_ready(&self) -> bool {
        *self.schema.borrow()
    }

    /// Waits until the schema is up to date.
    pub async fn schema_up_to_date(&self) {
        let mut schema = self.schema.clone();
        let _ = schema.wait_for(|ready| *ready).await;
    }

    /// Waits until the schema is up to date; false if shutdown came first.
    pub async fn until_schema_ready(&self, signal: &mut ShutdownSignal) -> bool {
        let mut schema = self.schema.clone();
        tokio::select! {
            ready = schema.wait_for(|ready| *ready) => ready.is_ok(),
            _ = signal.triggered() => false,
        }
    }
}

async fn bring_up_to_date(
    pool: PgPool,
    migrator: Migrator,
    ready: watch::Sender<bool>,
    mut signal: ShutdownSignal,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        // sqlx takes an advisory lock, so replicas starting together are safe.
        match migrator.run(&pool).await {
            Ok(()) => {
                tracing::info!("database reachable, schema up to date");
                ready.send_replace(true);
                return;
            }
            Err(error) => {
                let delay = backoff.next_delay();
                tracing::warn!(error = %crate::error::error_chain(&error), retry_in_ms = delay.as_millis() as u64, "database not ready yet; retrying (the service stays up, not ready)");
                if signal.sleep(delay).await {
                    return;
                }
            }
        }
    }
}

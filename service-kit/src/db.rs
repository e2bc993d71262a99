//! Database start-up: connect (waiting for a database that is still starting, as in a
//! fresh Kubernetes deployment) and run migrations.

use std::time::{Duration, Instant};

use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use crate::backoff::Backoff;
use crate::server::StartError;

/// The shared crate's own tables (outbox, consumer cursor). Their versions are below 100;
/// a service's own migrations start at 100.
pub static SHARED_MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

const FIRST_SERVICE_VERSION: i64 = 100;

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
/// How long start-up waits for a database that is still starting.
const WAIT_FOR_DATABASE: Duration = Duration::from_secs(60);

/// The start of every service, the bus included: connect (waiting for a database that is
/// still starting) and bring the schema up to date.
pub async fn open(url: &str, migrator: &Migrator) -> Result<PgPool, StartError> {
    let pool = connect(url, MAX_CONNECTIONS, WAIT_FOR_DATABASE).await?;
    migrate(&pool, migrator).await?;
    Ok(pool)
}

/// Connects, retrying for up to `wait` while the database is unreachable.
async fn connect(url: &str, max_connections: u32, wait: Duration) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = url.parse()?;
    let deadline = Instant::now() + wait;
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
    loop {
        let attempt = PgPoolOptions::new()
            .max_connections(max_connections)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.clone())
            .await;
        match attempt {
            Ok(pool) => return Ok(pool),
            Err(error) if Instant::now() < deadline => {
                tracing::warn!(%error, "database not reachable yet, retrying");
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(error) => return Err(error),
        }
    }
}

/// Runs migrations; sqlx takes an advisory lock, so replicas starting together are safe.
async fn migrate(pool: &PgPool, migrator: &Migrator) -> Result<(), sqlx::migrate::MigrateError> {
    migrator.run(pool).await
}

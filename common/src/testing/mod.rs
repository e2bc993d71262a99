//! Test support (feature `test-support`): a fresh database per test on a throwaway
//! cluster, a recording subscriber, and waiting on conditions with deadlines.

pub mod cluster;
mod subscriber;

use std::future::Future;
use std::hash::{Hash, Hasher};
use std::time::{Duration, Instant};

use sqlx::migrate::Migrator;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};

pub use cluster::pg_binary;
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

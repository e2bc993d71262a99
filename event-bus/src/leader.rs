//! One replica at a time runs the delivery loops: the one holding a session advisory
//! lock on the bus database, on a connection of its own. Every replica accepts
//! publishes; only deliveries need a leader, or each replica would deliver everything.
//!
//! Takeover: the others try for the lock every `RETRY`. A leader that dies drops its
//! connection and PostgreSQL releases the lock at once. A leader cut off from its
//! database notices within `HEARTBEAT` (its heartbeat fails) and stops delivering; its
//! session is idle from then on, and PostgreSQL ends it after `IDLE_SESSION_TIMEOUT`,
//! releasing the lock for another replica. A new term starts from the durable cursors,
//! so nothing is skipped; a batch the old leader had in flight may be delivered again,
//! which consumers skip by seq.

use std::time::Duration;

use service_kit::backoff::Backoff;
use service_kit::db::Database;
use service_kit::error::error_chain;
use service_kit::shutdown::{Shutdown, ShutdownSignal};
use sqlx::{Connection, PgConnection};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// "delivery" in ASCII: the advisory lock key only the bus uses on its database.
const LEADER_LOCK: i64 = 0x0064_656c_6976_6572;
/// How often a follower tries to become the leader.
const RETRY: Duration = Duration::from_millis(500);
/// How often the leader proves it still reaches the database.
const HEARTBEAT: Duration = Duration::from_millis(500);
/// How long a heartbeat may take before the leader gives up its term.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(2);
/// An unreachable leader's session is ended by PostgreSQL after this long idle.
const IDLE_SESSION_TIMEOUT: &str = "3s";

/// Runs `term` (which starts the delivery loops, all watching the signal it is given)
/// whenever this replica leads, and stops it when it no longer does. `leading` tells.
pub fn spawn<F>(
    database: Database,
    replica: String,
    term: F,
    mut signal: ShutdownSignal,
) -> (watch::Receiver<bool>, JoinHandle<()>)
where
    F: Fn(ShutdownSignal) -> Vec<JoinHandle<()>> + Send + 'static,
{
    let (leading, is_leading) = watch::channel(false);
    let task = tokio::spawn(async move {
        if !database.until_schema_ready(&mut signal).await {
            return;
        }
        let mut backoff = Backoff::new(RETRY, Duration::from_secs(5));
        while !signal.is_triggered() {
            let mut conn = match lock_connection(&database).await {
                Ok(conn) => conn,
                Err(error) => {
                    tracing::warn!(error = %error_chain(&error), "leader election: cannot reach the database; retrying");
                    signal.sleep(backoff.next_delay()).await;
                    continue;
                }
            };
            backoff.reset();
            match follow_until_leading(&mut conn, &replica, &mut signal).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(error) => {
                    tracing::warn!(error = %error_chain(&error), "leader election: lost the database; retrying");
                    continue;
                }
            }
            tracing::info!(replica, "leading: this replica runs the delivery loops");
            leading.send_replace(true);
            let this_term = Shutdown::new();
            let loops = term(this_term.signal());
            let ended = lead(&mut conn, &replica, &mut signal).await;
            this_term.trigger();
            for task in loops {
                let _ = task.await;
            }
            leading.send_replace(false);
            match ended {
                Ok(()) => {
                    // Shutting down: hand over at once rather than when the connection
                    // closes.
                    let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
                        .bind(LEADER_LOCK)
                        .execute(&mut conn)
                        .await;
                    let _ = conn.close().await;
                    return;
                }
                Err(error) => {
                    tracing::warn!(replica, error = %error_chain(&error), "no longer leading: the database is out of reach; the delivery loops stopped");
                }
            }
        }
    });
    (is_leading, task)
}

async fn lock_connection(database: &Database) -> Result<PgConnection, sqlx::Error> {
    let options = (*database.pool.connect_options()).clone();
    let mut conn = PgConnection::connect_with(&options).await?;
    sqlx::query(&format!(
        "SET idle_session_timeout = '{IDLE_SESSION_TIMEOUT}'"
    ))
    .execute(&mut conn)
    .await?;
    Ok(conn)
}

/// Tries for the lock until it is ours (true) or shutdown comes (false). Keeps the
/// connection from going idle long enough for PostgreSQL to end it.
async fn follow_until_leading(
    conn: &mut PgConnection,
    replica: &str,
    signal: &mut ShutdownSignal,
) -> Result<bool, sqlx::Error> {
    loop {
        let won: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(LEADER_LOCK)
            .fetch_one(&mut *conn)
            .await?;
        if won {
            sqlx::query(
                "INSERT INTO delivery_leader (singleton, replica, since, heartbeat_at)
                 VALUES (TRUE, $1, now(), now())
                 ON CONFLICT (singleton) DO UPDATE
                 SET replica = EXCLUDED.replica, since = EXCLUDED.since, heartbeat_at = EXCLUDED.heartbeat_at",
            )
            .bind(replica)
            .execute(&mut *conn)
            .await?;
            return Ok(true);
        }
        if signal.sleep(RETRY).await {
            return Ok(false);
        }
    }
}

/// Beats until shutdown (Ok) or until the database is out of reach (Err).
async fn lead(
    conn: &mut PgConnection,
    replica: &str,
    signal: &mut ShutdownSignal,
) -> Result<(), sqlx::Error> {
    loop {
        if signal.sleep(HEARTBEAT).await {
            return Ok(());
        }
        let beat =
            sqlx::query("UPDATE delivery_leader SET heartbeat_at = now() WHERE replica = $1")
                .bind(replica)
                .execute(&mut *conn);
        match tokio::time::timeout(HEARTBEAT_TIMEOUT, beat).await {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => return Err(error),
            Err(_) => {
                return Err(sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "the heartbeat took too long",
                )))
            }
        }
    }
}

/// Who this replica is, in `GET /subscriptions` and the logs: the pod's host name (the
/// pod name in Kubernetes), the process id and a random part that tells restarts apart.
pub fn replica_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "event-bus".into());
    format!("{host}/{}/{:04x}", std::process::id(), fastrand::u16(..))
}

//! Telling every replica of a service what one of them changed, through PostgreSQL's
//! `LISTEN/NOTIFY` on the service's own database. A notification is sent by the
//! transaction that made the change and delivered only if, and once, it commits — in
//! commit order, to every listening connection, the sender's own included — so a replica
//! learns of a change exactly when it became durable, whichever replica applied it.

use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool};
use tokio::task::JoinHandle;

use crate::backoff::Backoff;
use crate::db::Database;
use crate::error::error_chain;
use crate::shutdown::ShutdownSignal;

/// PostgreSQL refuses a payload of 8,000 bytes or more.
pub const MAX_PAYLOAD: usize = 7_999;

/// Sends `payload` on `channel` when the caller's transaction commits.
pub async fn announce(
    conn: &mut PgConnection,
    channel: &str,
    payload: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(channel)
        .bind(payload)
        .execute(conn)
        .await?;
    Ok(())
}

/// What a listener heard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    /// A notification, with its payload.
    Message(String),
    /// The listening connection was (re)established: notifications sent while it was
    /// down are lost, so anything may have changed.
    Missed,
}

/// Listens on `channels` for as long as the service runs, reconnecting with backoff when
/// the database goes away, and hands each notification to `heard` in the order the
/// transactions committed.
pub fn spawn_listener<F>(
    database: Database,
    channels: &'static [&'static str],
    mut signal: ShutdownSignal,
    heard: F,
) -> JoinHandle<()>
where
    F: Fn(&str, Heard) + Send + 'static,
{
    tokio::spawn(async move {
        if !database.until_schema_ready(&mut signal).await {
            return;
        }
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            let listening = tokio::select! {
                listening = listen(&database.pool, channels) => listening,
                _ = signal.triggered() => return,
            };
            let mut listener = match listening {
                Ok(listener) => listener,
                Err(error) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %error_chain(&error), retry_in_ms = delay.as_millis() as u64, "cannot listen for changes made by other replicas; retrying");
                    if signal.sleep(delay).await {
                        return;
                    }
                    continue;
                }
            };
            backoff.reset();
            for channel in channels {
                heard(channel, Heard::Missed);
            }
            loop {
                let next = tokio::select! {
                    next = listener.try_recv() => next,
                    _ = signal.triggered() => return,
                };
                match next {
                    Ok(Some(notification)) => heard(
                        notification.channel(),
                        Heard::Message(notification.payload().to_owned()),
                    ),
                    // Reconnected on its own: what was sent meanwhile is gone.
                    Ok(None) => {
                        for channel in channels {
                            heard(channel, Heard::Missed);
                        }
                    }
                    Err(error) => {
                        tracing::warn!(error = %error_chain(&error), "lost the connection that listens for other replicas' changes");
                        break;
                    }
                }
            }
        }
    })
}

async fn listen(pool: &PgPool, channels: &[&str]) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen_all(channels.iter().copied()).await?;
    Ok(listener)
}

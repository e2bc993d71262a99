//! Group commit: concurrent publishes queue here and one task appends them to the log
//! together, so many small publishes share one transaction (and one fsync) instead of
//! queueing on the log_head lock one by one.

use std::sync::Arc;

use contract::Accepted;
use contract::Publication;
use service_kit::error::DatabaseFailure;
use service_kit::shutdown::ShutdownSignal;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::metrics::BUS;
use crate::store::Store;

/// Publications appended in one transaction at most (a single larger request still goes
/// in whole: a publish is all-or-nothing).
const GROUP_LIMIT: usize = 2_000;

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    /// Shared by every publish of the failed group commit, each answered with the cause.
    #[error(transparent)]
    Database(Arc<sqlx::Error>),
    #[error("the event bus is shutting down")]
    ShuttingDown,
}

struct Job {
    publications: Vec<Publication>,
    reply: oneshot::Sender<Result<Vec<Accepted>, AppendError>>,
}

#[derive(Clone)]
pub struct LogWriter {
    jobs: mpsc::Sender<Job>,
}

impl LogWriter {
    /// Starts the writer task; every commit announces the new head on `head`, which wakes
    /// the delivery loops.
    pub fn spawn(
        store: Store,
        head: Arc<watch::Sender<i64>>,
        signal: ShutdownSignal,
    ) -> (Self, JoinHandle<()>) {
        let (jobs, queue) = mpsc::channel(1024);
        let task = tokio::spawn(run(store, head, queue, signal));
        (Self { jobs }, task)
    }

    /// Appends and returns once the publications are committed.
    pub async fn append(
        &self,
        publications: Vec<Publication>,
    ) -> Result<Vec<Accepted>, AppendError> {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job {
                publications,
                reply,
            })
            .await
            .map_err(|_| AppendError::ShuttingDown)?;
        answer.await.map_err(|_| AppendError::ShuttingDown)?
    }
}

async fn run(
    store: Store,
    head: Arc<watch::Sender<i64>>,
    mut queue: mpsc::Receiver<Job>,
    mut signal: ShutdownSignal,
) {
    loop {
        let first = tokio::select! {
            job = queue.recv() => job,
            _ = signal.triggered() => None,
        };
        let Some(first) = first else {
            break;
        };
        commit_group(&store, &head, first, &mut queue).await;
    }
    // Requests already queued were accepted by the server before it stopped: commit them.
    queue.close();
    while let Some(job) = queue.recv().await {
        commit_group(&store, &head, job, &mut queue).await;
    }
}

async fn commit_group(
    store: &Store,
    head: &watch::Sender<i64>,
    first: Job,
    queue: &mut mpsc::Receiver<Job>,
) {
    let mut total = first.publications.len();
    let mut group = vec![first];
    while total < GROUP_LIMIT {
        match queue.try_recv() {
            Ok(job) => {
                total += job.publications.len();
                group.push(job);
            }
            Err(_) => break,
        }
    }
    let mut sizes = Vec::with_capacity(group.len());
    let mut replies = Vec::with_capacity(group.len());
    let mut publications = Vec::with_capacity(total);
    for job in group {
        sizes.push(job.publications.len());
        replies.push(job.reply);
        publications.extend(job.publications);
    }
    BUS.group_commit.observe(total as f64);
    match append(store, head, &publications).await {
        Ok(accepted) => {
            let mut rest = accepted.into_iter();
            for (size, reply) in sizes.into_iter().zip(replies) {
                let _ = reply.send(Ok(rest.by_ref().take(size).collect()));
            }
        }
        Err(error)
            if replies.len() > 1 && DatabaseFailure::of(&error) != DatabaseFailure::Unavailable =>
        {
            // One publication the database refuses must not fail the others queued with
            // it: each request is appended on its own, and only the bad one fails.
            tracing::warn!(%error, requests = replies.len(), "a group commit was refused; appending its requests one by one");
            let mut rest = publications.into_iter();
            for (size, reply) in sizes.into_iter().zip(replies) {
                let own: Vec<Publication> = rest.by_ref().take(size).collect();
                let result = append(store, head, &own).await;
                let _ = reply.send(result.map_err(|e| {
                    tracing::error!(error = %e, events = size, "appending to the log failed");
                    AppendError::Database(Arc::new(e))
                }));
            }
        }
        Err(error) => {
            tracing::error!(%error, events = total, "appending to the log failed");
            let error = Arc::new(error);
            for reply in replies {
                let _ = reply.send(Err(AppendError::Database(error.clone())));
            }
        }
    }
}

/// Appends, then moves the head past what was appended (and counts it). A failed append
/// may still have committed, and this replica's listener ignored its announcement (see
/// `Store::is_being_committed`): the head is read again.
async fn append(
    store: &Store,
    head: &watch::Sender<i64>,
    publications: &[Publication],
) -> Result<Vec<Accepted>, sqlx::Error> {
    let known_head = *head.borrow();
    let result = store.append(publications, known_head).await;
    match &result {
        Ok(accepted) => {
            let appended = accepted.iter().filter(|a| !a.duplicate).count();
            BUS.appended.inc_by(appended as u64);
            if let Some(last) = accepted.iter().map(|a| a.seq).max() {
                advance_head(head, last);
            }
        }
        Err(_) => {
            if let Ok(seq) = store.head().await {
                advance_head(head, seq);
            }
        }
    }
    result
}

/// Moves `head` forward to `seq`, never back (announcements may arrive out of order with
/// this replica's own commits), waking the delivery loops only when it moved.
pub fn advance_head(head: &watch::Sender<i64>, seq: i64) {
    head.send_if_modified(|current| {
        let moved = seq > *current;
        *current = (*current).max(seq);
        moved
    });
}

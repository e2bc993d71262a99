//! Fan-out: one delivery loop per subscriber, each with a durable cursor. A loop sends
//! the events after its cursor in seq order, in batches, and moves the cursor only when
//! the subscriber acknowledged the batch; on failure it retries the same batch with
//! capped exponential backoff and jitter, forever. Loops share nothing but the log, so a
//! slow or dead subscriber never delays the others or the publishers.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use contract::{json_array, BATCH_BYTES};
use service_kit::backoff::Backoff;
use service_kit::config::Subscriber;
use service_kit::consumer::{Covers, COVERS_HEADER};
use service_kit::error::{error_chain, LOG_DIVERGED};
use service_kit::otlp;
use service_kit::shutdown::ShutdownSignal;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::metrics::{FailureLabels, SubscriberLabels, BUS};
use crate::store::{Store, StoredEvent};

#[derive(Debug, Clone)]
pub struct DeliverySettings {
    pub batch_size: i64,
    pub retry_base: Duration,
    pub retry_cap: Duration,
    pub timeout: Duration,
    pub token: Option<String>,
}

/// Starts one loop per subscriber, each from its durable cursor; returns their tasks.
pub fn spawn_all(
    subscribers: &[Subscriber],
    store: &Store,
    head: &watch::Receiver<i64>,
    settings: &DeliverySettings,
    signal: &ShutdownSignal,
) -> Vec<JoinHandle<()>> {
    let http = service_kit::bus::http_client(settings.timeout);
    subscribers
        .iter()
        .map(|subscriber| {
            let delivery = Delivery {
                subscriber: subscriber.clone(),
                store: store.clone(),
                http: http.clone(),
                settings: settings.clone(),
            };
            tokio::spawn(delivery.run(head.clone(), signal.clone()))
        })
        .collect()
}

/// How long a range of events a subscriber does not take may wait for one it does,
/// before it is delivered on its own (so that its cursor follows the log).
const COVER_UNWANTED_WITHIN: Duration = Duration::from_millis(250);

/// A subscriber's 2xx answer, as far as the bus reads it.
struct Acknowledgement {
    /// The types it takes, if it says.
    wants: Option<Vec<String>>,
    /// The last seq it has applied, if it says (the consumers do; the course's do not).
    cursor: Option<i64>,
}

struct DeliveryFailure {
    message: String,
    /// The subscriber answered that this log diverged from the one it applied.
    diverged: bool,
    /// For the metrics: the subscriber's status, `unreachable` or `diverged`.
    reason: String,
}

struct Delivery {
    subscriber: Subscriber,
    store: Store,
    http: reqwest::Client,
    settings: DeliverySettings,
}

impl Delivery {
    async fn run(self, mut head: watch::Receiver<i64>, mut signal: ShutdownSignal) {
        let mut backoff = Backoff::new(self.settings.retry_base, self.settings.retry_cap);
        let name = self.subscriber.name.as_str();
        let mut cursor = loop {
            match self.store.subscribe(name, &self.subscriber.url).await {
                Ok(cursor) => break cursor,
                Err(error) => {
                    tracing::warn!(subscriber = name, error = %error_chain(&error), "cannot read the subscriber's cursor; retrying");
                    if signal.sleep(backoff.next_delay()).await {
                        return;
                    }
                }
            }
        };
        tracing::info!(subscriber = name, cursor, "delivery loop started");
        // What the subscriber said it takes (never narrowed: during a rollout, replicas
        // of two versions may answer), and the events read after the cursor not yet
        // acknowledged: up to `considered`, of which `pending` are the wanted ones.
        let mut wants: Option<HashSet<String>> = None;
        let mut considered = cursor;
        let mut considered_id = None;
        let mut pending: Vec<StoredEvent> = Vec::new();
        let mut unwanted_since: Option<Instant> = None;
        while !signal.is_triggered() {
            let room = self.settings.batch_size - (considered - cursor);
            // Nothing committed past what was read: no need to ask the database. (The head
            // may lag a commit by its announcement; the announcement then wakes us.)
            let newer = *head.borrow() > considered;
            if pending.is_empty() && room > 0 && newer {
                match self.store.page_after(considered, room, BATCH_BYTES).await {
                    Ok(page) => {
                        for event in page {
                            considered = event.seq;
                            considered_id = Some(event.id);
                            if wants.as_ref().is_none_or(|w| w.contains(&event.kind)) {
                                pending.push(event);
                            }
                        }
                    }
                    Err(error) => {
                        self.failed(&format!("reading the log: {error}")).await;
                        signal.sleep(backoff.next_delay()).await;
                        continue;
                    }
                }
            }
            let Some(through_id) = considered_id.filter(|_| considered > cursor) else {
                // Caught up: sleep until a commit moves the head past our cursor.
                tokio::select! {
                    _ = head.wait_for(|h| *h > cursor) => {}
                    _ = signal.triggered() => {}
                }
                continue;
            };
            if pending.is_empty() && considered - cursor < self.settings.batch_size {
                // Only events this subscriber does not take: no hurry. Their range goes
                // with the next wanted event, or on its own after a while.
                let since = *unwanted_since.get_or_insert_with(Instant::now);
                let left = COVER_UNWANTED_WITHIN.saturating_sub(since.elapsed());
                if !left.is_zero() {
                    tokio::select! {
                        _ = head.wait_for(|h| *h > considered) => {}
                        _ = tokio::time::sleep(left) => {}
                        _ = signal.triggered() => {}
                    }
                    continue;
                }
            }
            let covers = wants.is_some().then_some(Covers {
                from: cursor + 1,
                through: considered,
                through_id,
            });
            let started = Instant::now();
            let sent = tokio::select! {
                result = self.post(&pending, covers) => result,
                // Abandoning the request is safe: the batch is redelivered after restart.
                _ = signal.triggered() => return,
            };
            let labels = SubscriberLabels {
                subscriber: name.to_owned(),
            };
            BUS.delivery_duration
                .get_or_create(&labels)
                .observe(started.elapsed().as_secs_f64());
            match sent {
                Ok(answer) => {
                    BUS.delivered
                        .get_or_create(&labels)
                        .inc_by(pending.len() as u64);
                    let first = cursor + 1;
                    let delivered_through = considered;
                    cursor = considered;
                    backoff.reset();
                    if let Some(answered) = answer.wants {
                        wants.get_or_insert_with(HashSet::new).extend(answered);
                    }
                    // A subscriber already further on (it caught up by reading the log
                    // itself) would be sent everything up to its cursor only to skip it:
                    // go on from there. Never past this log's head: a consumer's 200
                    // means it found its cursor's event in this log.
                    if let Some(ahead) = answer
                        .cursor
                        .map(|c| c.min(*head.borrow()))
                        .filter(|&c| c > considered)
                    {
                        considered = ahead;
                        considered_id = None;
                        cursor = ahead;
                    }
                    if let Err(error) = self.store.acknowledge(name, cursor).await {
                        // Delivered, but not recorded: after a restart this batch is sent
                        // again, which consumers skip by seq.
                        tracing::warn!(subscriber = name, %error, "could not record the cursor");
                    }
                    tracing::info!(
                        subscriber = name,
                        first_seq = first,
                        last_seq = delivered_through,
                        subscriber_cursor = cursor,
                        count = pending.len(),
                        latency_ms = started.elapsed().as_secs_f64() * 1000.0,
                        "delivered"
                    );
                    pending.clear();
                    unwanted_since = None;
                }
                Err(failure) => {
                    BUS.delivery_failures
                        .get_or_create(&FailureLabels {
                            subscriber: labels.subscriber,
                            reason: failure.reason.clone(),
                        })
                        .inc();
                    let delay = backoff.next_delay();
                    self.failed(&failure.message).await;
                    let error = failure.message.as_str();
                    let first = cursor + 1;
                    if failure.diverged {
                        self.diverged(first, error).await;
                    } else {
                        tracing::warn!(
                            subscriber = name,
                            first_seq = first,
                            error,
                            retry_in_ms = delay.as_millis() as u64,
                            "delivery failed"
                        );
                    }
                    signal.sleep(delay).await;
                }
            }
        }
    }

    /// Sends `batch` (all of `covers` that the subscriber takes, when it said which);
    /// on success, what the subscriber said of itself.
    async fn post(
        &self,
        batch: &[StoredEvent],
        covers: Option<Covers>,
    ) -> Result<Acknowledgement, DeliveryFailure> {
        let body = json_array(batch.iter().map(|e| e.envelope.as_str()));
        let (span, traceparent) = otlp::call_span("deliver", &body);
        span.record("peer", self.subscriber.name.as_str());
        let mut request = self
            .http
            .post(&self.subscriber.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(traceparent) = traceparent {
            request = request.header("traceparent", traceparent);
        }
        if let Some(covers) = covers {
            request = request.header(COVERS_HEADER, covers.header_value());
        }
        if let Some(token) = &self.settings.token {
            request = request.bearer_auth(token);
        }
        let response = tracing::Instrument::instrument(request.send(), span)
            .await
            .map_err(|e| DeliveryFailure {
                message: error_chain(&e),
                diverged: false,
                reason: "unreachable".to_owned(),
            })?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let answer = serde_json::from_str::<serde_json::Value>(&text).ok();
        if status.is_success() {
            // A subscriber that does not say (the course's services) gets everything.
            return Ok(Acknowledgement {
                wants: answer
                    .as_ref()
                    .and_then(|a| serde_json::from_value(a["wants"].clone()).ok()),
                cursor: answer.as_ref().and_then(|a| a["cursor"].as_i64()),
            });
        }
        let code = answer.and_then(|body| body["error"]["code"].as_str().map(str::to_owned));
        let diverged =
            status == reqwest::StatusCode::CONFLICT && code.as_deref() == Some(LOG_DIVERGED);
        Err(DeliveryFailure {
            message: format!(
                "{} answered {status}: {}",
                self.subscriber.url,
                text.chars().take(500).collect::<String>()
            ),
            diverged,
            reason: if diverged {
                "diverged".to_owned()
            } else {
                status.as_u16().to_string()
            },
        })
    }

    /// The subscriber refuses this log: it applied other events at these seqs. Retrying
    /// is right (it takes deliveries again once an operator resyncs it), but said loudly.
    async fn diverged(&self, first_seq: i64, error: &str) {
        let first_time = self
            .store
            .record_divergence(&self.subscriber.name, error)
            .await
            .unwrap_or(true);
        if first_time {
            tracing::error!(
                subscriber = self.subscriber.name.as_str(),
                first_seq,
                error,
                "the subscriber refuses this log as not the one it applied: this bus's database was restored or recreated, and its seqs are reused; see docs/operations.md (resync)"
            );
        }
    }

    /// Recorded for `GET /subscriptions`; a database too far away to record it in is
    /// logged by the loop anyway.
    async fn failed(&self, error: &str) {
        let _ = self
            .store
            .record_failure(&self.subscriber.name, error)
            .await;
    }
}

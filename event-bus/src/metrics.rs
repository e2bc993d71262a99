//! The bus's own metrics: the log (head, appends, group commits), each subscriber's
//! cursor, lag and deliveries, and whether this replica leads.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use service_kit::metrics::{latencies, register, register_seconds, size_histogram, Latencies};

use crate::store::Store;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SubscriberLabels {
    pub subscriber: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FailureLabels {
    pub subscriber: String,
    /// The subscriber's HTTP status, `unreachable`, or `diverged` (it refuses this log).
    pub reason: String,
}

pub struct BusMetrics {
    pub head: Gauge,
    pub appended: Counter,
    pub group_commit: Histogram,
    pub leading: Gauge,
    pub cursor: Family<SubscriberLabels, Gauge>,
    pub lag: Family<SubscriberLabels, Gauge>,
    pub diverged: Family<SubscriberLabels, Gauge>,
    pub delivered: Family<SubscriberLabels, Counter>,
    pub delivery_duration: Latencies<SubscriberLabels>,
    pub delivery_failures: Family<FailureLabels, Counter>,
}

pub static BUS: LazyLock<BusMetrics> = LazyLock::new(|| BusMetrics {
    head: register(
        "bus_head_seq",
        "The seq of the newest event in the log",
        Gauge::default(),
    ),
    appended: register(
        "bus_events_appended",
        "Events this replica appended to the log (a republished id is not appended again)",
        Counter::default(),
    ),
    group_commit: register(
        "bus_group_commit_publications",
        "Publications committed together in one group commit of this replica",
        size_histogram(),
    ),
    leading: register(
        "bus_leader",
        "1 while this replica leads (runs the delivery loops), else 0",
        Gauge::default(),
    ),
    cursor: register(
        "bus_subscriber_cursor_seq",
        "The seq of the last event each subscriber acknowledged",
        Family::default(),
    ),
    lag: register(
        "bus_subscriber_lag_events",
        "Events in the log past each subscriber's cursor",
        Family::default(),
    ),
    diverged: register(
        "bus_subscriber_diverged",
        "1 while a subscriber refuses this log as not the one it applied (resync it), else 0",
        Family::default(),
    ),
    delivered: register(
        "bus_delivered_events",
        "Events delivered and acknowledged, per subscriber (by this replica, while it leads)",
        Family::default(),
    ),
    delivery_duration: register_seconds(
        "bus_delivery_duration",
        "Time for a subscriber to answer one delivery",
        latencies(),
    ),
    delivery_failures: register(
        "bus_delivery_failures",
        "Deliveries that failed, per subscriber and reason",
        Family::default(),
    ),
});

impl BusMetrics {
    /// What a scrape reads from the database, so that every replica tells the same.
    pub async fn read(&self, store: &Store, subscribers: &[String]) -> Result<(), sqlx::Error> {
        let head = store.head().await?;
        self.head.set(head);
        for subscription in store.subscriptions(subscribers).await? {
            let labels = SubscriberLabels {
                subscriber: subscription.name.clone(),
            };
            self.cursor.get_or_create(&labels).set(subscription.cursor);
            self.lag
                .get_or_create(&labels)
                .set(head - subscription.cursor);
            self.diverged
                .get_or_create(&labels)
                .set(i64::from(subscription.diverged.is_some()));
        }
        Ok(())
    }
}

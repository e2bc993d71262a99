//! `GET /metrics` on every service: what the process counts as it works (requests,
//! events applied, publishes) and what is read when it is scraped (the pool, the
//! outbox's backlog, a consumer's cursor, the bus's head and lags).
//!
//! One registry per process, since a process is one service. Each family is registered
//! the first time its static is touched; a service touches the ones it has at start-up,
//! so a scrape shows them at zero before anything happened. Labels stay bounded: routes
//! are templates, event types are the contract's (anything else is `other`).

use std::future::Future;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use actix_web::http::{header, Method};
use actix_web::{web, HttpRequest, HttpResponse};
use futures_util::future::{join_all, BoxFuture};
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry, Unit};

use crate::server::Readiness;

static REGISTRY: LazyLock<Mutex<Registry>> = LazyLock::new(Default::default);

/// Registers `metric` as `name` (a counter gets `_total` appended) and hands it back.
pub fn register<M: Metric + Clone>(name: &str, help: &str, metric: M) -> M {
    if let Ok(mut registry) = REGISTRY.lock() {
        registry.register(name, help, metric.clone());
    }
    metric
}

/// As `register`, for a metric measured in seconds (`_seconds` appended).
pub fn register_seconds<M: Metric + Clone>(name: &str, help: &str, metric: M) -> M {
    if let Ok(mut registry) = REGISTRY.lock() {
        registry.register_with_unit(name, help, Unit::Seconds, metric.clone());
    }
    metric
}

/// From half a millisecond (a request served from memory) to ten seconds (a timeout).
const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

pub fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// Latency histograms by label set.
pub type Latencies<L> = Family<L, Histogram, fn() -> Histogram>;

pub fn latencies<L: Clone + std::hash::Hash + Eq>() -> Latencies<L> {
    Family::new_with_constructor(latency_histogram)
}

/// How many of something went together (events in a group commit, in a delivery).
pub fn size_histogram() -> Histogram {
    Histogram::new([
        1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0,
    ])
}

/// What a scrape reads before it answers (a row count, a cursor): each is given a
/// second, and one that fails leaves its gauges as they were.
#[derive(Clone, Default)]
pub struct Readings(Vec<Reading>);

type Reading = Arc<dyn Fn() -> BoxFuture<'static, Result<(), sqlx::Error>> + Send + Sync>;

const READING_TIMEOUT: Duration = Duration::from_secs(1);

impl Readings {
    /// Adds `read`, which is handed its own copy of `state` at each scrape.
    pub fn add<S, F, Fut>(&mut self, state: S, read: F)
    where
        S: Clone + Send + Sync + 'static,
        F: Fn(S) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), sqlx::Error>> + Send + 'static,
    {
        self.0.push(Arc::new(move || Box::pin(read(state.clone()))));
    }

    async fn read_all(&self) {
        let readings = self.0.iter().map(|read| async move {
            match tokio::time::timeout(READING_TIMEOUT, read()).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::debug!(%error, "a metrics reading failed"),
                Err(_) => tracing::debug!("a metrics reading timed out"),
            }
        });
        join_all(readings).await;
    }
}

/// `GET /metrics`, registered by the server on every service and never routed by the
/// ingress. Prometheus asks for OpenMetrics and gets it; anyone else (curl, promtool)
/// gets the classic text format.
pub async fn endpoint(
    request: HttpRequest,
    readiness: web::Data<Readiness>,
    readings: web::Data<Readings>,
) -> HttpResponse {
    let database = readiness.database_handle();
    POOL.read(&database.pool);
    if database.schema_ready() {
        readings.read_all().await;
    }
    let mut openmetrics = String::new();
    if let Ok(registry) = REGISTRY.lock() {
        if let Err(error) = encode(&mut openmetrics, &registry) {
            tracing::error!(%error, "encoding the metrics failed");
            return HttpResponse::InternalServerError().finish();
        }
    }
    let wants_openmetrics = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|accept| accept.to_str().ok())
        .is_some_and(|accept| accept.contains("application/openmetrics-text"));
    if wants_openmetrics {
        HttpResponse::Ok()
            .content_type("application/openmetrics-text; version=1.0.0; charset=utf-8")
            .body(openmetrics)
    } else {
        HttpResponse::Ok()
            .content_type("text/plain; version=0.0.4; charset=utf-8")
            .body(classic_text(&openmetrics))
    }
}

/// The OpenMetrics text as the classic Prometheus format (0.0.4) reads it: a counter's
/// family is named with its `_total`, and there are no `# UNIT` or `# EOF` lines.
fn classic_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let described = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|prefix| line.strip_prefix(prefix).map(|rest| (prefix, rest)));
        match described {
            Some((prefix, rest)) => {
                let (name, description) = rest.split_once(' ').unwrap_or((rest, ""));
                let total = if counters.contains(name) {
                    "_total"
                } else {
                    ""
                };
                text.push_str(&format!("{prefix}{name}{total} {description}\n"));
            }
            None => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    text
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub method: &'static str,
    pub route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AnsweredLabels {
    pub method: &'static str,
    pub route: String,
    pub status: u16,
}

pub struct HttpMetrics {
    requests: Family<AnsweredLabels, Counter>,
    duration: Latencies<RouteLabels>,
}

pub static HTTP: LazyLock<HttpMetrics> = LazyLock::new(|| HttpMetrics {
    requests: register(
        "http_requests",
        "HTTP requests answered, by route template and status",
        Family::default(),
    ),
    duration: register_seconds(
        "http_request_duration",
        "Time to answer an HTTP request (to its first byte, for a stream), by route template",
        latencies(),
    ),
});

impl HttpMetrics {
    /// `route` is the matched route's template; a request no route matched is
    /// `unmatched`, whatever its path, so that scanners cannot grow the label set.
    pub fn answered(&self, method: &Method, route: Option<&str>, status: u16, took: Duration) {
        let method = bounded_method(method);
        let route = route.unwrap_or("unmatched").to_owned();
        self.duration
            .get_or_create(&RouteLabels {
                method,
                route: route.clone(),
            })
            .observe(took.as_secs_f64());
        self.requests
            .get_or_create(&AnsweredLabels {
                method,
                route,
                status,
            })
            .inc();
    }
}

fn bounded_method(method: &Method) -> &'static str {
    [
        Method::GET,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::HEAD,
        Method::OPTIONS,
    ]
    .iter()
    .find(|known| *known == method)
    .map_or("other", |known| known.as_str())
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

pub struct PoolMetrics {
    connections: Family<StateLabels, Gauge>,
    max: Gauge,
}

pub static POOL: LazyLock<PoolMetrics> = LazyLock::new(|| PoolMetrics {
    connections: register(
        "db_pool_connections",
        "Connections the service's database pool holds, in use or idle",
        Family::default(),
    ),
    max: register(
        "db_pool_max_connections",
        "The most connections the pool opens; past it, queries wait for one",
        Gauge::default(),
    ),
});

impl PoolMetrics {
    fn read(&self, pool: &sqlx::PgPool) {
        let (open, idle) = (pool.size(), pool.num_idle() as u32);
        for (state, count) in [("in_use", open.saturating_sub(idle)), ("idle", idle)] {
            self.connections
                .get_or_create(&StateLabels { state })
                .set(i64::from(count));
        }
        self.max
            .set(i64::from(pool.options().get_max_connections()));
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabels {
    /// The bus's HTTP status, or `unreachable` when it gave none.
    pub status: String,
}

/// A producer's outbox and its relay.
pub struct OutboxMetrics {
    pub pending: Gauge,
    pub published: Counter,
    pub publish_duration: Histogram,
    pub failures: Family<StatusLabels, Counter>,
}

pub static OUTBOX: LazyLock<OutboxMetrics> = LazyLock::new(|| {
    OutboxMetrics {
    pending: register(
        "outbox_pending_events",
        "Events committed to the outbox and not yet accepted by the bus",
        Gauge::default(),
    ),
    published: register(
        "outbox_published_events",
        "Events the relay published and the bus accepted",
        Counter::default(),
    ),
    publish_duration: register_seconds(
        "outbox_publish_duration",
        "Time for the bus to answer one publish of the relay",
        latency_histogram(),
    ),
    failures: register(
        "outbox_publish_failures",
        "Publishes of the relay that failed, by the bus's status (4xx: refused, fix the configuration)",
        Family::default(),
    ),
}
});

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// One of the contract's types, or `other`.
    pub r#type: &'static str,
    /// `applied`, `skipped` (already applied, or a type this service does not take) or
    /// `parked`.
    pub outcome: &'static str,
}

/// A consumer: what it applied, and where its cursor stands.
pub struct ConsumerMetrics {
    pub events: Family<EventLabels, Counter>,
    pub apply_duration: Histogram,
    pub cursor: Gauge,
    pub catch_up_goal: Gauge,
    pub caught_up: Gauge,
    pub parked: Gauge,
}

pub static CONSUMER: LazyLock<ConsumerMetrics> = LazyLock::new(|| {
    ConsumerMetrics {
    events: register(
        "consumer_events",
        "Events delivered to this service, by type and outcome",
        Family::default(),
    ),
    apply_duration: register_seconds(
        "consumer_apply_duration",
        "Time to apply one delivery (or one catch-up page) and commit it",
        latency_histogram(),
    ),
    cursor: register(
        "consumer_cursor_seq",
        "The seq of the last event this service applied (shared by its replicas)",
        Gauge::default(),
    ),
    catch_up_goal: register(
        "consumer_catch_up_goal_seq",
        "The bus's head when this replica's last catch-up began: it is ready once its cursor reaches it",
        Gauge::default(),
    ),
    caught_up: register(
        "consumer_caught_up",
        "1 once this replica caught up with the bus after starting, else 0",
        Gauge::default(),
    ),
    parked: register(
        "consumer_parked_events",
        "Events this service could not apply and set aside (GET /parked lists them)",
        Gauge::default(),
    ),
}
});

/// An envelope's `type` as a label: one of the contract's types, or `other`.
pub fn event_type(kind: &str) -> &'static str {
    contract::Event::known_kind(kind).unwrap_or("other")
}

impl ConsumerMetrics {
    /// Counts `events` events of the label `r#type` (`event_type`) with `outcome`.
    pub fn count(&self, r#type: &'static str, outcome: &'static str, events: u64) {
        self.events
            .get_or_create(&EventLabels { r#type, outcome })
            .inc_by(events);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_classic_text_names_a_counter_family_by_its_total_and_drops_what_it_lacks() {
        let openmetrics = "# HELP demo_requests Requests.\n# TYPE demo_requests counter\n\
            demo_requests_total{route=\"/a\"} 3\n# HELP demo_wait_seconds Wait.\n\
            # TYPE demo_wait_seconds histogram\n# UNIT demo_wait_seconds seconds\n\
            demo_wait_seconds_sum 0.5\ndemo_wait_seconds_count 1\n\
            demo_wait_seconds_bucket{le=\"+Inf\"} 1\n# HELP demo_head Head.\n\
            # TYPE demo_head gauge\ndemo_head 7\n# EOF\n";
        assert_eq!(
            classic_text(openmetrics),
            "# HELP demo_requests_total Requests.\n# TYPE demo_requests_total counter\n\
            demo_requests_total{route=\"/a\"} 3\n# HELP demo_wait_seconds Wait.\n\
            # TYPE demo_wait_seconds histogram\n\
            demo_wait_seconds_sum 0.5\ndemo_wait_seconds_count 1\n\
            demo_wait_seconds_bucket{le=\"+Inf\"} 1\n# HELP demo_head Head.\n\
            # TYPE demo_head gauge\ndemo_head 7\n"
        );
    }

    #[test]
    fn methods_outside_the_standard_ones_share_one_label() {
        assert_eq!(bounded_method(&Method::GET), "GET");
        assert_eq!(
            bounded_method(&Method::from_bytes(b"BREW").unwrap_or(Method::TRACE)),
            "other"
        );
    }

    #[test]
    fn event_types_outside_the_contract_share_one_label() {
        CONSUMER.count(event_type("PostCreated"), "applied", 1);
        CONSUMER.count(event_type("SomethingNew"), "skipped", 1);
        let labels = |r#type, outcome| EventLabels { r#type, outcome };
        assert!(CONSUMER
            .events
            .get(&labels("PostCreated", "applied"))
            .is_some());
        assert!(CONSUMER.events.get(&labels("other", "skipped")).is_some());
    }
}

//! query's own metrics: who watches the live stream, and how often a page of the view
//! is served from the cache.

use std::sync::LazyLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use service_kit::metrics::register;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LookupLabels {
    /// `hit` (served as rendered before) or `miss` (rendered now).
    pub result: &'static str,
}

pub struct QueryMetrics {
    pub stream_clients: Gauge,
    pub cache_lookups: Family<LookupLabels, Counter>,
}

pub static QUERY: LazyLock<QueryMetrics> = LazyLock::new(|| QueryMetrics {
    stream_clients: register(
        "query_live_stream_clients",
        "Live streams (GET /posts/stream) open on this replica",
        Gauge::default(),
    ),
    cache_lookups: register(
        "query_view_cache_lookups",
        "Pages of the view asked for, served from the cache (hit) or rendered (miss)",
        Family::default(),
    ),
});

impl QueryMetrics {
    pub fn looked_up(&self, result: &'static str) {
        self.cache_lookups
            .get_or_create(&LookupLabels { result })
            .inc();
    }
}

/// Counts an open live stream for as long as it is held.
pub struct StreamClient(());

impl StreamClient {
    pub fn connected() -> Self {
        QUERY.stream_clients.inc();
        Self(())
    }
}

impl Drop for StreamClient {
    fn drop(&mut self) {
        QUERY.stream_clients.dec();
    }
}

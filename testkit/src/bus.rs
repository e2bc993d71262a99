//! Starting the real bus app on port 0 against a fresh database, and publishing to it.

use std::time::Duration;

use crate::{init_test_logging, RecordingSubscriber, RunningApp, TestDatabase};
use contract::Accepted;
use contract::Publication;
use serde_json::json;
use service_kit::bus::BusClient;
use service_kit::config::Env;

pub struct RunningBus {
    pub port: u16,
    app: RunningApp,
}

impl RunningBus {
    pub fn url(&self) -> String {
        self.app.url.clone()
    }

    pub fn client(&self) -> BusClient {
        BusClient::new(&self.url(), None)
    }

    /// Graceful stop, as SIGTERM: in-flight publishes finish, loops stop.
    pub async fn stop(self) {
        self.app.stop().await;
    }
}

pub async fn test_db() -> TestDatabase {
    init_test_logging();
    TestDatabase::new(&event_bus::MIGRATOR).await
}

pub struct BusOptions<'a> {
    pub subscribers: Vec<(&'a str, String)>,
    pub token: Option<&'a str>,
    pub batch_size: usize,
    pub port: u16,
}

impl Default for BusOptions<'_> {
    fn default() -> Self {
        Self {
            subscribers: Vec::new(),
            token: None,
            batch_size: 100,
            port: 0,
        }
    }
}

/// A bus on `db` delivering to `subscriber` alone (named `sub`), otherwise as by default.
pub async fn start_bus_for(db: &TestDatabase, subscriber: &RecordingSubscriber) -> RunningBus {
    start_bus(
        db,
        BusOptions {
            subscribers: vec![("sub", subscriber.url())],
            ..BusOptions::default()
        },
    )
    .await
}

pub async fn start_bus(db: &TestDatabase, options: BusOptions<'_>) -> RunningBus {
    let subscribers = options
        .subscribers
        .iter()
        .map(|(name, url)| format!("{name}={url}"))
        .collect::<Vec<_>>()
        .join(",");
    let port = options.port.to_string();
    let batch = options.batch_size.to_string();
    let env = Env::from_pairs([
        ("PORT", port.as_str()),
        ("DATABASE_URL", db.url.as_str()),
        ("EVENT_BUS_SUBSCRIBERS", subscribers.as_str()),
        ("EVENT_BUS_TOKEN", options.token.unwrap_or("")),
        ("EVENT_BUS_BATCH_SIZE", batch.as_str()),
        // Short retries keep recovery tests quick; production defaults to 5 s.
        ("EVENT_BUS_RETRY_MAX_MS", "200"),
    ]);
    let config = event_bus::BusConfig::from_env(&env).expect("bus config");
    let app = event_bus::build(config).await.expect("bus starts");
    RunningBus {
        port: app.port(),
        app: RunningApp::serve(app).await,
    }
}

pub fn numbered(n: usize) -> Publication {
    serde_json::from_value(json!({
        "id": uuid::Uuid::now_v7(),
        "type": "Numbered",
        "data": { "n": n },
        "source": "test",
    }))
    .expect("publication")
}

/// Publishes, retrying while the bus is unreachable (ids make the retry idempotent).
pub async fn publish_until_accepted(client: &BusClient, batch: &[Publication]) -> Vec<Accepted> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match client.publish(batch).await {
            Ok(accepted) => return accepted,
            Err(error) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "bus never accepted: {error}"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

pub async fn whole_log(bus: &RunningBus) -> Vec<serde_json::Value> {
    reqwest::get(format!("{}/events", bus.url()))
        .await
        .expect("GET /events")
        .json()
        .await
        .expect("log is a JSON array")
}

/// Asserts `seqs` is exactly 1..=n in order.
pub fn assert_in_order_once(seqs: &[i64], n: usize, who: &str) {
    let expected: Vec<i64> = (1..=n as i64).collect();
    assert_eq!(
        seqs.len(),
        n,
        "{who} received {} events, expected {n}",
        seqs.len()
    );
    assert!(
        seqs == expected.as_slice(),
        "{who} received events out of order or twice"
    );
}

//! A service under test: built from the environment a deployment would give it, served
//! on port 0 as `main` serves it, spoken to over HTTP, and stopped as SIGTERM stops it.

use std::future::Future;
use std::time::Duration;

use serde_json::Value;
use tokio::task::JoinHandle;

use super::TestDatabase;
use contract::Envelope;
use harness::postgres::free_port;
use service_kit::config::{ConfigError, Env};
use service_kit::server::{Application, StartError, StopHandle};

/// A request that hangs must fail the test with a reason, not hang it.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What a deployment gives a service: port 0 (so tests never collide), its database and
/// its bus.
pub fn service_env(db: &TestDatabase, event_bus_url: &str) -> Env {
    service_env_with(db, event_bus_url, [])
}

/// `service_env` plus the service's own variables.
pub fn service_env_with<'a>(
    db: &'a TestDatabase,
    event_bus_url: &'a str,
    more: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Env {
    Env::from_pairs(
        [
            ("PORT", "0"),
            ("DATABASE_URL", db.url.as_str()),
            ("EVENT_BUS_URL", event_bus_url),
        ]
        .into_iter()
        .chain(more),
    )
}

/// A bus nobody listens on: a relay keeps every outbox row (so tests see what was
/// written), and a consumer fed gap-free batches never needs to read from it.
pub fn unreachable_bus_url() -> String {
    format!(
        "http://127.0.0.1:{}",
        free_port().expect("find a free port for the unreachable bus")
    )
}

/// A built service, serving until `stop`.
pub struct RunningApp {
    pub url: String,
    client: reqwest::Client,
    stop: StopHandle,
    task: JoinHandle<std::io::Result<()>>,
}

impl RunningApp {
    /// Reads the service's configuration from `env` and builds and serves it, as its
    /// `main` does (`read_config` and `build` are the service's own).
    pub async fn start<C, Fut>(
        env: &Env,
        read_config: impl FnOnce(&Env) -> Result<C, ConfigError>,
        build: impl FnOnce(C) -> Fut,
    ) -> Self
    where
        Fut: Future<Output = Result<Application, StartError>>,
    {
        let config = read_config(env).unwrap_or_else(|error| panic!("configuration: {error}"));
        let app = build(config).await.unwrap_or_else(|error| {
            panic!("start-up: {}", service_kit::error::error_chain(&error))
        });
        Self::serve(app).await
    }

    /// Serves `app`, which must have bound its port already (as `build` does), once its
    /// schema is up to date (until then it answers only health checks).
    pub async fn serve(app: Application) -> Self {
        tokio::time::timeout(REQUEST_TIMEOUT, app.started())
            .await
            .expect("the schema was not brought up to date in time");
        let url = format!("http://127.0.0.1:{}", app.port());
        let stop = app.stop_handle();
        let task = tokio::spawn(app.run_until_stopped());
        let client = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .expect("build the test HTTP client");
        Self {
            url,
            client,
            stop,
            task,
        }
    }

    /// Waits until `/readyz` answers 200 (a consumer has caught up), failing the test
    /// after `deadline`.
    pub async fn wait_ready(&self, deadline: Duration) {
        let url = format!("{}/readyz", self.url);
        harness::process::wait_until_ready(&url, deadline)
            .await
            .unwrap_or_else(|error| panic!("{error}"));
    }

    /// Stops as SIGTERM does and waits until the app has shut down, which must be clean.
    pub async fn stop(self) {
        self.stop.stop();
        self.task
            .await
            .expect("the app's task panicked")
            .expect("the app shut down with an error");
    }

    /// `POST path` with `body` sent as it is (so tests can send malformed JSON), labelled
    /// `application/json`: the status and the JSON answer.
    pub async fn post_json(&self, path: &str, body: &str) -> (u16, Value) {
        let request = self
            .client
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .body(body.to_owned());
        answer(request, &format!("POST {path}")).await
    }

    /// `GET path`: the status and the JSON answer.
    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let request = self.client.get(format!("{}{path}", self.url));
        answer(request, &format!("GET {path}")).await
    }

    /// Delivers `batch` to `POST /events` as the bus does; the app must accept it (200).
    /// Returns its answer, the consumer's outcome.
    pub async fn deliver(&self, batch: &[Envelope]) -> Value {
        let body = serde_json::to_string(batch).expect("envelopes serialize");
        let (status, outcome) = self.post_json("/events", &body).await;
        assert_eq!(status, 200, "delivery refused: {outcome}");
        outcome
    }
}

async fn answer(request: reqwest::RequestBuilder, what: &str) -> (u16, Value) {
    let response = request
        .send()
        .await
        .unwrap_or_else(|error| panic!("{what}: {error}"));
    let status = response.status().as_u16();
    let text = response
        .text()
        .await
        .unwrap_or_else(|error| panic!("{what}: reading the answer: {error}"));
    let json = serde_json::from_str(&text).unwrap_or_else(|error| {
        panic!("{what}: answered {status} with a body that is not JSON ({error}): {text:?}")
    });
    (status, json)
}

//! Every real service's `GET /metrics`: the Prometheus text format that `promtool check
//! metrics` accepts, OpenMetrics for Prometheus itself, and counters that move exactly as
//! the traffic says.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use systemtests::{http, Microblog};
use testkit::eventually;

const WAIT: Duration = Duration::from_secs(30);
const SERVICES: [&str; 5] = ["event-bus", "posts", "comments", "moderation", "query"];

async fn scrape(url: &str) -> String {
    let response = http().get(format!("{url}/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200, "{url}/metrics");
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    response.text().await.unwrap()
}

/// The sum of the samples `name` whose labels include every one of `labels`; 0 when
/// there is none yet (a counter not incremented since start).
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let wanted: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    let values: Vec<f64> = text
        .lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let mine = series_labels.split(',').collect::<Vec<_>>();
            (series_name == name && wanted.iter().all(|w| mine.contains(&w.as_str())))
                .then(|| value.parse().unwrap())
        })
        .collect();
    values.iter().sum()
}

fn promtool_check(service: &str, text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|error| {
            panic!("promtool (Debian's prometheus package; scripts/test installs it): {error}")
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics on {service}: {}{}\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_serves_metrics_promtool_accepts_and_its_counters_follow_the_traffic() {
    let stack = Microblog::start().await;
    let applied_posts = |text: &str| {
        sample(
            text,
            "consumer_events_total",
            &[("type", "PostCreated"), ("outcome", "applied")],
        )
    };
    let created = |text: &str| {
        sample(
            text,
            "http_requests_total",
            &[
                ("method", "POST"),
                ("route", "/posts/create"),
                ("status", "201"),
            ],
        )
    };
    let query_before = scrape(&stack.url("query")).await;
    let posts_before = scrape(&stack.url("posts")).await;
    let bus_before = scrape(&stack.url("event-bus")).await;

    let mut ids = Vec::new();
    for n in 0..10 {
        let post = stack.create_post(&format!("counted {n}")).await;
        ids.push(post["id"].as_str().unwrap().to_owned());
    }
    eventually(WAIT, "the ten posts in the view", || async {
        let view = stack.view().await;
        ids.iter().all(|id| view.get(id).is_some())
    })
    .await;
    // The view shows a post once its delivery committed; the counter moves just after.
    eventually(WAIT, "query counted the ten PostCreated", || async {
        applied_posts(&scrape(&stack.url("query")).await) >= applied_posts(&query_before) + 10.0
    })
    .await;
    let query_after = scrape(&stack.url("query")).await;
    assert_eq!(
        applied_posts(&query_after) - applied_posts(&query_before),
        10.0,
        "exactly the ten posts:\n{query_after}"
    );
    assert!(
        sample(
            &query_after,
            "query_view_cache_lookups_total",
            &[("result", "miss")]
        ) >= 1.0,
        "the view was rendered for the polls:\n{query_after}"
    );

    let posts_after = scrape(&stack.url("posts")).await;
    assert_eq!(created(&posts_after) - created(&posts_before), 10.0);
    eventually(WAIT, "posts' relay published the ten", || async {
        let text = scrape(&stack.url("posts")).await;
        sample(&text, "outbox_published_events_total", &[])
            - sample(&posts_before, "outbox_published_events_total", &[])
            >= 10.0
            && sample(&text, "outbox_pending_events", &[]) == 0.0
    })
    .await;
    let bus_after = scrape(&stack.url("event-bus")).await;
    assert!(
        sample(&bus_after, "bus_events_appended_total", &[])
            - sample(&bus_before, "bus_events_appended_total", &[])
            >= 10.0
    );
    assert_eq!(sample(&bus_after, "bus_leader", &[]), 1.0);
    let head = stack
        .get_json(&format!("{}/subscriptions", stack.url("event-bus")))
        .await["head"]
        .as_i64()
        .unwrap();
    assert!(sample(&bus_after, "bus_head_seq", &[]) >= head as f64);

    for service in SERVICES {
        let text = scrape(&stack.url(service)).await;
        promtool_check(service, &text);
        for family in [
            "http_requests_total",
            "http_request_duration_seconds_bucket",
            "db_pool_max_connections",
        ] {
            assert!(text.contains(family), "{service} has {family}:\n{text}");
        }
        // Prometheus asks for OpenMetrics.
        let response = http()
            .get(format!("{}/metrics", stack.url(service)))
            .header(
                "accept",
                "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5",
            )
            .send()
            .await
            .unwrap();
        assert!(response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text"));
        assert!(response.text().await.unwrap().ends_with("# EOF\n"));
    }
    let query = scrape(&stack.url("query")).await;
    assert_eq!(sample(&query, "consumer_caught_up", &[]), 1.0);
    assert_eq!(sample(&query, "consumer_parked_events", &[]), 0.0);
    assert!(sample(&query, "consumer_cursor_seq", &[]) >= 10.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_subscriber_shows_in_the_bus_metrics_as_a_growing_lag() {
    let mut stack = Microblog::start().await;
    let bus = stack.url("event-bus");
    let lag = |text: &str| {
        sample(
            text,
            "bus_subscriber_lag_events",
            &[("subscriber", "query")],
        )
    };
    let post = stack.create_post("before the stop").await;
    let id = post["id"].as_str().unwrap().to_owned();
    eventually(WAIT, "the post in the view", || async {
        stack.view().await.get(&id).is_some()
    })
    .await;
    eventually(WAIT, "query caught up", || async {
        lag(&scrape(&bus).await) == 0.0
    })
    .await;

    stack.stop("query").await;
    for n in 0..5 {
        stack.create_post(&format!("unseen {n}")).await;
    }
    eventually(WAIT, "a lag of 5 for query", || async {
        lag(&scrape(&bus).await) == 5.0
    })
    .await;
    for n in 0..3 {
        stack.create_post(&format!("unseen later {n}")).await;
    }
    eventually(WAIT, "a lag of 8 for query", || async {
        lag(&scrape(&bus).await) == 8.0
    })
    .await;
    let text = scrape(&bus).await;
    assert!(
        sample(
            &text,
            "bus_delivery_failures_total",
            &[("subscriber", "query")]
        ) >= 1.0,
        "{text}"
    );
    // The others took every post.
    for subscriber in ["comments", "moderation"] {
        eventually(WAIT, &format!("no lag for {subscriber}"), || async {
            sample(
                &scrape(&bus).await,
                "bus_subscriber_lag_events",
                &[("subscriber", subscriber)],
            ) == 0.0
        })
        .await;
    }
}

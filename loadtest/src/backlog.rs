//! `loadtest backlog`: the bus's memory while it delivers a backlog of large events —
//! 1,000 events of almost 1 MiB each (the largest publish it takes) stored while their
//! subscriber is down, then delivered when it comes back. The figure to hold against is
//! the pod's memory limit (128 MiB): deliveries and pages are cut by bytes, so the bus
//! never holds more than a few of them at once.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::bus::start_sink_on;
use crate::stack::{rss_mib, Error, World};

const EVENTS: usize = 1_000;

pub async fn run() -> Result<(), Error> {
    // The subscriber's port is chosen now and nothing listens on it until later.
    let port = harness::postgres::free_port()?;
    let subscribers = format!("sink=http://127.0.0.1:{port}/events");
    let mut world = World::new(&["event-bus"], |options| {
        options
            .with_env("event-bus", "EVENT_BUS_SUBSCRIBERS", subscribers)
            .with_env("event-bus", "EVENT_BUS_RETRY_MAX_MS", "500")
    })
    .await?;
    world.stack.start().await?;
    let bus = world.stack.url("event-bus");
    let pid = world.pid("event-bus").unwrap_or(0);
    let empty = serde_json::json!({"type": "Big", "data": {"blob": ""}}).to_string();
    let blob = "x".repeat(contract::PUBLISH_LIMIT - empty.len());
    let body = serde_json::json!({"type": "Big", "data": {"blob": blob}}).to_string();
    let client = reqwest::Client::new();
    let started = Instant::now();
    for _ in 0..EVENTS {
        let response = client
            .post(format!("{bus}/events"))
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await?;
        if !response.status().is_success() {
            return Err(format!("publishing answered {}", response.status()).into());
        }
    }
    println!(
        "stored {EVENTS} events of {} KiB in {:.1} s; bus RSS {:.1} MiB",
        body.len() / 1024,
        started.elapsed().as_secs_f64(),
        rss_mib(pid).unwrap_or(f64::NAN)
    );
    let sink = start_sink_on(port)?;
    let started = Instant::now();
    let mut peak: f64 = 0.0;
    let deadline = Instant::now() + Duration::from_secs(600);
    while sink.highest.load(Ordering::Relaxed) < EVENTS as i64 {
        if Instant::now() > deadline {
            return Err("the backlog was not delivered within 10 minutes".into());
        }
        peak = peak.max(rss_mib(pid).unwrap_or(0.0));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "delivered the backlog in {:.1} s; bus RSS peak while delivering {peak:.1} MiB (pod limit 128 MiB)",
        started.elapsed().as_secs_f64()
    );
    world.finish().await;
    Ok(())
}

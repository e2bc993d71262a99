//! `loadtest bus`: events/s the bus accepts (single events and batches of 100), and how
//! fast it delivers them end to end to 4 subscribers.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};

use crate::stack::{percentile, rss_mib, Error, World};

/// A subscriber that only counts: it finds the highest `"seq":` in each batch, so the
/// measurement is not spent parsing JSON in the load generator.
pub struct Sink {
    pub port: u16,
    pub highest: Arc<AtomicI64>,
}

fn start_sink() -> Result<Sink, Error> {
    start_sink_on(0)
}

/// A counting subscriber on `port` (0: any free one).
pub fn start_sink_on(port: u16) -> Result<Sink, Error> {
    let listener = std::net::TcpListener::bind(("127.0.0.1", port))?;
    let port = listener.local_addr()?.port();
    let highest = Arc::new(AtomicI64::new(0));
    let seen = highest.clone();
    let server = HttpServer::new(move || {
        let seen = seen.clone();
        App::new()
            .app_data(web::PayloadConfig::new(64 * 1024 * 1024))
            .route(
                "/events",
                web::post().to(move |body: web::Bytes| {
                    let seen = seen.clone();
                    async move {
                        if let Some(max) = highest_seq(&body) {
                            seen.fetch_max(max, Ordering::Relaxed);
                        }
                        HttpResponse::Ok().finish()
                    }
                }),
            )
    })
    .workers(1)
    .disable_signals()
    .listen(listener)?
    .run();
    tokio::spawn(server);
    Ok(Sink { port, highest })
}

fn highest_seq(body: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(body).ok()?;
    text.rmatch_indices("\"seq\":").next().and_then(|(i, m)| {
        let rest = &text[i + m.len()..];
        let end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        rest[..end].parse().ok()
    })
}

fn event_body(batch: usize) -> String {
    let one = |_| {
        serde_json::json!({
            "id": uuid::Uuid::now_v7(),
            "type": "PostCreated",
            "data": { "id": uuid::Uuid::now_v7().to_string(), "title": "a typical post title of some forty chars" },
            "source": "loadtest"
        })
    };
    if batch == 1 {
        one(0).to_string()
    } else {
        serde_json::Value::Array((0..batch).map(one).collect()).to_string()
    }
}

struct Phase {
    name: &'static str,
    requests: usize,
    batch: usize,
    concurrency: usize,
}

pub async fn run() -> Result<(), Error> {
    let sinks: Vec<Sink> = (0..4).map(|_| start_sink()).collect::<Result<_, _>>()?;
    let subscribers = sinks
        .iter()
        .enumerate()
        .map(|(i, s)| format!("sink{i}=http://127.0.0.1:{}/events", s.port))
        .collect::<Vec<_>>()
        .join(",");
    let mut world = World::new(&["event-bus"], |options| {
        options.with_env("event-bus", "EVENT_BUS_SUBSCRIBERS", subscribers)
    })
    .await?;
    world.stack.start().await?;
    let base = world.stack.url("event-bus");
    let pid = world.pid("event-bus").unwrap_or(0);
    println!("event bus: release build, PostgreSQL with fsync and synchronous_commit on, 4 counting subscribers");
    println!("idle RSS: {:.1} MiB", rss_mib(pid).unwrap_or(f64::NAN));
    println!(
        "{:<28} {:>9} {:>12} {:>10} {:>10} {:>16}",
        "phase", "events", "accepted/s", "p50 ms", "p99 ms", "delivered×4 /s"
    );
    let phases = [
        Phase {
            name: "single events, 16 conns",
            requests: 20_000,
            batch: 1,
            concurrency: 16,
        },
        Phase {
            name: "batches of 100, 4 conns",
            requests: 2_000,
            batch: 100,
            concurrency: 4,
        },
        Phase {
            name: "batches of 100, 16 conns",
            requests: 2_000,
            batch: 100,
            concurrency: 16,
        },
    ];
    let client = reqwest::Client::builder().tcp_nodelay(true).build()?;
    let mut head = 0i64;
    for phase in phases {
        let total_events = (phase.requests * phase.batch) as i64;
        let bodies: Arc<Vec<String>> = Arc::new(
            (0..phase.requests)
                .map(|_| event_body(phase.batch))
                .collect(),
        );
        let next = Arc::new(AtomicI64::new(0));
        let started = Instant::now();
        let mut workers = Vec::new();
        for _ in 0..phase.concurrency {
            let (client, bodies, next, url) = (
                client.clone(),
                bodies.clone(),
                next.clone(),
                format!("{base}/events"),
            );
            workers.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                    let Some(body) = bodies.get(i) else { break };
                    let sent = Instant::now();
                    let response = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body.clone())
                        .send()
                        .await;
                    match response {
                        Ok(r) if r.status().is_success() => {
                            latencies.push(sent.elapsed().as_secs_f64() * 1000.0)
                        }
                        Ok(r) => return Err(format!("publish answered {}", r.status())),
                        Err(e) => return Err(e.to_string()),
                    }
                }
                Ok(latencies)
            }));
        }
        let mut latencies = Vec::new();
        for worker in workers {
            latencies.extend(worker.await??);
        }
        let accepted_in = started.elapsed();
        head += total_events;
        let deadline = Instant::now() + Duration::from_secs(120);
        while sinks
            .iter()
            .any(|s| s.highest.load(Ordering::Relaxed) < head)
        {
            if Instant::now() > deadline {
                return Err("subscribers did not receive every event within 120 s".into());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let delivered_in = started.elapsed();
        latencies.sort_by(f64::total_cmp);
        println!(
            "{:<28} {:>9} {:>12.0} {:>10.2} {:>10.2} {:>16.0}",
            phase.name,
            total_events,
            total_events as f64 / accepted_in.as_secs_f64(),
            percentile(&latencies, 50.0),
            percentile(&latencies, 99.0),
            total_events as f64 / delivered_in.as_secs_f64(),
        );
    }
    println!(
        "RSS after load: {:.1} MiB",
        rss_mib(pid).unwrap_or(f64::NAN)
    );
    world.finish().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn highest_seq_reads_the_last_seq_in_a_batch() {
        let body = br#"[{"id":"x","seq":41,"type":"A"},{"id":"y","seq":42,"type":"A"}]"#;
        assert_eq!(super::highest_seq(body), Some(42));
        assert_eq!(super::highest_seq(b"[]"), None);
    }
}

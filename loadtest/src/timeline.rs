//! `loadtest timeline`: where one post's and one comment's time goes, hop by hop. On a
//! quiet system (after a warm-up) one user creates a post and polls `GET /posts` until it
//! shows, then comments on it and polls until the comment is approved; then every log
//! line the services wrote meanwhile is printed in time order, relative to the create
//! request. Run it with `RUST_LOG=debug,sqlx=warn,actix_server=warn,h2=warn,hyper=warn`
//! to see the relay's and the bus's debug lines too.

use std::time::{Duration, Instant};

use serde_json::Value;
use time::OffsetDateTime;

use crate::figures::{poll_until, POLL};
use crate::stack::{create_comment, create_post, Error, Microblog};

pub async fn run() -> Result<(), Error> {
    let blog = Microblog::start().await?;
    let (posts, comments) = (blog.urls["posts"].clone(), blog.urls["comments"].clone());
    let view = format!("{}/posts", blog.urls["query"]);
    for n in 0..20 {
        let post = create_post(&blog.api, &posts, &format!("warm-up {n}")).await?;
        poll_until(&blog, &view, POLL, |v| v.get(&post).is_some()).await?;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;

    let started = OffsetDateTime::now_utc();
    let clock = Instant::now();
    let post = create_post(&blog.api, &posts, "the post we follow").await?;
    poll_until(&blog, &view, POLL, |v| v.get(&post).is_some()).await?;
    let visible = clock.elapsed();
    let commented = Instant::now();
    let comment = create_comment(&blog.api, &comments, &post, "the comment we follow").await?;
    poll_until(&blog, &view, POLL, |v| {
        v[&post]["comments"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["id"] == comment.as_str() && c["status"] == "approved")
    })
    .await?;
    let approved = commented.elapsed();
    let ended = OffsetDateTime::now_utc();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let mut lines = Vec::new();
    for service in harness::topology::SERVICES {
        for line in blog.world.log_of(service.name).lines() {
            let Ok(entry) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let Some(at) = entry["timestamp"].as_str().and_then(|t| {
                OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
            }) else {
                continue;
            };
            if at < started || at > ended {
                continue;
            }
            lines.push((at, service.name, describe(&entry)));
        }
    }
    lines.sort_by_key(|(at, _, _)| *at);
    println!(
        "one post: visible in GET /posts after {:.2} ms; its comment approved after {:.2} ms (polling every 2 ms)",
        visible.as_secs_f64() * 1000.0,
        approved.as_secs_f64() * 1000.0
    );
    println!("log lines meanwhile, ms after the create request was sent (a request's line is written when it ends; latency_ms says when it began):");
    for (at, service, text) in lines {
        let offset = (at - started).as_seconds_f64() * 1000.0;
        println!("{offset:>8.3}  {service:<11} {text}");
    }
    blog.world.finish().await;
    Ok(())
}

/// The message and the fields that say what happened, on one line.
fn describe(entry: &Value) -> String {
    let mut text = entry["message"].as_str().unwrap_or("").to_owned();
    for field in [
        "method",
        "path",
        "status",
        "latency_ms",
        "seq",
        "first_seq",
        "last_seq",
        "count",
        "type",
        "subscriber",
    ] {
        if let Some(value) = entry.get(field) {
            let value = match value {
                Value::String(s) => s.clone(),
                Value::Number(n) if field == "latency_ms" => {
                    format!("{:.3}", n.as_f64().unwrap_or(0.0))
                }
                other => other.to_string(),
            };
            text.push_str(&format!(" {field}={value}"));
        }
    }
    text
}

/// Every hop's own time, from the log lines the services wrote since `since`: each
/// request by route, each event applied by type, each delivery by subscriber; p50 and
/// p95 over all of them. Read beside the end-to-end figures: what they leave over is
/// waiting (a poll's interval, a thread's wake-up), not work.
pub fn hops(blog: &Microblog, since: OffsetDateTime) {
    let mut latencies: std::collections::BTreeMap<(&str, String), Vec<f64>> = Default::default();
    for service in harness::topology::SERVICES {
        for line in blog.world.log_of(service.name).lines() {
            let Ok(entry) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            let at = entry["timestamp"].as_str().and_then(|t| {
                OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
            });
            let (Some(at), Some(latency)) = (at, entry["latency_ms"].as_f64()) else {
                continue;
            };
            let text = |field: &str| entry[field].as_str().unwrap_or("?").to_owned();
            let hop = match entry["message"].as_str() {
                Some("request") if !text("route").ends_with('z') && text("route") != "/metrics" => {
                    format!("{} {}", text("method"), text("route"))
                }
                Some("event applied") => format!("apply {}", text("type")),
                Some("delivered") => format!("deliver to {}", text("subscriber")),
                _ => continue,
            };
            if at >= since {
                latencies
                    .entry((service.name, hop))
                    .or_default()
                    .push(latency);
            }
        }
    }
    println!("each hop's own time (from the services' logs over the same trials):");
    for ((service, hop), mut ms) in latencies {
        ms.sort_by(f64::total_cmp);
        println!(
            "  {service:<11} {hop:<36} n={:<6} p50 {:>6.2} ms   p95 {:>6.2} ms",
            ms.len(),
            crate::stack::percentile(&ms, 50.0),
            crate::stack::percentile(&ms, 95.0)
        );
    }
}

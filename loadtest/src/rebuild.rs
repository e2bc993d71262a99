//! `loadtest rebuild`: how long the query service takes to rebuild its whole view from
//! the log — the cost of dropping its database. 50,000 events (10,000 posts, each with
//! two comments and their moderation updates) go into the bus; then query starts on an
//! empty database, and the clock runs until it reports ready (caught up).

use std::time::Instant;

use serde_json::{json, Value};

use crate::stack::{rss_mib, Error, World};

const POSTS: usize = 10_000;

/// Post, two comments, two updates: five events per post, as the services emit them.
fn events_of_post(n: usize) -> Vec<Value> {
    let post = uuid::Uuid::now_v7().to_string();
    let mut events = vec![json!({
        "type": "PostCreated",
        "data": { "id": post, "title": format!("a typical post title, number {n}") }
    })];
    for c in 0..2 {
        let comment = uuid::Uuid::now_v7().to_string();
        let content = format!("a comment of typical length, {n}/{c}");
        let status = if c == 0 { "approved" } else { "rejected" };
        events.push(json!({
            "type": "CommentCreated",
            "data": { "id": comment, "postId": post, "content": content, "status": "pending" }
        }));
        events.push(json!({
            "type": "CommentUpdated",
            "data": { "id": comment, "postId": post, "content": content, "status": status, "version": 1 }
        }));
    }
    events
}

pub async fn run() -> Result<(), Error> {
    let rust_log = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
    let mut world = World::new(&["event-bus", "query"], |mut options| {
        options.rust_log = rust_log;
        options
    })
    .await?;
    world.stack.start_service("event-bus").await?;
    let bus = world.stack.url("event-bus");
    let client = reqwest::Client::new();
    for chunk in (0..POSTS).collect::<Vec<_>>().chunks(100) {
        let batch: Vec<Value> = chunk.iter().flat_map(|n| events_of_post(*n)).collect();
        let response = client
            .post(format!("{bus}/events"))
            .json(&batch)
            .send()
            .await?;
        if !response.status().is_success() {
            return Err(format!("publishing answered {}", response.status()).into());
        }
    }
    let events = POSTS * 5;
    // The clock runs from process start to ready (caught up), on an empty database.
    let started = Instant::now();
    world.stack.start_service("query").await?;
    let rebuilt_in = started.elapsed();
    let query = world.stack.url("query");
    let view: Value = client
        .get(format!("{query}/posts"))
        .send()
        .await?
        .json()
        .await?;
    let posts = view.as_object().map_or(0, |v| v.len());
    if posts != POSTS {
        return Err(format!("the rebuilt view has {posts} posts, not {POSTS}").into());
    }
    println!(
        "query rebuilt its view from {events} events ({POSTS} posts × 2 comments) in {:.2} s ({:.0} events/s), from process start to ready; RSS {:.1} MiB",
        rebuilt_in.as_secs_f64(),
        events as f64 / rebuilt_in.as_secs_f64(),
        world.pid("query").and_then(rss_mib).unwrap_or(f64::NAN)
    );
    world.finish().await;
    Ok(())
}

//! `loadtest flow`: the whole microblog under the course's workload — how soon a post
//! and a comment's moderation show in the view, how fast posts are taken, how fast the
//! view is served, and what each service costs in memory.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::Notify;

use harness::api::ApiClient;

use crate::stack::{create_comment, create_post, drive, report, Error, Microblog};

/// When each change first showed on the query service's live stream (pushed only after
/// the change committed, so from that instant `GET /posts/{id}` has it).
#[derive(Default)]
struct Seen {
    at: Mutex<HashMap<String, Instant>>,
    posts: Mutex<usize>,
    changed: Notify,
    /// Why the stream reader stopped, if it did.
    failed: Mutex<Option<String>>,
}

impl Seen {
    fn record(&self, change: &Value) {
        let key = match (
            change["type"].as_str(),
            change["comment"]["status"].as_str(),
        ) {
            (Some("PostCreated"), _) => {
                *lock(&self.posts) += 1;
                change["post"]["id"].as_str().map(|id| format!("post:{id}"))
            }
            (Some("CommentUpdated"), Some(status)) => change["comment"]["id"]
                .as_str()
                .map(|id| format!("{status}:{id}")),
            _ => None,
        };
        if let Some(key) = key {
            lock(&self.at).entry(key).or_insert_with(Instant::now);
            self.changed.notify_waiters();
        }
    }

    fn check(&self) -> Result<(), Error> {
        match lock(&self.failed).as_ref() {
            Some(why) => Err(format!("reading the live stream failed: {why}").into()),
            None => Ok(()),
        }
    }

    fn record_view(&self, view: &Value) {
        let now = Instant::now();
        let posts = view.as_object().map(|v| v.values().collect::<Vec<_>>());
        let posts = posts.unwrap_or_default();
        let mut at = lock(&self.at);
        for post in &posts {
            if let Some(id) = post["id"].as_str() {
                at.entry(format!("post:{id}")).or_insert(now);
            }
            for comment in post["comments"].as_array().into_iter().flatten() {
                if let (Some(id), Some(status)) =
                    (comment["id"].as_str(), comment["status"].as_str())
                {
                    at.entry(format!("{status}:{id}")).or_insert(now);
                }
            }
        }
        *lock(&self.posts) = posts.len();
        drop(at);
        self.changed.notify_waiters();
    }

    async fn wait_for(&self, key: &str) -> Result<Instant, Error> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let notified = self.changed.notified();
            if let Some(at) = lock(&self.at).get(key) {
                return Ok(*at);
            }
            self.check()?;
            if tokio::time::timeout_at(deadline.into(), notified)
                .await
                .is_err()
            {
                return Err(format!("{key} never showed in the view").into());
            }
        }
    }

    async fn wait_for_posts(&self, count: usize) -> Result<Instant, Error> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let notified = self.changed.notified();
            if *lock(&self.posts) >= count {
                return Ok(Instant::now());
            }
            self.check()?;
            if tokio::time::timeout_at(deadline.into(), notified)
                .await
                .is_err()
            {
                return Err(format!("the view never reached {count} posts").into());
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn watch_stream(api: ApiClient, query: String, seen: Arc<Seen>) -> Result<(), Error> {
    let view_url = format!("{query}/posts");
    let mut stream = api.live_stream(&query).await?;
    while let Some(change) = stream.next_change().await? {
        if change["type"] == "Resync" {
            // This reader fell behind the burst: take the state from the view.
            seen.record_view(&api.get_json(&view_url).await?);
        } else {
            seen.record(&change);
        }
    }
    Err("the live stream ended".into())
}

pub async fn run() -> Result<(), Error> {
    let blog = Microblog::start().await?;
    let seen = Arc::new(Seen::default());
    let watcher = {
        let (api, query, seen) = (blog.api.clone(), blog.urls["query"].clone(), seen.clone());
        tokio::spawn(async move {
            if let Err(error) = watch_stream(api, query, seen.clone()).await {
                *lock(&seen.failed) = Some(error.to_string());
                seen.changed.notify_waiters();
            }
        })
    };
    // Settle before reading idle memory: start-up allocations are done by now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    println!("microblog: release builds, PostgreSQL with fsync and synchronous_commit on");
    println!("idle RSS MiB: {}", blog.memory());
    let (posts, comments, query) = (
        blog.urls["posts"].clone(),
        blog.urls["comments"].clone(),
        blog.urls["query"].clone(),
    );

    // One user at a time, as the course measured it.
    let mut visible = Vec::new();
    for n in 0..300 {
        let sent = Instant::now();
        let id = create_post(&blog.api, &posts, &format!("latency post {n}")).await?;
        let at = seen.wait_for(&format!("post:{id}")).await?;
        visible.push(at.duration_since(sent).as_secs_f64() * 1000.0);
    }
    report("post created → visible on query", visible);
    let post_id = create_post(&blog.api, &posts, "commented post").await?;
    seen.wait_for(&format!("post:{post_id}")).await?;
    let mut approved = Vec::new();
    for n in 0..300 {
        let sent = Instant::now();
        let id = create_comment(&blog.api, &comments, &post_id, &format!("comment {n}")).await?;
        let at = seen.wait_for(&format!("approved:{id}")).await?;
        approved.push(at.duration_since(sent).as_secs_f64() * 1000.0);
    }
    report("comment created → approved in the view", approved);
    blog.api
        .get_json(&format!("{query}/posts/{post_id}"))
        .await?;

    // The burst: 5,000 posts from 16 connections.
    const BURST: usize = 5_000;
    let already = *lock(&seen.posts);
    let started = Instant::now();
    let (client, url) = (blog.api.clone(), posts.clone());
    let latencies = drive(16, BURST, move |n| {
        let (client, posts) = (client.clone(), url.clone());
        async move { create_post(&client, &posts, &format!("burst post {n}")).await }
    })
    .await?;
    let created_in = started.elapsed();
    let all_visible = match seen.wait_for_posts(already + BURST).await {
        Ok(at) => at,
        Err(e) => {
            let view = blog.api.get_json(&format!("{query}/posts")).await?;
            let n = view.as_object().map(|v| v.len()).unwrap_or(0);
            return Err(format!(
                "{e}; the view holds {n}; stream count {}",
                *lock(&seen.posts)
            )
            .into());
        }
    };
    println!(
        "5,000 posts at concurrency 16: created in {:.2} s ({:.0} req/s), all visible after {:.2} s",
        created_in.as_secs_f64(),
        BURST as f64 / created_in.as_secs_f64(),
        all_visible.duration_since(started).as_secs_f64()
    );
    report(
        "  POST /posts/create latency at c=16",
        latencies.latencies_ms,
    );

    // The view as the course's client reads it: 1,000 posts with 3 comments each.
    let (client, url) = (blog.api.clone(), posts.clone());
    let view_posts: Vec<String> = drive(16, 1_000, move |n| {
        let (client, posts) = (client.clone(), url.clone());
        async move { create_post(&client, &posts, &format!("a post people comment on, {n}")).await }
    })
    .await?
    .results;
    for id in &view_posts {
        seen.wait_for(&format!("post:{id}")).await?;
    }
    let view_posts = Arc::new(view_posts);
    let (client, url) = (blog.api.clone(), comments.clone());
    let comment_ids = drive(16, 3_000, move |n| {
        let (client, comments, view_posts) = (client.clone(), url.clone(), view_posts.clone());
        async move {
            let content = format!("a comment of typical length, number {n}");
            create_comment(&client, &comments, &view_posts[n / 3], &content).await
        }
    })
    .await?
    .results;
    for id in &comment_ids {
        seen.wait_for(&format!("approved:{id}")).await?;
    }
    let page = format!("{query}/posts?limit=1000");
    let size = blog
        .api
        .http()
        .get(&page)
        .send()
        .await?
        .bytes()
        .await?
        .len();
    let started = Instant::now();
    let (client, url) = (blog.api.http().clone(), page.clone());
    let reads = drive(16, 4_000, move |_| {
        let (client, page) = (client.clone(), url.clone());
        async move {
            // Bytes, not JSON: the load generator must not spend its time parsing.
            let response = client.get(&page).send().await?;
            if response.status() != 200 {
                return Err(format!("GET /posts answered {}", response.status()).into());
            }
            response.bytes().await.map(|b| b.len()).map_err(Error::from)
        }
    })
    .await?;
    println!(
        "GET /posts?limit=1000 (1,000 posts × 3 comments, {} KB) at c=16: {:.0} req/s",
        size / 1024,
        reads.results.len() as f64 / started.elapsed().as_secs_f64()
    );
    report("  GET /posts latency at c=16", reads.latencies_ms);

    println!("RSS after load MiB: {}", blog.memory());
    watcher.abort();
    blog.world.finish().await;
    Ok(())
}

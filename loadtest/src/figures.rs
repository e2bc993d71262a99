//! `loadtest figures`: what a user waits for and what load costs, taken the way the
//! course's Node app was measured so the two compare: a change is visible when `GET
//! /posts` shows it, polled as a client would. With the machine's own floors (one
//! durable commit, one loopback HTTP round trip warm and after the machine idled, CPU
//! per post) in the same run, since machines differ by 2× from day to day: read the
//! figures against them.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::stack::{
    cpu_seconds, create_comment, create_post, drive, drive_for, percentile, report, Error,
    Microblog, World,
};

/// Sequential trials of post → visible and comment → approved.
const TRIALS: usize = 200;
/// How often a trial polls the view, as a client that wants to see its change at once.
pub const POLL: Duration = Duration::from_millis(2);
/// How often the drain polls the whole view.
const DRAIN_POLL: Duration = Duration::from_millis(10);
/// The pause before each idle round trip of the floors: a poll interval's worth and more,
/// long enough for every thread of the stack to be asleep.
const IDLE_BEFORE_TRIP: Duration = Duration::from_millis(20);
const DRAIN_POSTS: usize = 5_000;
const CONNECTIONS: usize = 16;
const WRITE_FOR: Duration = Duration::from_secs(10);
/// Logs replayed by a query service started on an empty database.
const REPLAYS: [usize; 2] = [5_000, 50_000];

pub async fn run() -> Result<(), Error> {
    println!(
        "microblog, release builds, RUST_LOG={}, PostgreSQL with fsync and synchronous_commit on",
        std::env::var("RUST_LOG").unwrap_or_else(|_| harness::stack::DEFAULT_RUST_LOG.into())
    );
    let blog = Microblog::start().await?;
    floors(&blog).await?;
    visibility(&blog).await?;
    write(&blog).await?;
    let (posts, bytes) = drain(&blog).await?;
    // What query holds grows with its view: the figure travels with the view's size.
    println!(
        "RSS after load MiB: {} (query's view then: {posts} posts, {:.1} MB as sent; its page cache so far: {})",
        blog.memory(),
        bytes as f64 / 1e6,
        cache_lookups(&blog).await?
    );
    blog.world.finish().await;

    read_view().await?;
    let largest = std::env::var("LOADTEST_REPLAY_MAX")
        .ok()
        .and_then(|n| n.parse().ok());
    for events in REPLAYS.into_iter().chain(largest) {
        replay(events).await?;
    }
    Ok(())
}

/// `loadtest visibility`: the floors and the two figures a user waits for, alone.
pub async fn visibility_only() -> Result<(), Error> {
    let blog = Microblog::start().await?;
    floors(&blog).await?;
    visibility(&blog).await?;
    blog.world.finish().await;
    Ok(())
}

/// `loadtest write`: the floors and the write figure alone, on a fresh system.
pub async fn write_only() -> Result<(), Error> {
    let blog = Microblog::start().await?;
    floors(&blog).await?;
    write(&blog).await?;
    blog.world.finish().await;
    Ok(())
}

/// `loadtest read`: the `GET /posts` figure alone, on its own fresh system.
pub async fn read_only() -> Result<(), Error> {
    read_view().await
}

/// `loadtest replay [EVENTS…]`: only the replays, of the logs named (5,000 and 50,000 if
/// none are).
pub async fn replays() -> Result<(), Error> {
    let named: Vec<usize> = std::env::args()
        .skip(2)
        .map(|n| n.replace(['_', ','], "").parse())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("the number of events: {e}"))?;
    let logs = if named.is_empty() {
        REPLAYS.to_vec()
    } else {
        named
    };
    for events in logs {
        replay(events).await?;
    }
    Ok(())
}

/// The floors: a one-row durable commit and an HTTP round trip on loopback, back to back
/// and after an idle pause (p50).
async fn floors(blog: &Microblog) -> Result<(), Error> {
    let url = blog.world.postgres().database("floors").await?;
    let pool = sqlx::PgPool::connect(&url).await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS floor (n INTEGER)")
        .execute(&pool)
        .await?;
    let mut commits = Vec::new();
    for n in 0..300 {
        let started = Instant::now();
        sqlx::query("INSERT INTO floor (n) VALUES ($1)")
            .bind(n)
            .execute(&pool)
            .await?;
        commits.push(ms(started));
    }
    // What each statement of a transaction costs besides its work: BEGIN, a cursor's
    // SELECT … FOR UPDATE, COMMIT each pay one.
    let mut statements = Vec::new();
    let mut conn = pool.acquire().await?;
    for _ in 0..300 {
        let started = Instant::now();
        sqlx::query("SELECT 1").execute(&mut *conn).await?;
        statements.push(ms(started));
    }
    drop(conn);
    statements.sort_by(f64::total_cmp);
    pool.close().await;
    let health = format!("{}/healthz", blog.urls["posts"]);
    let trips = round_trips(blog, &health, 1_000, None).await?;
    // The same round trip after the machine has been idle, as each hop of one user's
    // request finds it: a sleeping thread, on a CPU that may have halted. On a VM whose
    // idle CPUs halt into the hypervisor this is several times the warm figure, and a post
    // crosses a dozen such wake-ups before it is visible.
    let idle_trips = round_trips(blog, &health, 100, Some(IDLE_BEFORE_TRIP)).await?;
    commits.sort_by(f64::total_cmp);
    println!(
        "floors: one-row durable commit p50 {:.3} ms; one statement's database round trip (SELECT 1) p50 {:.3} ms; loopback HTTP round trip (GET /healthz) p50 {:.3} ms, after {} ms idle p50 {:.3} ms",
        percentile(&commits, 50.0),
        percentile(&statements, 50.0),
        percentile(&trips, 50.0),
        IDLE_BEFORE_TRIP.as_millis(),
        percentile(&idle_trips, 50.0)
    );
    Ok(())
}

/// `count` timed GETs of `url` (ms, sorted), each after `pause` if there is one.
async fn round_trips(
    blog: &Microblog,
    url: &str,
    count: usize,
    pause: Option<Duration>,
) -> Result<Vec<f64>, Error> {
    let mut trips = Vec::with_capacity(count);
    for _ in 0..count {
        if let Some(pause) = pause {
            tokio::time::sleep(pause).await;
        }
        let started = Instant::now();
        blog.api.http().get(url).send().await?.bytes().await?;
        trips.push(ms(started));
    }
    trips.sort_by(f64::total_cmp);
    Ok(trips)
}

/// `TRIALS` times, one user: create a post and poll `GET /posts` until it is in the map;
/// then comment on it and poll until the comment is `approved`.
async fn visibility(blog: &Microblog) -> Result<(), Error> {
    let (posts, comments) = (&blog.urls["posts"], &blog.urls["comments"]);
    let view = format!("{}/posts", blog.urls["query"]);
    let since = time::OffsetDateTime::now_utc();
    let (mut visible, mut approved) = (Vec::new(), Vec::new());
    // How long the create requests themselves took: the rest is the way to the view.
    let (mut post_answered, mut comment_answered) = (Vec::new(), Vec::new());
    for n in 0..TRIALS {
        let sent = Instant::now();
        let post = create_post(&blog.api, posts, &format!("visibility post {n}")).await?;
        post_answered.push(ms(sent));
        poll_until(blog, &view, POLL, |view| view.get(&post).is_some()).await?;
        visible.push(ms(sent));

        let sent = Instant::now();
        let comment = create_comment(&blog.api, comments, &post, &format!("comment {n}")).await?;
        comment_answered.push(ms(sent));
        poll_until(blog, &view, POLL, |view| {
            view[&post]["comments"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|c| c["id"] == comment.as_str() && c["status"] == "approved")
        })
        .await?;
        approved.push(ms(sent));
    }
    report("post created → visible in GET /posts", visible);
    report("  of which POST /posts/create answering", post_answered);
    report("comment created → approved in GET /posts", approved);
    report("  of which POST …/comments answering", comment_answered);
    crate::timeline::hops(blog, since);
    Ok(())
}

/// Polls `url` every `every` until `shows` holds for its JSON (30 s at most).
pub async fn poll_until(
    blog: &Microblog,
    url: &str,
    every: Duration,
    shows: impl Fn(&Value) -> bool,
) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let body = blog.api.http().get(url).send().await?.bytes().await?;
        if shows(&serde_json::from_slice(&body)?) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{url} never showed the change").into());
        }
    }
}

/// `POST /posts/create` from `CONNECTIONS` connections for `WRITE_FOR`, every service
/// running and delivering: with `wrk -t2 -c16 -d10s` when it is installed (as the Node
/// app was measured), else with this tool's own closed loop.
async fn write(blog: &Microblog) -> Result<(), Error> {
    let url = format!("{}/posts/create", blog.urls["posts"]);
    if let Some(figures) = wrk(&url)? {
        println!("POST /posts/create, wrk -t2 -c16 -d10s: {figures}");
        return Ok(());
    }
    let (client, posts) = (blog.api.clone(), blog.urls["posts"].clone());
    let started = Instant::now();
    let driven = drive_for(CONNECTIONS, WRITE_FOR, move |n| {
        let (client, posts) = (client.clone(), posts.clone());
        async move { create_post(&client, &posts, &format!("write post {n}")).await }
    })
    .await?;
    let done = driven.results.len();
    let mut latencies = driven.latencies_ms;
    latencies.sort_by(f64::total_cmp);
    println!(
        "POST /posts/create, 16 connections for 10 s (wrk not installed: `apt-get install wrk` to use it): {:.0} req/s, p99 {:.2} ms",
        done as f64 / started.elapsed().as_secs_f64(),
        percentile(&latencies, 99.0)
    );
    Ok(())
}

/// Runs wrk on `url` if it is installed: "N req/s, p99 M".
fn wrk(url: &str) -> Result<Option<String>, Error> {
    if std::process::Command::new("wrk")
        .arg("--version")
        .output()
        .is_err()
    {
        return Ok(None);
    }
    let script = std::env::temp_dir().join(format!("loadtest-wrk-{}.lua", std::process::id()));
    std::fs::write(
        &script,
        "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/json\"\nwrk.body = '{\"title\":\"a post from wrk\"}'\n",
    )?;
    let output = std::process::Command::new("wrk")
        .args(["-t2", "-c16", "-d10s", "--latency", "-s"])
        .arg(&script)
        .arg(url)
        .output()?;
    let _ = std::fs::remove_file(&script);
    let text = String::from_utf8_lossy(&output.stdout);
    let field = |prefix: &str| {
        text.lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("?")
            .to_owned()
    };
    let errors = text
        .lines()
        .find(|l| l.contains("Non-2xx") || l.contains("Socket errors"))
        .map(|l| format!(" ({})", l.trim()))
        .unwrap_or_default();
    Ok(Some(format!(
        "{} req/s, p50 {}, p99 {}{errors}",
        field("Requests/sec:"),
        field("50%"),
        field("99%")
    )))
}

/// `DRAIN_POSTS` creates over `CONNECTIONS` connections, then the view polled every
/// `DRAIN_POLL` until every one is in it; and the CPU all services and PostgreSQL spent.
/// Returns the size of the view once drained: its posts and bytes.
async fn drain(blog: &Microblog) -> Result<(usize, usize), Error> {
    let cpu_before = cpu_of_everything(&blog.world);
    let started = Instant::now();
    let (client, posts) = (blog.api.clone(), blog.urls["posts"].clone());
    let created = drive(CONNECTIONS, DRAIN_POSTS, move |n| {
        let (client, posts) = (client.clone(), posts.clone());
        async move { create_post(&client, &posts, &format!("drain post {n}")).await }
    })
    .await?;
    let created_in = started.elapsed();
    let mut waiting: HashSet<String> = created.results.into_iter().collect();
    let view = format!("{}/posts", blog.urls["query"]);
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut size = (0, 0);
    while !waiting.is_empty() {
        tokio::time::sleep(DRAIN_POLL).await;
        let body = blog.api.http().get(&view).send().await?.bytes().await?;
        let shown: Value = serde_json::from_slice(&body)?;
        waiting.retain(|id| shown.get(id).is_none());
        size = (shown.as_object().map_or(0, |posts| posts.len()), body.len());
        if Instant::now() > deadline {
            return Err(format!("{} posts never showed in the view", waiting.len()).into());
        }
    }
    let drained_in = started.elapsed();
    let cpu = cpu_of_everything(&blog.world) - cpu_before;
    println!(
        "5,000 posts at concurrency 16: created in {:.2} s, all visible in GET /posts after {:.2} s; CPU {:.2} ms per post (all services + PostgreSQL)",
        created_in.as_secs_f64(),
        drained_in.as_secs_f64(),
        cpu * 1000.0 / DRAIN_POSTS as f64
    );
    Ok(size)
}

/// query's cache lookups by result, from its metrics: a miss of the whole view is a read
/// of every post.
async fn cache_lookups(blog: &Microblog) -> Result<String, Error> {
    let url = format!("{}/metrics", blog.urls["query"]);
    let metrics = blog.api.http().get(&url).send().await?.text().await?;
    let counts: Vec<String> = metrics
        .lines()
        .filter_map(|line| line.strip_prefix("query_view_cache_lookups_total{result=\""))
        .filter_map(|rest| rest.split_once("\"} "))
        .map(|(result, count)| format!("{result} {count}"))
        .collect();
    Ok(counts.join(", "))
}

fn cpu_of_everything(world: &World) -> f64 {
    let services = harness::topology::SERVICES
        .iter()
        .filter_map(|s| world.pid(s.name));
    services.chain(world.postgres_pids()).map(cpu_seconds).sum()
}

/// `GET /posts` of 1,000 posts with 3 comments each, at concurrency 16, on a system of
/// its own.
async fn read_view() -> Result<(), Error> {
    let blog = Microblog::start().await?;
    let (client, posts) = (blog.api.clone(), blog.urls["posts"].clone());
    let ids = drive(CONNECTIONS, 1_000, move |n| {
        let (client, posts) = (client.clone(), posts.clone());
        async move { create_post(&client, &posts, &format!("a post people comment on, {n}")).await }
    })
    .await?
    .results;
    let view = format!("{}/posts", blog.urls["query"]);
    poll_until(&blog, &view, DRAIN_POLL, |v| {
        v.as_object().is_some_and(|m| m.len() == 1_000)
    })
    .await?;
    let ids = Arc::new(ids);
    let (client, comments) = (blog.api.clone(), blog.urls["comments"].clone());
    drive(CONNECTIONS, 3_000, move |n| {
        let (client, comments, ids) = (client.clone(), comments.clone(), ids.clone());
        async move {
            let content = format!("a comment of typical length, number {n}");
            create_comment(&client, &comments, &ids[n / 3], &content).await
        }
    })
    .await?;
    poll_until(&blog, &view, DRAIN_POLL, |v| {
        v.as_object().is_some_and(|m| {
            m.values().all(|p| {
                p["comments"]
                    .as_array()
                    .is_some_and(|c| c.len() == 3 && c.iter().all(|c| c["status"] != "pending"))
            })
        })
    })
    .await?;
    let size = blog
        .api
        .http()
        .get(&view)
        .send()
        .await?
        .bytes()
        .await?
        .len();
    let started = Instant::now();
    let (client, url) = (blog.api.http().clone(), view.clone());
    let reads = drive(CONNECTIONS, 4_000, move |_| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let response = client.get(&url).send().await?;
            if response.status() != 200 {
                return Err(format!("GET /posts answered {}", response.status()).into());
            }
            response.bytes().await.map(|b| b.len()).map_err(Error::from)
        }
    })
    .await?;
    println!(
        "GET /posts (1,000 posts × 3 comments, {} KB) at c=16: {:.0} req/s",
        size / 1024,
        reads.results.len() as f64 / started.elapsed().as_secs_f64()
    );
    report("  GET /posts latency at c=16", reads.latencies_ms);
    blog.world.finish().await;
    Ok(())
}

/// A log of `events` `PostCreated`; query started on an empty database, timed from
/// process start until its view equals the log.
async fn replay(events: usize) -> Result<(), Error> {
    let mut world = World::new(&["event-bus", "query"], |mut options| {
        options.rust_log = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
        options
    })
    .await?;
    world.stack.start_service("event-bus").await?;
    let bus = world.stack.url("event-bus");
    let client = reqwest::Client::new();
    for first in (0..events).step_by(1_000) {
        let batch: Vec<Value> = (first..(first + 1_000).min(events))
            .map(|n| {
                json!({
                    "type": "PostCreated",
                    "data": { "id": uuid::Uuid::now_v7().to_string(), "title": format!("a typical post title, number {n}") }
                })
            })
            .collect();
        let response = client
            .post(format!("{bus}/events"))
            .json(&batch)
            .send()
            .await?;
        if !response.status().is_success() {
            return Err(format!("publishing answered {}", response.status()).into());
        }
    }
    let floor = bulk_insert_floor(&world).await?;
    let read_floor = read_log_floor(&client, &bus).await?;
    let started = Instant::now();
    world.stack.start_service("query").await?;
    let replayed_in = started.elapsed();
    let view: Value = client
        .get(format!("{}/posts", world.stack.url("query")))
        .send()
        .await?
        .json()
        .await?;
    let posts = view.as_object().map_or(0, |v| v.len());
    if posts != events {
        return Err(format!("the replayed view has {posts} posts, not {events}").into());
    }
    println!(
        "replay: query on an empty database, {events} PostCreated, process start → view complete (ready): {:.3} s (floors: PostgreSQL alone inserting them {:.3} s; reading them from the bus, pages of 5,000 parsed, {:.3} s)",
        replayed_in.as_secs_f64(),
        floor.as_secs_f64() * events as f64 / FLOOR_ROWS as f64,
        read_floor.as_secs_f64()
    );
    world.finish().await;
    Ok(())
}

const FLOOR_ROWS: usize = 5_000;

/// What reading the whole log takes, one page of 5,000 after another as a catching-up
/// consumer asks for them, each parsed: the floor under the reading half of a replay.
async fn read_log_floor(client: &reqwest::Client, bus: &str) -> Result<Duration, Error> {
    let started = Instant::now();
    let mut after = 0;
    loop {
        let page = client
            .get(format!("{bus}/events?after={after}&limit=5000"))
            .send()
            .await?
            .bytes()
            .await?;
        let page: Vec<contract::Envelope> = serde_json::from_slice(&page)?;
        match page.last() {
            Some(last) => after = last.seq,
            None => return Ok(started.elapsed()),
        }
    }
}

/// What PostgreSQL alone takes to insert `FLOOR_ROWS` posts in one statement, into a table
/// shaped as the view's (a serial key and a unique id): the floor under any replay that
/// keeps the view in PostgreSQL. The best of three.
async fn bulk_insert_floor(world: &World) -> Result<Duration, Error> {
    let url = world.postgres().database("replay_floor").await?;
    let pool = sqlx::PgPool::connect(&url).await?;
    sqlx::query("CREATE TABLE floor (position BIGSERIAL PRIMARY KEY, id TEXT NOT NULL UNIQUE, title TEXT NOT NULL)")
        .execute(&pool)
        .await?;
    let mut best = Duration::MAX;
    for round in 0..3 {
        let ids: Vec<String> = (0..FLOOR_ROWS)
            .map(|_| uuid::Uuid::now_v7().to_string())
            .collect();
        let titles: Vec<String> = (0..FLOOR_ROWS)
            .map(|n| format!("a typical post title, number {round}-{n}"))
            .collect();
        let started = Instant::now();
        sqlx::query("INSERT INTO floor (id, title) SELECT * FROM UNNEST($1::text[], $2::text[])")
            .bind(&ids)
            .bind(&titles)
            .execute(&pool)
            .await?;
        best = best.min(started.elapsed());
    }
    pool.close().await;
    Ok(best)
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1000.0
}

//! Two instances of every service on one database each, behind proxies that spread
//! requests as Kubernetes Services do: what every rollout and every `kubectl scale`
//! runs. Nothing may be stale, refused, lost or applied twice.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::api::{ApiClient, LiveStream};
use harness::stack::{binaries_of_this_build, Stack, StackOptions};
use serde_json::Value;
use systemtests::{ContinuousWriter, Microblog};
use testkit::{eventually, RecordingSubscriber, TestDatabase};

const WAIT: Duration = Duration::from_secs(60);

/// Reads a live stream until `done` says every expected change has arrived.
async fn follow(mut stream: LiveStream, done: impl Fn(&HashMap<String, String>) -> bool) {
    // Latest status per comment id, and "post" for each post id.
    let mut seen = HashMap::new();
    let deadline = Instant::now() + WAIT;
    while !done(&seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        let change = tokio::time::timeout(left, stream.next_change())
            .await
            .unwrap_or_else(|_| panic!("the stream stopped short: {} seen", seen.len()))
            .unwrap()
            .expect("the stream ended");
        match change["type"].as_str() {
            Some("PostCreated") => {
                seen.insert(
                    change["post"]["id"].as_str().unwrap().to_owned(),
                    "post".into(),
                );
            }
            Some("CommentCreated" | "CommentUpdated") => {
                let comment = &change["comment"];
                seen.insert(
                    comment["id"].as_str().unwrap().to_owned(),
                    comment["status"].as_str().unwrap().to_owned(),
                );
            }
            Some("Resync") => panic!("a replica's stream asked for a resync"),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_replica_serves_every_post_and_moderation_and_no_comment_gets_a_false_404() {
    let blog = Microblog::start_replicated(2).await;
    let queries = blog.instance_urls("query");
    let mut streams = Vec::new();
    for query in &queries {
        streams.push(blog.api().live_stream(query).await.unwrap());
    }
    // Both views are read (and cached) before the writes, so a stale cache would show.
    for query in &queries {
        blog.view_of(query).await;
    }
    let mut expected: HashMap<String, String> = HashMap::new();
    let mut posts = Vec::new();
    for n in 0..40 {
        let post = blog.create_post(&format!("post {n}")).await;
        let post_id = post["id"].as_str().unwrap().to_owned();
        // At once, through the proxy: either comments replica may take it.
        let content = if n % 4 == 0 {
            "an orange remark"
        } else {
            "kind words"
        };
        let comment = blog.create_comment(&post_id, content).await;
        let status = if n % 4 == 0 { "rejected" } else { "approved" };
        expected.insert(comment["id"].as_str().unwrap().to_owned(), status.into());
        expected.insert(post_id.clone(), "post".into());
        posts.push((post_id, comment["id"].as_str().unwrap().to_owned(), status));
    }
    let expected = Arc::new(expected);
    let followers: Vec<_> = streams
        .into_iter()
        .map(|stream| {
            let expected = expected.clone();
            tokio::spawn(follow(stream, move |seen| {
                expected
                    .iter()
                    .all(|(id, status)| seen.get(id) == Some(status))
            }))
        })
        .collect();
    for query in &queries {
        eventually(
            WAIT,
            &format!("every post and final status on {query}"),
            || async {
                let view = blog.view_of(query).await;
                posts.iter().all(|(post, comment, status)| {
                    view[post]["comments"].as_array().is_some_and(|c| {
                        c.iter()
                            .any(|c| c["id"] == *comment && c["status"] == *status)
                    })
                })
            },
        )
        .await;
    }
    for follower in followers {
        follower.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_service_under_continuous_writes_fails_no_write_and_loses_nothing(
) {
    let mut blog = Microblog::start_replicated(2).await;
    let writer = ContinuousWriter::start(blog.url("posts"), false);
    for service in harness::topology::SERVICES {
        for index in 0..2 {
            blog.stop_instance(service.name, index).await;
            blog.start_instance(service.name, index).await;
        }
    }
    let acknowledged = writer.stop().await;
    assert!(acknowledged.len() > 10, "too few writes to prove anything");
    for query in blog.instance_urls("query") {
        eventually(
            WAIT,
            &format!("every acknowledged post on {query}"),
            || async {
                let view = blog.view_of(&query).await;
                acknowledged.iter().all(|id| view.get(id).is_some())
            },
        )
        .await;
    }
    let log = blog
        .get_json(&format!("{}/events", blog.url("event-bus")))
        .await;
    let log = log.as_array().unwrap();
    let seqs: Vec<i64> = log.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(
        seqs,
        (1..=log.len() as i64).collect::<Vec<_>>(),
        "the log has holes"
    );
    let ids: HashSet<&str> = log.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), log.len(), "an id twice in the log");
    let posts_in_log = log.iter().filter(|e| e["type"] == "PostCreated").count();
    assert_eq!(
        posts_in_log,
        acknowledged.len(),
        "a post's event lost or doubled"
    );
}

/// Which bus instance leads the deliveries now, as each says.
async fn leader(api: &ApiClient, buses: &[String]) -> Option<usize> {
    for (index, bus) in buses.iter().enumerate() {
        if let Ok((200, status)) = api.get(&format!("{bus}/subscriptions")).await {
            if status["leading"] == true {
                return Some(index);
            }
        }
    }
    None
}

fn numbered(from: usize, count: usize) -> Value {
    Value::Array(
        (from..from + count)
            .map(|n| {
                serde_json::json!({
                    "id": uuid::Uuid::now_v7(),
                    "type": "Numbered",
                    "data": { "n": n },
                })
            })
            .collect(),
    )
}

/// Publishes through the Service, retrying a refused or cut-off request as a producer's
/// relay does (the ids make a retry idempotent).
async fn publish(api: &ApiClient, bus: &str, batch: &Value) {
    let deadline = Instant::now() + WAIT;
    loop {
        let sent = api
            .http()
            .post(format!("{bus}/events"))
            .json(batch)
            .send()
            .await;
        if sent.is_ok_and(|r| r.status().is_success()) {
            return;
        }
        assert!(Instant::now() < deadline, "the bus never took a batch");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bus_leader_killed_mid_stream_hands_over_and_every_subscriber_gets_every_event_in_order(
) {
    testkit::init_test_logging();
    let db = TestDatabase::new(&sqlx::migrate::Migrator::DEFAULT).await;
    let subscribers = [RecordingSubscriber::start(), RecordingSubscriber::start()];
    let list = format!("a={},b={}", subscribers[0].url(), subscribers[1].url());
    let logs = std::env::temp_dir().join(format!("microblog-takeover-{}", std::process::id()));
    std::fs::create_dir_all(&logs).unwrap();
    let mut options = StackOptions::whole(binaries_of_this_build().unwrap(), &logs)
        .only(&["event-bus"])
        .with_env("event-bus", "EVENT_BUS_SUBSCRIBERS", list)
        .with_env("event-bus", "EVENT_BUS_RETRY_MAX_MS", "200")
        .with_env("event-bus", "EVENT_BUS_BATCH_SIZE", "50");
    options.replicas = 2;
    let mut stack = Stack::plan(&options, |_| db.url.clone()).unwrap();
    stack.start().await.unwrap();
    let api = ApiClient::new();
    let bus = stack.url("event-bus");
    let buses: Vec<String> = stack.instances("event-bus").map(|i| i.url()).collect();
    eventually(WAIT, "a leader", || async {
        leader(&api, &buses).await.is_some()
    })
    .await;
    let first_leader = leader(&api, &buses).await.unwrap();
    const TOTAL: usize = 3_000;
    for from in (0..TOTAL / 2).step_by(100) {
        publish(&api, &bus, &numbered(from, 100)).await;
    }
    // Mid-stream: deliveries of the first half are under way.
    eventually(WAIT, "deliveries under way", || async {
        subscribers.iter().all(|s| s.count() > 0)
    })
    .await;
    let killed = Instant::now();
    stack
        .instances_mut("event-bus")
        .nth(first_leader)
        .unwrap()
        .kill()
        .await
        .unwrap();
    let survivor = vec![buses[1 - first_leader].clone()];
    eventually(WAIT, "the other replica leading", || async {
        leader(&api, &survivor).await.is_some()
    })
    .await;
    let takeover = killed.elapsed();
    eprintln!(
        "takeover: the surviving replica led {} ms after the leader was killed",
        takeover.as_millis()
    );
    for from in (TOTAL / 2..TOTAL).step_by(100) {
        publish(&api, &bus, &numbered(from, 100)).await;
    }
    for (name, subscriber) in ["a", "b"].iter().zip(&subscribers) {
        eventually(
            WAIT,
            &format!("subscriber {name} has every event"),
            || async { subscriber.seqs().iter().collect::<HashSet<_>>().len() >= TOTAL },
        )
        .await;
        // What a consumer applies: each seq once, skipping what it has already applied.
        let mut applied = Vec::new();
        for seq in subscriber.seqs() {
            if seq > applied.last().copied().unwrap_or(0) {
                assert_eq!(
                    seq,
                    applied.len() as i64 + 1,
                    "subscriber {name}: a hole before {seq}"
                );
                applied.push(seq);
            }
        }
        assert_eq!(
            applied,
            (1..=TOTAL as i64).collect::<Vec<_>>(),
            "subscriber {name}"
        );
        let redelivered = subscriber.count() - TOTAL;
        eprintln!("subscriber {name}: {redelivered} events delivered again after the takeover (skipped by seq)");
    }
    assert!(
        takeover < Duration::from_secs(10),
        "takeover took {takeover:?}"
    );
    stack.stop().await;
    let _ = std::fs::remove_dir_all(&logs);
}

//! Failures a real deployment meets: the bus down, a consumer killed mid-stream, a view's
//! database lost. Each test checks that nothing is lost and nothing is applied twice.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use systemtests::{http, Microblog};
use testkit::eventually;

const WAIT: Duration = Duration::from_secs(60);

async fn view_text(stack: &Microblog) -> String {
    http()
        .get(format!("{}/posts", stack.url("query")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn ids(view: &Value) -> HashSet<String> {
    view.as_object().unwrap().keys().cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_while_the_bus_is_down_and_the_view_catches_up() {
    let mut stack = Microblog::start().await;
    let known = stack.create_post("before the outage").await;
    let known_id = known["id"].as_str().unwrap().to_owned();
    // The comments service must know the post before the bus goes away.
    stack.create_comment(&known_id, "first").await;

    stack.stop("event-bus").await;
    let mut posts = Vec::new();
    for n in 0..5 {
        let post = stack.create_post(&format!("during the outage {n}")).await;
        posts.push(post["id"].as_str().unwrap().to_owned());
    }
    let mut comments = Vec::new();
    for content in ["kind words", "an orange remark", "more kind words"] {
        let comment = stack.create_comment(&known_id, content).await;
        assert_eq!(comment["status"], "pending");
        comments.push((comment["id"].as_str().unwrap().to_owned(), content));
    }
    for id in &posts {
        assert!(!in_view(&stack, id).await, "the view got {id} with no bus");
    }

    stack.restart("event-bus").await;
    eventually(
        WAIT,
        "every post and moderated comment in the view",
        || async {
            let whole = stack.view().await;
            let posts_there = posts.iter().all(|id| whole.get(id).is_some());
            let mut all_moderated = true;
            for (id, _) in &comments {
                all_moderated &= matches!(
                    stack.comment_status(&known_id, id).await.as_deref(),
                    Some("approved" | "rejected")
                );
            }
            posts_there && all_moderated
        },
    )
    .await;
    for (id, content) in &comments {
        let expected = if content.contains("orange") {
            "rejected"
        } else {
            "approved"
        };
        assert_eq!(
            stack.comment_status(&known_id, id).await.as_deref(),
            Some(expected),
            "{content}"
        );
    }
    let whole = stack.view().await;
    assert_eq!(whole.as_object().unwrap().len(), 6);
    assert_eq!(whole[&known_id]["comments"].as_array().unwrap().len(), 4);
}

async fn in_view(stack: &Microblog, id: &str) -> bool {
    let url = format!("{}/posts/{id}", stack.url("query"));
    http().get(url).send().await.unwrap().status() == 200
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_killed_mid_stream_ends_with_every_post_exactly_once() {
    const POSTS: usize = 500;
    const WRITERS: usize = 8;
    let mut stack = Microblog::start().await;
    let posts_url = Arc::new(stack.url("posts"));
    // Half the posts go in before the kill and half after, whatever the timing.
    let (killed, kill_seen) = tokio::sync::watch::channel(false);
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let posts_url = Arc::clone(&posts_url);
            let mut kill_seen = kill_seen.clone();
            tokio::spawn(async move {
                let client = http();
                let mut created = Vec::new();
                for n in (writer..POSTS).step_by(WRITERS) {
                    if n >= POSTS / 2 {
                        kill_seen.wait_for(|k| *k).await.unwrap();
                    }
                    let response = client
                        .post(format!("{posts_url}/posts/create"))
                        .json(&serde_json::json!({ "title": format!("post {n}") }))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status(), 201);
                    let post: Value = response.json().await.unwrap();
                    created.push(post["id"].as_str().unwrap().to_owned());
                }
                created
            })
        })
        .collect();

    eventually(WAIT, "the view to be part-way through", || async {
        stack.view().await.as_object().unwrap().len() >= 50
    })
    .await;
    stack.kill("query").await;
    killed.send(true).unwrap();
    let mut created = HashSet::new();
    for writer in writers {
        created.extend(writer.await.unwrap());
    }
    assert_eq!(created.len(), POSTS);

    stack.restart("query").await;
    eventually(WAIT, "all posts in the view", || async {
        stack.view().await.as_object().unwrap().len() >= POSTS
    })
    .await;
    assert_eq!(ids(&stack.view().await), created);
    let (rows, distinct): (i64, i64) =
        sqlx::query_as("SELECT count(*), count(DISTINCT id) FROM posts")
            .fetch_one(&stack.database("query").pool)
            .await
            .unwrap();
    assert_eq!((rows, distinct), (POSTS as i64, POSTS as i64));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_view_rebuilt_from_the_log_equals_the_view_before() {
    let mut stack = Microblog::start().await;
    let mut pending = Vec::new();
    for n in 0..10 {
        let post = stack.create_post(&format!("post {n}")).await;
        let post_id = post["id"].as_str().unwrap().to_owned();
        for content in [format!("comment {n}"), format!("orange {n}")] {
            let comment = stack.create_comment(&post_id, &content).await;
            pending.push((post_id.clone(), comment["id"].as_str().unwrap().to_owned()));
        }
    }
    eventually(WAIT, "every comment moderated", || async {
        for (post_id, comment_id) in &pending {
            if !matches!(
                stack.comment_status(post_id, comment_id).await.as_deref(),
                Some("approved" | "rejected")
            ) {
                return false;
            }
        }
        true
    })
    .await;
    let before = view_text(&stack).await;

    stack.stop("query").await;
    stack.wipe_database("query").await;
    stack.restart("query").await;
    // Ready means caught up with the log as it was at start-up: the whole view is back.
    assert_eq!(view_text(&stack).await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_live_stream_does_not_hold_up_a_graceful_stop() {
    let mut stack = Microblog::start().await;
    let stream = stack.open_live_stream().await;
    // Open: the service answered 200 with the stream (open_live_stream checks).
    let stopping = std::time::Instant::now();
    stack.stop("query").await;
    // Well inside the 10 s grace period that an open stream used to use up entirely.
    assert!(
        stopping.elapsed() < Duration::from_secs(5),
        "query took {:?} to stop with a stream open",
        stopping.elapsed()
    );
    drop(stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_with_the_wrong_bus_token_says_so_loudly_and_publishes_everything_once_fixed() {
    let mut env: Vec<(&'static str, &str, &str)> = harness::topology::SERVICES
        .iter()
        .map(|s| (s.name, "EVENT_BUS_TOKEN", "the-right-token"))
        .collect();
    env.push(("posts", "EVENT_BUS_TOKEN", "a-stale-token"));
    let mut stack = Microblog::start_with(1, &env).await;
    let mut ids = Vec::new();
    for n in 0..3 {
        let post = stack
            .create_post(&format!("accepted while misconfigured {n}"))
            .await;
        ids.push(post["id"].as_str().unwrap().to_owned());
    }
    eventually(WAIT, "an error-level line naming the bus's 401", || async {
        stack
            .log_of("posts")
            .lines()
            .any(|l| l.contains("\"level\":\"ERROR\"") && l.contains("\"status\":401"))
    })
    .await;
    let health = stack
        .get_json(&format!("{}/healthz", stack.url("posts")))
        .await;
    assert!(
        health["outbox"]["refusedByBus"].as_u64().unwrap() >= 1,
        "{health}"
    );
    assert!(health["outbox"]["lastRefusal"]
        .as_str()
        .unwrap()
        .starts_with("401"));
    for id in &ids {
        assert!(
            stack.view().await.get(id).is_none(),
            "published with a wrong token"
        );
    }

    // The token fixed (a new pod with the right Secret), everything it took is published.
    stack.stop("posts").await;
    stack
        .stack_mut()
        .set_env("posts", "EVENT_BUS_TOKEN", "the-right-token");
    stack.restart("posts").await;
    eventually(
        WAIT,
        "every post accepted meanwhile in the view",
        || async {
            let view = stack.view().await;
            ids.iter().all(|id| view.get(id).is_some())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bus_restored_from_an_older_backup_is_refused_not_trusted_and_a_resync_brings_everything_back(
) {
    const TOKEN: &str = "restore-test-token";
    let env: Vec<(&'static str, &str, &str)> = harness::topology::SERVICES
        .iter()
        .map(|s| (s.name, "EVENT_BUS_TOKEN", TOKEN))
        .collect();
    let mut stack = Microblog::start_with(2, &env).await;
    let mut before = Vec::new();
    for n in 0..3 {
        before.push(id_of(
            &stack.create_post(&format!("before the backup {n}")).await,
        ));
    }
    let commented = before[0].clone();
    let comment = id_of(&stack.create_comment(&commented, "before the backup").await);
    eventually(WAIT, "the first comment approved", || async {
        stack.comment_status(&commented, &comment).await.as_deref() == Some("approved")
    })
    .await;
    let backup = stack.dump_database("event-bus");

    // Ten events after the backup, applied by every consumer.
    let mut lost = Vec::new();
    for n in 0..10 {
        lost.push(id_of(
            &stack.create_post(&format!("after the backup {n}")).await,
        ));
    }
    eventually(
        WAIT,
        "the ten posts after the backup in the view",
        || async {
            let view = stack.view().await;
            lost.iter().all(|id| view.get(id).is_some())
        },
    )
    .await;

    // Every subscriber past them (moderation takes no posts: their range reaches it a
    // moment later), so every consumer has passed the seqs the restored log reuses.
    let bus = stack.url("event-bus");
    eventually(WAIT, "every subscriber at the head", || async {
        let subscriptions = stack.get_json(&format!("{bus}/subscriptions")).await;
        subscriptions["subscriptions"]
            .as_array()
            .is_some_and(|all| {
                all.len() == 3 && all.iter().all(|s| s["cursor"] == subscriptions["head"])
            })
    })
    .await;
    stack.stop("event-bus").await;
    stack.restore_database("event-bus", &backup).await;
    stack.restart("event-bus").await;
    let mut new = Vec::new();
    for n in 0..5 {
        new.push(id_of(
            &stack.create_post(&format!("after the restore {n}")).await,
        ));
    }

    // The restored bus hands out seqs the consumers passed: every one of them refuses it.
    // The bus hears it from a refused delivery — unless the consumer found out first, by
    // its own catch-up sweep, and went unready: then its Service (as in Kubernetes) sends
    // the bus's deliveries nowhere, and the bus shows that instead.
    eventually(
        WAIT,
        "every subscriber's divergence, or its unready Service, in /subscriptions",
        || async {
            let subscriptions = stack.get_json(&format!("{bus}/subscriptions")).await;
            let told = |s: &Value| {
                s["diverged"].is_string()
                    || s["lastError"]
                        .as_str()
                        .is_some_and(|e| e.contains("no ready instance"))
            };
            subscriptions["subscriptions"]
                .as_array()
                .is_some_and(|all| all.len() == 3 && all.iter().all(told))
        },
    )
    .await;
    for service in ["query", "comments", "moderation"] {
        eventually(
            WAIT,
            &format!("{service} not ready, saying why"),
            || async {
                stack.health().await.iter().all(|(name, _, ready)| {
                    !name.starts_with(&format!("{service} ")) || *ready == 503
                })
            },
        )
        .await;
        for url in stack.instance_urls(service) {
            let readyz = stack.get_json(&format!("{url}/readyz")).await;
            assert!(
                readyz.to_string().contains("refusing the event bus"),
                "{service}: {readyz}"
            );
        }
        assert!(
            stack
                .logs_of_service(service)
                .lines()
                .any(|l| l.contains("\"level\":\"ERROR\"") && l.contains("refusing the event bus")),
            "{service} logged no error naming the divergence"
        );
    }
    for id in &new {
        for query in stack.instance_urls("query") {
            assert!(
                stack.view_of(&query).await.get(id).is_none(),
                "{id} applied from a diverged log"
            );
        }
    }

    // The recovery in docs/operations.md: resync each consumer, through any one replica.
    for service in ["comments", "moderation", "query"] {
        let url = &stack.instance_urls(service)[0];
        let answer = http()
            .post(format!("{url}/resync"))
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(
            answer.status(),
            200,
            "{service}: {}",
            answer.text().await.unwrap()
        );
    }
    eventually(WAIT, "every instance ready again", || stack.all_ready()).await;
    let late = id_of(&stack.create_comment(&new[0], "after the recovery").await);
    eventually(WAIT, "the new comment approved", || async {
        stack.comment_status(&new[0], &late).await.as_deref() == Some("approved")
    })
    .await;
    // Every post is in every replica's view: the new ones, and the ten the restored log
    // lost (the view keeps what it had applied).
    for query in stack.instance_urls("query") {
        let view = stack.view_of(&query).await;
        for id in before.iter().chain(&lost).chain(&new) {
            assert!(view.get(id).is_some(), "{id} missing from {query}");
        }
    }
    let subscriptions = stack.get_json(&format!("{bus}/subscriptions")).await;
    assert!(
        subscriptions["subscriptions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["diverged"].is_null()),
        "{subscriptions}"
    );
}

fn id_of(created: &Value) -> String {
    created["id"].as_str().unwrap().to_owned()
}

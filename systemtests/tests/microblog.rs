//! The microblog end to end: real binaries, real PostgreSQL, real HTTP.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

use std::time::Duration;

use serde_json::{json, Value};
use systemtests::{http, LiveStream, Microblog};
use testkit::eventually;

const WAIT: Duration = Duration::from_secs(30);

/// Reads Server-Sent Events `data:` lines until `count` changes arrived.
async fn read_changes(mut stream: LiveStream, count: usize) -> Vec<Value> {
    let mut changes = Vec::new();
    while changes.len() < count {
        let change = tokio::time::timeout(WAIT, stream.next_change())
            .await
            .expect("stream went quiet")
            .unwrap()
            .expect("stream ended");
        if change.get("type").is_some() {
            changes.push(change);
        }
    }
    changes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_and_its_comments_reach_the_view_and_moderation_shows_live() {
    let stack = Microblog::start().await;
    let stream = stack.open_live_stream().await;
    assert_eq!(stream.content_type(), Some("text/event-stream"));

    let post = stack.create_post("  Hello, microblog  ").await;
    assert_eq!(post["title"], "Hello, microblog");
    let post_id = post["id"].as_str().unwrap().to_owned();
    // A fast user comments at once: the comments service waits briefly for the post.
    let fine = stack.create_comment(&post_id, "Nice post").await;
    assert_eq!(fine["status"], "pending");
    let rejected = stack.create_comment(&post_id, "I love ORANGE juice").await;
    let (fine_id, rejected_id) = (
        fine["id"].as_str().unwrap(),
        rejected["id"].as_str().unwrap(),
    );

    eventually(WAIT, "moderation results in the view", || async {
        stack.comment_status(&post_id, fine_id).await.as_deref() == Some("approved")
            && stack.comment_status(&post_id, rejected_id).await.as_deref() == Some("rejected")
    })
    .await;
    let whole = stack.view().await;
    assert_eq!(whole[&post_id]["title"], "Hello, microblog");
    assert_eq!(
        whole[&post_id]["comments"],
        json!([
            {"id": fine_id, "content": "Nice post", "status": "approved"},
            {"id": rejected_id, "content": "I love ORANGE juice", "status": "rejected"},
        ])
    );
    let own: Value = stack
        .get_json(&format!(
            "{}/posts/{post_id}/comments",
            stack.url("comments")
        ))
        .await;
    assert_eq!(
        own, whole[&post_id]["comments"],
        "the comments service disagrees with the view"
    );
    let posts_own: Value = stack
        .get_json(&format!("{}/posts", stack.url("posts")))
        .await;
    assert_eq!(posts_own[&post_id]["title"], "Hello, microblog");

    // The stream carried every change, each comment's creation before its update.
    let changes = read_changes(stream, 5).await;
    let kinds: Vec<&str> = changes
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds[0], "PostCreated");
    for id in [fine_id, rejected_id] {
        let created = changes
            .iter()
            .position(|c| c["type"] == "CommentCreated" && c["comment"]["id"] == id)
            .unwrap();
        let updated = changes
            .iter()
            .position(|c| c["type"] == "CommentUpdated" && c["comment"]["id"] == id)
            .unwrap();
        assert!(created < updated, "{kinds:?}");
    }
    let seqs: Vec<i64> = changes.iter().map(|c| c["seq"].as_i64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "stream out of seq order: {seqs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_course_format_event_posted_to_the_bus_shows_up_in_the_view() {
    let stack = Microblog::start().await;
    let response = http()
        .post(format!("{}/events", stack.url("event-bus")))
        .json(&json!({"type": "PostCreated", "data": {"id": "abc", "title": "t"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    eventually(WAIT, "course post in the view", || async {
        stack.view().await["abc"]["title"] == "t"
    })
    .await;
    assert_eq!(
        stack.view().await["abc"],
        json!({"id": "abc", "title": "t", "comments": [], "commentCount": 0})
    );
    // Each public service serves the public API's document and the bus its own: the ones
    // scripts/fuzz-api holds them to.
    for (service, expected) in [
        ("posts", contract::PUBLIC_API),
        ("comments", contract::PUBLIC_API),
        ("query", contract::PUBLIC_API),
        ("event-bus", contract::BUS_API),
    ] {
        let document = stack
            .get_json(&format!("{}/openapi.json", stack.url(service)))
            .await;
        assert_eq!(document["openapi"], "3.1.0", "{service}");
        assert_eq!(document, serde_json::from_str::<Value>(expected).unwrap());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_the_right_status_and_changes_nothing() {
    let stack = Microblog::start().await;
    let post = stack.create_post("kept").await;
    let post_id = post["id"].as_str().unwrap().to_owned();
    let posts = format!("{}/posts/create", stack.url("posts"));
    let comments = format!("{}/posts/{post_id}/comments", stack.url("comments"));
    let long_title = "x".repeat(201);
    let long_comment = "y".repeat(1001);
    let huge = format!(r#"{{"title":"{}"}}"#, "z".repeat(70 * 1024));
    let cases: Vec<(&str, &String, &str, String, u16)> = vec![
        (
            "malformed JSON",
            &posts,
            "application/json",
            "{".into(),
            400,
        ),
        (
            "missing title",
            &posts,
            "application/json",
            "{}".into(),
            422,
        ),
        (
            "title not a string",
            &posts,
            "application/json",
            r#"{"title":5}"#.into(),
            422,
        ),
        (
            "blank title",
            &posts,
            "application/json",
            r#"{"title":"   "}"#.into(),
            422,
        ),
        (
            "title too long",
            &posts,
            "application/json",
            json!({"title": long_title}).to_string(),
            422,
        ),
        ("body over 64 KiB", &posts, "application/json", huge, 413),
        (
            "not JSON",
            &posts,
            "text/plain",
            r#"{"title":"x"}"#.into(),
            415,
        ),
        (
            "missing content",
            &comments,
            "application/json",
            "{}".into(),
            422,
        ),
        (
            "blank content",
            &comments,
            "application/json",
            r#"{"content":""}"#.into(),
            422,
        ),
        (
            "content too long",
            &comments,
            "application/json",
            json!({"content": long_comment}).to_string(),
            422,
        ),
    ];
    for (what, url, content_type, body, status) in cases {
        let response = http()
            .post(url.as_str())
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{what}");
        let error: Value = response.json().await.unwrap();
        assert!(
            error["error"]["code"].is_string() && error["error"]["message"].is_string(),
            "{what}: {error}"
        );
    }
    let error: Value = http()
        .post(&posts)
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("title"),
        "the error names the field: {error}"
    );
    let unknown_post = http()
        .post(format!(
            "{}/posts/no-such-post/comments",
            stack.url("comments")
        ))
        .json(&json!({"content": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown_post.status(), 404);
    // Nothing was written: the one post, no comments, and only its event in the log.
    let own: Value = stack
        .get_json(&format!("{}/posts", stack.url("posts")))
        .await;
    assert_eq!(own.as_object().unwrap().len(), 1);
    let own_comments: Value = stack.get_json(&comments).await;
    assert_eq!(own_comments, json!([]));
    let log: Value = stack
        .get_json(&format!("{}/events", stack.url("event-bus")))
        .await;
    assert_eq!(log.as_array().unwrap().len(), 1, "{log}");
    let missing = http()
        .get(format!("{}/posts/nope", stack.url("query")))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_of_every_service_run_ready_on_their_own_ports_and_share_the_work() {
    let stack = Microblog::start_replicated(2).await;
    let mut ports = std::collections::HashSet::new();
    for service in harness::topology::SERVICES {
        let urls = stack.instance_urls(service.name);
        assert_eq!(urls.len(), 2, "{}", service.name);
        for url in urls {
            let (status, _) = stack.api().get(&format!("{url}/readyz")).await.unwrap();
            assert_eq!(status, 200, "{url}");
            assert!(ports.insert(url.clone()), "two instances on {url}");
        }
    }
    // A post taken by the second posts instance reaches the view through the bus.
    let second_posts = stack.instance_urls("posts")[1].clone();
    let post = stack
        .api()
        .create_post(&second_posts, "from #2")
        .await
        .unwrap();
    let id = post["id"].as_str().unwrap().to_owned();
    eventually(WAIT, "the post in the view", || async {
        stack.view().await[&id]["title"] == "from #2"
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_events_are_refused_at_the_bus_and_the_microblog_flows_on() {
    let stack = Microblog::start().await;
    let bus = format!("{}/events", stack.url("event-bus"));
    let poisons = [
        json!({"type": "PostCreated", "data": {"id": "p-nul", "title": "nul \u{0} inside"}}),
        json!({"type": "PostCreated", "data": {"id": "x".repeat(4000), "title": "t"}}),
        json!({"type": "CommentCreated", "data": {"id": "c", "postId": "p"}}),
        json!({"type": "Big", "data": {"blob": "x".repeat(contract::PUBLISH_LIMIT)}}),
    ];
    for poison in &poisons {
        let response = http().post(&bus).json(poison).send().await.unwrap();
        let status = response.status().as_u16();
        assert!((400..500).contains(&status), "stored: {status}");
    }
    let post = stack.create_post("after the poison").await;
    let post_id = post["id"].as_str().unwrap().to_owned();
    let comment = stack.create_comment(&post_id, "still moderated").await;
    let comment_id = comment["id"].as_str().unwrap().to_owned();
    eventually(
        WAIT,
        "the next post and its moderated comment in the view",
        || async {
            stack.comment_status(&post_id, &comment_id).await.as_deref() == Some("approved")
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_with_ten_thousand_comments_keeps_its_answers_bounded_and_pages_every_comment_once()
{
    const COMMENTS: usize = 10_000;
    const WRITERS: usize = 16;
    let stack = Microblog::start().await;
    let post_id = stack.create_post("busy").await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    stack.create_comment(&post_id, "the first").await;
    let url = format!("{}/posts/{post_id}/comments", stack.url("comments"));
    let writers: Vec<_> = (0..WRITERS)
        .map(|writer| {
            let (client, url) = (http(), url.clone());
            tokio::spawn(async move {
                let mut ids = Vec::new();
                for n in (writer..COMMENTS - 1).step_by(WRITERS) {
                    let response = client
                        .post(&url)
                        .json(&json!({ "content": format!("comment {n}") }))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status(), 201);
                    let total: usize = response.headers()["x-total-count"]
                        .to_str()
                        .unwrap()
                        .parse()
                        .unwrap();
                    let listed: Vec<Value> = response.json().await.unwrap();
                    assert!(
                        listed.len() <= 100,
                        "{} comments in one answer",
                        listed.len()
                    );
                    assert!(total >= listed.len());
                    let own = listed
                        .iter()
                        .find(|c| c["content"] == format!("comment {n}"))
                        .expect("the new comment is in its answer");
                    ids.push(own["id"].as_str().unwrap().to_owned());
                }
                ids
            })
        })
        .collect();
    let mut written = std::collections::HashSet::new();
    for writer in writers {
        written.extend(writer.await.unwrap());
    }
    assert_eq!(written.len(), COMMENTS - 1);

    // The view's post carries the latest 100 and the count, once query has them all.
    let post_url = format!("{}/posts/{post_id}", stack.url("query"));
    eventually(
        Duration::from_secs(120),
        "every comment in the view",
        || async { stack.get_json(&post_url).await["commentCount"] == COMMENTS },
    )
    .await;
    let view = stack.view().await;
    let shown = view[&post_id]["comments"].as_array().unwrap();
    assert_eq!(shown.len(), 100);
    assert!(
        view.to_string().len() < 100 * 1024,
        "a post's part of the view stays small"
    );

    // Paging back from the newest meets every comment exactly once, in creation order.
    let mut paged: Vec<String> = Vec::new();
    let mut next = url.clone();
    loop {
        let page = stack.get_json(&next).await;
        let page = page.as_array().unwrap();
        assert!(page.len() <= 100);
        let Some(oldest) = page.first() else { break };
        next = format!("{url}?before={}", oldest["id"].as_str().unwrap());
        let ids = page.iter().map(|c| c["id"].as_str().unwrap().to_owned());
        paged.splice(0..0, ids);
    }
    assert_eq!(paged.len(), COMMENTS, "comments missing or repeated");
    let unique: std::collections::HashSet<&String> = paged.iter().collect();
    assert_eq!(unique.len(), COMMENTS, "a comment paged twice");
    assert!(paged[1..].iter().all(|id| written.contains(id)));
    // The view shows the newest 100 as the last page does. Each orders by its own arrival
    // (the bus's log for the view), so comments created side by side may swap places.
    let shown: std::collections::HashSet<&str> =
        shown.iter().map(|c| c["id"].as_str().unwrap()).collect();
    let newest: std::collections::HashSet<&str> =
        paged[COMMENTS - 100..].iter().map(String::as_str).collect();
    assert!(
        shown.intersection(&newest).count() >= 90,
        "the view's latest comments are not the latest"
    );
}

//! The JSON log lines of the real services, as `kubectl logs` shows them: flat, each
//! naming its service, and one comment followed from its request to its approval by its
//! trace id alone.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

use std::time::Duration;

use serde_json::Value;
use systemtests::Microblog;
use testkit::eventually;

const WAIT: Duration = Duration::from_secs(30);

fn lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_comment_is_followed_across_every_service_by_top_level_fields() {
    let stack = Microblog::start().await;
    let post = stack.create_post("traced").await;
    let post_id = post["id"].as_str().unwrap().to_owned();
    let comment = stack.create_comment(&post_id, "follow me").await;
    let comment_id = comment["id"].as_str().unwrap().to_owned();
    eventually(WAIT, "the comment approved in the view", || async {
        stack.comment_status(&post_id, &comment_id).await.as_deref() == Some("approved")
    })
    .await;

    // The request that created the comment, in the comments service's own words.
    let comments_log = lines(&stack.logs_of_service("comments"));
    let request = comments_log
        .iter()
        .find(|l| l["message"] == "request" && l["path"] == format!("/posts/{post_id}/comments"))
        .unwrap_or_else(|| panic!("no request line for the comment in {comments_log:?}"));
    for field in [
        "timestamp",
        "level",
        "service",
        "message",
        "request_id",
        "trace_id",
    ] {
        assert!(
            request[field].is_string(),
            "{field} at the top level of {request}"
        );
    }
    assert_eq!(request["service"], "comments");
    assert!(request.get("span").is_none(), "{request}");
    let trace_id = request["trace_id"].as_str().unwrap().to_owned();

    // Every service that handled the comment logged it under the same trace id, with the
    // event's own fields at the top level, by that id alone.
    for (service, kind) in [
        ("moderation", "CommentCreated"),
        ("comments", "CommentModerated"),
        ("query", "CommentUpdated"),
    ] {
        let trace_id = trace_id.as_str();
        let stack = &stack;
        eventually(
            WAIT,
            &format!("{kind} applied in {service}, logged"),
            || async move {
                lines(&stack.logs_of_service(service)).iter().any(|l| {
                    l["trace_id"] == trace_id
                        && l["message"] == "event applied"
                        && l["type"] == kind
                })
            },
        )
        .await;
    }
    let query_log = lines(&stack.logs_of_service("query"));
    let line = query_log
        .iter()
        .find(|l| l["trace_id"] == trace_id.as_str() && l["type"] == "CommentUpdated")
        .unwrap();
    assert_eq!(line["service"], "query");
    assert_eq!(line["post_id"], post_id.as_str());
    assert_eq!(line["comment_id"], comment_id.as_str());
    assert!(line["seq"].as_i64().unwrap() > 0, "{line}");
    assert!(line["event_id"].is_string(), "{line}");
}

//! comments against real PostgreSQL: known posts, a comment and its `CommentCreated`
//! event in one transaction, moderation turned into a versioned `CommentUpdated` exactly
//! once, and over HTTP the short wait for a post that is still on its way.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

use std::sync::Mutex;
use std::time::{Duration, Instant};

use comments::domain::{Content, PostId};
use comments::reactions::{CommentsReactions, POSTS_LEARNED};
use comments::store;
use contract::{CommentModerated, CommentStatus, Envelope, Event, PostCreated};
use contract::{TraceParent, LATEST_COMMENTS};
use serde_json::{json, Value};
use service_kit::bus::BusClient;
use service_kit::consumer::Consumer;
use sqlx::PgPool;
use testkit::{
    assert_trace_continued, assert_written_in_one_transaction, count_rows, delivered, eventually,
    hide_outbox, init_test_logging, outbox_publications, restore_outbox, service_env,
    unreachable_bus_url, RunningApp, TestDatabase,
};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

/// A fresh database with the comments schema and the shared tables (outbox, cursor).
async fn comments_db() -> TestDatabase {
    init_test_logging();
    TestDatabase::new(&service_kit::db::with_shared_migrations(
        &comments::MIGRATOR,
    ))
    .await
}

fn consumer(db: &TestDatabase) -> Consumer<CommentsReactions> {
    Consumer::new(
        db.pool.clone(),
        BusClient::new(&unreachable_bus_url(), None),
        CommentsReactions,
    )
}

/// An envelope as the bus delivers it.
fn envelope(seq: i64, event: &Event) -> Envelope {
    delivered(seq, event, "test")
}

fn moderated(id: Uuid, post_id: &str, status: CommentStatus) -> Event {
    Event::CommentModerated(CommentModerated {
        id: id.to_string(),
        post_id: post_id.to_owned(),
        content: "whatever moderation saw".to_owned(),
        status,
    })
}

async fn known_post(db: &TestDatabase, id: &str) -> PostId {
    let mut conn = db.pool.acquire().await.unwrap();
    store::remember_posts(&mut conn, &[id], POSTS_LEARNED)
        .await
        .unwrap();
    PostId::parse(id).unwrap()
}

async fn new_comment(db: &TestDatabase, post: &PostId, content: &str) -> Uuid {
    store::create_comment(
        &db.pool,
        post,
        &Content::parse(content).unwrap(),
        &TraceParent::new_root(),
    )
    .await
    .unwrap()
    .expect("a known post")
    .id
}

/// Outbox publications of one type, oldest first.
async fn published(pool: &PgPool, kind: &str) -> Vec<Value> {
    let mut publications = outbox_publications(pool).await;
    publications.retain(|p| p["type"] == kind);
    publications
}

async fn status_and_version(pool: &PgPool, id: Uuid) -> (String, i64) {
    sqlx::query_as("SELECT status, version FROM comments WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn remembering_a_post_twice_keeps_one_known_post() {
    let db = comments_db().await;
    let post = PostId::parse("abc123").unwrap();
    assert!(!store::post_is_known(&db.pool, &post).await.unwrap());
    let mut conn = db.pool.acquire().await.unwrap();
    store::remember_posts(&mut conn, &["abc123"], POSTS_LEARNED)
        .await
        .unwrap();
    store::remember_posts(&mut conn, &["abc123"], POSTS_LEARNED)
        .await
        .unwrap();
    assert!(store::post_is_known(&db.pool, &post).await.unwrap());
    assert!(
        !store::post_is_known(&db.pool, &PostId::parse("other").unwrap())
            .await
            .unwrap()
    );
    assert_eq!(count_rows(&db.pool, "known_posts").await, 1);
}

#[tokio::test]
async fn a_comment_and_its_comment_created_event_are_written_in_one_transaction() {
    let db = comments_db().await;
    let post = known_post(&db, "p1").await;
    let trace = TraceParent::new_root();
    let earlier = new_comment(&db, &post, "first").await;
    let created = store::create_comment(
        &db.pool,
        &post,
        &Content::parse("  Nice  ").unwrap(),
        &trace,
    )
    .await
    .unwrap()
    .expect("a known post");
    let (id, row) = (created.id, created.row);
    assert_eq!(created.comments.total, 2);
    let listed: Vec<(Uuid, &str, &str)> = created
        .comments
        .listed
        .iter()
        .map(|c| (c.id, c.content.as_str(), c.status.as_str()))
        .collect();
    assert_eq!(
        listed,
        [(earlier, "first", "pending"), (id, "Nice", "pending")],
        "the answer lists the post's comments, the new one last"
    );
    assert_eq!(
        testkit::outbox_publications(&db.pool).await[1]["id"],
        row.event_id.to_string(),
        "the row handed to the relay is the committed one"
    );
    assert_eq!(id.get_version_num(), 7);
    assert_eq!(
        status_and_version(&db.pool, id).await,
        ("pending".into(), 0)
    );

    let events = published(&db.pool, "CommentCreated").await;
    assert_eq!(count_rows(&db.pool, "outbox").await, 2);
    assert_eq!(
        events[1]["data"],
        json!({"id": id.to_string(), "postId": "p1", "content": "Nice", "status": "pending"})
    );
    assert_eq!(events[1]["source"], "comments");
    assert_eq!(events[1]["traceparent"], trace.to_string());
    assert_written_in_one_transaction(
        &db.pool,
        &[
            &format!("comments WHERE id = '{id}'"),
            &format!("outbox WHERE event_id = '{}'", row.event_id),
        ],
        "comment and event",
    )
    .await;
}

#[tokio::test]
async fn a_comment_on_a_post_this_service_does_not_know_writes_nothing() {
    let db = comments_db().await;
    known_post(&db, "p1").await;
    let created = store::create_comment(
        &db.pool,
        &PostId::parse("unknown").unwrap(),
        &Content::parse("hello").unwrap(),
        &TraceParent::new_root(),
    )
    .await
    .unwrap();
    assert!(created.is_none());
    assert_eq!(count_rows(&db.pool, "comments").await, 0);
    assert_eq!(count_rows(&db.pool, "outbox").await, 0);
}

#[tokio::test]
async fn when_the_comment_created_event_cannot_be_written_no_comment_remains() {
    let db = comments_db().await;
    let post = known_post(&db, "p1").await;
    hide_outbox(&db.pool).await;
    let failed = store::create_comment(
        &db.pool,
        &post,
        &Content::parse("lost").unwrap(),
        &TraceParent::new_root(),
    )
    .await;
    assert!(failed.is_err());
    assert_eq!(
        count_rows(&db.pool, "comments").await,
        0,
        "a comment without its event"
    );
}

#[tokio::test]
async fn comments_of_lists_one_posts_comments_in_creation_order() {
    let db = comments_db().await;
    let first = known_post(&db, "p1").await;
    let second = known_post(&db, "p2").await;
    let mut expected = Vec::new();
    for content in ["zzz", "aaa", "mmm"] {
        expected.push((new_comment(&db, &first, content).await, content.to_owned()));
        new_comment(&db, &second, "elsewhere").await;
    }
    let all = store::comments_of(&db.pool, &first, None, LATEST_COMMENTS)
        .await
        .unwrap();
    assert_eq!(all.total, 3);
    let listed: Vec<(Uuid, String)> = all
        .listed
        .iter()
        .map(|c| (c.id, c.content.clone()))
        .collect();
    assert_eq!(listed, expected);
    assert_eq!(
        serde_json::to_value(&all.listed[0]).unwrap(),
        json!({"id": expected[0].0, "content": "zzz", "status": "pending"}),
        "the course's comment shape"
    );
    let unknown = store::comments_of(&db.pool, &PostId::parse("p3").unwrap(), None, 10)
        .await
        .unwrap();
    assert!(unknown.listed.is_empty());
    assert_eq!(unknown.total, 0);
}

#[tokio::test]
async fn a_busy_posts_answers_carry_its_latest_comments_and_the_rest_page_back_exactly_once() {
    let db = comments_db().await;
    let post = known_post(&db, "busy").await;
    let mut written = Vec::new();
    for n in 0..(LATEST_COMMENTS + 50) {
        written.push(new_comment(&db, &post, &format!("comment {n}")).await);
    }
    let created = store::create_comment(
        &db.pool,
        &post,
        &Content::parse("the newest").unwrap(),
        &TraceParent::new_root(),
    )
    .await
    .unwrap()
    .expect("a known post");
    written.push(created.id);
    let total = i64::try_from(written.len()).unwrap();
    assert_eq!(created.comments.total, total);
    let answered: Vec<Uuid> = created.comments.listed.iter().map(|c| c.id).collect();
    assert_eq!(
        answered,
        written[written.len() - LATEST_COMMENTS as usize..],
        "the create answer lists the latest {LATEST_COMMENTS}, the new one last"
    );

    // Paging back from the newest, 40 at a time, meets every comment exactly once.
    let mut paged: Vec<Uuid> = Vec::new();
    let mut before = None;
    loop {
        let page = store::comments_of(&db.pool, &post, before, 40)
            .await
            .unwrap();
        assert_eq!(page.total, total);
        assert!(page.listed.len() <= 40);
        let Some(oldest) = page.listed.first() else {
            break;
        };
        before = Some(oldest.id);
        let ids: Vec<Uuid> = page.listed.iter().map(|c| c.id).collect();
        paged.splice(0..0, ids);
    }
    assert_eq!(paged, written);
    let elsewhere = store::comments_of(
        &db.pool,
        &known_post(&db, "other").await,
        Some(written[5]),
        40,
    )
    .await
    .unwrap();
    assert!(
        elsewhere.listed.is_empty(),
        "a cursor from another post lists nothing"
    );
}

#[tokio::test]
async fn set_status_bumps_the_version_only_when_the_status_changes() {
    let db = comments_db().await;
    let post = known_post(&db, "p1").await;
    let id = new_comment(&db, &post, "Nice").await;
    let mut conn = db.pool.acquire().await.unwrap();

    let approved = store::set_status(&mut conn, id, CommentStatus::Approved)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            approved.post_id.as_str(),
            approved.content.as_str(),
            approved.version
        ),
        ("p1", "Nice", 1)
    );
    let same = store::set_status(&mut conn, id, CommentStatus::Approved)
        .await
        .unwrap();
    assert!(same.is_none(), "an unchanged status bumped the version");
    let rejected = store::set_status(&mut conn, id, CommentStatus::Rejected)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rejected.version, 2);
    assert_eq!(
        status_and_version(&db.pool, id).await,
        ("rejected".into(), 2)
    );
    assert!(
        store::set_status(&mut conn, Uuid::now_v7(), CommentStatus::Approved)
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test]
async fn post_created_makes_the_post_known_and_wakes_waiting_requests_on_every_replica() {
    let db = comments_db().await;
    let consumer = consumer(&db);
    // A listener stands for any replica's waiting requests.
    let mut replica = sqlx::postgres::PgListener::connect_with(&db.pool)
        .await
        .unwrap();
    replica.listen(POSTS_LEARNED).await.unwrap();
    let created = Event::PostCreated(PostCreated {
        id: "abc".into(),
        title: "course post".into(),
    });
    let outcome = consumer.deliver(vec![envelope(1, &created)]).await.unwrap();
    assert_eq!((outcome.applied, outcome.cursor), (1, 1));
    assert!(
        store::post_is_known(&db.pool, &PostId::parse("abc").unwrap())
            .await
            .unwrap()
    );
    tokio::time::timeout(WAIT, replica.recv())
        .await
        .expect("waiting requests not woken")
        .unwrap();
    // The same post announced again (a republish) is harmless.
    consumer.deliver(vec![envelope(2, &created)]).await.unwrap();
    assert_eq!(count_rows(&db.pool, "known_posts").await, 1);
    // A delivery big enough to be applied together, with a moderation of an unknown
    // comment among the posts and "abc" once more: every post known, the waiting woken.
    let mut batch: Vec<Envelope> = (0..20)
        .map(|n| {
            let post = Event::PostCreated(PostCreated {
                id: format!("p{n}"),
                title: "t".into(),
            });
            envelope(3 + n, &post)
        })
        .collect();
    batch.push(envelope(23, &created));
    batch.push(envelope(
        24,
        &moderated(Uuid::now_v7(), "p1", CommentStatus::Approved),
    ));
    let outcome = consumer.deliver(batch).await.unwrap();
    assert_eq!(outcome.cursor, 24);
    assert_eq!(count_rows(&db.pool, "known_posts").await, 21);
    tokio::time::timeout(WAIT, replica.recv())
        .await
        .expect("waiting requests not woken by posts applied together")
        .unwrap();
}

/// Post p1 with a pending comment "Nice" on it, and a consumer to moderate it.
async fn a_pending_comment() -> (TestDatabase, Uuid, Consumer<CommentsReactions>) {
    let db = comments_db().await;
    let post = known_post(&db, "p1").await;
    let id = new_comment(&db, &post, "Nice").await;
    let consumer = consumer(&db);
    (db, id, consumer)
}

/// Approved at version 1, announced by exactly one `CommentUpdated`.
async fn assert_approved_once(pool: &PgPool, id: Uuid) {
    assert_eq!(status_and_version(pool, id).await, ("approved".into(), 1));
    assert_eq!(published(pool, "CommentUpdated").await.len(), 1);
}

#[tokio::test]
async fn moderation_sets_the_status_and_emits_comment_updated_with_the_new_version_in_one_transaction(
) {
    let (db, id, consumer) = a_pending_comment().await;
    let decision = envelope(1, &moderated(id, "p1", CommentStatus::Approved));
    consumer.deliver(vec![decision.clone()]).await.unwrap();

    assert_approved_once(&db.pool, id).await;
    let updates = published(&db.pool, "CommentUpdated").await;
    assert_eq!(
        updates[0]["data"],
        json!({"id": id.to_string(), "postId": "p1", "content": "Nice", "status": "approved", "version": 1}),
        "content is the comment's own, version the bumped one"
    );
    assert_eq!(updates[0]["source"], "comments");
    assert_trace_continued(
        decision.traceparent.as_deref(),
        updates[0]["traceparent"].as_str(),
    );
    assert_written_in_one_transaction(
        &db.pool,
        &[
            "comments",
            "outbox WHERE publication->>'type' = 'CommentUpdated'",
            "consumer_cursor",
        ],
        "status, event and cursor",
    )
    .await;

    // A later, different decision is a new version with its own event.
    consumer
        .deliver(vec![envelope(
            2,
            &moderated(id, "p1", CommentStatus::Rejected),
        )])
        .await
        .unwrap();
    let versions: Vec<Value> = published(&db.pool, "CommentUpdated")
        .await
        .iter()
        .map(|e| json!([e["data"]["status"], e["data"]["version"]]))
        .collect();
    assert_eq!(
        versions,
        vec![json!(["approved", 1]), json!(["rejected", 2])]
    );
}

#[tokio::test]
async fn a_redelivered_decision_bumps_no_version_and_emits_no_second_event() {
    let (db, id, consumer) = a_pending_comment().await;
    let decision = envelope(1, &moderated(id, "p1", CommentStatus::Approved));
    consumer.deliver(vec![decision.clone()]).await.unwrap();

    // The bus delivers the same seq again (at-least-once): skipped by the cursor.
    let again = consumer.deliver(vec![decision]).await.unwrap();
    assert_eq!((again.applied, again.skipped, again.cursor), (0, 1, 1));
    // The same decision published twice (a new seq): the status is unchanged, so no bump.
    let republished = envelope(2, &moderated(id, "p1", CommentStatus::Approved));
    consumer.deliver(vec![republished]).await.unwrap();

    assert_approved_once(&db.pool, id).await;
}

#[tokio::test]
async fn when_the_comment_updated_event_cannot_be_written_the_status_and_cursor_stay() {
    let (db, id, consumer) = a_pending_comment().await;
    hide_outbox(&db.pool).await;
    let decision = envelope(1, &moderated(id, "p1", CommentStatus::Approved));
    assert!(consumer.deliver(vec![decision.clone()]).await.is_err());
    assert_eq!(
        status_and_version(&db.pool, id).await,
        ("pending".into(), 0)
    );
    assert_eq!(consumer.cursor().await.unwrap(), 0);

    // Redelivered once the outbox is back, it applies in full.
    restore_outbox(&db.pool).await;
    consumer.deliver(vec![decision]).await.unwrap();
    assert_approved_once(&db.pool, id).await;
}

#[tokio::test]
async fn decisions_about_comments_that_are_not_ours_are_ignored() {
    let db = comments_db().await;
    let consumer = consumer(&db);
    let course = Event::CommentModerated(CommentModerated {
        id: "5f2a9c".into(),
        post_id: "p1".into(),
        content: "from the course's comments service".into(),
        status: CommentStatus::Approved,
    });
    let unknown = moderated(Uuid::now_v7(), "p1", CommentStatus::Rejected);
    let outcome = consumer
        .deliver(vec![envelope(1, &course), envelope(2, &unknown)])
        .await
        .unwrap();
    assert_eq!(
        (outcome.applied, outcome.cursor),
        (2, 2),
        "the stream must go on"
    );
    assert_eq!(count_rows(&db.pool, "outbox").await, 0);
}

/// The comments app on port 0 with an unreachable bus: deliveries come straight to its
/// `POST /events`, and its outbox keeps what it writes.
async fn serve_comments(db: &TestDatabase) -> RunningApp {
    let env = service_env(db, &unreachable_bus_url());
    RunningApp::start(&env, comments::config_from_env, comments::build).await
}

/// `POST /posts/{post}/comments` with `body` as JSON.
async fn comment_on(app: &RunningApp, post: &str, body: &Value) -> (u16, Value) {
    app.post_json(&format!("/posts/{post}/comments"), &body.to_string())
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_comment_on_a_known_post_is_201_with_the_posts_comments() {
    let db = comments_db().await;
    let app = serve_comments(&db).await;
    let post = Event::PostCreated(PostCreated {
        id: "p1".into(),
        title: "t".into(),
    });
    app.deliver(&[envelope(1, &post)]).await;

    let (status, first) = comment_on(&app, "p1", &json!({"content": " one "})).await;
    assert_eq!(status, 201, "{first}");
    let (status, both) = comment_on(&app, "p1", &json!({"content": "two"})).await;
    assert_eq!(status, 201, "{both}");
    let id = first[0]["id"].as_str().unwrap();
    assert_eq!(
        first,
        json!([{"id": id, "content": "one", "status": "pending"}])
    );
    assert_eq!(both[0], first[0]);
    assert_eq!(both[1]["content"], "two");
    let (status, listed) = app.get_json("/posts/p1/comments").await;
    assert_eq!(status, 200, "{listed}");
    assert_eq!(listed, both);
    assert_eq!(published(&db.pool, "CommentCreated").await.len(), 2);

    // Refused input writes nothing.
    for body in [
        json!({}),
        json!({"content": "  "}),
        json!({"content": "x".repeat(1001)}),
    ] {
        let (status, error) = comment_on(&app, "p1", &body).await;
        assert_eq!(status, 422, "{body}: {error}");
    }
    assert_eq!(count_rows(&db.pool, "comments").await, 2);
    assert_eq!(count_rows(&db.pool, "outbox").await, 2);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_comment_on_an_unknown_post_is_404_after_the_grace_wait_and_writes_nothing() {
    let db = comments_db().await;
    let app = serve_comments(&db).await;
    let started = Instant::now();
    let (status, error) = comment_on(&app, "nosuchpost", &json!({"content": "hello?"})).await;
    assert_eq!(status, 404, "{error}");
    assert_eq!(error["error"]["code"], "not_found");
    assert!(
        started.elapsed() >= Duration::from_millis(2900),
        "gave up after {:?}, before the grace period",
        started.elapsed()
    );
    let (status, _) = comment_on(&app, "not%20an%20id", &json!({"content": "hello?"})).await;
    assert_eq!(status, 404);
    assert_eq!(count_rows(&db.pool, "comments").await, 0);
    assert_eq!(count_rows(&db.pool, "outbox").await, 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_comment_on_a_post_that_becomes_known_during_the_wait_is_201() {
    let db = comments_db().await;
    let app = serve_comments(&db).await;
    // Hold the request's first look at known_posts until we have seen it start, then let
    // it find nothing: the post arrives only once the request is waiting for it.
    let mut blocker = db.pool.begin().await.unwrap();
    sqlx::query("LOCK TABLE known_posts IN ACCESS EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();
    let url = app.url.clone();
    let request = tokio::spawn(async move {
        let response = reqwest::Client::new()
            .post(format!("{url}/posts/late/comments"))
            .json(&json!({"content": "first!"}))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json::<Value>().await.unwrap())
    });
    let looking = "SELECT pid FROM pg_stat_activity
                   WHERE datname = current_database() AND wait_event_type = 'Lock'
                   AND query LIKE '%known_posts%'";
    let waiting = Mutex::new(None::<i32>);
    eventually(WAIT, "the request looks for the post", || async {
        let pid = sqlx::query_scalar(looking)
            .fetch_optional(&db.pool)
            .await
            .unwrap();
        *waiting.lock().unwrap() = pid;
        pid.is_some()
    })
    .await;
    let pid = waiting.lock().unwrap().unwrap();
    blocker.rollback().await.unwrap();
    eventually(WAIT, "the request found no post and waits", || async {
        let state: Option<String> =
            sqlx::query_scalar("SELECT state FROM pg_stat_activity WHERE pid = $1")
                .bind(pid)
                .fetch_one(&db.pool)
                .await
                .unwrap();
        state.as_deref() == Some("idle")
    })
    .await;

    let post = Event::PostCreated(PostCreated {
        id: "late".into(),
        title: "t".into(),
    });
    app.deliver(&[envelope(1, &post)]).await;
    let (status, comments) = request.await.unwrap();
    assert_eq!(status, 201, "{comments}");
    assert_eq!(comments[0]["content"], "first!");
    assert_eq!(published(&db.pool, "CommentCreated").await.len(), 1);
    app.stop().await;
}

#[test]
fn content_and_post_ids_parse_as_the_api_promises() {
    assert_eq!(Content::parse("  hi  ").unwrap().as_str(), "hi");
    assert!(Content::parse(&"é".repeat(1000)).is_ok());
    assert!(Content::parse(&"é".repeat(1001)).is_err());
    assert!(PostId::parse("0190b8a4-7d3c-7cc1-8f5e-3f1d2c4b5a69").is_ok());
    assert!(PostId::parse("5f2a9c").is_ok());
    for bad in ["", "a b", "../x", &"a".repeat(101)] {
        assert!(PostId::parse(bad).is_err(), "{bad:?}");
    }
}

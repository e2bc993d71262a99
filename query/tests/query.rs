//! query against real PostgreSQL: the view in the course's shape and in creation order,
//! paging, out-of-order safety (older versions, comments before their posts), and over
//! HTTP catch-up before ready, input errors, and a page cache that never serves a page
//! older than the view.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

use std::net::TcpListener;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::{web, App, HttpResponse, HttpServer};
use contract::{
    CommentCreated, CommentStatus, CommentUpdated, Envelope, Event, PostCreated, RESYNC,
};
use query::reactions::{ViewReactions, VIEW_CHANGES};
use query::store;
use serde_json::{json, Value};
use service_kit::bus::BusClient;
use service_kit::consumer::{Consumer, CursorStep, PARK_AFTER_ATTEMPTS};
use sqlx::pool::PoolConnection;
use sqlx::postgres::PgListener;
use sqlx::{PgPool, Postgres};
use testkit::{
    count_rows, eventually, init_test_logging, service_env, unreachable_bus_url, RunningApp,
    TestDatabase,
};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(30);

/// A fresh database with the view's schema and the shared tables (consumer cursor).
async fn query_db() -> TestDatabase {
    init_test_logging();
    TestDatabase::new(&service_kit::db::with_shared_migrations(&query::MIGRATOR)).await
}

async fn conn(db: &TestDatabase) -> PoolConnection<Postgres> {
    db.pool.acquire().await.unwrap()
}

fn post(id: &str, title: &str) -> PostCreated {
    PostCreated {
        id: id.into(),
        title: title.into(),
    }
}

fn comment(id: &str, post_id: &str, content: &str) -> CommentCreated {
    CommentCreated {
        id: id.into(),
        post_id: post_id.into(),
        content: content.into(),
        status: CommentStatus::Pending,
    }
}

fn update(id: &str, post_id: &str, status: CommentStatus, version: i64) -> CommentUpdated {
    CommentUpdated {
        id: id.into(),
        post_id: post_id.into(),
        content: format!("content of {id}"),
        status,
        version,
    }
}

/// An envelope as the bus delivers it.
fn envelope(seq: i64, event: &Event) -> Envelope {
    let tagged = serde_json::to_value(event).unwrap();
    envelope_of(seq, &tagged["type"], &tagged["data"])
}

fn envelope_of(seq: i64, kind: &Value, data: &Value) -> Envelope {
    serde_json::from_value(json!({
        "id": Uuid::now_v7(),
        "seq": seq,
        "type": kind,
        "data": data,
        "source": "test",
        "occurredAt": "2026-11-22T18:00:00Z",
    }))
    .unwrap()
}

async fn view(pool: &PgPool, limit: Option<i64>, before: Option<&str>) -> Value {
    serde_json::from_str(&store::view(pool, limit, before).await.unwrap()).unwrap()
}

fn keys(view: &Value) -> Vec<&str> {
    view.as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect()
}

async fn status_of(pool: &PgPool, post_id: &str, comment_id: &str) -> Value {
    let post: Value =
        serde_json::from_str(&store::post(pool, post_id).await.unwrap().unwrap()).unwrap();
    post["comments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == comment_id)
        .map(|c| c["status"].clone())
        .unwrap_or(Value::Null)
}

#[tokio::test]
async fn the_view_has_the_courses_shape_in_creation_order() {
    let db = query_db().await;
    let mut conn = conn(&db).await;
    assert_eq!(view(&db.pool, None, None).await, json!({}));
    // Ids that sort opposite to creation order: the view must follow creation.
    for (id, title) in [("zz", "first"), ("mm", "second"), ("aa", "third")] {
        assert!(store::add_post(&mut conn, &post(id, title), None, None)
            .await
            .unwrap()
            .unwrap());
    }
    for (id, content) in [("c9", "one"), ("c5", "two"), ("c1", "three")] {
        assert!(
            store::add_comment(&mut conn, &comment(id, "mm", content), None, None)
                .await
                .unwrap()
                .unwrap()
        );
    }
    store::update_comment(
        &mut conn,
        &update("c5", "mm", CommentStatus::Approved, 1),
        None,
        None,
    )
    .await
    .unwrap()
    .unwrap();

    let whole = view(&db.pool, None, None).await;
    assert_eq!(keys(&whole), ["zz", "mm", "aa"]);
    assert_eq!(
        whole,
        json!({
            "zz": {"id": "zz", "title": "first", "comments": [], "commentCount": 0},
            "mm": {"id": "mm", "title": "second", "comments": [
                {"id": "c9", "content": "one", "status": "pending"},
                {"id": "c5", "content": "content of c5", "status": "approved"},
                {"id": "c1", "content": "three", "status": "pending"},
            ], "commentCount": 3},
            "aa": {"id": "aa", "title": "third", "comments": [], "commentCount": 0},
        })
    );
    let ids: Vec<&Value> = whole["mm"]["comments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["id"])
        .collect();
    assert_eq!(ids, ["c9", "c5", "c1"], "comments not in creation order");
}

async fn cursor_of(pool: &PgPool) -> (i64, Option<Uuid>) {
    sqlx::query_as("SELECT seq, event_id FROM consumer_cursor")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Each one-event statement with the cursor's step: it changes the view and moves the
/// cursor only if the cursor is where the step starts, and otherwise changes nothing.
#[tokio::test]
async fn a_change_with_the_cursors_step_is_made_only_from_the_cursor_it_expects() {
    let db = query_db().await;
    let mut conn = conn(&db).await;
    let step = |from: i64| CursorStep {
        from,
        to: from + 1,
        to_id: Uuid::from_u128(from as u128 + 1),
    };
    // The cursor is at 0: a step from 1 is refused, nothing is added.
    assert_eq!(
        store::add_post(&mut conn, &post("p1", "t"), None, Some(step(1)))
            .await
            .unwrap(),
        None
    );
    assert_eq!(count_rows(&db.pool, "posts").await, 0);
    assert_eq!(
        store::add_post(&mut conn, &post("p1", "t"), None, Some(step(0)))
            .await
            .unwrap(),
        Some(true)
    );
    assert_eq!(cursor_of(&db.pool).await, (1, Some(Uuid::from_u128(1))));
    // A step taken for a change the view already has: the cursor moves, nothing else.
    assert_eq!(
        store::add_post(&mut conn, &post("p1", "again"), None, Some(step(1)))
            .await
            .unwrap(),
        Some(false)
    );
    assert_eq!(
        store::add_comment(&mut conn, &comment("c1", "p1", "hi"), None, Some(step(1)))
            .await
            .unwrap(),
        None,
        "a step from a cursor already passed"
    );
    assert_eq!(count_rows(&db.pool, "comments").await, 0);
    assert_eq!(
        store::add_comment(&mut conn, &comment("c1", "p1", "hi"), None, Some(step(2)))
            .await
            .unwrap(),
        Some(true)
    );
    let approved = update("c1", "p1", CommentStatus::Approved, 1);
    assert_eq!(
        store::update_comment(&mut conn, &approved, None, Some(step(1)))
            .await
            .unwrap(),
        None
    );
    assert_eq!(status_of(&db.pool, "p1", "c1").await, "pending");
    assert_eq!(
        store::update_comment(&mut conn, &approved, None, Some(step(3)))
            .await
            .unwrap(),
        Some(true)
    );
    assert_eq!(status_of(&db.pool, "p1", "c1").await, "approved");
    assert_eq!(cursor_of(&db.pool).await, (4, Some(Uuid::from_u128(4))));
}

#[tokio::test]
async fn adding_a_post_or_comment_twice_one_at_a_time_or_in_bulk_changes_nothing() {
    let db = query_db().await;
    let mut conn = conn(&db).await;
    assert!(
        store::add_post(&mut conn, &post("p1", "original"), None, None)
            .await
            .unwrap()
            .unwrap()
    );
    assert!(
        !store::add_post(&mut conn, &post("p1", "replayed"), None, None)
            .await
            .unwrap()
            .unwrap()
    );
    assert!(
        store::add_comment(&mut conn, &comment("c1", "p1", "original"), None, None)
            .await
            .unwrap()
            .unwrap()
    );
    assert!(
        !store::add_comment(&mut conn, &comment("c1", "p1", "replayed"), None, None)
            .await
            .unwrap()
            .unwrap()
    );
    assert_eq!(
        view(&db.pool, None, None).await,
        json!({"p1": {"id": "p1", "title": "original", "comments": [
            {"id": "c1", "content": "original", "status": "pending"}
        ], "commentCount": 1}})
    );
    // A page big enough to be tried as all new first, in the consumer's transaction:
    // one post already there and one twice make it fall back, and the transaction goes on.
    let mut tx = db.pool.begin().await.unwrap();
    let fresh: Vec<_> = (0..99).map(|n| post(&format!("q{n}"), "fresh")).collect();
    let mut page = vec![post("p1", "again")];
    page.extend(fresh.iter().cloned());
    page.push(post("q50", "twice"));
    assert_eq!(store::add_posts(&mut tx, &page).await.unwrap(), 99);
    let all_new: Vec<_> = (0..100).map(|n| post(&format!("r{n}"), "new")).collect();
    assert_eq!(store::add_posts(&mut tx, &all_new).await.unwrap(), 100);
    let comments: Vec<_> = (0..100)
        .map(|n| comment(&format!("rc{n}"), "r0", "hi"))
        .chain([comment("c1", "p1", "again")])
        .collect();
    assert_eq!(store::add_comments(&mut tx, &comments).await.unwrap(), 100);
    tx.commit().await.unwrap();
    let whole = view(&db.pool, None, None).await;
    assert_eq!(whole.as_object().unwrap().len(), 200);
    assert_eq!(whole["q50"]["title"], "fresh");
    assert_eq!(whole["r0"]["commentCount"], 100);
    assert_eq!(whole["p1"]["commentCount"], 1);
    sqlx::query("DELETE FROM comments WHERE post_id <> 'p1'")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("DELETE FROM posts WHERE id <> 'p1'")
        .execute(&db.pool)
        .await
        .unwrap();
    // In bulk, a few at a time (a run of deliveries): what is there, and an id twice.
    let added = store::add_posts(
        &mut conn,
        &[post("p1", "again"), post("p2", "new"), post("p2", "twice")],
    )
    .await
    .unwrap();
    assert_eq!(added, 1);
    let added = store::add_comments(
        &mut conn,
        &[
            comment("c1", "p1", "again"),
            comment("c2", "p2", "new"),
            comment("c2", "p2", "twice"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(added, 1);
    assert_eq!(
        view(&db.pool, None, None).await,
        json!({
            "p1": {"id": "p1", "title": "original", "comments": [
                {"id": "c1", "content": "original", "status": "pending"}
            ], "commentCount": 1},
            "p2": {"id": "p2", "title": "new", "comments": [
                {"id": "c2", "content": "new", "status": "pending"}
            ], "commentCount": 1}
        })
    );
}

/// Post p1 with the pending comment c1 ("hello") on it; the connection that wrote them.
async fn post_p1_with_comment_c1(db: &TestDatabase) -> PoolConnection<Postgres> {
    let mut conn = conn(db).await;
    store::add_post(&mut conn, &post("p1", "t"), None, None)
        .await
        .unwrap()
        .unwrap();
    store::add_comment(&mut conn, &comment("c1", "p1", "hello"), None, None)
        .await
        .unwrap()
        .unwrap();
    conn
}

#[tokio::test]
async fn an_older_version_never_overwrites_a_newer_one() {
    let db = query_db().await;
    let mut conn = post_p1_with_comment_c1(&db).await;
    assert!(store::update_comment(
        &mut conn,
        &update("c1", "p1", CommentStatus::Rejected, 2),
        None,
        None
    )
    .await
    .unwrap()
    .unwrap());
    assert!(
        !store::update_comment(
            &mut conn,
            &update("c1", "p1", CommentStatus::Approved, 1),
            None,
            None
        )
        .await
        .unwrap()
        .unwrap(),
        "version 1 applied over version 2"
    );
    assert!(
        !store::update_comment(
            &mut conn,
            &update("c1", "p1", CommentStatus::Rejected, 2),
            None,
            None
        )
        .await
        .unwrap()
        .unwrap(),
        "the same version again counts as a change"
    );
    assert_eq!(status_of(&db.pool, "p1", "c1").await, "rejected");
    assert!(store::update_comment(
        &mut conn,
        &update("c1", "p1", CommentStatus::Approved, 3),
        None,
        None
    )
    .await
    .unwrap()
    .unwrap());
    assert_eq!(status_of(&db.pool, "p1", "c1").await, "approved");
}

#[tokio::test]
async fn an_update_that_overtakes_its_comment_created_is_kept() {
    let db = query_db().await;
    let mut conn = conn(&db).await;
    store::add_post(&mut conn, &post("p1", "t"), None, None)
        .await
        .unwrap()
        .unwrap();
    assert!(store::update_comment(
        &mut conn,
        &update("c1", "p1", CommentStatus::Approved, 1),
        None,
        None
    )
    .await
    .unwrap()
    .unwrap());
    assert!(
        !store::add_comment(&mut conn, &comment("c1", "p1", "hello"), None, None)
            .await
            .unwrap()
            .unwrap(),
        "the late CommentCreated replaced a newer state"
    );
    assert_eq!(status_of(&db.pool, "p1", "c1").await, "approved");
}

#[tokio::test]
async fn a_course_comment_updated_without_a_version_still_updates_a_pending_comment() {
    let db = query_db().await;
    let mut conn = post_p1_with_comment_c1(&db).await;
    // What the course's comments service sends: no version, which reads as 0.
    let course: CommentUpdated = serde_json::from_value(
        json!({"id": "c1", "postId": "p1", "content": "hello", "status": "approved"}),
    )
    .unwrap();
    assert_eq!(course.version, 0);
    assert!(store::update_comment(&mut conn, &course, None, None)
        .await
        .unwrap()
        .unwrap());
    assert_eq!(status_of(&db.pool, "p1", "c1").await, "approved");
    // Replayed, it is no change at all.
    assert!(!store::update_comment(&mut conn, &course, None, None)
        .await
        .unwrap()
        .unwrap());
}

#[tokio::test]
async fn a_comment_that_arrives_before_its_post_shows_under_it_once_the_post_arrives() {
    let db = query_db().await;
    let mut conn = conn(&db).await;
    assert!(
        store::add_comment(&mut conn, &comment("c1", "p1", "early"), None, None)
            .await
            .unwrap()
            .unwrap()
    );
    assert_eq!(
        view(&db.pool, None, None).await,
        json!({}),
        "a comment without its post is not a post"
    );
    assert!(store::post(&db.pool, "p1").await.unwrap().is_none());
    store::add_post(&mut conn, &post("p1", "late"), None, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        view(&db.pool, None, None).await,
        json!({"p1": {"id": "p1", "title": "late", "comments": [
            {"id": "c1", "content": "early", "status": "pending"}
        ], "commentCount": 1}}),
        "a post counts the comments that arrived before it"
    );
    // Once counted, they are not counted again: a second comment adds one.
    store::add_comment(&mut conn, &comment("c2", "p1", "later"), None, None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(view(&db.pool, None, None).await["p1"]["commentCount"], 2);
    // A page of posts big enough to be inserted as all new: the one with early comments
    // (two, one of them by an update that overtook its comment) counts them, the others
    // count none.
    store::add_comments(
        &mut conn,
        &[comment("e1", "q7", "early"), comment("e2", "q7", "early")],
    )
    .await
    .unwrap();
    store::update_comments(&mut conn, &[update("e3", "q7", CommentStatus::Approved, 1)])
        .await
        .unwrap();
    let page: Vec<_> = (0..100).map(|n| post(&format!("q{n}"), "t")).collect();
    assert_eq!(store::add_posts(&mut conn, &page).await.unwrap(), 100);
    let whole = view(&db.pool, None, None).await;
    assert_eq!(whole["q7"]["commentCount"], 3);
    assert_eq!(whole["q8"]["commentCount"], 0);
    assert_eq!(whole["p1"]["commentCount"], 2);
    assert_eq!(count_rows(&db.pool, "early_comment_counts").await, 0);
}

#[tokio::test]
async fn a_busy_post_shows_its_latest_comments_and_counts_every_comment_once_whichever_event_brought_it(
) {
    let db = query_db().await;
    let mut conn = conn(&db).await;
    let limit = usize::try_from(contract::LATEST_COMMENTS).unwrap();
    // Before its post: one by CommentCreated, one by a CommentUpdated that overtook it.
    store::add_comment(&mut conn, &comment("early", "busy", "x"), None, None)
        .await
        .unwrap()
        .unwrap();
    store::update_comment(
        &mut conn,
        &update("overtaken", "busy", CommentStatus::Approved, 1),
        None,
        None,
    )
    .await
    .unwrap()
    .unwrap();
    store::add_posts(&mut conn, &[post("busy", "t"), post("quiet", "q")])
        .await
        .unwrap();
    let many: Vec<CommentCreated> = (0..limit + 20)
        .map(|n| comment(&format!("c{n:04}"), "busy", "y"))
        .collect();
    store::add_comments(&mut conn, &many).await.unwrap();
    // Repeats, and updates of comments already there, count nothing.
    store::add_comments(&mut conn, &many[..10]).await.unwrap();
    store::add_comment(&mut conn, &comment("early", "busy", "x"), None, None)
        .await
        .unwrap()
        .unwrap();
    store::update_comments(
        &mut conn,
        &[update("c0001", "busy", CommentStatus::Rejected, 1)],
    )
    .await
    .unwrap();
    store::update_comments(
        &mut conn,
        &[update("late", "busy", CommentStatus::Approved, 1)],
    )
    .await
    .unwrap();
    store::add_comment(&mut conn, &comment("q1", "quiet", "z"), None, None)
        .await
        .unwrap()
        .unwrap();

    let whole = view(&db.pool, None, None).await;
    let total = limit + 23;
    assert_eq!(whole["busy"]["commentCount"], total);
    assert_eq!(whole["quiet"]["commentCount"], 1);
    let shown: Vec<&str> = whole["busy"]["comments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    let mut expected: Vec<String> = ["early", "overtaken"].map(String::from).to_vec();
    expected.extend(many.iter().map(|c| c.id.clone()));
    expected.push("late".into());
    assert_eq!(
        shown,
        expected[total - limit..],
        "the latest {limit}, oldest first"
    );
    let one: Value =
        serde_json::from_str(&store::post(&db.pool, "busy").await.unwrap().unwrap()).unwrap();
    assert_eq!(one, whole["busy"], "one post is shown as the view shows it");
}

/// Posts p1..=p5, created in that order.
async fn five_posts(db: &TestDatabase) {
    let mut conn = conn(db).await;
    for n in 1..=5 {
        store::add_post(
            &mut conn,
            &post(&format!("p{n}"), &format!("post {n}")),
            None,
            None,
        )
        .await
        .unwrap()
        .unwrap();
    }
}

#[tokio::test]
async fn limit_returns_the_newest_posts_in_creation_order() {
    let db = query_db().await;
    five_posts(&db).await;
    assert_eq!(keys(&view(&db.pool, Some(2), None).await), ["p4", "p5"]);
    assert_eq!(keys(&view(&db.pool, Some(1), None).await), ["p5"]);
    assert_eq!(
        keys(&view(&db.pool, Some(1000), None).await),
        ["p1", "p2", "p3", "p4", "p5"]
    );
    assert_eq!(
        view(&db.pool, Some(2), None).await["p5"],
        json!({"id": "p5", "title": "post 5", "comments": [], "commentCount": 0})
    );
}

#[tokio::test]
async fn before_pages_backwards_through_every_post_exactly_once() {
    let db = query_db().await;
    five_posts(&db).await;
    // `before` is a post id: the page holds the `limit` newest posts created before it.
    let mut pages = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let page = view(&db.pool, Some(2), before.as_deref()).await;
        let ids: Vec<String> = keys(&page).into_iter().map(str::to_owned).collect();
        if ids.is_empty() {
            break;
        }
        before = Some(ids[0].clone());
        pages.push(ids);
    }
    assert_eq!(
        pages,
        vec![vec!["p4", "p5"], vec!["p2", "p3"], vec!["p1"]],
        "pages overlap, skip posts or are out of order"
    );
    // Without a limit: everything older than `before`.
    assert_eq!(keys(&view(&db.pool, None, Some("p3")).await), ["p1", "p2"]);
    // Nothing is older than the first post, and an unknown cursor matches nothing.
    assert_eq!(view(&db.pool, Some(2), Some("p1")).await, json!({}));
    assert_eq!(view(&db.pool, Some(2), Some("nosuchpost")).await, json!({}));
}

#[tokio::test]
async fn one_post_is_served_in_the_courses_shape_and_an_unknown_one_is_none() {
    let db = query_db().await;
    let mut conn = conn(&db).await;
    store::add_post(&mut conn, &post("p1", "t"), None, None)
        .await
        .unwrap()
        .unwrap();
    store::add_post(&mut conn, &post("p2", "other"), None, None)
        .await
        .unwrap()
        .unwrap();
    store::add_comment(&mut conn, &comment("c1", "p1", "hi"), None, None)
        .await
        .unwrap()
        .unwrap();
    let one: Value =
        serde_json::from_str(&store::post(&db.pool, "p1").await.unwrap().unwrap()).unwrap();
    assert_eq!(
        one,
        json!({"id": "p1", "title": "t", "comments": [{"id": "c1", "content": "hi", "status": "pending"}], "commentCount": 1})
    );
    assert!(store::post(&db.pool, "nosuchpost").await.unwrap().is_none());
}

/// The next notification on the view's channel, within the test's patience.
async fn next_announced(listener: &mut PgListener) -> String {
    tokio::time::timeout(WAIT, listener.recv())
        .await
        .expect("no notification")
        .unwrap()
        .payload()
        .to_owned()
}

#[tokio::test]
async fn the_reactions_announce_each_change_on_commit_to_every_listener_and_nothing_for_repeats() {
    let db = query_db().await;
    // Two listeners stand for two replicas: each hears every change.
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let mut listener = PgListener::connect_with(&db.pool).await.unwrap();
        listener.listen(VIEW_CHANGES).await.unwrap();
        replicas.push(listener);
    }
    let consumer = Consumer::new(
        db.pool.clone(),
        BusClient::new(&unreachable_bus_url(), None),
        ViewReactions::default(),
    );
    let batch = vec![
        envelope(1, &Event::PostCreated(post("p1", "t"))),
        envelope(2, &Event::CommentCreated(comment("c1", "p1", "hi"))),
        envelope(
            3,
            &Event::CommentUpdated(update("c1", "p1", CommentStatus::Approved, 2)),
        ),
        // Stale and repeated events change nothing, so they announce nothing.
        envelope(
            4,
            &Event::CommentUpdated(update("c1", "p1", CommentStatus::Rejected, 1)),
        ),
        envelope(5, &Event::PostCreated(post("p1", "again"))),
        envelope_of(6, &json!("SomethingNew"), &json!({"x": 1})),
    ];
    let outcome = consumer.deliver(batch.clone()).await.unwrap();
    assert_eq!((outcome.applied, outcome.cursor), (6, 6));
    let again = consumer.deliver(batch).await.unwrap();
    assert_eq!((again.applied, again.skipped), (0, 6));
    // A marker after everything: whatever was announced arrives before it.
    sqlx::query("SELECT pg_notify($1, 'marker')")
        .bind(VIEW_CHANGES)
        .execute(&db.pool)
        .await
        .unwrap();
    for listener in &mut replicas {
        let mut announced = Vec::new();
        loop {
            let payload = next_announced(listener).await;
            if payload == "marker" {
                break;
            }
            let change: Value = serde_json::from_str(&payload).unwrap();
            announced.push(json!([change["type"], change["seq"]]));
        }
        assert_eq!(
            announced,
            vec![
                json!(["PostCreated", 1]),
                json!(["CommentCreated", 2]),
                json!(["CommentUpdated", 3])
            ],
            "a redelivery or a stale event was announced, or a change was not"
        );
    }
    assert_eq!(status_of(&db.pool, "p1", "c1").await, "approved");
}

#[tokio::test]
async fn a_change_too_big_to_notify_is_announced_as_a_resync() {
    let db = query_db().await;
    let mut listener = PgListener::connect_with(&db.pool).await.unwrap();
    listener.listen(VIEW_CHANGES).await.unwrap();
    let consumer = Consumer::new(
        db.pool.clone(),
        BusClient::new(&unreachable_bus_url(), None),
        ViewReactions::default(),
    );
    let long = "x".repeat(10_000);
    consumer
        .deliver(vec![envelope(1, &Event::PostCreated(post("p1", &long)))])
        .await
        .unwrap();
    assert_eq!(next_announced(&mut listener).await, RESYNC);
}

/// A stand-in for the bus's read side: `GET /events?after=&limit=` over a fixed log.
struct FakeBus {
    url: String,
    server: ServerHandle,
}

#[derive(serde::Deserialize)]
struct After {
    after: i64,
    limit: usize,
}

async fn read_log(log: web::Data<Vec<Envelope>>, query: web::Query<After>) -> HttpResponse {
    let page: Vec<&Envelope> = log
        .iter()
        .filter(|e| e.seq > query.after)
        .take(query.limit)
        .collect();
    HttpResponse::Ok().json(page)
}

impl FakeBus {
    fn start(log: Vec<Envelope>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
        let log = web::Data::new(log);
        let server = HttpServer::new(move || {
            App::new()
                .app_data(log.clone())
                .route("/events", web::get().to(read_log))
        })
        .workers(1)
        .disable_signals()
        .shutdown_timeout(0)
        .listen(listener)
        .unwrap()
        .run();
        let handle = server.handle();
        tokio::spawn(server);
        Self {
            url,
            server: handle,
        }
    }

    async fn stop(self) {
        self.server.stop(false).await;
    }
}

/// The query app on port 0 reading `log` from a stand-in bus, ready (caught up with it).
async fn serve_query(db: &TestDatabase, log: Vec<Envelope>) -> (RunningApp, FakeBus) {
    let bus = FakeBus::start(log);
    let env = service_env(db, &bus.url);
    let app = RunningApp::start(&env, query::config_from_env, query::build).await;
    app.wait_ready(WAIT).await;
    (app, bus)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_view_catches_up_with_the_log_before_it_reports_ready() {
    let db = query_db().await;
    let log: Vec<Envelope> = (1..=1500)
        .map(|n| envelope(n, &Event::PostCreated(post(&format!("p{n}"), "t"))))
        .collect();
    let (app, bus) = serve_query(&db, log).await;
    // Ready means caught up: the whole log (more than one catch-up page) is in the view.
    let (status, whole) = app.get_json("/posts").await;
    assert_eq!(status, 200);
    assert_eq!(whole.as_object().unwrap().len(), 1500);
    assert_eq!(keys(&whole)[1499], "p1500");
    app.stop().await;
    bus.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_paging_is_a_400_json_error_and_an_unknown_post_is_a_404() {
    let db = query_db().await;
    let (app, bus) = serve_query(&db, Vec::new()).await;
    for query in ["limit=0", "limit=1001", "limit=-1", "limit=ten"] {
        let (status, error) = app.get_json(&format!("/posts?{query}")).await;
        assert_eq!(status, 400, "{query}: {error}");
        assert_eq!(error["error"]["code"], "bad_request", "{query}: {error}");
        assert!(error["error"]["message"].is_string());
    }
    for query in ["limit=1", "limit=1000"] {
        assert_eq!(
            app.get_json(&format!("/posts?{query}")).await,
            (200, json!({}))
        );
    }
    // Ids PostgreSQL text cannot hold name nothing (found by schemathesis: a 422 before).
    assert_eq!(app.get_json("/posts?before=a%00b").await, (200, json!({})));
    assert_eq!(app.get_json("/posts/a%00b").await.0, 404);
    let (status, error) = app.get_json("/posts/nosuchpost").await;
    assert_eq!(status, 404, "{error}");
    assert_eq!(error["error"]["code"], "not_found");

    app.deliver(&[envelope(1, &Event::PostCreated(post("p1", "t")))])
        .await;
    assert_eq!(
        app.get_json("/posts/p1").await,
        (
            200,
            json!({"id": "p1", "title": "t", "comments": [], "commentCount": 0})
        )
    );
    app.stop().await;
    bus.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_page_is_never_served_after_the_view_changes() {
    let db = query_db().await;
    let (app, bus) = serve_query(&db, Vec::new()).await;
    let pages = ["/posts", "/posts?limit=1", "/posts?limit=5&before=p2"];
    // Each page rendered (and cached) twice while the view is empty.
    for page in pages {
        assert_eq!(app.get_json(page).await, (200, json!({})));
        assert_eq!(app.get_json(page).await, (200, json!({})));
    }

    app.deliver(&[
        envelope(1, &Event::PostCreated(post("p1", "first"))),
        envelope(2, &Event::PostCreated(post("p2", "second"))),
    ])
    .await;
    assert_eq!(keys(&app.get_json(pages[0]).await.1), ["p1", "p2"]);
    assert_eq!(keys(&app.get_json(pages[1]).await.1), ["p2"]);
    assert_eq!(keys(&app.get_json(pages[2]).await.1), ["p1"]);

    app.deliver(&[envelope(
        3,
        &Event::CommentCreated(comment("c1", "p1", "hi")),
    )])
    .await;
    let (_, whole) = app.get_json("/posts").await;
    assert_eq!(whole["p1"]["comments"][0]["status"], "pending");
    assert_eq!(
        app.get_json(pages[2]).await.1["p1"]["comments"][0]["status"],
        "pending"
    );

    app.deliver(&[envelope(
        4,
        &Event::CommentUpdated(update("c1", "p1", CommentStatus::Rejected, 1)),
    )])
    .await;
    let (_, whole) = app.get_json("/posts").await;
    assert_eq!(
        whole["p1"]["comments"],
        json!([{"id": "c1", "content": "content of c1", "status": "rejected"}])
    );
    assert_eq!(
        app.get_json(pages[2]).await.1["p1"]["comments"][0]["status"],
        "rejected"
    );
    app.stop().await;
    bus.stop().await;
}

/// The view as read whole from the database, and its posts' order.
async fn view_in_the_database(pool: &PgPool) -> (Value, Vec<String>) {
    let view = view(pool, None, None).await;
    let order = keys(&view).into_iter().map(str::to_owned).collect();
    (view, order)
}

async fn whole_view_of(app: &RunningApp) -> (Value, Vec<String>) {
    let (status, view) = app.get_json("/posts").await;
    assert_eq!(status, 200);
    let order = keys(&view).into_iter().map(str::to_owned).collect();
    (view, order)
}

/// Two replicas on one database, deliveries split between them: each one's whole view,
/// patched post by post from what it applied and what it heard, is what the database
/// holds: at once on the replica that applied a change, once heard on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_patch_their_whole_view_to_exactly_what_the_database_holds() {
    let db = query_db().await;
    let (a, bus) = serve_query(&db, Vec::new()).await;
    let b = RunningApp::start(
        &service_env(&db, &bus.url),
        query::config_from_env,
        query::build,
    )
    .await;
    b.wait_ready(WAIT).await;
    let (approved, rejected) = (CommentStatus::Approved, CommentStatus::Rejected);
    let mut steps: Vec<Vec<Event>> = vec![
        vec![Event::PostCreated(post("p1", "first"))],
        vec![Event::CommentCreated(comment("c1", "p1", "hi"))],
        // A comment before its post, then the post: it shows with the comment.
        vec![Event::CommentCreated(comment("c2", "p0", "early"))],
        vec![Event::PostCreated(post("p0", "late"))],
        vec![Event::CommentUpdated(update("c1", "p1", approved, 1))],
        // Stale: changes nothing, announces nothing.
        vec![Event::CommentUpdated(update("c1", "p1", rejected, 0))],
        // Too big to announce: the other replica hears a resync.
        vec![Event::PostCreated(post("p2", &"x".repeat(10_000)))],
        // Enough to be applied together: one resync for all of them.
        (10..30)
            .map(|n| Event::PostCreated(post(&format!("p{n}"), "many")))
            .collect(),
    ];
    // More comments on p1 than the view shows: c1 drops out, the count goes on.
    steps.extend((3..8).map(|n| {
        vec![Event::CommentCreated(comment(
            &format!("c{n}"),
            "p1",
            "more",
        ))]
    }));
    let mut seq = 0;
    for (n, events) in steps.into_iter().enumerate() {
        let (applier, other) = if n % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let batch: Vec<Envelope> = events
            .iter()
            .map(|event| {
                seq += 1;
                envelope(seq, event)
            })
            .collect();
        applier.deliver(&batch).await;
        // Before the database is read: the applier's own notification may not be heard yet.
        let applied = whole_view_of(applier).await;
        let expected = view_in_the_database(&db.pool).await;
        assert_eq!(applied, expected, "step {n}, applier");
        eventually(
            WAIT,
            &format!("step {n} heard by the other replica"),
            || async { whole_view_of(other).await == expected },
        )
        .await;
    }
    assert_eq!(whole_view_of(&a).await.1.len(), 23);
    a.stop().await;
    b.stop().await;
    bus.stop().await;
}

/// A delivery as the bus sends it: the status the consumer answered.
async fn deliver_status(app: &RunningApp, batch: &[Envelope]) -> u16 {
    app.post_json("/events", &serde_json::to_string(batch).unwrap())
        .await
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_cannot_be_applied_is_parked_after_a_few_attempts_then_retried_or_discarded()
{
    let db = query_db().await;
    // The database refuses these two posts, as it would a value no check foresaw.
    sqlx::raw_sql(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'refused: %', NEW.title USING ERRCODE = 'check_violation'; END $$;
         CREATE TRIGGER refuse BEFORE INSERT ON posts FOR EACH ROW
         WHEN (NEW.title LIKE 'poison%') EXECUTE FUNCTION refuse();",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let (app, bus) = serve_query(&db, Vec::new()).await;
    let batch = vec![
        envelope(1, &Event::PostCreated(post("p1", "fine"))),
        envelope(2, &Event::PostCreated(post("p2", "poison one"))),
        envelope(3, &Event::PostCreated(post("p3", "after it"))),
        envelope(4, &Event::PostCreated(post("p4", "poison two"))),
        envelope(5, &Event::PostCreated(post("p5", "last"))),
    ];
    // The bus retries a refused delivery; each attempt is counted, then it is parked.
    let mut statuses = Vec::new();
    loop {
        let status = deliver_status(&app, &batch).await;
        statuses.push(status);
        if status == 200 {
            break;
        }
        assert!(statuses.len() < 20, "never parked: {statuses:?}");
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 409).count(),
        2 * (PARK_AFTER_ATTEMPTS as usize - 1),
        "{statuses:?}"
    );
    assert_eq!(keys(&app.get_json("/posts").await.1), ["p1", "p3", "p5"]);
    let (status, parked) = app.get_json("/parked").await;
    assert_eq!(status, 200);
    let seqs: Vec<i64> = parked
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(seqs, [2, 4]);
    assert!(parked[0]["error"]
        .as_str()
        .unwrap()
        .contains("refused: poison one"));

    // Retried while the cause is still there: it stays parked.
    let (status, _) = app.post_json("/parked/2/retry", "").await;
    assert_eq!(status, 409);
    // The cause fixed, retried: applied; the other discarded.
    sqlx::query("DROP TRIGGER refuse ON posts")
        .execute(&db.pool)
        .await
        .unwrap();
    let (status, answer) = app.post_json("/parked/2/retry", "").await;
    assert_eq!(status, 200, "{answer}");
    let discard = |seq: i64| {
        reqwest::Client::new()
            .delete(format!("{}/parked/{seq}", app.url))
            .send()
    };
    assert_eq!(discard(4).await.unwrap().status(), 200);
    assert_eq!(discard(4).await.unwrap().status(), 404, "discarded twice");
    // A retried event is applied after those that followed it: the view shows p2 last.
    assert_eq!(
        keys(&app.get_json("/posts").await.1),
        ["p1", "p3", "p5", "p2"]
    );
    assert_eq!(app.get_json("/parked").await.1, json!([]));
    app.stop().await;
    bus.stop().await;
}

/// Every kind of run the view meets: comments before their posts, updates overtaking
/// their comments, older versions after newer ones, equal versions, repeats, unknown
/// types.
fn mixed_run() -> Vec<Envelope> {
    use CommentStatus::{Approved, Pending, Rejected};
    let mut events = Vec::new();
    for n in 0..12 {
        let post_id = format!("p{n}");
        if n % 3 == 0 {
            events.push(Event::CommentCreated(comment(
                &format!("early{n}"),
                &post_id,
                "early",
            )));
        }
        events.push(Event::PostCreated(post(&post_id, &format!("title {n}"))));
        events.push(Event::CommentCreated(comment(
            &format!("c{n}"),
            &post_id,
            "hello",
        )));
        match n % 4 {
            0 => {
                events.push(Event::CommentUpdated(update(
                    &format!("c{n}"),
                    &post_id,
                    Approved,
                    2,
                )));
                events.push(Event::CommentUpdated(update(
                    &format!("c{n}"),
                    &post_id,
                    Rejected,
                    1,
                )));
            }
            1 => {
                events.push(Event::CommentUpdated(update(
                    &format!("c{n}"),
                    &post_id,
                    Rejected,
                    1,
                )));
                events.push(Event::CommentUpdated(update(
                    &format!("c{n}"),
                    &post_id,
                    Approved,
                    1,
                )));
            }
            2 => events.push(Event::CommentUpdated(update(
                &format!("late{n}"),
                &post_id,
                Approved,
                3,
            ))),
            _ => {
                events.push(Event::CommentUpdated(update(
                    &format!("c{n}"),
                    &post_id,
                    Pending,
                    0,
                )));
                events.push(Event::PostCreated(post(&post_id, "a repeat is ignored")));
            }
        }
    }
    let mut run: Vec<Envelope> = events
        .iter()
        .enumerate()
        .map(|(i, event)| envelope(i as i64 + 1, event))
        .collect();
    let next = run.len() as i64 + 1;
    run.push(envelope_of(
        next,
        &json!("SomethingNew"),
        &json!({"id": "x"}),
    ));
    run
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_applied_together_leaves_the_view_that_applying_it_one_by_one_leaves() {
    let run = mixed_run();
    assert!(run.len() > 40);
    let (together, one_by_one) = (query_db().await, query_db().await);
    let bus = BusClient::new(&unreachable_bus_url(), None);
    let consumer = Consumer::new(together.pool.clone(), bus.clone(), ViewReactions::default());
    let outcome = consumer.deliver(run.clone()).await.unwrap();
    assert_eq!(outcome.applied, run.len());
    let consumer = Consumer::new(one_by_one.pool.clone(), bus, ViewReactions::default());
    for envelope in &run {
        consumer.deliver(vec![envelope.clone()]).await.unwrap();
    }
    let all = view(&together.pool, None, None).await;
    assert_eq!(all, view(&one_by_one.pool, None, None).await);
    assert_eq!(keys(&all).len(), 12);
    assert_eq!(status_of(&together.pool, "p0", "c0").await, "approved");
    assert_eq!(status_of(&together.pool, "p1", "c1").await, "approved");
    assert_eq!(status_of(&together.pool, "p2", "late2").await, "approved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_in_a_run_applied_together_is_found_one_by_one_and_parked() {
    let db = query_db().await;
    sqlx::raw_sql(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'refused: %', NEW.title USING ERRCODE = 'check_violation'; END $$;
         CREATE TRIGGER refuse BEFORE INSERT ON posts FOR EACH ROW
         WHEN (NEW.title LIKE 'poison%') EXECUTE FUNCTION refuse();",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let run: Vec<Envelope> = (1..=40)
        .map(|n| {
            let title = if n == 25 {
                "poison".to_owned()
            } else {
                format!("post {n}")
            };
            envelope(n, &Event::PostCreated(post(&format!("p{n}"), &title)))
        })
        .collect();
    let bus = BusClient::new(&unreachable_bus_url(), None);
    let consumer = Consumer::new(db.pool.clone(), bus, ViewReactions::default());
    for attempt in 1..PARK_AFTER_ATTEMPTS {
        let refused = consumer.deliver(run.clone()).await.unwrap_err();
        assert!(
            refused.to_string().contains("seq 25"),
            "attempt {attempt}: {refused}"
        );
    }
    let outcome = consumer.deliver(run.clone()).await.unwrap();
    assert_eq!(outcome.cursor, 40);
    assert_eq!(keys(&view(&db.pool, None, None).await).len(), 39);
    let parked = consumer.parked().await.unwrap();
    assert_eq!(parked.iter().map(|p| p.seq).collect::<Vec<_>>(), [25]);
}

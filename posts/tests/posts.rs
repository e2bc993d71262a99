//! posts against real PostgreSQL: a post and its `PostCreated` event are written in one
//! transaction (both or neither), posts list in creation order, and over HTTP a created
//! post answers 201 while the bus is down and a refused one writes nothing.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

use contract::TraceParent;
use posts::domain::Title;
use posts::store;
use serde_json::{json, Value};
use testkit::{
    assert_written_in_one_transaction, count_rows, hide_outbox, init_test_logging,
    outbox_publications, restore_outbox, service_env, unreachable_bus_url, RunningApp,
    TestDatabase,
};
use uuid::Uuid;

/// A fresh database with the posts schema and the shared tables (outbox).
async fn posts_db() -> TestDatabase {
    init_test_logging();
    TestDatabase::new(&service_kit::db::with_shared_migrations(&posts::MIGRATOR)).await
}

#[tokio::test]
async fn a_post_and_its_post_created_event_are_written_in_one_transaction() {
    let db = posts_db().await;
    let trace = TraceParent::new_root();
    let (post, row) = store::create_post(&db.pool, Title::parse("  Hello  ").unwrap(), &trace)
        .await
        .unwrap();
    assert_eq!(post.title, "Hello");
    assert_eq!(
        testkit::outbox_publications(&db.pool).await[0]["id"],
        row.event_id.to_string(),
        "the row handed to the relay is the committed one"
    );

    let stored: Vec<(Uuid, String)> = sqlx::query_as("SELECT id, title FROM posts")
        .fetch_all(&db.pool)
        .await
        .unwrap();
    assert_eq!(stored, vec![(post.id, "Hello".to_owned())]);
    let outbox = outbox_publications(&db.pool).await;
    assert_eq!(outbox.len(), 1, "expected exactly one outbox row");
    let publication = &outbox[0];
    let event_id: Uuid = sqlx::query_scalar("SELECT event_id FROM outbox")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        publication["id"],
        json!(event_id),
        "outbox key is the event id"
    );
    assert_eq!(publication["type"], "PostCreated");
    assert_eq!(
        publication["data"],
        json!({"id": post.id.to_string(), "title": "Hello"})
    );
    assert_eq!(publication["source"], "posts");
    assert_eq!(publication["traceparent"], trace.to_string());

    assert_written_in_one_transaction(&db.pool, &["posts", "outbox"], "post and event").await;
}

#[tokio::test]
async fn all_posts_lists_posts_in_creation_order() {
    let db = posts_db().await;
    let trace = TraceParent::new_root();
    let mut created = Vec::new();
    for title in ["zebra", "apple", "mango", "banana"] {
        let (post, _) = store::create_post(&db.pool, Title::parse(title).unwrap(), &trace)
            .await
            .unwrap();
        created.push((post.id, post.title));
    }
    let listed: Vec<(Uuid, String)> = store::all_posts(&db.pool)
        .await
        .unwrap()
        .into_iter()
        .map(|p| (p.id, p.title))
        .collect();
    assert_eq!(listed, created);
}

#[tokio::test]
async fn when_the_event_cannot_be_written_no_post_remains() {
    let db = posts_db().await;
    let trace = TraceParent::new_root();
    hide_outbox(&db.pool).await;
    let failed = store::create_post(&db.pool, Title::parse("lost").unwrap(), &trace).await;
    assert!(failed.is_err(), "the outbox insert should have failed");
    assert_eq!(
        count_rows(&db.pool, "posts").await,
        0,
        "a post without its event"
    );

    restore_outbox(&db.pool).await;
    store::create_post(&db.pool, Title::parse("kept").unwrap(), &trace)
        .await
        .unwrap();
    assert_eq!(count_rows(&db.pool, "posts").await, 1);
    assert_eq!(count_rows(&db.pool, "outbox").await, 1);
}

/// The posts app on port 0, its bus an unused port: the relay retries and keeps every
/// outbox row, so tests can see what each request wrote.
async fn serve_posts(db: &TestDatabase) -> RunningApp {
    let env = service_env(db, &unreachable_bus_url());
    RunningApp::start(&env, posts::config_from_env, posts::build).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_a_post_answers_201_with_a_uuid_v7_id_even_while_the_bus_is_down() {
    let db = posts_db().await;
    let app = serve_posts(&db).await;

    let (status, first) = app
        .post_json("/posts/create", r#"{"title":"  First post  "}"#)
        .await;
    assert_eq!(status, 201, "{first}");
    let id = first["id"].as_str().unwrap().to_owned();
    assert_eq!(first, json!({"id": id, "title": "First post"}));
    assert_eq!(Uuid::parse_str(&id).unwrap().get_version_num(), 7);
    // The course's client may also post to /posts.
    let (status, second) = app.post_json("/posts", r#"{"title":"Second"}"#).await;
    assert_eq!(status, 201, "{second}");

    let (status, listed) = app.get_json("/posts").await;
    assert_eq!(status, 200, "{listed}");
    let second_id = second["id"].as_str().unwrap();
    assert_eq!(
        listed.as_object().unwrap().keys().collect::<Vec<_>>(),
        vec![&id, &second_id.to_owned()],
        "not in creation order"
    );
    assert_eq!(listed[&id], first);
    assert_eq!(listed[second_id], second);

    // The bus is unreachable: both events wait in the outbox, one per post.
    let published: Vec<Value> = outbox_publications(&db.pool)
        .await
        .into_iter()
        .map(|p| p["data"].clone())
        .collect();
    assert_eq!(published, vec![first, second]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_post_writes_neither_a_post_nor_an_event() {
    let db = posts_db().await;
    let app = serve_posts(&db).await;
    let cases = [
        ("missing title", "{}".to_owned(), 422, "invalid_body"),
        (
            "title not a string",
            r#"{"title":5}"#.to_owned(),
            422,
            "invalid_body",
        ),
        (
            "blank title",
            r#"{"title":"   "}"#.to_owned(),
            422,
            "validation_failed",
        ),
        (
            "201 characters",
            json!({"title": "x".repeat(201)}).to_string(),
            422,
            "validation_failed",
        ),
        ("malformed JSON", "{".to_owned(), 400, "malformed_json"),
        (
            "over 64 KiB",
            json!({"title": "x".repeat(70 * 1024)}).to_string(),
            413,
            "payload_too_large",
        ),
    ];
    for (what, body, expected, code) in cases {
        let (status, error) = app.post_json("/posts/create", &body).await;
        assert_eq!(status, expected, "{what}: {error}");
        assert_eq!(error["error"]["code"], code, "{what}: {error}");
        assert!(error["error"]["message"].is_string(), "{what}: {error}");
    }
    let not_json = reqwest::Client::new()
        .post(format!("{}/posts/create", app.url))
        .header("content-type", "text/plain")
        .body(r#"{"title":"x"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(not_json.status(), 415);

    assert_eq!(count_rows(&db.pool, "posts").await, 0);
    assert_eq!(count_rows(&db.pool, "outbox").await, 0);
    // Exactly 200 characters is still a title.
    let (status, _) = app
        .post_json(
            "/posts/create",
            &json!({"title": "y".repeat(200)}).to_string(),
        )
        .await;
    assert_eq!(status, 201);
    assert_eq!(count_rows(&db.pool, "posts").await, 1);
    assert_eq!(count_rows(&db.pool, "outbox").await, 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_whose_event_cannot_be_written_is_a_500_and_leaves_no_post() {
    let db = posts_db().await;
    let app = serve_posts(&db).await;
    hide_outbox(&db.pool).await;
    let (status, error) = app.post_json("/posts/create", r#"{"title":"half"}"#).await;
    // A table missing from our own schema is our bug, not an outage to wait out.
    assert_eq!(status, 500, "{error}");
    assert_eq!(error["error"]["code"], "internal");
    assert_eq!(
        error["error"]["message"], "internal error",
        "the cause must be logged, not sent"
    );
    assert_eq!(
        count_rows(&db.pool, "posts").await,
        0,
        "a post without its event"
    );
    restore_outbox(&db.pool).await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_title_with_a_control_character_is_a_422_and_leaves_nothing() {
    let db = posts_db().await;
    let app = serve_posts(&db).await;
    let (status, error) = app
        .post_json("/posts/create", r#"{"title":"nul \u0000 inside"}"#)
        .await;
    assert_eq!(status, 422, "{error}");
    assert_eq!(error["error"]["code"], "validation_failed");
    assert_eq!(error["error"]["field"], "title");
    assert_eq!(count_rows(&db.pool, "posts").await, 0);
    assert_eq!(count_rows(&db.pool, "outbox").await, 0);
    app.stop().await;
}

//! moderation against real PostgreSQL: the blocklist and its configuration, one stored
//! decision per comment, and one `CommentModerated` event per decision, written with it
//! in one transaction — however often the comment's `CommentCreated` arrives.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

use contract::{CommentCreated, CommentStatus, Envelope, Event};
use moderation::domain::Blocklist;
use moderation::reactions::Moderator;
use moderation::store;
use serde_json::{json, Value};
use service_kit::bus::BusClient;
use service_kit::config::Env;
use service_kit::consumer::{Consumer, CursorStep};
use sqlx::PgPool;
use testkit::{
    assert_trace_continued, assert_written_in_one_transaction, delivered, hide_outbox,
    init_test_logging, outbox_publications, restore_outbox, service_env_with, unreachable_bus_url,
    RunningApp, TestDatabase,
};

/// A fresh database with the moderation schema and the shared tables (outbox, cursor).
async fn moderation_db() -> TestDatabase {
    init_test_logging();
    TestDatabase::new(&service_kit::db::with_shared_migrations(
        &moderation::MIGRATOR,
    ))
    .await
}

/// A consumer with the course's blocklist; the batches these tests deliver are gap-free,
/// so it never reads from the (unreachable) bus.
fn consumer(db: &TestDatabase) -> Consumer<Moderator> {
    Consumer::new(
        db.pool.clone(),
        BusClient::new(&unreachable_bus_url(), None),
        Moderator {
            blocklist: Blocklist::course_default(),
        },
    )
}

fn comment_created(id: &str, content: &str) -> Event {
    Event::CommentCreated(CommentCreated {
        id: id.to_owned(),
        post_id: "p1".to_owned(),
        content: content.to_owned(),
        status: CommentStatus::Pending,
    })
}

/// An envelope as the bus delivers it, from comments (which publishes `CommentCreated`).
fn envelope(seq: i64, event: &Event) -> Envelope {
    delivered(seq, event, "comments")
}

async fn decisions(pool: &PgPool) -> Vec<(String, String, String)> {
    sqlx::query_as("SELECT comment_id, post_id, status FROM decisions ORDER BY comment_id")
        .fetch_all(pool)
        .await
        .unwrap()
}

fn blocklist_from(value: Option<&str>) -> Blocklist {
    let mut pairs = vec![
        ("DATABASE_URL", "postgres://unused"),
        ("EVENT_BUS_URL", "http://event-bus-srv"),
    ];
    if let Some(value) = value {
        pairs.push(("MODERATION_BLOCKLIST", value));
    }
    moderation::config_from_env(&Env::from_pairs(pairs))
        .unwrap()
        .blocklist
}

#[test]
fn the_course_rule_rejects_orange_in_any_case_anywhere() {
    let list = Blocklist::course_default();
    for rejected in [
        "orange",
        "ORANGE",
        "I like OrAnGe juice",
        "oranges!",
        "blood-orange",
    ] {
        assert_eq!(list.decide(rejected), CommentStatus::Rejected, "{rejected}");
    }
    for approved in ["apple", "oran ge", "Nice post", ""] {
        assert_eq!(list.decide(approved), CommentStatus::Approved, "{approved}");
    }
}

#[test]
fn moderation_blocklist_overrides_the_default_and_ignores_spaces_and_empty_entries() {
    assert_eq!(blocklist_from(None), Blocklist::course_default());
    // Empty counts as unset, as in a Kubernetes manifest.
    assert_eq!(blocklist_from(Some("")), Blocklist::course_default());
    assert_eq!(blocklist_from(Some("   ")), Blocklist::course_default());

    let custom = blocklist_from(Some(" Spam, ,EGGS ,, "));
    assert_eq!(custom, Blocklist::parse("spam,eggs"));
    assert_eq!(custom.decide("SPAM and ham"), CommentStatus::Rejected);
    assert_eq!(custom.decide("green eggs"), CommentStatus::Rejected);
    assert_eq!(
        custom.decide("orange"),
        CommentStatus::Approved,
        "an override replaces the default"
    );
    // An empty entry must never become "" (which every comment contains).
    assert_eq!(custom.decide("ham"), CommentStatus::Approved);
    assert_eq!(
        Blocklist::parse(", ,").decide("anything"),
        CommentStatus::Approved
    );
}

#[tokio::test]
async fn a_decision_is_recorded_once_with_its_event_and_never_changed() {
    let db = moderation_db().await;
    let mut conn = db.pool.acquire().await.unwrap();
    let event = |n: i64| service_kit::outbox::OutboxRow {
        event_id: uuid::Uuid::now_v7(),
        publication: json!({"type": "CommentModerated", "data": {"n": n}}).to_string(),
    };
    assert!(store::record_decision(
        &mut conn,
        "c1",
        "p1",
        CommentStatus::Approved,
        &event(1),
        None
    )
    .await
    .unwrap()
    .unwrap());
    assert!(
        !store::record_decision(
            &mut conn,
            "c1",
            "p1",
            CommentStatus::Rejected,
            &event(2),
            None
        )
        .await
        .unwrap()
        .unwrap(),
        "a second decision was recorded"
    );
    assert!(store::record_decision(
        &mut conn,
        "c2",
        "p1",
        CommentStatus::Rejected,
        &event(3),
        None
    )
    .await
    .unwrap()
    .unwrap());
    assert_eq!(
        decisions(&db.pool).await,
        vec![
            ("c1".into(), "p1".into(), "approved".into()),
            ("c2".into(), "p1".into(), "rejected".into()),
        ]
    );
    let events: Vec<i64> = testkit::outbox_publications(&db.pool)
        .await
        .iter()
        .map(|publication| publication["data"]["n"].as_i64().unwrap())
        .collect();
    assert_eq!(events, [1, 3], "an event without its decision, or twice");
}

/// With the cursor's step, a decision and its event are written only from the cursor
/// the step expects, and move it.
#[tokio::test]
async fn a_decision_with_the_cursors_step_is_made_only_from_the_cursor_it_expects() {
    let db = moderation_db().await;
    let mut conn = db.pool.acquire().await.unwrap();
    let event = service_kit::outbox::OutboxRow {
        event_id: uuid::Uuid::now_v7(),
        publication: json!({"type": "CommentModerated", "data": {}}).to_string(),
    };
    let step = |from: i64| CursorStep {
        from,
        to: from + 1,
        to_id: uuid::Uuid::from_u128(from as u128 + 1),
    };
    for (from, decided) in [(3, None), (0, Some(true))] {
        let made = store::record_decision(
            &mut conn,
            "c1",
            "p1",
            CommentStatus::Approved,
            &event,
            Some(step(from)),
        )
        .await
        .unwrap();
        assert_eq!(made, decided, "a step from {from}");
        let rows = usize::from(decided.is_some());
        assert_eq!(decisions(&db.pool).await.len(), rows);
        assert_eq!(testkit::outbox_publications(&db.pool).await.len(), rows);
    }
    let cursor: i64 = sqlx::query_scalar("SELECT seq FROM consumer_cursor")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(cursor, 1);
}

#[tokio::test]
async fn a_new_comment_gets_one_decision_and_one_comment_moderated_event_in_one_transaction() {
    let db = moderation_db().await;
    let consumer = consumer(&db);
    let fine = envelope(1, &comment_created("c1", "Nice post"));
    let blocked = envelope(2, &comment_created("c2", "I love ORANGE juice"));
    let outcome = consumer.deliver(vec![fine.clone(), blocked]).await.unwrap();
    assert_eq!((outcome.applied, outcome.cursor), (2, 2));

    assert_eq!(
        decisions(&db.pool).await,
        vec![
            ("c1".into(), "p1".into(), "approved".into()),
            ("c2".into(), "p1".into(), "rejected".into()),
        ]
    );
    let events = outbox_publications(&db.pool).await;
    let data: Vec<&Value> = events.iter().map(|e| &e["data"]).collect();
    assert_eq!(
        data,
        vec![
            &json!({"id": "c1", "postId": "p1", "content": "Nice post", "status": "approved"}),
            &json!({"id": "c2", "postId": "p1", "content": "I love ORANGE juice", "status": "rejected"}),
        ]
    );
    assert!(events.iter().all(|e| e["type"] == "CommentModerated"));
    assert!(events.iter().all(|e| e["source"] == "moderation"));
    assert_trace_continued(
        fine.traceparent.as_deref(),
        events[0]["traceparent"].as_str(),
    );
    assert_written_in_one_transaction(
        &db.pool,
        &["decisions", "outbox", "consumer_cursor"],
        "decision, event and cursor",
    )
    .await;
}

#[tokio::test]
async fn a_redelivered_comment_created_yields_no_second_decision_and_no_second_event() {
    let db = moderation_db().await;
    let consumer = consumer(&db);
    let created = envelope(1, &comment_created("c1", "Nice post"));
    consumer.deliver(vec![created.clone()]).await.unwrap();

    // The bus delivers the same seq again (at-least-once): skipped by the cursor.
    let again = consumer.deliver(vec![created]).await.unwrap();
    assert_eq!((again.applied, again.skipped, again.cursor), (0, 1, 1));
    // The same comment published twice (the course's services may): a new seq, and
    // even with other content the stored decision stands and no event follows.
    let republished = envelope(2, &comment_created("c1", "now with orange"));
    let outcome = consumer.deliver(vec![republished]).await.unwrap();
    assert_eq!((outcome.applied, outcome.cursor), (1, 2));

    assert_eq!(
        decisions(&db.pool).await,
        vec![("c1".into(), "p1".into(), "approved".into())]
    );
    let events = outbox_publications(&db.pool).await;
    assert_eq!(events.len(), 1, "a second CommentModerated: {events:?}");
    assert_eq!(events[0]["data"]["status"], "approved");
}

#[tokio::test]
async fn when_the_event_cannot_be_written_no_decision_is_kept() {
    let db = moderation_db().await;
    let consumer = consumer(&db);
    hide_outbox(&db.pool).await;
    let created = envelope(1, &comment_created("c1", "Nice post"));
    assert!(consumer.deliver(vec![created.clone()]).await.is_err());
    // A decision kept without its event would be announced never.
    assert!(decisions(&db.pool).await.is_empty());
    assert_eq!(consumer.cursor().await.unwrap(), 0);

    restore_outbox(&db.pool).await;
    consumer.deliver(vec![created]).await.unwrap();
    assert_eq!(decisions(&db.pool).await.len(), 1);
    assert_eq!(outbox_publications(&db.pool).await.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_moderates_deliveries_with_the_configured_blocklist() {
    let db = moderation_db().await;
    let bus = unreachable_bus_url();
    let env = service_env_with(&db, &bus, [("MODERATION_BLOCKLIST", "spam, eggs")]);
    let app = RunningApp::start(&env, moderation::config_from_env, moderation::build).await;

    let outcome = app
        .deliver(&[
            envelope(1, &comment_created("c1", "Buy SPAM now")),
            envelope(2, &comment_created("c2", "orange is fine here")),
        ])
        .await;
    assert_eq!(
        outcome,
        json!({"applied": 2, "skipped": 0, "cursor": 2, "wants": ["CommentCreated"]})
    );
    assert_eq!(
        decisions(&db.pool).await,
        vec![
            ("c1".into(), "p1".into(), "rejected".into()),
            ("c2".into(), "p1".into(), "approved".into()),
        ]
    );
    // The bus is unreachable: both events wait in the outbox.
    assert_eq!(outbox_publications(&db.pool).await.len(), 2);
    app.stop().await;
}

//! Publishing and reading the log over HTTP: idempotence, validation, authentication,
//! paging and replay.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

use serde_json::{json, Value};
use std::time::Duration;
use testkit::bus::*;

use testkit::{eventually, RecordingSubscriber};

const WAIT: Duration = Duration::from_secs(30);

async fn post_raw(
    bus: &RunningBus,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/events", bus.url()))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn republishing_an_id_keeps_one_entry_and_answers_the_original_seq() {
    let db = test_db().await;
    let bus = start_bus(&db, BusOptions::default()).await;
    let client = bus.client();
    let other = numbered(0);
    let event = numbered(1);
    client.publish(&[other]).await.unwrap();
    let first = client.publish(std::slice::from_ref(&event)).await.unwrap();
    let again = client.publish(std::slice::from_ref(&event)).await.unwrap();
    assert_eq!(first[0].seq, 2);
    assert!(!first[0].duplicate);
    assert_eq!(again[0].seq, 2);
    assert!(again[0].duplicate);
    // Twice within one batch, and alongside a new event.
    let fresh = numbered(2);
    let mixed = client
        .publish(&[event.clone(), fresh.clone(), fresh])
        .await
        .unwrap();
    assert_eq!(
        mixed
            .iter()
            .map(|a| (a.seq, a.duplicate))
            .collect::<Vec<_>>(),
        [(2, true), (3, false), (3, true)]
    );
    assert_eq!(whole_log(&bus).await.len(), 3);
    bus.stop().await;
}

#[tokio::test]
async fn a_course_style_event_gets_id_seq_and_time_and_an_unknown_type_round_trips_untouched() {
    let db = test_db().await;
    let bus = start_bus(&db, BusOptions::default()).await;
    let (status, answer) = post_raw(
        &bus,
        "application/json",
        r#"{"type":"PostCreated","data":{"id":"abc","title":"t"}}"#,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "OK");
    assert_eq!(answer["events"][0]["seq"], 1);
    let unknown =
        json!({"type": "PostLiked", "data": {"postId": "abc", "deep": {"list": [1, "two", null]}}});
    let (status, _) = post_raw(&bus, "application/json", unknown.to_string()).await;
    assert_eq!(status, 200);
    let log = whole_log(&bus).await;
    assert_eq!(log[0]["type"], "PostCreated");
    assert_eq!(log[0]["data"], json!({"id": "abc", "title": "t"}));
    assert_eq!(log[0]["id"], answer["events"][0]["id"]);
    assert!(log[0]["occurredAt"].is_string());
    assert_eq!(log[1]["type"], "PostLiked");
    assert_eq!(log[1]["data"], unknown["data"]);
    assert_eq!(log[1]["seq"], 2);
    bus.stop().await;
}

#[tokio::test]
async fn bad_input_gets_the_right_status_a_json_error_and_leaves_the_log_unchanged() {
    let db = test_db().await;
    let bus = start_bus(&db, BusOptions::default()).await;
    bus.client().publish(&[numbered(0)]).await.unwrap();
    let too_large = format!(
        r#"{{"type":"Big","data":{{"blob":"{}"}}}}"#,
        "x".repeat(contract::PUBLISH_LIMIT + 1)
    );
    let cases: Vec<(&str, &str, String, u16, &str)> = vec![
        (
            "invalid JSON",
            "application/json",
            "{not json".into(),
            400,
            "malformed_json",
        ),
        (
            "empty body",
            "application/json",
            String::new(),
            400,
            "malformed_json",
        ),
        (
            "missing type",
            "application/json",
            r#"{"data":{}}"#.into(),
            422,
            "invalid_body",
        ),
        (
            "data not an object",
            "application/json",
            r#"{"type":"A","data":[1]}"#.into(),
            422,
            "invalid_body",
        ),
        (
            "data missing",
            "application/json",
            r#"{"type":"A"}"#.into(),
            422,
            "invalid_body",
        ),
        (
            "type not a string",
            "application/json",
            r#"{"type":5,"data":{}}"#.into(),
            422,
            "invalid_body",
        ),
        (
            "empty type",
            "application/json",
            r#"{"type":"  ","data":{}}"#.into(),
            422,
            "validation_failed",
        ),
        (
            "one bad event in a batch",
            "application/json",
            r#"[{"type":"A","data":{}},{"type":"B","data":"x"}]"#.into(),
            422,
            "invalid_body",
        ),
        (
            "not an object or array",
            "application/json",
            "42".into(),
            422,
            "invalid_body",
        ),
        (
            "body over the publish limit (1 MiB)",
            "application/json",
            too_large,
            413,
            "payload_too_large",
        ),
        (
            "wrong content type",
            "text/plain",
            r#"{"type":"A","data":{}}"#.into(),
            415,
            "unsupported_media_type",
        ),
    ];
    for (what, content_type, body, status, code) in cases {
        let (got, answer) = post_raw(&bus, content_type, body).await;
        assert_eq!(got, status, "{what}: {answer}");
        assert_eq!(answer["error"]["code"], code, "{what}: {answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}"
        );
    }
    assert_eq!(
        whole_log(&bus).await.len(),
        1,
        "a rejected publish wrote to the log"
    );
    for bad_query in ["after=-1", "limit=0", "after=abc"] {
        let response = reqwest::get(format!("{}/events?{bad_query}", bus.url()))
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{bad_query}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["error"]["code"], "bad_request");
    }
    bus.stop().await;
}

#[tokio::test]
async fn the_log_is_replayed_whole_or_in_pages() {
    let db = test_db().await;
    let bus = start_bus(&db, BusOptions::default()).await;
    let empty = whole_log(&bus).await;
    assert!(empty.is_empty());
    let events: Vec<_> = (0..12_500).map(numbered).collect();
    for chunk in events.chunks(1_000) {
        bus.client().publish(chunk).await.unwrap();
    }
    // The whole log spans several streamed pages (read from PostgreSQL, then from the
    // replica's tail) and is still one JSON array, in seq order.
    let log = whole_log(&bus).await;
    assert_eq!(
        log.iter()
            .map(|e| e["seq"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        (1..=12_500).collect::<Vec<_>>()
    );
    let ns: Vec<i64> = log
        .iter()
        .map(|e| e["data"]["n"].as_i64().unwrap())
        .collect();
    assert_eq!(ns, (0..12_500).collect::<Vec<_>>());
    let page = bus.client().events_after(1000, 1500).await.unwrap();
    assert_eq!(page.first().map(|e| e.seq), Some(1001));
    assert_eq!(page.len(), 1500);
    let tail = bus.client().events_after(12_490, 100).await.unwrap();
    assert_eq!(
        tail.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (12_491..=12_500).collect::<Vec<_>>()
    );
    assert!(bus
        .client()
        .events_after(12_500, 10)
        .await
        .unwrap()
        .is_empty());
    bus.stop().await;
}

#[tokio::test]
async fn with_a_token_the_bus_refuses_strangers_and_signs_its_deliveries() {
    let db = test_db().await;
    let subscriber = RecordingSubscriber::start();
    let bus = start_bus(
        &db,
        BusOptions {
            subscribers: vec![("sub", subscriber.url())],
            token: Some("s3cret"),
            ..Default::default()
        },
    )
    .await;
    let (status, answer) = post_raw(&bus, "application/json", r#"{"type":"A","data":{}}"#).await;
    assert_eq!(status, 401);
    assert_eq!(answer["error"]["code"], "unauthorized");
    let wrong = service_kit::bus::BusClient::new(&bus.url(), Some("guess".into()));
    assert!(wrong.publish(&[numbered(0)]).await.is_err());
    assert!(wrong.events_after(0, 10).await.is_err());
    let right = service_kit::bus::BusClient::new(&bus.url(), Some("s3cret".into()));
    right.publish(&[numbered(1)]).await.unwrap();
    assert_eq!(right.events_after(0, 10).await.unwrap().len(), 1);
    eventually(std::time::Duration::from_secs(10), "delivery", || async {
        subscriber.count() == 1
    })
    .await;
    assert_eq!(
        subscriber.last_authorization().as_deref(),
        Some("Bearer s3cret")
    );
    bus.stop().await;
}

#[tokio::test]
async fn health_and_readiness_answer() {
    let db = test_db().await;
    let bus = start_bus(&db, BusOptions::default()).await;
    for path in ["healthz", "readyz"] {
        let response = reqwest::get(format!("{}/{path}", bus.url())).await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
    bus.stop().await;
}

#[tokio::test]
async fn what_no_consumer_could_store_is_refused_with_422_naming_the_field() {
    let db = test_db().await;
    let bus = start_bus(&db, BusOptions::default()).await;
    let long_id = "x".repeat(contract::MAX_ID_LEN + 1);
    let cases = [
        (
            json!({"type": "PostCreated", "data": {"id": "p1", "title": "nul \u{0} inside"}}),
            "data.title",
        ),
        (
            json!({"type": "PostCreated", "data": {"id": long_id, "title": "t"}}),
            "data.id",
        ),
        (
            json!({"type": "CommentCreated", "data": {"id": "c1", "postId": "p1"}}),
            "data",
        ),
        (
            json!({"type": "Custom", "data": {"deep": {"list": ["ok", "nul \u{0}"]}}}),
            "data.deep.list[1]",
        ),
        (
            json!({"type": "Custom", "data": {}, "source": "nul \u{0}"}),
            "source",
        ),
    ];
    for (event, field) in cases {
        let (status, answer) = post_raw(&bus, "application/json", event.to_string()).await;
        assert_eq!(status, 422, "{event}: {answer}");
        assert_eq!(answer["error"]["code"], "validation_failed", "{answer}");
        assert_eq!(answer["error"]["field"], field, "{answer}");
    }
    assert!(
        whole_log(&bus).await.is_empty(),
        "a refused event was stored"
    );
    bus.stop().await;
}

/// A publish of exactly `size` bytes: one event whose blob fills the rest.
fn publish_of_size(size: usize) -> String {
    let empty = json!({"type": "Big", "data": {"blob": ""}}).to_string();
    let body = json!({"type": "Big", "data": {"blob": "x".repeat(size - empty.len())}}).to_string();
    assert_eq!(body.len(), size);
    body
}

#[tokio::test]
async fn an_event_of_the_largest_size_the_bus_accepts_is_delivered_to_every_subscriber() {
    let db = test_db().await;
    let subscribers = [RecordingSubscriber::start(), RecordingSubscriber::start()];
    let bus = start_bus(
        &db,
        BusOptions {
            subscribers: vec![("a", subscribers[0].url()), ("b", subscribers[1].url())],
            ..Default::default()
        },
    )
    .await;
    let (status, answer) = post_raw(
        &bus,
        "application/json",
        publish_of_size(contract::PUBLISH_LIMIT + 1),
    )
    .await;
    assert_eq!(status, 413, "{answer}");
    let (status, answer) = post_raw(
        &bus,
        "application/json",
        publish_of_size(contract::PUBLISH_LIMIT),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    // And an ordinary event after it, which must not be held up behind the big one.
    bus.client().publish(&[numbered(1)]).await.unwrap();
    for subscriber in &subscribers {
        eventually(WAIT, "both events delivered", || async {
            subscriber.seqs() == [1, 2]
        })
        .await;
        let big = &subscriber.received()[0];
        let delivered = serde_json::to_string(big).unwrap().len();
        assert!(
            delivered < contract::EVENTS_BODY_LIMIT,
            "a delivery of {delivered} bytes"
        );
        assert_eq!(
            big.data["blob"].as_str().map(str::len),
            Some(
                contract::PUBLISH_LIMIT
                    - json!({"type": "Big", "data": {"blob": ""}})
                        .to_string()
                        .len()
            )
        );
    }
    bus.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_the_database_refuses_fail_alone_and_the_valid_ones_racing_them_succeed() {
    let db = test_db().await;
    // PostgreSQL itself refuses one type here, as it would a value no check foresaw.
    sqlx::raw_sql(
        "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN RAISE EXCEPTION 'refused by a check' USING ERRCODE = 'check_violation'; END $$;
         CREATE TRIGGER refuse BEFORE INSERT ON events FOR EACH ROW
         WHEN (NEW.type = 'Refused') EXECUTE FUNCTION refuse();",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let bus = start_bus(&db, BusOptions::default()).await;
    let client = reqwest::Client::new();
    let url = format!("{}/events", bus.url());
    let mut requests = Vec::new();
    for n in 0..220 {
        let (client, url) = (client.clone(), url.clone());
        let kind = if n % 11 == 0 { "Refused" } else { "Valid" };
        requests.push(tokio::spawn(async move {
            let body = json!({"type": kind, "data": {"n": n}});
            let response = client.post(&url).json(&body).send().await.unwrap();
            (kind, response.status().as_u16())
        }));
    }
    let mut valid = 0;
    for request in requests {
        let (kind, status) = request.await.unwrap();
        match kind {
            "Valid" => {
                assert_eq!(status, 200, "a valid publish failed with a bad one");
                valid += 1;
            }
            _ => assert_eq!(status, 409, "a refused publish"),
        }
    }
    assert_eq!(valid, 200);
    let log = whole_log(&bus).await;
    assert_eq!(log.len(), 200);
    assert!(log.iter().all(|e| e["type"] == "Valid"));
    bus.stop().await;
}

/// A statement is planned once per connection and its plan kept: a lookup of the
/// published ids planned while the log was empty must still go through the index once the
/// log has grown, or every publish reads the whole log.
#[tokio::test]
async fn publishing_onto_a_grown_log_never_reads_the_whole_log() {
    let db = test_db().await;
    let mut subscriber = RecordingSubscriber::start();
    let bus = start_bus_for(&db, &subscriber).await;
    let client = bus.client();
    let batch = |first: usize, len: usize| (first..first + len).map(numbered).collect::<Vec<_>>();
    // Planned, and the plan kept, while the log is nearly empty.
    for round in 0..10 {
        client.publish(&batch(round * 5, 5)).await.unwrap();
    }
    eventually(WAIT, "the first events delivered", || async {
        subscriber.count() == 50
    })
    .await;
    // What it missed meanwhile is read back from the log, a page at a time.
    subscriber.go_down().await;
    for round in 0..40 {
        client.publish(&batch(50 + round * 100, 100)).await.unwrap();
    }
    subscriber.come_back();
    let again = batch(5_000, 5);
    for _ in 0..10 {
        client.publish(&batch(6_000, 5)).await.unwrap();
    }
    // Ids already in the log take the locked path, which looks them up too.
    client.publish(&again).await.unwrap();
    let repeated = client.publish(&again).await.unwrap();
    assert!(repeated.iter().all(|accepted| accepted.duplicate));
    eventually(WAIT, "every event delivered", || async {
        subscriber.count() == 4_105
    })
    .await;
    bus.stop().await;
    // A scan of the first few events, while the log is small, is the planner's right
    // choice; one of the grown log reads 4,000 events.
    let scans = testkit::table_scans(&db, "events").await;
    assert!(scans.indexed > 0, "the lookups are counted");
    assert!(
        scans.sequential_rows < 1_000,
        "publishes read {} events in sequence",
        scans.sequential_rows
    );
}

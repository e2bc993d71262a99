//! Pins the JSON of every event type and of the envelope: the wire contract with the
//! course's services and between ours.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

use contract::*;
use serde_json::json;

fn round_trip(event: Event, expected: serde_json::Value) {
    assert_eq!(serde_json::to_value(&event).unwrap(), expected);
    assert_eq!(serde_json::from_value::<Event>(expected).unwrap(), event);
}

#[test]
fn post_created_json_is_pinned() {
    round_trip(
        Event::PostCreated(PostCreated {
            id: "p1".into(),
            title: "Hello".into(),
        }),
        json!({"type": "PostCreated", "data": {"id": "p1", "title": "Hello"}}),
    );
}

#[test]
fn comment_created_json_is_pinned() {
    round_trip(
        Event::CommentCreated(CommentCreated {
            id: "c1".into(),
            post_id: "p1".into(),
            content: "Nice".into(),
            status: CommentStatus::Pending,
        }),
        json!({"type": "CommentCreated", "data": {"id": "c1", "postId": "p1", "content": "Nice", "status": "pending"}}),
    );
}

#[test]
fn comment_moderated_json_is_pinned() {
    round_trip(
        Event::CommentModerated(CommentModerated {
            id: "c1".into(),
            post_id: "p1".into(),
            content: "orange".into(),
            status: CommentStatus::Rejected,
        }),
        json!({"type": "CommentModerated", "data": {"id": "c1", "postId": "p1", "content": "orange", "status": "rejected"}}),
    );
}

#[test]
fn comment_updated_json_is_pinned() {
    round_trip(
        Event::CommentUpdated(CommentUpdated {
            id: "c1".into(),
            post_id: "p1".into(),
            content: "Nice".into(),
            status: CommentStatus::Approved,
            version: 2,
        }),
        json!({"type": "CommentUpdated", "data": {"id": "c1", "postId": "p1", "content": "Nice", "status": "approved", "version": 2}}),
    );
}

#[test]
fn a_course_comment_updated_without_version_parses_as_version_zero() {
    let event: Event = serde_json::from_value(json!({"type": "CommentUpdated",
        "data": {"id": "c1", "postId": "p1", "content": "x", "status": "approved"}}))
    .unwrap();
    let Event::CommentUpdated(updated) = event else {
        panic!("wrong type")
    };
    assert_eq!(updated.version, 0);
}

#[test]
fn a_bare_course_event_is_a_valid_publication() {
    let publication: Publication =
        serde_json::from_value(json!({"type": "PostCreated", "data": {"id": "abc", "title": "t"}}))
            .unwrap();
    assert_eq!(publication.kind, "PostCreated");
    assert_eq!(publication.id, None);
    assert_eq!(publication.occurred_at, None);
    assert_eq!(publication.data["id"], "abc");
}

#[test]
fn a_publication_from_our_services_carries_id_source_time_and_trace() {
    let event = Event::PostCreated(PostCreated {
        id: "p1".into(),
        title: "T".into(),
    });
    let publication = Publication::new(
        &event,
        "posts",
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
    );
    let value = serde_json::to_value(&publication).unwrap();
    assert_eq!(value["type"], "PostCreated");
    assert_eq!(value["data"], json!({"id": "p1", "title": "T"}));
    assert_eq!(value["source"], "posts");
    assert_eq!(
        value["traceparent"],
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    );
    let id: uuid::Uuid = value["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(id.get_version_num(), 7);
    assert!(value["occurredAt"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn the_envelope_json_is_pinned() {
    let raw = json!({
        "id": "0190b8a4-7d3c-7cc1-8f5e-3f1d2c4b5a69", "seq": 42, "type": "CommentCreated",
        "data": {"id": "c1", "postId": "p1", "content": "hi", "status": "pending"},
        "source": "comments", "occurredAt": "2026-11-22T18:00:00Z",
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    });
    let envelope: Envelope = serde_json::from_value(raw.clone()).unwrap();
    assert_eq!(envelope.seq, 42);
    assert_eq!(serde_json::to_value(&envelope).unwrap(), raw);
    match envelope.decode() {
        Decoded::Known(Event::CommentCreated(c)) => assert_eq!(c.post_id, "p1"),
        other => panic!("decoded as {other:?}"),
    }
}

#[test]
fn an_unknown_type_round_trips_untouched_and_decodes_as_unknown() {
    let raw = json!({
        "id": "0190b8a4-7d3c-7cc1-8f5e-3f1d2c4b5a69", "seq": 7, "type": "PostLiked",
        "data": {"postId": "p1", "nested": {"likes": [1, 2, 3]}},
        "occurredAt": "2026-11-22T18:00:00Z"
    });
    let envelope: Envelope = serde_json::from_value(raw.clone()).unwrap();
    assert_eq!(serde_json::to_value(&envelope).unwrap(), raw);
    assert!(matches!(envelope.decode(), Decoded::Unknown));
}

#[test]
fn a_known_type_with_bad_data_decodes_as_malformed() {
    let envelope: Envelope = serde_json::from_value(json!({
        "id": "0190b8a4-7d3c-7cc1-8f5e-3f1d2c4b5a69", "seq": 1, "type": "PostCreated",
        "data": {"title": 5}, "occurredAt": "2026-11-22T18:00:00Z"
    }))
    .unwrap();
    assert!(matches!(envelope.decode(), Decoded::Malformed(_)));
}

#[test]
fn one_or_many_takes_an_object_or_an_array() {
    let one: OneOrMany<Publication> = serde_json::from_str(r#"{"type":"A","data":{}}"#).unwrap();
    assert_eq!(one.0.len(), 1);
    let many: OneOrMany<Publication> =
        serde_json::from_str(r#"[{"type":"A","data":{}},{"type":"B","data":{}}]"#).unwrap();
    assert_eq!(
        many.0.iter().map(|p| p.kind.as_str()).collect::<Vec<_>>(),
        ["A", "B"]
    );
    let error = serde_json::from_str::<OneOrMany<Publication>>(r#"{"data":{}}"#).unwrap_err();
    assert!(
        error.to_string().contains("missing field `type`"),
        "{error}"
    );
    let error =
        serde_json::from_str::<OneOrMany<Publication>>(r#"{"type":"A","data":[]}"#).unwrap_err();
    assert!(error.to_string().contains("invalid type"), "{error}");
}

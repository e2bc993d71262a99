//! Holds the Rust types to the OpenAPI documents (contract/openapi/): every live-stream
//! message the query service can send fits the public document's `StreamChange`, and the
//! bus document's `Publication` schema accepts exactly what the bus's own check accepts.
//! The services' answers are held to the documents by schemathesis (scripts/fuzz-api).

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

use contract::*;
use serde_json::{json, Value};

/// A validator for one of the document's component schemas; the document's components
/// ride along, so its `#/components/…` references resolve as they do in the document.
fn schema(document: &str, name: &str) -> jsonschema::Validator {
    let document: Value = serde_json::from_str(document).unwrap();
    let root = json!({
        "$ref": format!("#/components/schemas/{name}"),
        "components": document["components"],
    });
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft202012)
        .should_validate_formats(true)
        .build(&root)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn assert_fits(validator: &jsonschema::Validator, value: &Value) {
    if let Err(error) = validator.validate(value) {
        panic!("{value} does not fit the document: {error}");
    }
}

fn comment(status: CommentStatus) -> CommentCreated {
    CommentCreated {
        id: "c1".into(),
        post_id: "p1".into(),
        content: "a \"quoted\"\nline é".into(),
        status,
    }
}

#[test]
fn every_live_stream_message_fits_the_public_document() {
    let stream_change = schema(PUBLIC_API, "StreamChange");
    let post = PostCreated {
        id: "p1".into(),
        title: "Hello".into(),
    };
    let updated = |status| CommentUpdated {
        id: "c1".into(),
        post_id: "p1".into(),
        content: "x".into(),
        status,
        version: 3,
    };
    let changes = [
        StreamChange::PostCreated {
            seq: 1,
            post: post.into(),
        },
        StreamChange::CommentCreated {
            seq: 2,
            comment: comment(CommentStatus::Pending),
        },
        StreamChange::CommentUpdated {
            seq: 4,
            comment: updated(CommentStatus::Approved),
        },
        StreamChange::CommentUpdated {
            seq: 5,
            comment: updated(CommentStatus::Rejected),
        },
        StreamChange::Resync,
    ];
    for change in &changes {
        let value: Value = serde_json::from_str(&change.to_json()).unwrap();
        assert_fits(&stream_change, &value);
        assert_eq!(
            &serde_json::from_value::<StreamChange>(value).unwrap(),
            change
        );
    }
    assert_fits(&stream_change, &serde_json::from_str(RESYNC).unwrap());
    // The document is not so loose that anything fits.
    for wrong in [
        json!({"type": "PostCreated", "seq": 1}),
        json!({"type": "CommentCreated", "seq": 1, "comment": {"id": "c", "postId": "p", "content": "x", "status": "lost"}}),
        json!({"type": "Unheard"}),
    ] {
        assert!(!stream_change.is_valid(&wrong), "{wrong} should not fit");
    }
}

fn publication(value: Value) -> Publication {
    serde_json::from_value(value).unwrap()
}

#[test]
fn the_bus_document_accepts_exactly_the_publications_the_bus_accepts() {
    let schema = schema(BUS_API, "Publication");
    let long_id = "é".repeat(MAX_ID_LEN + 1);
    let cases = [
        json!({"type": "PostCreated", "data": {"id": "p1", "title": "Hello"}}),
        json!({"type": "PostCreated", "data": {"id": "é".repeat(MAX_ID_LEN), "title": ""}}),
        json!({"type": "PostCreated", "data": {"id": long_id, "title": "t"}}),
        json!({"type": "PostCreated", "data": {"id": "", "title": "t"}}),
        json!({"type": "PostCreated", "data": {"id": "p1", "title": "a\u{0}b"}}),
        json!({"type": "PostCreated", "data": {"id": "p1"}}),
        json!({"type": "CommentCreated", "data": {"id": "c", "postId": "p", "content": "x", "status": "pending", "extra": 1}}),
        json!({"type": "CommentModerated", "data": {"id": "c", "postId": "p", "content": "x", "status": "maybe"}}),
        json!({"type": "CommentUpdated", "data": {"id": "c", "postId": "p", "content": "x", "status": "approved", "version": 2}}),
        json!({"type": "CommentUpdated", "data": {"id": "c", "postId": "p", "content": "x", "status": "approved", "version": "2"}}),
        json!({"type": "CommentUpdated", "data": {"id": "c", "postId": "p", "content": "x", "status": "approved", "version": 3728716296638.0}}),
        json!({"type": "CommentUpdated", "data": {"id": "c", "postId": "p", "content": "x", "status": "approved", "version": 2.5}}),
        json!({"type": "CommentUpdated", "data": {"id": "c", "postId": "p", "content": "x", "status": "approved", "version": 1e19}}),
        json!({"type": "PostCreated", "data": {"id": "p", "title": "t", "extra": {"k": "\u{0}"}}}),
        json!({"type": "SomethingNew", "data": {"anything": [1, "two", {"three": null}]}}),
        json!({"type": "SomethingNew", "data": {"deep": [{"a\u{0}": 1}]}}),
        json!({"type": "SomethingNew", "data": {"deep": [[["\u{0}"]]]}}),
        json!({"type": "é".repeat(MAX_TYPE_LEN), "data": {}}),
        json!({"type": "é".repeat(MAX_TYPE_LEN + 1), "data": {}}),
        json!({"type": "\u{3000}", "data": {}}),
        json!({"type": " Padded ", "data": {}}),
        json!({"type": "Tab\there", "data": {}}),
        json!({"type": "X", "data": {}, "source": "po\u{0}sts"}),
        json!({"type": "X", "data": {}, "traceparent": "00-\u{0}"}),
        json!({"type": "X", "data": {}, "source": "posts", "seq": 99,
               "id": "0192f0c1-2b3c-7d4e-8f90-a1b2c3d4e5f6", "occurredAt": "2026-12-03T06:00:00.123Z"}),
    ];
    for case in cases {
        let bus_accepts = publication(case.clone()).check().is_ok();
        assert_eq!(
            schema.is_valid(&case),
            bus_accepts,
            "the document and the bus disagree on {case} (the bus accepts it: {bus_accepts})"
        );
    }
    // And what our own services publish fits.
    let event = Event::CommentCreated(comment(CommentStatus::Pending));
    let ours = serde_json::to_value(Publication::new(&event, "comments", None)).unwrap();
    assert_fits(&schema, &ours);
}

#[test]
fn what_the_bus_answers_and_delivers_fits_its_document() {
    let envelope = Envelope {
        id: uuid::Uuid::now_v7(),
        seq: 42,
        kind: "PostCreated".into(),
        data: serde_json::from_value(json!({"id": "p", "title": "t"})).unwrap(),
        source: Some("posts".into()),
        occurred_at: time::OffsetDateTime::now_utc(),
        traceparent: Some(TraceParent::new_root().to_string()),
    };
    assert_fits(
        &schema(BUS_API, "Envelope"),
        &serde_json::to_value(&envelope).unwrap(),
    );
    let answer = PublishAnswer::ok(vec![Accepted {
        id: envelope.id,
        seq: 42,
        duplicate: false,
    }]);
    assert_fits(
        &schema(BUS_API, "PublishAnswer"),
        &serde_json::to_value(answer).unwrap(),
    );
}

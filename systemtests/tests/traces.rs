//! Traces over OTLP from the real services: one post's journey — its request, the outbox
//! relay's publish, the bus's append and delivery, query's delivery request and apply —
//! is one trace, each span the child of the one that caused it. The receiver is a small
//! OTLP/HTTP (JSON) endpoint in the test.

#![allow(clippy::unwrap_used)] // a test that cannot unwrap has failed

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, App, HttpResponse, HttpServer};
use serde_json::Value;
use systemtests::{http, Microblog};
use testkit::eventually;

const WAIT: Duration = Duration::from_secs(30);
const SERVICES: [&str; 5] = ["event-bus", "posts", "comments", "moderation", "query"];

/// A received span, with the service that exported it.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    name: String,
    kind: i64,
    trace_id: String,
    span_id: String,
    parent: Option<String>,
    attributes: Value,
}

#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<Span>>>);

impl Received {
    fn in_trace(&self, trace_id: &str) -> Vec<Span> {
        let spans = self.0.lock().unwrap();
        spans
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect()
    }
}

async fn receive(received: web::Data<Received>, body: web::Json<Value>) -> HttpResponse {
    for resource in body["resourceSpans"].as_array().unwrap() {
        let service = resource["resource"]["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["key"] == "service.name")
            .map(|a| a["value"]["stringValue"].as_str().unwrap().to_owned())
            .unwrap();
        for scope in resource["scopeSpans"].as_array().unwrap() {
            for span in scope["spans"].as_array().unwrap() {
                received.0.lock().unwrap().push(Span {
                    service: service.clone(),
                    name: span["name"].as_str().unwrap().to_owned(),
                    kind: span["kind"].as_i64().unwrap(),
                    trace_id: span["traceId"].as_str().unwrap().to_owned(),
                    span_id: span["spanId"].as_str().unwrap().to_owned(),
                    parent: span["parentSpanId"].as_str().map(str::to_owned),
                    attributes: span["attributes"].clone(),
                });
                let (start, end) = (&span["startTimeUnixNano"], &span["endTimeUnixNano"]);
                let nanos = |t: &Value| t.as_str().unwrap().parse::<u128>().unwrap();
                assert!(nanos(start) <= nanos(end), "{span}");
            }
        }
    }
    HttpResponse::Ok().json(serde_json::json!({}))
}

/// Starts the receiver on a free port; its base URL.
fn start_receiver(received: Received) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = web::Data::new(received);
    let server = HttpServer::new(move || {
        App::new()
            .app_data(received.clone())
            .app_data(web::JsonConfig::default().limit(16 * 1024 * 1024))
            .route("/v1/traces", web::post().to(receive))
    })
    .workers(1)
    .listen(listener)
    .unwrap()
    .run();
    tokio::spawn(server);
    format!("http://127.0.0.1:{port}")
}

fn the_one<'a>(spans: &'a [Span], service: &str, name: &str, what: &str) -> &'a Span {
    let found: Vec<&Span> = spans
        .iter()
        .filter(|s| s.service == service && s.name == name)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{what}: one {name} of {service} in {spans:#?}"
    );
    found[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_posts_journey_is_one_trace_with_each_span_the_child_of_its_cause() {
    let received = Received::default();
    let endpoint = start_receiver(received.clone());
    let env: Vec<(&'static str, &str, &str)> = SERVICES
        .iter()
        .map(|service| (*service, "OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()))
        .collect();
    let stack = Microblog::start_with(1, &env).await;

    // The client's own span starts the trace.
    let (trace_id, client_span) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let response = http()
        .post(format!("{}/posts/create", stack.url("posts")))
        .header("traceparent", format!("00-{trace_id}-{client_span}-01"))
        .json(&serde_json::json!({ "title": "traced end to end" }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);

    // Each service exports in its own batches: wait for every span of the journey.
    let journey = [
        ("posts", "POST /posts/create"),
        ("posts", "outbox publish"),
        ("event-bus", "POST /events"),
        ("event-bus", "deliver"),
        ("query", "POST /events"),
        ("query", "apply PostCreated"),
        ("comments", "apply PostCreated"),
    ];
    eventually(WAIT, "every span of the post's journey", || async {
        let spans = received.in_trace(trace_id);
        let delivered_to = |subscriber: &str| {
            spans.iter().any(|s| {
                s.name == "deliver"
                    && s.attributes
                        .to_string()
                        .contains(&format!("\"{subscriber}\""))
            })
        };
        delivered_to("query")
            && journey.iter().all(|(service, name)| {
                spans
                    .iter()
                    .any(|s| s.service == *service && s.name == *name)
            })
    })
    .await;
    let spans = received.in_trace(trace_id);

    let request = the_one(&spans, "posts", "POST /posts/create", "the request");
    assert_eq!(request.kind, 2, "a server span");
    assert_eq!(request.parent.as_deref(), Some(client_span));
    assert!(
        request.attributes.to_string().contains("\"201\""),
        "{:?}",
        request.attributes
    );

    let relay = the_one(&spans, "posts", "outbox publish", "the relay's publish");
    assert_eq!(
        (relay.kind, relay.parent.as_deref()),
        (3, Some(request.span_id.as_str()))
    );
    let append = the_one(&spans, "event-bus", "POST /events", "the bus's append");
    assert_eq!(append.parent.as_deref(), Some(relay.span_id.as_str()));

    let deliveries: Vec<&Span> = spans
        .iter()
        .filter(|s| s.service == "event-bus" && s.name == "deliver")
        .collect();
    let to_query = deliveries
        .iter()
        .find(|s| s.attributes.to_string().contains("\"query\""))
        .unwrap_or_else(|| panic!("a delivery to query in {deliveries:#?}"));
    assert_eq!(
        (to_query.kind, to_query.parent.as_deref()),
        (3, Some(request.span_id.as_str())),
        "a delivery is a child of the span that published what it carries"
    );
    let delivered = the_one(&spans, "query", "POST /events", "query's delivery request");
    assert_eq!(delivered.parent.as_deref(), Some(to_query.span_id.as_str()));
    let applied = the_one(&spans, "query", "apply PostCreated", "query's apply");
    assert_eq!(
        (applied.kind, applied.parent.as_deref()),
        (5, Some(request.span_id.as_str())),
        "applying an event is a child of the span that published it"
    );
    let ids: std::collections::HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    assert_eq!(ids.len(), spans.len(), "every span id once: {spans:#?}");
}

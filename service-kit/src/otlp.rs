//! OpenTelemetry traces over OTLP/HTTP (the JSON encoding), when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set; nothing at all when it is not.
//!
//! The ids are the ones the services already pass on: the W3C `traceparent` of a
//! request (its header) and of every event (its envelope). A span is exported if it has
//! `trace_id` and `span_id` fields (and `parent_span_id`, unless it is a root), so the
//! spans are the ones the logs already show:
//!
//! - `request`: every HTTP request a service answers (server); its parent is the
//!   caller's span named in the `traceparent` header;
//! - `call`: the outbox relay's publish and the bus's delivery (client), a child of the
//!   first event it carries (linked to the others), whose id goes out in the call's
//!   `traceparent` header, so the request it makes is its child;
//! - `event`: a consumer applying one event (consumer), a child of the span that
//!   published it (the envelope's `traceparent`).
//!
//! A span ends in a bounded queue that a task posts to `<endpoint>/v1/traces` in
//! batches; when the receiver is slow or away, spans are dropped, never the service.

use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, oneshot};
use tracing::span::{Attributes, Id, Record};
use tracing::Subscriber;
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

use crate::telemetry::Fields;
use contract::TraceParent;

const QUEUE: usize = 8192;
const BATCH: usize = 512;
const BATCH_WINDOW: Duration = Duration::from_millis(200);
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);
/// Links of a `call` span to the other events it carries, at most.
const MAX_LINKS: usize = 32;

enum Message {
    Span(Value),
    Flush(oneshot::Sender<()>),
}

static EXPORTING: OnceLock<mpsc::Sender<Message>> = OnceLock::new();

/// Whether spans are exported: when not, nothing here costs anything.
pub fn enabled() -> bool {
    EXPORTING.get().is_some()
}

/// Starts the exporter (on the current tokio runtime) and returns the layer that feeds
/// it; `None` if one was started already.
pub fn layer(service: &str, endpoint: &str) -> Option<OtlpLayer> {
    let (sender, queue) = mpsc::channel(QUEUE);
    EXPORTING.set(sender.clone()).ok()?;
    let url = format!("{endpoint}/v1/traces");
    tokio::spawn(export(service.to_owned(), url, queue));
    Some(OtlpLayer { sender })
}

/// Sends what is queued and waits for it (a couple of seconds at most): at shutdown.
pub async fn flush() {
    let Some(sender) = EXPORTING.get() else {
        return;
    };
    let (done, flushed) = oneshot::channel();
    if sender.send(Message::Flush(done)).await.is_ok() {
        let _ = tokio::time::timeout(FLUSH_TIMEOUT, flushed).await;
    }
}

/// A `call` span for a request that carries `body`, a JSON array of events (or
/// publications), and the `traceparent` header that makes the request its child. While
/// tracing is off, or when no event in the body has a trace, the span is disabled and
/// there is no header.
pub fn call_span(name: &'static str, body: &str) -> (tracing::Span, Option<String>) {
    if !enabled() {
        return (tracing::Span::none(), None);
    }
    #[derive(serde::Deserialize)]
    struct Traced {
        traceparent: Option<String>,
    }
    let causes: Vec<TraceParent> = serde_json::from_str::<Vec<Traced>>(body)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|event| event.traceparent.as_deref().and_then(TraceParent::parse))
        .collect();
    let Some(first) = causes.first() else {
        return (tracing::Span::none(), None);
    };
    let call = first.child();
    let links: Vec<String> = causes[1..]
        .iter()
        .filter(|cause| **cause != *first)
        .take(MAX_LINKS)
        .map(|cause| format!("{}-{}", cause.trace_id, cause.parent_id))
        .collect();
    let span = tracing::info_span!(
        "call",
        span_name = name,
        trace_id = %call.trace_id,
        span_id = %call.parent_id,
        parent_span_id = %first.parent_id,
        events = causes.len(),
        links = %links.join(","),
        // Whom the call goes to, where the caller knows a name (a subscriber).
        peer = tracing::field::Empty,
    );
    (span, Some(call.to_string()))
}

pub struct OtlpLayer {
    sender: mpsc::Sender<Message>,
}

/// What an exported span has recorded so far.
struct Recording {
    start: SystemTime,
    fields: Map<String, Value>,
}

impl<S> Layer<S> for OtlpLayer
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        if attrs.metadata().fields().field("span_id").is_none() {
            return;
        }
        let Some(span) = ctx.span(id) else {
            return;
        };
        let mut fields = Map::new();
        attrs.record(&mut Fields(&mut fields));
        span.extensions_mut().insert(Recording {
            start: SystemTime::now(),
            fields,
        });
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(id) {
            if let Some(recording) = span.extensions_mut().get_mut::<Recording>() {
                values.record(&mut Fields(&mut recording.fields));
            }
        }
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else {
            return;
        };
        let Some(recording) = span.extensions_mut().remove::<Recording>() else {
            return;
        };
        if let Some(exported) = otlp_span(span.name(), recording, SystemTime::now()) {
            // A full queue drops the span: the receiver is away or slow.
            let _ = self.sender.try_send(Message::Span(exported));
        }
    }
}

/// The OTLP JSON of a span (ids in hex, times in nanoseconds as strings), if it has ids.
fn otlp_span(kind_name: &str, recording: Recording, end: SystemTime) -> Option<Value> {
    let mut fields = recording.fields;
    let mut take = |key: &str| match fields.remove(key) {
        Some(Value::String(text)) if !text.is_empty() => Some(text),
        _ => None,
    };
    let trace_id = take("trace_id")?;
    let span_id = take("span_id")?;
    let parent_span_id = take("parent_span_id");
    let links = take("links");
    let explicit_name = take("span_name");
    let (kind, name) = match kind_name {
        "request" => {
            let method = take("method").unwrap_or_default();
            let route = take("route").unwrap_or_else(|| "unmatched".into());
            (2, format!("{method} {route}"))
        }
        "call" => (3, explicit_name.unwrap_or_else(|| "call".into())),
        "event" => {
            let kind = fields
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("event")
                .to_owned();
            (5, format!("apply {kind}"))
        }
        other => (1, explicit_name.unwrap_or_else(|| other.to_owned())),
    };
    let failed = fields
        .get("status")
        .and_then(Value::as_u64)
        .is_some_and(|status| status >= 500);
    let attributes: Vec<Value> = fields
        .into_iter()
        .map(|(key, value)| json!({ "key": key, "value": any_value(value) }))
        .collect();
    let mut span = json!({
        "traceId": trace_id,
        "spanId": span_id,
        "name": name,
        "kind": kind,
        "startTimeUnixNano": nanos(recording.start),
        "endTimeUnixNano": nanos(end),
        "attributes": attributes,
        "status": { "code": if failed { 2 } else { 0 } },
    });
    if let Some(parent) = parent_span_id {
        span["parentSpanId"] = parent.into();
    }
    if let Some(links) = links {
        span["links"] = links
            .split(',')
            .filter_map(|link| link.split_once('-'))
            .map(|(trace_id, span_id)| json!({ "traceId": trace_id, "spanId": span_id }))
            .collect();
    }
    Some(span)
}

fn any_value(value: Value) -> Value {
    match value {
        Value::Bool(flag) => json!({ "boolValue": flag }),
        Value::Number(number) if number.is_i64() || number.is_u64() => {
            json!({ "intValue": number.to_string() })
        }
        Value::Number(number) => json!({ "doubleValue": number }),
        Value::String(text) => json!({ "stringValue": text }),
        other => json!({ "stringValue": other.to_string() }),
    }
}

fn nanos(at: SystemTime) -> String {
    at.duration_since(UNIX_EPOCH)
        .map(|since| since.as_nanos())
        .unwrap_or_default()
        .to_string()
}

async fn export(service: String, url: String, mut queue: mpsc::Receiver<Message>) {
    let http = crate::bus::http_client(EXPORT_TIMEOUT);
    let resource = json!({
        "attributes": [{ "key": "service.name", "value": { "stringValue": service } }]
    });
    let mut failing_since: Option<std::time::Instant> = None;
    let mut spans = Vec::new();
    while let Some(first) = queue.recv().await {
        let mut flushed = None;
        match first {
            Message::Span(span) => spans.push(span),
            Message::Flush(done) => flushed = Some(done),
        }
        let window = tokio::time::sleep(BATCH_WINDOW);
        tokio::pin!(window);
        while flushed.is_none() && spans.len() < BATCH {
            tokio::select! {
                message = queue.recv() => match message {
                    Some(Message::Span(span)) => spans.push(span),
                    Some(Message::Flush(done)) => flushed = Some(done),
                    None => break,
                },
                _ = &mut window => break,
            }
        }
        if !spans.is_empty() {
            let body = json!({ "resourceSpans": [{
                "resource": resource,
                "scopeSpans": [{ "scope": { "name": "microblog" }, "spans": std::mem::take(&mut spans) }],
            }]});
            let sent = http.post(&url).json(&body).send().await;
            match sent.map(|response| response.status()) {
                Ok(status) if status.is_success() => failing_since = None,
                outcome => {
                    // Once a minute at most: a missing collector must not flood the logs.
                    if failing_since.is_none_or(|since| since.elapsed() > Duration::from_secs(60)) {
                        let error = match outcome {
                            Ok(status) => format!("answered {status}"),
                            Err(error) => crate::error::error_chain(&error),
                        };
                        tracing::warn!(%url, error, "exporting spans failed; they are dropped");
                        failing_since = Some(std::time::Instant::now());
                    }
                }
            }
        }
        if let Some(done) = flushed {
            let _ = done.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn recording(fields: Value) -> Recording {
        Recording {
            start: UNIX_EPOCH + Duration::from_millis(1),
            fields: fields.as_object().unwrap().clone(),
        }
    }

    #[test]
    fn a_request_span_is_a_server_span_named_by_its_route_with_its_fields_as_attributes() {
        let span = otlp_span(
            "request",
            recording(json!({
                "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7",
                "parent_span_id": "1111111111111111", "method": "POST", "route": "/posts/create",
                "status": 503, "request_id": "r1",
            })),
            UNIX_EPOCH + Duration::from_millis(3),
        )
        .unwrap();
        assert_eq!(span["name"], "POST /posts/create");
        assert_eq!(span["kind"], 2);
        assert_eq!(span["traceId"], "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(span["parentSpanId"], "1111111111111111");
        assert_eq!(span["startTimeUnixNano"], "1000000");
        assert_eq!(span["endTimeUnixNano"], "3000000");
        assert_eq!(span["status"]["code"], 2);
        let attributes = span["attributes"].as_array().unwrap();
        assert!(attributes.contains(&json!({"key": "status", "value": {"intValue": "503"}})));
        assert!(attributes.contains(&json!({"key": "request_id", "value": {"stringValue": "r1"}})));
        assert!(attributes
            .iter()
            .all(|a| a["key"] != "trace_id" && a["key"] != "method"));
    }

    #[test]
    fn a_call_links_the_other_events_it_carries_and_a_span_without_ids_is_not_exported() {
        let span = otlp_span(
            "call",
            recording(json!({
                "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7",
                "span_name": "deliver", "links": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-bbbbbbbbbbbbbbbb",
            })),
            UNIX_EPOCH,
        )
        .unwrap();
        assert_eq!(
            (span["name"].as_str(), span["kind"].as_i64()),
            (Some("deliver"), Some(3))
        );
        assert!(span.get("parentSpanId").is_none());
        assert_eq!(
            span["links"],
            json!([{"traceId": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "spanId": "bbbbbbbbbbbbbbbb"}])
        );
        assert!(otlp_span("request", recording(json!({"trace_id": ""})), UNIX_EPOCH).is_none());
    }

    #[test]
    fn with_tracing_off_a_call_has_no_span_and_no_header() {
        let body = r#"[{"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}]"#;
        assert!(!enabled(), "no exporter is started in unit tests");
        let (span, header) = call_span("publish", body);
        assert!(span.is_disabled());
        assert_eq!(header, None);
    }
}

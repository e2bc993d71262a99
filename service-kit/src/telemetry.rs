//! Logging: JSON lines in Kubernetes (greppable with `kubectl logs`), pretty locally.
//! Trace ids travel across services in the envelope's W3C `traceparent`
//! (`contract::TraceParent`).
//!
//! A JSON line is flat: `timestamp`, `level`, `service`, `message`, `target`, then every
//! field of the spans it is in (a request's `request_id` and `trace_id`, an event's
//! `event_id`, `seq`, `post_id`, `comment_id`…) and of the event itself, all at the top
//! level, so `jq 'select(.trace_id=="…")'` and skaffold's `logs.jsonParse` find them. An
//! inner span's field wins over an outer one's of the same name, the event's over both.

use std::fmt;

use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::{JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, FormattedFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogFormat, TelemetryConfig};

/// Installs the global subscriber for `service`: logs, and spans exported over OTLP
/// when an endpoint is configured (`otlp`; from within a tokio runtime). `RUST_LOG`
/// filters both; the default is `info`. Calling it twice (tests) is harmless.
pub fn init(service: &str, config: &TelemetryConfig) {
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,actix_server=warn"));
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stdout);
    let logs = match config.log_format {
        LogFormat::Json => logs
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson::new(service))
            .boxed(),
        LogFormat::Pretty => logs.compact().boxed(),
    };
    let spans = config
        .otlp_endpoint
        .as_deref()
        .and_then(|endpoint| crate::otlp::layer(service, endpoint));
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(logs)
        .with(spans)
        .try_init();
    if let Some(endpoint) = &config.otlp_endpoint {
        tracing::info!(endpoint, "exporting spans over OTLP/HTTP (JSON)");
    }
}

/// The JSON line format described above.
pub struct FlatJson {
    service: String,
}

impl FlatJson {
    pub fn new(service: &str) -> Self {
        Self {
            service: service.to_owned(),
        }
    }
}

impl<S, N> FormatEvent<S, N> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let metadata = event.metadata();
        let mut line = Map::new();
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        line.insert("timestamp".into(), now.into());
        line.insert("level".into(), metadata.level().as_str().into());
        line.insert("service".into(), self.service.clone().into());
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let extensions = span.extensions();
                // JsonFields keeps each span's fields as one JSON object's text.
                let Some(fields) = extensions.get::<FormattedFields<N>>() else {
                    continue;
                };
                if let Ok(Value::Object(fields)) = serde_json::from_str(fields.as_str()) {
                    line.extend(fields);
                }
            }
        }
        event.record(&mut Fields(&mut line));
        line.entry("message").or_insert_with(|| "".into());
        line.insert("target".into(), metadata.target().into());
        writeln!(writer, "{}", Value::Object(line))
    }
}

/// Records an event's (or a span's) fields as JSON values.
pub(crate) struct Fields<'a>(pub(crate) &'a mut Map<String, Value>);

impl Visit for Fields<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn lines_of(emit: impl FnOnce()) -> Vec<Value> {
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson::new("query"))
            .finish();
        tracing::subscriber::with_default(subscriber, emit);
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    }

    #[test]
    fn a_line_carries_its_spans_fields_and_its_own_at_the_top_level() {
        let lines = lines_of(|| {
            let request = tracing::info_span!("request", request_id = "r-1", trace_id = "t-1");
            let _request = request.enter();
            let event = tracing::info_span!(
                "event",
                event_id = "e-1",
                seq = 42,
                post_id = tracing::field::Empty,
                comment_id = tracing::field::Empty
            );
            let _event = event.enter();
            // Recorded after the span was made, as the consumer does once it has decoded.
            event.record("post_id", "p-1");
            event.record("comment_id", "c-1");
            tracing::info!(applied = 3, "delivery \"applied\"");
        });
        assert_eq!(lines.len(), 1);
        let line = &lines[0];
        for (field, expected) in [
            ("service", Value::from("query")),
            ("level", "INFO".into()),
            ("message", "delivery \"applied\"".into()),
            ("request_id", "r-1".into()),
            ("trace_id", "t-1".into()),
            ("event_id", "e-1".into()),
            ("seq", 42.into()),
            ("post_id", "p-1".into()),
            ("comment_id", "c-1".into()),
            ("applied", 3.into()),
        ] {
            assert_eq!(line[field], expected, "{field} in {line}");
        }
        assert!(line.get("span").is_none() && line.get("fields").is_none());
        assert!(line["timestamp"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn a_line_outside_any_span_still_names_its_service() {
        let lines = lines_of(|| tracing::warn!(code = "unavailable", "no database"));
        assert_eq!(lines[0]["service"], "query");
        assert_eq!(lines[0]["level"], "WARN");
        assert_eq!(lines[0]["code"], "unavailable");
        assert_eq!(lines[0]["message"], "no database");
    }
}

//! The W3C trace context every event carries in its `traceparent`, so one trace id
//! follows a change from the request that caused it through every service it reaches.

/// A W3C trace context: `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: String,
    pub parent_id: String,
}

impl TraceParent {
    pub fn parse(raw: &str) -> Option<Self> {
        let mut parts = raw.trim().split('-');
        let (version, trace_id, parent_id, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
        let valid = hex(version, 2)
            && hex(trace_id, 32)
            && hex(parent_id, 16)
            && hex(flags, 2)
            && trace_id.bytes().any(|b| b != b'0');
        valid.then(|| Self {
            trace_id: trace_id.to_ascii_lowercase(),
            parent_id: parent_id.to_ascii_lowercase(),
        })
    }

    /// A new trace, for a request that arrived without one.
    pub fn new_root() -> Self {
        Self {
            trace_id: format!("{:016x}{:016x}", fastrand::u64(1..), fastrand::u64(..)),
            parent_id: new_span_id(),
        }
    }

    /// The same trace, one hop further: what a service passes on in the events it emits.
    pub fn child(&self) -> Self {
        Self {
            trace_id: self.trace_id.clone(),
            parent_id: new_span_id(),
        }
    }
}

impl std::fmt::Display for TraceParent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "00-{}-{}-01", self.trace_id, self.parent_id)
    }
}

fn new_span_id() -> String {
    format!("{:016x}", fastrand::u64(1..))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_round_trips_and_children_keep_the_trace() {
        let root = TraceParent::new_root();
        let parsed = TraceParent::parse(&root.to_string()).unwrap();
        assert_eq!(parsed, root);
        let child = root.child();
        assert_eq!(child.trace_id, root.trace_id);
        assert_ne!(child.parent_id, root.parent_id);
    }

    #[test]
    fn malformed_traceparents_are_rejected() {
        for raw in [
            "",
            "00-abc-def-01",
            "00-00000000000000000000000000000000-0000000000000001-01",
        ] {
            assert_eq!(TraceParent::parse(raw), None, "{raw}");
        }
    }
}

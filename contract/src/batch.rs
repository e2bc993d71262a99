//! Batches on the wire: how big a publish or a delivery may be, and how senders cut
//! their batches so a receiver never has to refuse one forever.

use serde::{de, Deserialize, Deserializer};

/// The largest publish request the bus takes.
pub const PUBLISH_LIMIT: usize = 1024 * 1024;

/// The most the bus adds to a published event when it stores it (id, seq, time).
pub const ENVELOPE_OVERHEAD: usize = 1024;

/// The largest delivery a consumer takes. Every stored event fits in one, by
/// construction: it came in a publish of at most `PUBLISH_LIMIT`, and was stored with at
/// most `ENVELOPE_OVERHEAD` more.
pub const EVENTS_BODY_LIMIT: usize = 8 * 1024 * 1024;

const _: () = assert!(PUBLISH_LIMIT + ENVELOPE_OVERHEAD < EVENTS_BODY_LIMIT);
const _: () = assert!(BATCH_BYTES <= PUBLISH_LIMIT);

/// Senders close a batch once it reaches this size, so a run of large events never
/// makes a batch its receiver must refuse (and retry forever).
pub const BATCH_BYTES: usize = 1024 * 1024;

/// Keeps the longest prefix of `items` whose JSON texts fit in `BATCH_BYTES` — at least
/// one item, which always fits under `EVENTS_BODY_LIMIT`.
pub fn cap_batch_bytes<T>(items: &mut Vec<T>, json: impl Fn(&T) -> &str) {
    let mut total = 2;
    let keep = items
        .iter()
        .position(|item| {
            total += json(item).len() + 1;
            total > BATCH_BYTES
        })
        .unwrap_or(items.len())
        .max(1);
    items.truncate(keep);
}

/// Joins JSON texts into one JSON array without parsing them again: the outbox and the
/// log both store events as JSON text, and send them on as they are.
pub fn json_array<'a>(items: impl Iterator<Item = &'a str> + Clone) -> String {
    let mut array = String::with_capacity(items.clone().map(|i| i.len() + 1).sum::<usize>() + 2);
    array.push('[');
    for (i, item) in items.enumerate() {
        if i > 0 {
            array.push(',');
        }
        array.push_str(item);
    }
    array.push(']');
    array
}

/// A request body that is either one JSON object or an array of them: the bus accepts
/// both on `POST /events` (the course posts single events; our relay posts arrays).
#[derive(Debug, Clone, PartialEq)]
pub struct OneOrMany<T>(pub Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for OneOrMany<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> de::Visitor<'de> for Visitor<T> {
            type Value = OneOrMany<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an event object or an array of event objects")
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                Vec::deserialize(de::value::SeqAccessDeserializer::new(seq)).map(OneOrMany)
            }
            fn visit_map<A: de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                T::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(|one| OneOrMany(vec![one]))
            }
        }
        deserializer.deserialize_any(Visitor(std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_cut_at_the_byte_cap_but_never_emptied() {
        let big = "x".repeat(BATCH_BYTES / 3);
        let mut items = vec![big.clone(); 5];
        cap_batch_bytes(&mut items, |s| s.as_str());
        assert_eq!(items.len(), 2);
        let mut huge = vec!["y".repeat(BATCH_BYTES * 2), "z".into()];
        cap_batch_bytes(&mut huge, |s| s.as_str());
        assert_eq!(huge.len(), 1, "one oversized event still goes alone");
        let mut small = vec!["{}".to_owned(); 10];
        cap_batch_bytes(&mut small, |s| s.as_str());
        assert_eq!(small.len(), 10);
    }
}

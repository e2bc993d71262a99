//! The newest events this replica appended, kept in memory after their commit, so that
//! the delivery loops (and readers catching up near the head) get what was just written
//! without reading it back from PostgreSQL. Only ever a copy: a read it cannot answer
//! whole from its first event goes to the database.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use crate::store::StoredEvent;

/// At most this many events are kept, and at most `MAX_BYTES` of envelopes.
const MAX_EVENTS: usize = 4_096;
const MAX_BYTES: usize = 4 * 1024 * 1024;

#[derive(Debug, Clone, Default)]
pub struct Tail {
    inner: Arc<Mutex<Recent>>,
}

#[derive(Debug, Default)]
struct Recent {
    /// Consecutive seqs, oldest first.
    events: VecDeque<StoredEvent>,
    bytes: usize,
    /// The last seq of the append being committed, until that append returns (0: none).
    committing: i64,
}

impl Tail {
    /// An append of seqs up to `through` is about to commit.
    pub fn committing(&self, through: i64) {
        if let Ok(mut recent) = self.inner.lock() {
            recent.committing = through;
        }
    }

    /// The append is over: committed (and `extend`ed) or not.
    pub fn settled(&self) {
        if let Ok(mut recent) = self.inner.lock() {
            recent.committing = 0;
        }
    }

    /// Whether the announcement of `seq` is this replica's own append, heard before the
    /// append returned and the tail held it. A loop it woke would find the event neither
    /// here nor yet in the head's past, and read it back from PostgreSQL; the append
    /// moves the head itself once the tail holds it.
    pub fn is_being_committed(&self, seq: i64) -> bool {
        self.inner
            .lock()
            .is_ok_and(|recent| seq <= recent.committing)
    }

    /// Adds events just committed, in seq order. Events that do not follow the newest one
    /// kept (another replica appended in between) start the tail afresh.
    pub fn extend(&self, committed: Vec<StoredEvent>) {
        let Ok(mut recent) = self.inner.lock() else {
            return;
        };
        for event in committed {
            if recent
                .events
                .back()
                .is_some_and(|last| last.seq + 1 != event.seq)
            {
                recent.events.clear();
                recent.bytes = 0;
            }
            recent.bytes += event.envelope.len();
            recent.events.push_back(event);
        }
        while recent.events.len() > MAX_EVENTS || recent.bytes > MAX_BYTES {
            match recent.events.pop_front() {
                Some(oldest) => recent.bytes -= oldest.envelope.len(),
                None => break,
            }
        }
    }

    /// What `Store::page_after` would read, if the tail holds the event right after
    /// `after`: up to `limit` events, no more of them than fit in `max_bytes` (but always
    /// one). `None` when it does not, or holds nothing newer.
    pub fn after(&self, after: i64, limit: i64, max_bytes: usize) -> Option<Vec<StoredEvent>> {
        let recent = self.inner.lock().ok()?;
        let first = recent.events.front()?.seq;
        // Any `after` a reader sends, up to i64::MAX, is a question, not a bug.
        let skip = usize::try_from(after.checked_add(1)?.checked_sub(first)?).ok()?;
        if skip >= recent.events.len() {
            return None;
        }
        let mut page = Vec::new();
        let mut bytes = 0;
        for event in recent.events.iter().skip(skip) {
            if page.len() as i64 >= limit || (!page.is_empty() && bytes >= max_bytes) {
                break;
            }
            bytes += event.envelope.len();
            page.push(event.clone());
        }
        Some(page)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn event(seq: i64, size: usize) -> StoredEvent {
        StoredEvent {
            seq,
            id: uuid::Uuid::now_v7(),
            kind: "PostCreated".into(),
            envelope: "x".repeat(size),
        }
    }

    fn seqs(page: Option<Vec<StoredEvent>>) -> Option<Vec<i64>> {
        page.map(|p| p.iter().map(|e| e.seq).collect())
    }

    #[test]
    fn answers_only_what_it_holds_from_the_next_event_on() {
        let tail = Tail::default();
        assert_eq!(seqs(tail.after(0, 10, 1000)), None);
        tail.extend((5..=9).map(|s| event(s, 10)).collect());
        assert_eq!(seqs(tail.after(4, 10, 1000)), Some(vec![5, 6, 7, 8, 9]));
        assert_eq!(seqs(tail.after(6, 2, 1000)), Some(vec![7, 8]));
        // Before what it holds, or nothing newer: the database answers.
        assert_eq!(seqs(tail.after(3, 10, 1000)), None);
        assert_eq!(seqs(tail.after(9, 10, 1000)), None);
        // Found by schemathesis: `?after=9223372036854775807` overflowed.
        assert_eq!(seqs(tail.after(i64::MAX, 1, 1000)), None);
        assert_eq!(seqs(tail.after(i64::MIN, 1, 1000)), None);
    }

    #[test]
    fn only_an_append_in_flight_claims_its_announcements() {
        let tail = Tail::default();
        assert!(!tail.is_being_committed(1));
        tail.committing(3);
        // Its own seqs, and older ones it will move the head past.
        assert!(tail.is_being_committed(3));
        assert!(tail.is_being_committed(2));
        // Another replica's, after it.
        assert!(!tail.is_being_committed(4));
        tail.extend((1..=3).map(|s| event(s, 10)).collect());
        tail.settled();
        assert!(!tail.is_being_committed(3));
    }

    #[test]
    fn a_gap_starts_it_afresh() {
        let tail = Tail::default();
        tail.extend((1..=3).map(|s| event(s, 10)).collect());
        // Seqs 4 and 5 went to another replica.
        tail.extend(vec![event(6, 10)]);
        assert_eq!(seqs(tail.after(3, 10, 1000)), None);
        assert_eq!(seqs(tail.after(5, 10, 1000)), Some(vec![6]));
    }

    #[test]
    fn pages_are_capped_by_bytes_as_the_database_caps_them_and_it_stays_bounded() {
        let tail = Tail::default();
        tail.extend((1..=10).map(|s| event(s, 100)).collect());
        // The database's rule: include an event while what came before it is under the cap.
        assert_eq!(seqs(tail.after(0, 100, 250)), Some(vec![1, 2, 3]));
        assert_eq!(seqs(tail.after(0, 100, 1)), Some(vec![1]));
        tail.extend((11..=11 + MAX_EVENTS as i64).map(|s| event(s, 1)).collect());
        let recent = tail.inner.lock().unwrap();
        assert_eq!(recent.events.len(), MAX_EVENTS);
        assert!(recent.bytes <= MAX_BYTES);
    }
}

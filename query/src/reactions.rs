//! How the view reacts to events, inside the consumer cursor's transaction. Changes are
//! announced to live streams only after that transaction commits.

use std::sync::{Arc, Mutex};

use contract::{Envelope, Event};
use serde_json::json;
use service_kit::consumer::Reactions;
use sqlx::PgConnection;
use tokio::sync::broadcast;

use crate::cache::ViewCache;
use crate::store;

pub struct ViewHandler {
    pub changes: broadcast::Sender<String>,
    cache: Arc<ViewCache>,
    pending: Mutex<Vec<String>>,
}

impl ViewHandler {
    pub fn new(changes: broadcast::Sender<String>, cache: Arc<ViewCache>) -> Self {
        Self {
            changes,
            cache,
            pending: Mutex::new(Vec::new()),
        }
    }

    fn note(&self, change: serde_json::Value) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.push(change.to_string());
        }
    }
}

impl Reactions for ViewHandler {
    async fn apply(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
        event: Event,
    ) -> Result<(), sqlx::Error> {
        let seq = envelope.seq;
        match event {
            Event::PostCreated(post) => {
                if store::add_post(conn, &post).await? {
                    self.note(json!({"type": "PostCreated", "seq": seq, "post": {"id": post.id, "title": post.title, "comments": []}}));
                }
            }
            Event::CommentCreated(comment) => {
                if store::add_comment(conn, &comment).await? {
                    self.note(json!({"type": "CommentCreated", "seq": seq, "comment": {"id": comment.id, "postId": comment.post_id, "content": comment.content, "status": comment.status}}));
                }
            }
            Event::CommentUpdated(comment) => {
                if store::update_comment(conn, &comment).await? {
                    self.note(json!({"type": "CommentUpdated", "seq": seq, "comment": {"id": comment.id, "postId": comment.post_id, "content": comment.content, "status": comment.status, "version": comment.version}}));
                } else {
                    tracing::debug!(comment_id = %comment.id, version = comment.version, "stale update ignored");
                }
            }
            Event::CommentModerated(_) => {}
        }
        Ok(())
    }

    fn committed(&self) {
        let changes = self
            .pending
            .lock()
            .map(|mut p| std::mem::take(&mut *p))
            .unwrap_or_default();
        if !changes.is_empty() {
            self.cache.invalidate();
        }
        for change in changes {
            // No receivers is fine: nobody is watching.
            let _ = self.changes.send(change);
        }
    }

    fn aborted(&self) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.clear();
        }
    }
}

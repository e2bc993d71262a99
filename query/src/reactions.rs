//! How the view reacts to events, inside the consumer cursor's transaction. Each change
//! is announced on the query database (`VIEW_CHANGES`) by the same transaction, so every
//! replica's page cache and live streams hear of it once it commits — whichever replica
//! applied it.

use std::sync::Arc;

use contract::{CommentUpdated, Envelope, Event, StreamChange, RESYNC};
use service_kit::consumer::{CursorStep, Reactions};
use service_kit::notify::{self, MAX_PAYLOAD};
use sqlx::PgConnection;

use crate::cache::ViewCache;
use crate::store;

/// The channel every replica listens on.
pub const VIEW_CHANGES: &str = "query_view_changes";

/// The reactions tell this replica's cache what they change, for it to read again once
/// the transaction commits (`ViewCache::committed`, the consumer's `after_commit`).
#[derive(Default)]
pub struct ViewReactions {
    cache: Arc<ViewCache>,
}

impl ViewReactions {
    pub fn new(cache: Arc<ViewCache>) -> Self {
        Self { cache }
    }
}

impl ViewReactions {
    /// Applies one event, with the cursor's step or inside the cursor's transaction, and
    /// announces it; None if the step was not taken (nothing changed), else whether the
    /// view changed.
    async fn react(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
        event: Event,
        step: Option<CursorStep>,
    ) -> Result<Option<bool>, sqlx::Error> {
        let seq = envelope.seq;
        let change = match event {
            Event::PostCreated(post) => StreamChange::PostCreated {
                seq,
                post: post.into(),
            },
            Event::CommentCreated(comment) => StreamChange::CommentCreated { seq, comment },
            Event::CommentUpdated(comment) => StreamChange::CommentUpdated { seq, comment },
            Event::CommentModerated(_) => return Ok(None),
        };
        let text = change.to_json();
        // Too big to notify: the streams are told to reload, which is always correct.
        let payload = if text.len() <= MAX_PAYLOAD {
            text.as_str()
        } else {
            RESYNC
        };
        let announcement = Some(store::Announcement {
            channel: VIEW_CHANGES,
            payload,
        });
        let applied = match &change {
            StreamChange::PostCreated { post, .. } => {
                store::add_post(conn, &post.post, announcement, step).await?
            }
            StreamChange::CommentCreated { comment, .. } => {
                store::add_comment(conn, comment, announcement, step).await?
            }
            StreamChange::CommentUpdated { comment, .. } => {
                let applied = store::update_comment(conn, comment, announcement, step).await?;
                if applied == Some(false) {
                    tracing::debug!(comment_id = %comment.id, version = comment.version, "stale update ignored");
                }
                applied
            }
            StreamChange::Resync => None,
        };
        if let Some((seq, post)) = change.subject().filter(|_| applied == Some(true)) {
            self.cache.applying(seq, post);
        }
        Ok(applied)
    }
}

impl Reactions for ViewReactions {
    fn wants(&self) -> Option<&'static [&'static str]> {
        Some(&["PostCreated", "CommentCreated", "CommentUpdated"])
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
        event: Event,
    ) -> Result<(), sqlx::Error> {
        self.react(conn, envelope, event, None).await.map(|_| ())
    }

    fn steps_cursor(&self) -> bool {
        true
    }

    async fn apply_stepping(
        &self,
        conn: &mut PgConnection,
        step: CursorStep,
        envelope: &Envelope,
        event: Event,
    ) -> Result<bool, sqlx::Error> {
        Ok(self
            .react(conn, envelope, event, Some(step))
            .await?
            .is_some())
    }

    /// Posts, then comments, then each comment's winning update, three statements in all;
    /// the streams are told to reload once instead of hearing each change.
    async fn apply_many(
        &self,
        conn: &mut PgConnection,
        events: Vec<(&Envelope, Event)>,
    ) -> Result<(), sqlx::Error> {
        let mut posts = Vec::new();
        let mut comments = Vec::new();
        let mut updates: Vec<CommentUpdated> = Vec::new();
        for (_, event) in events {
            match event {
                Event::PostCreated(post) => posts.push(post),
                Event::CommentCreated(comment) => comments.push(comment),
                Event::CommentUpdated(update) => updates.push(update),
                Event::CommentModerated(_) => {}
            }
        }
        let changed = store::add_posts(conn, &posts).await?
            + store::add_comments(conn, &comments).await?
            + store::update_comments(conn, &store::latest_updates(updates)).await?;
        if changed > 0 {
            self.cache.applying_everything();
            notify::announce(conn, VIEW_CHANGES, RESYNC).await?;
        }
        Ok(())
    }
}

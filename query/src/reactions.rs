//! How the view reacts to events, inside the consumer cursor's transaction. Each change
//! is announced on the query database (`VIEW_CHANGES`) by the same transaction, so every
//! replica's page cache and live streams hear of it once it commits — whichever replica
//! applied it.

use std::sync::Arc;

use contract::{CommentUpdated, Envelope, Event, StreamChange, RESYNC};
use service_kit::consumer::Reactions;
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
        let seq = envelope.seq;
        let change = match event {
            Event::PostCreated(post) => StreamChange::PostCreated {
                seq,
                post: post.into(),
            },
            Event::CommentCreated(comment) => StreamChange::CommentCreated { seq, comment },
            Event::CommentUpdated(comment) => StreamChange::CommentUpdated { seq, comment },
            Event::CommentModerated(_) => return Ok(()),
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
                store::add_post(conn, &post.post, announcement).await?
            }
            StreamChange::CommentCreated { comment, .. } => {
                store::add_comment(conn, comment, announcement).await?
            }
            StreamChange::CommentUpdated { comment, .. } => {
                let applied = store::update_comment(conn, comment, announcement).await?;
                if !applied {
                    tracing::debug!(comment_id = %comment.id, version = comment.version, "stale update ignored");
                }
                applied
            }
            StreamChange::Resync => false,
        };
        if let Some((seq, post)) = change.subject().filter(|_| applied) {
            self.cache.applying(seq, post);
        }
        Ok(())
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

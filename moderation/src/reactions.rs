//! How moderation reacts to events, inside the consumer cursor's transaction.

use contract::{CommentCreated, CommentModerated, Envelope, Event, Publication};
use service_kit::consumer::{CursorStep, Reactions};
use service_kit::outbox;
use sqlx::PgConnection;

use crate::domain::Blocklist;
use crate::store;

pub struct Moderator {
    pub blocklist: Blocklist,
}

impl Reactions for Moderator {
    fn wants(&self) -> Option<&'static [&'static str]> {
        Some(&["CommentCreated"])
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
        event: Event,
    ) -> Result<(), sqlx::Error> {
        match event {
            Event::CommentCreated(comment) => {
                self.moderate(conn, envelope, comment, None).await?;
                Ok(())
            }
            _ => Ok(()),
        }
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
        match event {
            Event::CommentCreated(comment) => Ok(self
                .moderate(conn, envelope, comment, Some(step))
                .await?
                .is_some()),
            _ => Ok(false),
        }
    }
}

impl Moderator {
    /// Decides and records the decision with its event; None if `step` was not taken
    /// (nothing changed), else whether the decision is new.
    #[tracing::instrument(skip_all, fields(comment_id = %comment.id, post_id = %comment.post_id))]
    async fn moderate(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
        comment: CommentCreated,
        step: Option<CursorStep>,
    ) -> Result<Option<bool>, sqlx::Error> {
        let status = self.blocklist.decide(&comment.content);
        let (comment_id, post_id) = (comment.id.clone(), comment.post_id.clone());
        let event = Event::CommentModerated(CommentModerated {
            id: comment.id,
            post_id: comment.post_id,
            content: comment.content,
            status,
        });
        // Written before it is known whether the decision is new: the decision and its
        // event are one statement, a round trip fewer than the decision, then the event.
        let row = outbox::prepare(&Publication::caused_by(&event, "moderation", envelope))?;
        let decided =
            store::record_decision(&mut *conn, &comment_id, &post_id, status, &row, step).await?;
        match decided {
            Some(true) => {
                outbox::appended(row);
                tracing::info!(status = status.as_str(), "comment moderated");
            }
            Some(false) => tracing::info!("already decided; no second event"),
            None => {}
        }
        Ok(decided)
    }
}

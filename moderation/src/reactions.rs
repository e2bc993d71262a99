//! How moderation reacts to events, inside the consumer cursor's transaction.

use contract::{CommentCreated, CommentModerated, Envelope, Event, Publication};
use service_kit::consumer::Reactions;
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
            Event::CommentCreated(comment) => self.moderate(conn, envelope, comment).await,
            _ => Ok(()),
        }
    }
}

impl Moderator {
    #[tracing::instrument(skip_all, fields(comment_id = %comment.id, post_id = %comment.post_id))]
    async fn moderate(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
        comment: CommentCreated,
    ) -> Result<(), sqlx::Error> {
        let status = self.blocklist.decide(&comment.content);
        if !store::record_decision(&mut *conn, &comment.id, &comment.post_id, status).await? {
            tracing::info!("already decided; no second event");
            return Ok(());
        }
        let event = Event::CommentModerated(CommentModerated {
            id: comment.id,
            post_id: comment.post_id,
            content: comment.content,
            status,
        });
        service_kit::outbox::append(
            conn,
            &Publication::caused_by(&event, "moderation", envelope),
        )
        .await?;
        tracing::info!(status = status.as_str(), "comment moderated");
        Ok(())
    }
}

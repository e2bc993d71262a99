//! How comments reacts to events, inside the consumer cursor's transaction.

use contract::{CommentModerated, CommentUpdated, Envelope, Event, Publication};
use service_kit::consumer::Reactions;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::store;

/// Announced by each transaction that taught this service a post, to every replica: a
/// request waiting for a just-created post looks again, whichever replica learned it.
pub const POSTS_LEARNED: &str = "comments_posts_learned";

pub struct CommentsReactions;

impl Reactions for CommentsReactions {
    fn wants(&self) -> Option<&'static [&'static str]> {
        Some(&["PostCreated", "CommentModerated"])
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        envelope: &Envelope,
        event: Event,
    ) -> Result<(), sqlx::Error> {
        match event {
            Event::PostCreated(post) => {
                store::remember_posts(conn, &[post.id.as_str()], POSTS_LEARNED).await
            }
            Event::CommentModerated(moderated) => apply_moderation(conn, envelope, moderated).await,
            _ => Ok(()),
        }
    }

    /// The posts in one statement, then each moderation in order (each emits its event).
    /// Learning a post and updating a comment touch different rows, so the posts going
    /// first changes nothing else.
    async fn apply_many(
        &self,
        conn: &mut PgConnection,
        events: Vec<(&Envelope, Event)>,
    ) -> Result<(), sqlx::Error> {
        let mut posts = Vec::new();
        let mut moderations = Vec::new();
        for (envelope, event) in events {
            match event {
                Event::PostCreated(post) => posts.push(post.id),
                Event::CommentModerated(moderated) => moderations.push((envelope, moderated)),
                _ => {}
            }
        }
        if !posts.is_empty() {
            let ids: Vec<&str> = posts.iter().map(String::as_str).collect();
            store::remember_posts(&mut *conn, &ids, POSTS_LEARNED).await?;
        }
        for (envelope, moderated) in moderations {
            apply_moderation(&mut *conn, envelope, moderated).await?;
        }
        Ok(())
    }
}

#[tracing::instrument(skip_all, fields(comment_id = %moderated.id, post_id = %moderated.post_id))]
async fn apply_moderation(
    conn: &mut PgConnection,
    envelope: &Envelope,
    moderated: CommentModerated,
) -> Result<(), sqlx::Error> {
    let Ok(id) = moderated.id.parse::<Uuid>() else {
        tracing::debug!("not one of our comments; ignored");
        return Ok(());
    };
    let Some(changed) = store::set_status(&mut *conn, id, moderated.status).await? else {
        tracing::debug!("unknown comment or status unchanged; ignored");
        return Ok(());
    };
    let event = Event::CommentUpdated(CommentUpdated {
        id: moderated.id,
        post_id: changed.post_id,
        content: changed.content,
        status: moderated.status,
        version: changed.version,
    });
    service_kit::outbox::append(conn, &Publication::caused_by(&event, "comments", envelope))
        .await?;
    tracing::info!(
        status = moderated.status.as_str(),
        version = changed.version,
        "comment status updated"
    );
    Ok(())
}

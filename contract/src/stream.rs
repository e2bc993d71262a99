//! What the query service's live stream (`GET /posts/stream`) sends: one JSON message per
//! change to the view, typed here so the server and the public API document agree
//! (`tests/documents.rs` validates every variant against the document).

use serde::{Deserialize, Serialize};

use crate::{CommentCreated, CommentUpdated, PostCreated};

/// One change to the view, as a `message` event's data. `seq` is the event's place in the
/// log; `Resync` tells the client to reload `GET /posts` because the change could not be
/// said exactly (too big to announce, or announcements were missed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum StreamChange {
    PostCreated { seq: i64, post: NewPost },
    CommentCreated { seq: i64, comment: CommentCreated },
    CommentUpdated { seq: i64, comment: CommentUpdated },
    Resync,
}

/// A post as the stream announces it: the course's post shape, with no comments yet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewPost {
    #[serde(flatten)]
    pub post: PostCreated,
    /// Always empty: a post is announced when it is created.
    pub comments: [(); 0],
}

impl From<PostCreated> for NewPost {
    fn from(post: PostCreated) -> Self {
        Self { post, comments: [] }
    }
}

impl StreamChange {
    /// The change's seq and the post it is to (a comment's post for a comment); none
    /// for `Resync`.
    pub fn subject(&self) -> Option<(i64, &str)> {
        match self {
            Self::PostCreated { seq, post } => Some((*seq, &post.post.id)),
            Self::CommentCreated { seq, comment } => Some((*seq, &comment.post_id)),
            Self::CommentUpdated { seq, comment } => Some((*seq, &comment.post_id)),
            Self::Resync => None,
        }
    }

    /// The message's JSON text. Every variant is plain strings and numbers, which always
    /// serialise; a failure would be a bug, and reads as `Resync`, which is always correct.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| RESYNC.to_owned())
    }
}

/// `StreamChange::Resync` as text, for the places that have no change to hand.
pub const RESYNC: &str = r#"{"type":"Resync"}"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resync_text_is_the_resync_change() {
        assert_eq!(StreamChange::Resync.to_json(), RESYNC);
        let post = StreamChange::PostCreated {
            seq: 3,
            post: PostCreated {
                id: "p".into(),
                title: "t".into(),
            }
            .into(),
        };
        assert_eq!(
            post.to_json(),
            r#"{"type":"PostCreated","seq":3,"post":{"id":"p","title":"t","comments":[]}}"#
        );
    }
}

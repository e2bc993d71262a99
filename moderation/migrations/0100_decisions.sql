-- One decision per comment, ever: a redelivered or republished CommentCreated finds its
-- decision here and produces no second event.
CREATE TABLE decisions (
    comment_id TEXT PRIMARY KEY,
    post_id    TEXT NOT NULL,
    status     TEXT NOT NULL CHECK (status IN ('approved', 'rejected')),
    decided_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Post ids this service has seen in PostCreated: a comment needs a known post.
CREATE TABLE known_posts (
    id         TEXT PRIMARY KEY,
    learned_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE comments (
    position   BIGSERIAL PRIMARY KEY,
    id         UUID NOT NULL UNIQUE,
    post_id    TEXT NOT NULL,
    content    TEXT NOT NULL CHECK (char_length(content) BETWEEN 1 AND 1000),
    status     TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'approved', 'rejected')),
    -- Bumped on every change and carried in CommentUpdated, so readers can ignore stale updates.
    version    BIGINT NOT NULL DEFAULT 0,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX comments_by_post ON comments (post_id, position);

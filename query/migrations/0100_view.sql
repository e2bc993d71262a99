-- The denormalised view, built only from events and rebuildable from the log.
CREATE TABLE posts (
    position BIGSERIAL PRIMARY KEY,
    id       TEXT NOT NULL UNIQUE,
    title    TEXT NOT NULL
);

-- No foreign key to posts: a comment may arrive before its post and must not be lost.
CREATE TABLE comments (
    position BIGSERIAL PRIMARY KEY,
    id       TEXT NOT NULL UNIQUE,
    post_id  TEXT NOT NULL,
    content  TEXT NOT NULL,
    status   TEXT NOT NULL,
    version  BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX comments_by_post ON comments (post_id, position);

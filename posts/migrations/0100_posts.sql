-- Posts, in creation order (ids are uuid v7, so they sort by time too).
CREATE TABLE posts (
    position   BIGSERIAL PRIMARY KEY,
    id         UUID NOT NULL UNIQUE,
    title      TEXT NOT NULL CHECK (char_length(title) BETWEEN 1 AND 200),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

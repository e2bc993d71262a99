-- Comments the view holds for a post it does not have yet (a comment may arrive before
-- its post), counted per post. An arriving post takes its count from here: one lookup in
-- a table that is nearly always empty, instead of counting its comments (an index probe
-- per post, a fifth of a catch-up page's insert).
CREATE TABLE early_comment_counts (
    post_id TEXT COLLATE "C" PRIMARY KEY,
    n       BIGINT NOT NULL CHECK (n > 0)
);
INSERT INTO early_comment_counts (post_id, n)
SELECT post_id, count(*) FROM comments c
WHERE NOT EXISTS (SELECT 1 FROM posts p WHERE p.id = c.post_id)
GROUP BY post_id;

-- Each inserted comment counts on its post, or, if the view has no such post yet, on the
-- post's early count.
CREATE OR REPLACE FUNCTION count_added_comments() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    WITH added_per_post AS (
        SELECT post_id, count(*) AS n FROM added GROUP BY post_id
    ), counted AS (
        UPDATE posts p SET comment_count = p.comment_count + a.n
        FROM added_per_post a
        WHERE p.id = a.post_id
        RETURNING p.id
    )
    INSERT INTO early_comment_counts (post_id, n)
    SELECT a.post_id, a.n FROM added_per_post a
    WHERE NOT EXISTS (SELECT 1 FROM counted c WHERE c.id = a.post_id)
    ON CONFLICT (post_id) DO UPDATE SET n = early_comment_counts.n + EXCLUDED.n;
    RETURN NULL;
END $$;

-- How many comments each post has: answers carry the latest LATEST_COMMENTS and this
-- total, so a post with 10,000 comments is not counted on every request. Kept by the
-- statement that creates a comment.
ALTER TABLE known_posts ADD COLUMN comment_count BIGINT NOT NULL DEFAULT 0;
UPDATE known_posts k SET comment_count = c.n
FROM (SELECT post_id, count(*) AS n FROM comments GROUP BY post_id) c
WHERE c.post_id = k.id;

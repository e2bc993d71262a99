-- How many comments each post has in the view: each post carries its latest
-- LATEST_COMMENTS comments and this total. A comment may arrive before its post, so a
-- post counts what is already there when it is added (store::add_post/add_posts) and
-- every inserted comment adds itself, whichever statement inserted it (CommentCreated,
-- or a CommentUpdated that arrived first).
ALTER TABLE posts ADD COLUMN comment_count BIGINT NOT NULL DEFAULT 0;
UPDATE posts p SET comment_count = c.n
FROM (SELECT post_id, count(*) AS n FROM comments GROUP BY post_id) c
WHERE c.post_id = p.id;

CREATE FUNCTION count_added_comments() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE posts p SET comment_count = p.comment_count + a.n
    FROM (SELECT post_id, count(*) AS n FROM added GROUP BY post_id) a
    WHERE p.id = a.post_id;
    RETURN NULL;
END $$;

CREATE TRIGGER comments_counted AFTER INSERT ON comments
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION count_added_comments();

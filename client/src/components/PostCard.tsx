import { memo, useCallback, useState } from 'react';
import { COMMENT_MAX } from '../api';
import type { Post } from '../state';
import { CommentItem } from './CommentItem';
import { TextForm } from './TextForm';

export interface PostCardProps {
  post: Post;
  onComment(postId: string, content: string): Promise<void>;
  onEarlierComments(postId: string): Promise<void>;
}

function plural(n: number, one: string, many: string) {
  return `${n} ${n === 1 ? one : many}`;
}

export const PostCard = memo(function PostCard({ post, onComment, onEarlierComments }: PostCardProps) {
  const headingId = `post-${post.id}-title`;
  const submit = useCallback((content: string) => onComment(post.id, content), [onComment, post.id]);
  const [earlier, setEarlier] = useState<{ busy: boolean; error?: string }>({ busy: false });
  const unloaded = post.commentCount - post.comments.length;
  const loadEarlier = async () => {
    setEarlier({ busy: true });
    try {
      await onEarlierComments(post.id);
      setEarlier({ busy: false });
    } catch (error) {
      setEarlier({ busy: false, error: error instanceof Error ? error.message : String(error) });
    }
  };
  return (
    <article className="post" aria-labelledby={headingId} data-post-id={post.id}>
      <header className="post__header">
        <h3 className="post__title" id={headingId}>
          {post.title}
        </h3>
        {post.commentCount > 0 ? (
          <span className="post__count">{plural(post.commentCount, 'comment', 'comments')}</span>
        ) : null}
      </header>
      {unloaded > 0 ? (
        <div className="earlier">
          <button className="button button--link" type="button" onClick={loadEarlier} disabled={earlier.busy}>
            {earlier.busy ? 'Loading…' : `Show earlier comments (${unloaded})`}
          </button>
          {earlier.error ? (
            <p className="form-error" role="alert">
              {earlier.error}
            </p>
          ) : null}
        </div>
      ) : null}
      {post.comments.length > 0 ? (
        <ul className="comments" aria-label={`Comments on ${post.title}`}>
          {post.comments.map((comment) => (
            <CommentItem key={comment.id} comment={comment} />
          ))}
        </ul>
      ) : (
        <p className="empty empty--small">No comments yet.</p>
      )}
      <TextForm
        className="text-form--compact"
        field="content"
        label={
          <>
            Add a comment<span className="sr-only"> to “{post.title}”</span>
          </>
        }
        placeholder="Say something nice"
        submitLabel="Comment"
        busyLabel="Sending…"
        max={COMMENT_MAX}
        onSubmit={submit}
      />
    </article>
  );
});

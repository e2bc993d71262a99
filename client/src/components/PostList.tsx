import { useState } from 'react';
import type { State } from '../state';
import { PostCard, type PostCardProps } from './PostCard';

export interface PostListProps {
  state: State;
  onComment: PostCardProps['onComment'];
  onEarlierComments: PostCardProps['onEarlierComments'];
  onLoadOlder(): Promise<void>;
  onReload(): void;
}

export function PostList({ state, onComment, onEarlierComments, onLoadOlder, onReload }: PostListProps) {
  const [older, setOlder] = useState<{ busy: boolean; error?: string }>({ busy: false });

  if (!state.loaded) {
    return state.loadError ? (
      <div className="notice notice--error" role="alert">
        <p>Couldn’t load the posts: {state.loadError}</p>
        <p className="notice__hint">Retrying automatically.</p>
        <button className="button button--secondary" type="button" onClick={onReload}>
          Try again now
        </button>
      </div>
    ) : (
      <div className="loading" role="status">
        <span className="spinner" aria-hidden="true" />
        Loading posts…
      </div>
    );
  }

  const loadOlder = async () => {
    setOlder({ busy: true });
    try {
      await onLoadOlder();
      setOlder({ busy: false });
    } catch (error) {
      setOlder({ busy: false, error: error instanceof Error ? error.message : String(error) });
    }
  };

  return (
    <>
      {state.loadError ? (
        <p className="notice notice--error" role="alert">
          Couldn’t refresh the posts: {state.loadError} Retrying automatically.
        </p>
      ) : null}
      {state.order.length === 0 ? (
        <p className="empty">No posts yet. Write the first one above.</p>
      ) : (
        <div className="posts">
          {state.order.map((id) => {
            const post = state.posts[id];
            return post ? <PostCard key={id} post={post} onComment={onComment} onEarlierComments={onEarlierComments} /> : null;
          })}
        </div>
      )}
      {state.hasOlder ? (
        <div className="older">
          <button className="button button--secondary" type="button" onClick={loadOlder} disabled={older.busy}>
            {older.busy ? 'Loading…' : 'Load older posts'}
          </button>
          {older.error ? (
            <p className="form-error" role="alert">
              {older.error}
            </p>
          ) : null}
        </div>
      ) : null}
    </>
  );
}

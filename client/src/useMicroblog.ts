import { useCallback, useEffect, useLayoutEffect, useMemo, useReducer, useRef } from 'react';
import { createApi, type Api } from './api';
import { startFeed, type Feed, type FeedOptions } from './feed';
import { initialState, reducer, type State } from './state';

export interface Microblog {
  state: State;
  createPost(title: string): Promise<void>;
  addComment(postId: string, content: string): Promise<void>;
  /** Loads the post's comments older than the oldest one shown. */
  loadEarlierComments(postId: string): Promise<void>;
  loadOlder(): Promise<void>;
  reload(): void;
}

export interface MicroblogOptions {
  api?: Api;
  createEventSource?: FeedOptions['createEventSource'];
}

/** The whole app's state, kept live, and the actions that change it on the server. */
export function useMicroblog(options: MicroblogOptions = {}): Microblog {
  const api = useMemo(() => options.api ?? createApi(), [options.api]);
  const [state, dispatch] = useReducer(reducer, initialState);
  const stateRef = useRef(state);
  useLayoutEffect(() => {
    stateRef.current = state;
  });
  const feedRef = useRef<Feed | null>(null);
  const { createEventSource } = options;

  useEffect(() => {
    const feed = startFeed({ api, dispatch, getState: () => stateRef.current, createEventSource });
    feedRef.current = feed;
    return () => {
      feed.stop();
      feedRef.current = null;
    };
  }, [api, createEventSource]);

  const createPost = useCallback(
    async (title: string) => {
      const post = await api.createPost(title);
      dispatch({ type: 'postSaved', post });
    },
    [api],
  );
  const addComment = useCallback(
    async (postId: string, content: string) => {
      const comments = await api.addComment(postId, content);
      dispatch({ type: 'commentsSaved', postId, comments });
    },
    [api],
  );
  const loadEarlierComments = useCallback(
    async (postId: string) => {
      const oldest = stateRef.current.posts[postId]?.comments[0];
      if (!oldest) return;
      const comments = await api.fetchEarlierComments(postId, oldest.id);
      dispatch({ type: 'earlierComments', postId, comments });
    },
    [api],
  );
  const loadOlder = useCallback(async () => feedRef.current?.loadOlder(), []);
  const reload = useCallback(() => feedRef.current?.reload(), []);

  return { state, createPost, addComment, loadEarlierComments, loadOlder, reload };
}

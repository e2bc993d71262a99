// The client's view of the blog and every way it changes: snapshots from GET /posts, the
// live stream's events, and the answers to our own requests. All of them merge
// idempotently, so the same fact arriving twice, or a snapshot racing the stream, is safe.

import type { CommentData, CommentStatus, PostData, StreamChange } from './api';

export interface Comment {
  id: string;
  content: string;
  status: CommentStatus;
  /** 0 when the server did not say (GET /posts, CommentCreated); updates count from 1. */
  version: number;
}

export interface Post {
  id: string;
  title: string;
  /** Oldest first: the latest ones, and any earlier ones the user asked for. */
  comments: Comment[];
  /** How many comments the post has in all; more than `comments` holds when some are unloaded. */
  commentCount: number;
}

export type Connection = 'connecting' | 'live' | 'reconnecting';

export interface State {
  posts: Record<string, Post>;
  /** Post ids, newest first. */
  order: string[];
  /** The first snapshot has arrived. */
  loaded: boolean;
  /** Older posts may exist beyond the ones loaded. */
  hasOlder: boolean;
  loadError: string | null;
  connection: Connection;
}

/** What the query service's live stream sends (unnamed `message` events), as documented. */
export type StreamEvent = StreamChange;

/** A change to apply: from the stream, or our own post, answered before the stream tells. */
type Change = StreamEvent | { type: 'PostCreated'; post: PostData };

export type Action =
  /** A page of GET /posts (oldest first) that includes the newest posts. */
  | { type: 'snapshot'; posts: PostData[]; limit?: number }
  /** A page of GET /posts?before=… (oldest first), older than everything loaded. */
  | { type: 'olderPage'; posts: PostData[]; limit: number }
  | { type: 'loadFailed'; message: string }
  | { type: 'event'; event: StreamEvent }
  /** Our own POST /posts/create answered. */
  | { type: 'postSaved'; post: { id: string; title: string } }
  /** Our own POST /posts/:id/comments answered with the post's latest comments. */
  | { type: 'commentsSaved'; postId: string; comments: CommentData[] }
  /** A page of GET /posts/:id/comments?before=… (oldest first), older than all loaded. */
  | { type: 'earlierComments'; postId: string; comments: CommentData[] }
  | { type: 'connection'; connection: Connection };

export const initialState: State = {
  posts: {},
  order: [],
  loaded: false,
  hasOlder: false,
  loadError: null,
  connection: 'connecting',
};

export function toComment(data: CommentData): Comment {
  return { id: data.id, content: data.content, status: data.status, version: data.version ?? 0 };
}

function toPost(data: PostData): Post {
  const comments = (data.comments ?? []).map(toComment);
  return { id: data.id, title: data.title, comments, commentCount: Math.max(data.commentCount ?? 0, comments.length) };
}

/** The post with `incoming` merged into its comments; new ones count towards the total. */
function withComments(post: Post, incoming: Comment[], counted: boolean): Post {
  const comments = mergeComments(post.comments, incoming);
  if (comments === post.comments) return post;
  const added = counted ? comments.length - post.comments.length : 0;
  return { ...post, comments, commentCount: Math.max(post.commentCount + added, comments.length) };
}

/**
 * Whether `incoming` should replace `current` (the same comment). A higher version wins,
 * a lower one never does. Versions tie when neither side knew one (both 0): then the
 * newer news wins, except that moderation never goes backwards — a versionless `pending`
 * that was read before the decision must not hide an `approved` or `rejected` we know.
 */
export function supersedes(incoming: Comment, current: Comment): boolean {
  if (incoming.version !== current.version) return incoming.version > current.version;
  return !(incoming.status === 'pending' && current.status !== 'pending');
}

/**
 * Merges two orderings of ids: `incoming`'s order is kept, and each id only `existing`
 * knows stays right after the id that preceded it there (or at the front).
 */
export function mergeOrder(existing: readonly string[], incoming: readonly string[]): string[] {
  const result = [...incoming];
  const present = new Set(incoming);
  let front = 0;
  let previous: string | undefined;
  for (const id of existing) {
    if (!present.has(id)) {
      const at = previous === undefined ? front++ : result.indexOf(previous) + 1;
      result.splice(at, 0, id);
      present.add(id);
    }
    previous = id;
  }
  return result;
}

/** Merges comments of one post; returns `current` itself when nothing changed. */
export function mergeComments(current: Comment[], incoming: Comment[]): Comment[] {
  const byId = new Map(current.map((c) => [c.id, c]));
  let changed = false;
  const merged = new Map(byId);
  for (const comment of incoming) {
    const known = byId.get(comment.id);
    if (!known) {
      merged.set(comment.id, comment);
      changed = true;
    } else if (supersedes(comment, known) && !sameComment(comment, known)) {
      merged.set(comment.id, comment);
      changed = true;
    }
  }
  const order = mergeOrder(
    current.map((c) => c.id),
    incoming.map((c) => c.id),
  );
  if (!changed && order.every((id, i) => current[i]?.id === id)) return current;
  return order.map((id) => merged.get(id)!);
}

function sameComment(a: Comment, b: Comment): boolean {
  return a.content === b.content && a.status === b.status && a.version === b.version;
}

/** Merges posts (given oldest first) into the state; unchanged posts keep their identity. */
function mergePosts(state: State, incoming: PostData[]): Pick<State, 'posts' | 'order'> {
  let posts = state.posts;
  const newestFirst: string[] = [];
  for (let i = incoming.length - 1; i >= 0; i--) {
    const data = incoming[i]!;
    newestFirst.push(data.id);
    const known = posts[data.id];
    const post = toPost(data);
    const next = known ? mergePost(known, post) : post;
    if (next !== known) {
      if (posts === state.posts) posts = { ...posts };
      posts[data.id] = next;
    }
  }
  const order = mergeOrder(state.order, newestFirst);
  const same = order.length === state.order.length && order.every((id, i) => state.order[i] === id);
  return { posts, order: same ? state.order : order };
}

/** Counts only grow: a snapshot read before a comment we already know may count fewer. */
function mergePost(known: Post, incoming: Post): Post {
  const comments = mergeComments(known.comments, incoming.comments);
  const commentCount = Math.max(known.commentCount, incoming.commentCount, comments.length);
  if (comments === known.comments && known.title === incoming.title && commentCount === known.commentCount) {
    return known;
  }
  return { ...known, title: incoming.title, comments, commentCount };
}

function withPost(state: State, post: Post): State {
  return { ...state, posts: { ...state.posts, [post.id]: post } };
}

function applyEvent(state: State, event: Change): State {
  switch (event.type) {
    case 'PostCreated': {
      const { id, title } = event.post;
      if (state.posts[id]) return state;
      return {
        ...state,
        posts: { ...state.posts, [id]: toPost({ id, title, comments: event.post.comments ?? [] }) },
        order: [id, ...state.order],
      };
    }
    case 'CommentCreated': {
      const post = state.posts[event.comment.postId];
      // A post we have not loaded (an older page): its comments come with it.
      if (!post || post.comments.some((c) => c.id === event.comment.id)) return state;
      return withPost(state, {
        ...post,
        comments: [...post.comments, toComment(event.comment)],
        commentCount: post.commentCount + 1,
      });
    }
    case 'CommentUpdated': {
      const post = state.posts[event.comment.postId];
      if (!post) return state;
      // An update that overtook its CommentCreated brings a new comment: it counts.
      const next = withComments(post, [toComment(event.comment)], true);
      return next === post ? state : withPost(state, next);
    }
    case 'Resync':
      // Handled by the feed, which reloads the view.
      return state;
    default:
      return state;
  }
}

export function reducer(state: State, action: Action): State {
  switch (action.type) {
    case 'snapshot': {
      const merged = mergePosts(state, action.posts);
      // A short page means there is nothing older; a full one keeps what we knew.
      const short = action.limit === undefined || action.posts.length < action.limit;
      const hasOlder = short ? false : state.loaded ? state.hasOlder : true;
      return { ...state, ...merged, loaded: true, loadError: null, hasOlder };
    }
    case 'olderPage': {
      const merged = mergePosts(state, action.posts);
      return { ...state, ...merged, hasOlder: action.posts.length >= action.limit };
    }
    case 'loadFailed':
      return { ...state, loadError: action.message };
    case 'event':
      return applyEvent(state, action.event);
    case 'postSaved':
      return applyEvent(state, { type: 'PostCreated', post: { ...action.post, comments: [] } });
    case 'commentsSaved': {
      const post = state.posts[action.postId];
      if (!post) return state;
      const next = withComments(post, action.comments.map(toComment), true);
      return next === post ? state : withPost(state, next);
    }
    case 'earlierComments': {
      const post = state.posts[action.postId];
      if (!post) return state;
      // Earlier comments go before the loaded ones: merged with the loaded ones' order kept.
      const comments = mergeComments(action.comments.map(toComment), post.comments);
      if (comments.length === post.comments.length) return state;
      return withPost(state, { ...post, comments, commentCount: Math.max(post.commentCount, comments.length) });
    }
    case 'connection':
      return state.connection === action.connection ? state : { ...state, connection: action.connection };
    default:
      return state;
  }
}

/** Parses one stream message; anything unknown or malformed is `null` (ignored). */
export function parseStreamEvent(data: string): StreamEvent | null {
  let value: unknown;
  try {
    value = JSON.parse(data);
  } catch {
    return null;
  }
  if (!value || typeof value !== 'object') return null;
  const event = value as Record<string, unknown>;
  const isObject = (v: unknown): v is Record<string, unknown> => !!v && typeof v === 'object';
  switch (event.type) {
    case 'Resync':
      return { type: 'Resync' };
    case 'PostCreated':
      return isObject(event.post) && typeof event.post.id === 'string' ? (event as StreamEvent) : null;
    case 'CommentCreated':
    case 'CommentUpdated':
      return isObject(event.comment) &&
        typeof event.comment.id === 'string' &&
        typeof event.comment.postId === 'string'
        ? (event as StreamEvent)
        : null;
    default:
      return null;
  }
}

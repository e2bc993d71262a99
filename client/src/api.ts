// The HTTP API, by relative URL only: whatever host serves the client also routes these
// (the Ingress, the local gateway, or Vite's dev proxy).

// The shapes come from the public API's document (contract/openapi/public.json) through
// src/generated/public-api.ts, which client/typegen generates and the test command checks
// is current: a change to the document that the client does not follow fails its build.
import type { components } from './generated/public-api';

type Schemas = components['schemas'];

export type CommentStatus = Schemas['Status'];

/** A comment as the server sends it; `version` only comes with `CommentUpdated`. */
export type CommentData = Schemas['Comment'] & { version?: number };

/**
 * A post of `GET /posts`: the latest comments (at most LATEST_COMMENTS), oldest first.
 * `commentCount` is optional here because the course's services do not send it.
 */
export type PostData = Omit<Schemas['Post'], 'commentCount'> & Partial<Pick<Schemas['Post'], 'commentCount'>>;

/** One message of the live stream (`GET /posts/stream`). */
export type StreamChange = Schemas['StreamChange'];

/** The most comments a post carries in the view; the rest are paged on request. */
export const LATEST_COMMENTS = 100;

/** Limits the services enforce (after trimming); shown as hints, enforced by the server. */
export const TITLE_MAX = 200;
export const COMMENT_MAX = 1000;

export const STREAM_URL = '/posts/stream';

/** A refused or failed request, with the server's own message when it sent one. */
export class ApiError extends Error {
  readonly status: number;
  readonly code: string;
  /** The request field the error is about (validation errors only), e.g. `title`. */
  readonly field?: string;

  constructor(status: number, code: string, message: string, field?: string) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
    this.field = field;
  }
}

function fallbackMessage(status: number): string {
  switch (status) {
    case 404:
      return 'Not found.';
    case 413:
      return 'That is too large to send.';
    case 429:
      return 'Too many requests; try again in a moment.';
    case 502:
    case 503:
    case 504:
      return 'The service is unavailable right now; try again in a moment.';
    default:
      return `The request failed (HTTP ${status}).`;
  }
}

/**
 * Turns an error response into an `ApiError`: the server's
 * `{"error":{"code","message","field"}}` when the body has that shape, otherwise a
 * readable message for the status.
 */
export function errorFromResponse(status: number, body: string): ApiError {
  try {
    const parsed: unknown = JSON.parse(body);
    if (parsed && typeof parsed === 'object' && 'error' in parsed) {
      const error = (parsed as { error: unknown }).error;
      if (error && typeof error === 'object') {
        const { code, message, field } = error as Record<string, unknown>;
        if (typeof message === 'string' && message.trim() !== '') {
          return new ApiError(
            status,
            typeof code === 'string' ? code : 'error',
            message,
            typeof field === 'string' ? field : undefined,
          );
        }
      }
    }
  } catch {
    // Not JSON (a proxy's HTML error page, say): fall through.
  }
  return new ApiError(status, 'http_error', fallbackMessage(status));
}

/** A rate limit refused the request: the user is asked to wait, nothing is broken. */
export function slowDown(retryAfter: string | null): ApiError {
  const seconds = Number.parseInt(retryAfter ?? '', 10);
  const wait = Number.isFinite(seconds) && seconds > 0 ? `${seconds} s` : 'a moment';
  return new ApiError(429, 'rate_limited', `Slow down: too many requests. Try again in ${wait}.`);
}

export type Fetch = (input: string, init?: RequestInit) => Promise<Response>;

async function request<T>(fetchImpl: Fetch, url: string, init?: RequestInit): Promise<T> {
  let response: Response;
  try {
    response = await fetchImpl(url, {
      ...init,
      headers: { Accept: 'application/json', ...(init?.body ? { 'Content-Type': 'application/json' } : {}) },
    });
  } catch {
    throw new ApiError(0, 'network', 'Could not reach the server. Check your connection and try again.');
  }
  if (response.status === 429) {
    throw slowDown(response.headers.get('Retry-After'));
  }
  if (!response.ok) {
    throw errorFromResponse(response.status, await response.text().catch(() => ''));
  }
  return (await response.json()) as T;
}

export interface Api {
  createPost(title: string): Promise<{ id: string; title: string }>;
  addComment(postId: string, content: string): Promise<CommentData[]>;
  /** Posts in creation order (oldest first): the `limit` newest, optionally older than `before`. */
  fetchPosts(page?: { limit?: number; before?: string }): Promise<PostData[]>;
  /** The post's comments created before comment `before`, oldest first (at most `limit`). */
  fetchEarlierComments(postId: string, before: string, limit?: number): Promise<CommentData[]>;
}

export function createApi(fetchImpl: Fetch = (input, init) => fetch(input, init)): Api {
  return {
    createPost: (title) =>
      request(fetchImpl, '/posts/create', { method: 'POST', body: JSON.stringify({ title }) }),
    addComment: (postId, content) =>
      request(fetchImpl, `/posts/${encodeURIComponent(postId)}/comments`, {
        method: 'POST',
        body: JSON.stringify({ content }),
      }),
    fetchPosts: async (page = {}) => {
      const query = new URLSearchParams();
      if (page.limit !== undefined) query.set('limit', String(page.limit));
      if (page.before !== undefined) query.set('before', page.before);
      const qs = query.toString();
      const view = await request<Record<string, PostData>>(fetchImpl, qs ? `/posts?${qs}` : '/posts');
      // The object's key order is the creation order.
      return Object.values(view).map((post) => ({ ...post, comments: post.comments ?? [] }));
    },
    fetchEarlierComments: (postId, before, limit = LATEST_COMMENTS) => {
      const query = new URLSearchParams({ before, limit: String(limit) });
      return request(fetchImpl, `/posts/${encodeURIComponent(postId)}/comments?${query.toString()}`);
    },
  };
}

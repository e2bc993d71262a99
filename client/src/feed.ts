// Keeps the state in step with the server: opens the live stream, loads the view on every
// `ready` (and on `Resync`, which means we fell behind), and applies events on top. The
// reducer merges idempotently, so an event that also made it into a snapshot is harmless.

import type { Api } from './api';
import { openLiveStream, defaultTimers, backoffDelay, type EventSourceFactory, type Timers } from './live';
import type { Action, State } from './state';

export const PAGE_SIZE = 25;
/** The most GET /posts returns in one page. */
const MAX_LIMIT = 1000;

export interface FeedOptions {
  api: Pick<Api, 'fetchPosts'>;
  dispatch: (action: Action) => void;
  getState: () => State;
  streamUrl?: string;
  pageSize?: number;
  createEventSource?: EventSourceFactory;
  timers?: Timers;
  random?: () => number;
}

export interface Feed {
  /** Loads the page of posts older than the oldest one shown. */
  loadOlder(): Promise<void>;
  /** Reloads the view now (the "Try again" button). */
  reload(): void;
  stop(): void;
}

export function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

export function startFeed(options: FeedOptions): Feed {
  const {
    api,
    dispatch,
    getState,
    streamUrl = '/posts/stream',
    pageSize = PAGE_SIZE,
    timers = defaultTimers,
    random = Math.random,
  } = options;

  let stopped = false;
  let loading = false;
  let again = false;
  let failures = 0;
  let retry: unknown = null;

  // One load at a time; a request during a load runs once more when it ends, so the last
  // `ready`/`Resync` is always followed by a load that started after it.
  const load = async () => {
    if (stopped) return;
    if (loading) {
      again = true;
      return;
    }
    if (retry !== null) timers.clearTimeout(retry);
    retry = null;
    loading = true;
    try {
      // Reload everything shown (up to the API's page limit), not just the first page.
      const limit = Math.min(MAX_LIMIT, Math.max(pageSize, getState().order.length));
      const posts = await api.fetchPosts({ limit });
      if (stopped) return;
      failures = 0;
      dispatch({ type: 'snapshot', posts, limit });
    } catch (error) {
      if (stopped) return;
      failures += 1;
      dispatch({ type: 'loadFailed', message: describe(error) });
      retry = timers.setTimeout(() => void load(), backoffDelay(failures, 1000, 15000, random()));
    } finally {
      loading = false;
      if (again && !stopped) {
        again = false;
        void load();
      }
    }
  };

  const stream = openLiveStream({
    url: streamUrl,
    createEventSource: options.createEventSource,
    timers,
    random,
    onReady: () => void load(),
    onEvent: (event) => {
      if (event.type === 'Resync') void load();
      else dispatch({ type: 'event', event });
    },
    onConnection: (connection) => {
      dispatch({ type: 'connection', connection });
      // Without the stream, still show what there is; live updates resume on reconnect.
      if (connection === 'reconnecting' && !getState().loaded) void load();
    },
  });

  let loadingOlder: Promise<void> | null = null;

  return {
    loadOlder() {
      if (loadingOlder) return loadingOlder;
      const { order } = getState();
      const before = order[order.length - 1];
      loadingOlder = (async () => {
        try {
          const posts = await api.fetchPosts({ limit: pageSize, ...(before ? { before } : {}) });
          if (!stopped) dispatch({ type: 'olderPage', posts, limit: pageSize });
        } finally {
          loadingOlder = null;
        }
      })();
      return loadingOlder;
    },
    reload: () => void load(),
    stop() {
      stopped = true;
      stream.close();
      if (retry !== null) timers.clearTimeout(retry);
      retry = null;
    },
  };
}

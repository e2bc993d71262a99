// The query service's Server-Sent Events stream, kept open for as long as the page lives.
//
// Every (re)connection starts with a `ready` event; that is the moment to (re)load the view,
// because from then on no change can slip by unseen. The browser's EventSource retries some
// failures by itself but gives up for good on others (an HTTP 502 from a proxy while the
// query service restarts, say), so on any error this closes the source and opens a fresh
// one after a capped, jittered exponential backoff.

import { parseStreamEvent, type Connection, type StreamEvent } from './state';

/** The part of the DOM's EventSource this uses, so tests can pass a fake. */
export interface EventSourceLike {
  addEventListener(type: string, listener: (event: MessageEvent) => void): void;
  close(): void;
}

export type EventSourceFactory = (url: string) => EventSourceLike;

export interface Timers {
  setTimeout(callback: () => void, ms: number): unknown;
  clearTimeout(handle: unknown): void;
}

export interface StreamOptions {
  url: string;
  /** A (re)connection is ready: load the view now. */
  onReady: () => void;
  onEvent: (event: StreamEvent) => void;
  onConnection: (connection: Connection) => void;
  createEventSource?: EventSourceFactory;
  timers?: Timers;
  /** First retry delay; doubles per failed attempt up to `maxDelayMs`. */
  minDelayMs?: number;
  maxDelayMs?: number;
  /** Jitter source in [0, 1): the delay is scaled by 0.5 + random / 2. */
  random?: () => number;
}

export interface LiveStream {
  close(): void;
}

export const defaultTimers: Timers = {
  setTimeout: (callback, ms) => globalThis.setTimeout(callback, ms),
  clearTimeout: (handle) => globalThis.clearTimeout(handle as ReturnType<typeof setTimeout>),
};

/** The delay before reconnect attempt `attempt` (1-based). */
export function backoffDelay(attempt: number, minMs: number, maxMs: number, random: number): number {
  const base = Math.min(maxMs, minMs * 2 ** Math.max(0, attempt - 1));
  return Math.round(base * (0.5 + random / 2));
}

export function openLiveStream(options: StreamOptions): LiveStream {
  const {
    url,
    onReady,
    onEvent,
    onConnection,
    createEventSource = (u) => new EventSource(u),
    timers = defaultTimers,
    minDelayMs = 1000,
    maxDelayMs = 15000,
    random = Math.random,
  } = options;

  let source: EventSourceLike | null = null;
  let retry: unknown = null;
  let failures = 0;
  let closed = false;

  const connect = () => {
    retry = null;
    if (closed) return;
    const current = createEventSource(url);
    source = current;
    current.addEventListener('ready', () => {
      if (source !== current) return;
      failures = 0;
      onConnection('live');
      onReady();
    });
    current.addEventListener('message', (message) => {
      if (source !== current) return;
      const event = parseStreamEvent(String(message.data));
      if (event) onEvent(event);
    });
    current.addEventListener('error', () => {
      if (source !== current || closed) return;
      current.close();
      source = null;
      failures += 1;
      onConnection('reconnecting');
      retry = timers.setTimeout(connect, backoffDelay(failures, minDelayMs, maxDelayMs, random()));
    });
  };

  onConnection('connecting');
  connect();

  return {
    close() {
      closed = true;
      if (retry !== null) timers.clearTimeout(retry);
      retry = null;
      source?.close();
      source = null;
    },
  };
}

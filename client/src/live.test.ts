import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { backoffDelay, openLiveStream } from './live';
import type { Connection, StreamEvent } from './state';
import { FakeEventSource } from './test/fakes';

function open() {
  const connections: Connection[] = [];
  const events: StreamEvent[] = [];
  const onReady = vi.fn();
  const stream = openLiveStream({
    url: '/posts/stream',
    createEventSource: FakeEventSource.create,
    onReady,
    onEvent: (e) => events.push(e),
    onConnection: (c) => connections.push(c),
    minDelayMs: 1000,
    maxDelayMs: 8000,
    random: () => 1, // no jitter: the full delay
  });
  return { stream, connections, events, onReady };
}

beforeEach(() => {
  FakeEventSource.reset();
  vi.useFakeTimers();
});
afterEach(() => vi.useRealTimers());

describe('openLiveStream', () => {
  it('opens the stream, reports ready and passes parsed events on', () => {
    const { connections, events, onReady } = open();
    const source = FakeEventSource.latest();
    expect(source.url).toBe('/posts/stream');
    expect(connections).toEqual(['connecting']);
    source.ready();
    expect(onReady).toHaveBeenCalledTimes(1);
    expect(connections).toEqual(['connecting', 'live']);
    source.send({ type: 'PostCreated', seq: 1, post: { id: 'p', title: 'T', comments: [] } });
    source.send('garbage');
    source.send({ type: 'Resync' });
    expect(events.map((e) => e.type)).toEqual(['PostCreated', 'Resync']);
  });

  it('reconnects after the stream drops, and reloads on the new ready', () => {
    const { connections, onReady } = open();
    const first = FakeEventSource.latest();
    first.ready();
    first.fail();
    expect(first.closed).toBe(true);
    expect(connections.at(-1)).toBe('reconnecting');
    expect(FakeEventSource.instances).toHaveLength(1);

    vi.advanceTimersByTime(999);
    expect(FakeEventSource.instances).toHaveLength(1);
    vi.advanceTimersByTime(1);
    expect(FakeEventSource.instances).toHaveLength(2);

    const second = FakeEventSource.latest();
    second.ready();
    expect(onReady).toHaveBeenCalledTimes(2);
    expect(connections.at(-1)).toBe('live');
  });

  it('backs off exponentially while the server stays away, and resets once ready', () => {
    open();
    const waits: number[] = [];
    for (let attempt = 1; attempt <= 5; attempt++) {
      const count = FakeEventSource.instances.length;
      FakeEventSource.latest().fail();
      let waited = 0;
      while (FakeEventSource.instances.length === count && waited < 60_000) {
        vi.advanceTimersByTime(100);
        waited += 100;
      }
      waits.push(waited);
    }
    expect(waits).toEqual([1000, 2000, 4000, 8000, 8000]);

    FakeEventSource.latest().ready();
    FakeEventSource.latest().fail();
    const count = FakeEventSource.instances.length;
    vi.advanceTimersByTime(1000);
    expect(FakeEventSource.instances.length).toBe(count + 1);
  });

  it('ignores a replaced source and stops for good when closed', () => {
    const { stream, onReady } = open();
    const first = FakeEventSource.latest();
    first.fail();
    stream.close();
    vi.advanceTimersByTime(60_000);
    expect(FakeEventSource.instances).toHaveLength(1);
    expect(onReady).not.toHaveBeenCalled();

    const again = open();
    const live = FakeEventSource.latest();
    again.stream.close();
    expect(live.closed).toBe(true);
  });

  it('jitters the delay between half and all of it', () => {
    expect(backoffDelay(1, 1000, 15000, 0)).toBe(500);
    expect(backoffDelay(1, 1000, 15000, 1)).toBe(1000);
    expect(backoffDelay(3, 1000, 15000, 1)).toBe(4000);
    expect(backoffDelay(10, 1000, 15000, 1)).toBe(15000);
  });
});

import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { PostData } from './api';
import { startFeed } from './feed';
import { initialState, reducer, type Action, type State } from './state';
import { deferred, FakeEventSource } from './test/fakes';

const post = (id: string): PostData => ({ id, title: id, comments: [] });

function setup(fetchPosts: (page?: { limit?: number; before?: string }) => Promise<PostData[]>) {
  let state: State = initialState;
  const actions: Action[] = [];
  const dispatch = (action: Action) => {
    actions.push(action);
    state = reducer(state, action);
  };
  const api = { fetchPosts: vi.fn(fetchPosts) };
  const feed = startFeed({
    api,
    dispatch,
    getState: () => state,
    createEventSource: FakeEventSource.create,
    pageSize: 2,
    random: () => 1,
  });
  return { feed, api, actions, state: () => state };
}

beforeEach(() => {
  FakeEventSource.reset();
  vi.useFakeTimers();
});
afterEach(() => vi.useRealTimers());

describe('startFeed', () => {
  it('loads the view when the stream is ready, then applies events on top', async () => {
    const { api, state } = setup(async () => [post('a')]);
    expect(api.fetchPosts).not.toHaveBeenCalled();
    FakeEventSource.latest().ready();
    await vi.runAllTimersAsync();
    expect(api.fetchPosts).toHaveBeenCalledWith({ limit: 2 });
    expect(state().order).toEqual(['a']);
    FakeEventSource.latest().send({ type: 'PostCreated', seq: 3, post: post('b') });
    expect(state().order).toEqual(['b', 'a']);
    expect(state().connection).toBe('live');
  });

  it('reloads on Resync, and on every reconnect', async () => {
    const { api } = setup(async () => [post('a')]);
    FakeEventSource.latest().ready();
    await vi.runAllTimersAsync();
    FakeEventSource.latest().send({ type: 'Resync' });
    await vi.runAllTimersAsync();
    expect(api.fetchPosts).toHaveBeenCalledTimes(2);

    FakeEventSource.latest().fail();
    await vi.advanceTimersByTimeAsync(1000);
    FakeEventSource.latest().ready();
    await vi.runAllTimersAsync();
    expect(api.fetchPosts).toHaveBeenCalledTimes(3);
  });

  it('runs one load at a time, and one more if asked while loading', async () => {
    const first = deferred<PostData[]>();
    const { api, state } = setup(() => (api.fetchPosts.mock.calls.length === 1 ? first.promise : Promise.resolve([post('a'), post('b')])));
    FakeEventSource.latest().ready();
    FakeEventSource.latest().send({ type: 'Resync' });
    FakeEventSource.latest().send({ type: 'Resync' });
    expect(api.fetchPosts).toHaveBeenCalledTimes(1);
    first.resolve([post('a')]);
    await vi.runAllTimersAsync();
    expect(api.fetchPosts).toHaveBeenCalledTimes(2);
    expect(state().order).toEqual(['b', 'a']);
  });

  it('reloads as many posts as are shown', async () => {
    const { api, feed } = setup(async (page) => (page?.before ? [post('a'), post('b')] : [post('c'), post('d')]));
    FakeEventSource.latest().ready();
    await vi.runAllTimersAsync();
    await feed.loadOlder();
    expect(api.fetchPosts).toHaveBeenLastCalledWith({ limit: 2, before: 'c' });
    FakeEventSource.latest().send({ type: 'Resync' });
    await vi.runAllTimersAsync();
    expect(api.fetchPosts).toHaveBeenLastCalledWith({ limit: 4 });
  });

  it('shows a failed load and retries it with backoff', async () => {
    let fail = true;
    const { api, state } = setup(async () => {
      if (fail) throw new Error('The service is unavailable right now; try again in a moment.');
      return [post('a')];
    });
    FakeEventSource.latest().ready();
    await vi.advanceTimersByTimeAsync(0);
    expect(state().loadError).toMatch(/unavailable/);
    expect(state().loaded).toBe(false);
    fail = false;
    await vi.advanceTimersByTimeAsync(1000);
    expect(api.fetchPosts).toHaveBeenCalledTimes(2);
    expect(state().loaded).toBe(true);
    expect(state().loadError).toBeNull();
  });

  it('still loads the view when the stream cannot connect at all', async () => {
    const { api, state } = setup(async () => [post('a')]);
    FakeEventSource.latest().fail();
    await vi.advanceTimersByTimeAsync(0);
    expect(api.fetchPosts).toHaveBeenCalledTimes(1);
    expect(state().order).toEqual(['a']);
    expect(state().connection).toBe('reconnecting');
  });

  it('stops cleanly', async () => {
    const { feed, api } = setup(async () => [post('a')]);
    const source = FakeEventSource.latest();
    feed.stop();
    expect(source.closed).toBe(true);
    source.ready();
    await vi.runAllTimersAsync();
    expect(api.fetchPosts).not.toHaveBeenCalled();
  });
});

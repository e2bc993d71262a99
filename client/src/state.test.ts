import { describe, expect, it } from 'vitest';
import type { PostData } from './api';
import {
  initialState,
  mergeOrder,
  parseStreamEvent,
  reducer,
  supersedes,
  type Action,
  type State,
  type StreamEvent,
} from './state';

const run = (actions: Action[], from: State = initialState) => actions.reduce(reducer, from);
const event = (e: StreamEvent): Action => ({ type: 'event', event: e });
const post = (id: string, comments: PostData['comments'] = []): PostData => ({ id, title: `Title ${id}`, comments });
const snapshot = (...posts: PostData[]): Action => ({ type: 'snapshot', posts, limit: 25 });
const commentCreated = (id: string, postId: string, content = `text ${id}`): StreamEvent => ({
  type: 'CommentCreated',
  seq: 1,
  comment: { id, postId, content, status: 'pending' },
});
const commentUpdated = (id: string, postId: string, status: 'approved' | 'rejected' | 'pending', version: number): StreamEvent => ({
  type: 'CommentUpdated',
  seq: 2,
  comment: { id, postId, content: `text ${id}`, status, version },
});
const statusOf = (state: State, postId: string, commentId: string) =>
  state.posts[postId]?.comments.find((c) => c.id === commentId)?.status;

describe('snapshot', () => {
  it('loads posts newest first, with versionless comments at version 0', () => {
    const state = run([
      snapshot(post('a', [{ id: 'c1', content: 'hi', status: 'approved' }]), post('b')),
    ]);
    expect(state.loaded).toBe(true);
    expect(state.order).toEqual(['b', 'a']);
    expect(state.posts.a?.comments).toEqual([{ id: 'c1', content: 'hi', status: 'approved', version: 0 }]);
  });

  it('says whether older posts may exist from how full the page is', () => {
    expect(run([{ type: 'snapshot', posts: [post('a')], limit: 1 }]).hasOlder).toBe(true);
    expect(run([{ type: 'snapshot', posts: [post('a')], limit: 2 }]).hasOlder).toBe(false);
  });

  it('clears a load error', () => {
    const state = run([{ type: 'loadFailed', message: 'down' }, snapshot(post('a'))]);
    expect(state.loadError).toBeNull();
  });

  it('keeps what the stream brought while the snapshot was on its way', () => {
    // The stream is opened first; events may land before the (older) snapshot answers.
    const state = run([
      event({ type: 'PostCreated', seq: 1, post: post('a') }),
      event(commentCreated('c1', 'a')),
      event(commentUpdated('c1', 'a', 'approved', 1)),
      event({ type: 'PostCreated', seq: 4, post: post('b') }),
      // Read before c1 was moderated and before b existed.
      snapshot(post('a', [{ id: 'c1', content: 'text c1', status: 'pending' }])),
    ]);
    expect(state.order).toEqual(['b', 'a']);
    expect(statusOf(state, 'a', 'c1')).toBe('approved');
  });

  it('updates what it knows newer, without disturbing unchanged posts', () => {
    const first = run([snapshot(post('a', [{ id: 'c1', content: 'x', status: 'pending' }]), post('b'))]);
    const second = reducer(first, snapshot(post('a', [{ id: 'c1', content: 'x', status: 'rejected' }]), post('b')));
    expect(statusOf(second, 'a', 'c1')).toBe('rejected');
    expect(second.posts.b).toBe(first.posts.b);
    expect(second.order).toBe(first.order);
  });

  it('merges pages: older pages append, a fresh first page keeps them', () => {
    const state = run([
      { type: 'snapshot', posts: [post('c'), post('d')], limit: 2 },
      { type: 'olderPage', posts: [post('a'), post('b')], limit: 2 },
      { type: 'snapshot', posts: [post('d'), post('e')], limit: 2 },
    ]);
    expect(state.order).toEqual(['e', 'd', 'c', 'b', 'a']);
    expect(state.hasOlder).toBe(true);
    expect(reducer(state, { type: 'olderPage', posts: [], limit: 2 }).hasOlder).toBe(false);
  });
});

describe('stream events', () => {
  const loaded = run([snapshot(post('a'))]);

  it('PostCreated puts the new post first, once', () => {
    const added = reducer(loaded, event({ type: 'PostCreated', seq: 5, post: post('b') }));
    expect(added.order).toEqual(['b', 'a']);
    expect(added.posts.b).toEqual({ id: 'b', title: 'Title b', comments: [], commentCount: 0 });
    expect(reducer(added, event({ type: 'PostCreated', seq: 5, post: post('b') }))).toBe(added);
  });

  it('CommentCreated appends a pending comment, once', () => {
    const one = reducer(loaded, event(commentCreated('c1', 'a')));
    const two = reducer(one, event(commentCreated('c2', 'a')));
    expect(two.posts.a?.comments.map((c) => [c.id, c.status, c.version])).toEqual([
      ['c1', 'pending', 0],
      ['c2', 'pending', 0],
    ]);
    expect(reducer(two, event(commentCreated('c1', 'a')))).toBe(two);
  });

  it('ignores comments on posts it has not loaded', () => {
    expect(reducer(loaded, event(commentCreated('c1', 'elsewhere')))).toBe(loaded);
    expect(reducer(loaded, event(commentUpdated('c1', 'elsewhere', 'approved', 1)))).toBe(loaded);
  });

  it('CommentUpdated with a version beats a versionless comment', () => {
    const state = run([event(commentCreated('c1', 'a')), event(commentUpdated('c1', 'a', 'approved', 1))], loaded);
    expect(state.posts.a?.comments[0]).toEqual({ id: 'c1', content: 'text c1', status: 'approved', version: 1 });
  });

  it('an older version never overwrites a newer one', () => {
    const newer = run([event(commentCreated('c1', 'a')), event(commentUpdated('c1', 'a', 'rejected', 2))], loaded);
    const after = reducer(newer, event(commentUpdated('c1', 'a', 'approved', 1)));
    expect(after).toBe(newer);
    expect(statusOf(after, 'a', 'c1')).toBe('rejected');
    // …and the same version again is a no-op.
    expect(reducer(newer, event(commentUpdated('c1', 'a', 'rejected', 2)))).toBe(newer);
  });

  it('a late CommentCreated does not undo an update', () => {
    const updated = run([event(commentUpdated('c1', 'a', 'approved', 1))], loaded);
    expect(statusOf(updated, 'a', 'c1')).toBe('approved');
    expect(reducer(updated, event(commentCreated('c1', 'a')))).toBe(updated);
  });

  it('Resync changes nothing by itself (the feed reloads)', () => {
    expect(reducer(loaded, event({ type: 'Resync' }))).toBe(loaded);
  });
});

describe('our own requests', () => {
  const loaded = run([snapshot(post('a'))]);

  it('a created post shows at once, and its stream event is then a no-op', () => {
    const saved = reducer(loaded, { type: 'postSaved', post: { id: 'b', title: 'New' } });
    expect(saved.order).toEqual(['b', 'a']);
    expect(reducer(saved, event({ type: 'PostCreated', seq: 9, post: { id: 'b', title: 'New', comments: [] } }))).toBe(saved);
  });

  it("the comments answer merges without undoing moderation the stream already brought", () => {
    const state = run(
      [
        event(commentCreated('c1', 'a')),
        event(commentUpdated('c1', 'a', 'approved', 1)),
        {
          type: 'commentsSaved',
          postId: 'a',
          comments: [
            { id: 'c1', content: 'text c1', status: 'pending' },
            { id: 'c2', content: 'orange', status: 'pending' },
          ],
        },
      ],
      loaded,
    );
    expect(state.posts.a?.comments.map((c) => [c.id, c.status])).toEqual([
      ['c1', 'approved'],
      ['c2', 'pending'],
    ]);
  });
});

describe('a busy post', () => {
  const latest = Array.from({ length: 3 }, (_, n) => ({ id: `c${n + 5}`, content: `x${n + 5}`, status: 'approved' as const }));
  const busy = run([snapshot({ id: 'a', title: 'Busy', comments: latest, commentCount: 7 })]);

  it('counts every comment, not only the loaded ones, and keeps counting live', () => {
    expect(busy.posts.a?.commentCount).toBe(7);
    const more = reducer(busy, event(commentCreated('c8', 'a')));
    expect(more.posts.a?.commentCount).toBe(8);
    expect(reducer(more, event(commentCreated('c8', 'a')))).toBe(more);
    // A snapshot read before c8 does not take the count back.
    const reloaded = reducer(more, { type: 'snapshot', posts: [{ id: 'a', title: 'Busy', comments: latest, commentCount: 7 }] });
    expect(reloaded.posts.a?.commentCount).toBe(8);
  });

  it('earlier comments go before the loaded ones, once each, without changing the count', () => {
    const earlier = [
      { id: 'c3', content: 'x3', status: 'pending' as const },
      { id: 'c4', content: 'x4', status: 'approved' as const },
      { id: 'c5', content: 'x5', status: 'approved' as const },
    ];
    const paged = reducer(busy, { type: 'earlierComments', postId: 'a', comments: earlier });
    expect(paged.posts.a?.comments.map((c) => c.id)).toEqual(['c3', 'c4', 'c5', 'c6', 'c7']);
    expect(paged.posts.a?.commentCount).toBe(7);
    expect(reducer(paged, { type: 'earlierComments', postId: 'a', comments: earlier })).toBe(paged);
    // A reload brings the latest again and keeps the earlier ones in front.
    const reloaded = reducer(paged, { type: 'snapshot', posts: [{ id: 'a', title: 'Busy', comments: latest, commentCount: 7 }] });
    expect(reloaded.posts.a?.comments.map((c) => c.id)).toEqual(['c3', 'c4', 'c5', 'c6', 'c7']);
  });
});

describe('supersedes', () => {
  const c = (status: 'pending' | 'approved' | 'rejected', version: number) => ({ id: 'x', content: '', status, version });
  it('orders by version, and never moves a decided comment back to pending on a tie', () => {
    expect(supersedes(c('approved', 1), c('pending', 0))).toBe(true);
    expect(supersedes(c('approved', 1), c('rejected', 2))).toBe(false);
    expect(supersedes(c('approved', 0), c('pending', 0))).toBe(true);
    expect(supersedes(c('pending', 0), c('approved', 0))).toBe(false);
    expect(supersedes(c('rejected', 3), c('approved', 3))).toBe(true);
  });
});

describe('mergeOrder', () => {
  it("keeps the incoming order and places ids only the existing list knows after their predecessor", () => {
    expect(mergeOrder(['n', 'a', 'b', 'x'], ['a', 'b'])).toEqual(['n', 'a', 'b', 'x']);
    expect(mergeOrder(['a', 'b'], ['c', 'a', 'b'])).toEqual(['c', 'a', 'b']);
    expect(mergeOrder(['a', 'x', 'b'], ['a', 'b'])).toEqual(['a', 'x', 'b']);
    expect(mergeOrder([], ['a'])).toEqual(['a']);
  });
});

describe('parseStreamEvent', () => {
  it('accepts the four event types and rejects anything else', () => {
    expect(parseStreamEvent('{"type":"Resync"}')).toEqual({ type: 'Resync' });
    expect(parseStreamEvent(JSON.stringify({ type: 'PostCreated', seq: 1, post: post('a') }))?.type).toBe('PostCreated');
    expect(parseStreamEvent(JSON.stringify(commentCreated('c', 'a')))?.type).toBe('CommentCreated');
    expect(parseStreamEvent(JSON.stringify(commentUpdated('c', 'a', 'approved', 1)))?.type).toBe('CommentUpdated');
    expect(parseStreamEvent('not json')).toBeNull();
    expect(parseStreamEvent('{"type":"Unknown"}')).toBeNull();
    expect(parseStreamEvent('{"type":"CommentCreated","comment":{"id":"c"}}')).toBeNull();
    expect(parseStreamEvent('null')).toBeNull();
  });
});

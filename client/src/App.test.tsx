// @vitest-environment jsdom
import { act, cleanup, fireEvent, render, screen, waitFor, within } from '@testing-library/react';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { Api, PostData } from './api';
import { App } from './App';
import { FakeEventSource } from './test/fakes';

afterEach(cleanup);
beforeEach(() => FakeEventSource.reset());

function fakeApi(posts: PostData[]): Api {
  return {
    fetchPosts: vi.fn(async () => posts),
    createPost: vi.fn(async (title: string) => ({ id: 'new', title })),
    addComment: vi.fn(async (postId: string, content: string) => {
      const post = posts.find((p) => p.id === postId);
      return [...(post?.comments ?? []), { id: 'c-new', content, status: 'pending' as const }];
    }),
    fetchEarlierComments: vi.fn(async () => []),
  };
}

function renderApp(api: Api) {
  render(<App api={api} createEventSource={FakeEventSource.create} />);
  return FakeEventSource.latest();
}

describe('App', () => {
  it('shows a loading state until the view arrives, then an empty state', async () => {
    const source = renderApp(fakeApi([]));
    expect(screen.getByText('Loading posts…')).toBeTruthy();
    expect(screen.getByText('Connecting…')).toBeTruthy();
    act(() => source.ready());
    expect(await screen.findByText('No posts yet. Write the first one above.')).toBeTruthy();
    expect(screen.getByText(/^Live$/)).toBeTruthy();
  });

  it('lists posts newest first with their comments, and applies live updates', async () => {
    const source = renderApp(
      fakeApi([
        { id: 'p1', title: 'First', comments: [{ id: 'c1', content: 'Hello', status: 'approved' }] },
        { id: 'p2', title: 'Second', comments: [] },
      ]),
    );
    act(() => source.ready());
    const articles = await screen.findAllByRole('article');
    expect(articles.map((a) => within(a).getByRole('heading').textContent)).toEqual(['Second', 'First']);
    expect(within(articles[1]!).getByText('Hello')).toBeTruthy();
    expect(within(articles[0]!).getByText('No comments yet.')).toBeTruthy();

    act(() =>
      source.send({ type: 'CommentCreated', seq: 7, comment: { id: 'c2', postId: 'p2', content: 'orange', status: 'pending' } }),
    );
    const second = screen.getByRole('article', { name: 'Second' });
    expect(within(second).getByText('Awaiting moderation')).toBeTruthy();
    act(() =>
      source.send({ type: 'CommentUpdated', seq: 8, comment: { id: 'c2', postId: 'p2', content: 'orange', status: 'rejected', version: 1 } }),
    );
    expect(within(second).getByText('This comment has been rejected')).toBeTruthy();
    expect(within(second).queryByText('orange')).toBeNull();

    act(() => source.send({ type: 'PostCreated', seq: 9, post: { id: 'p3', title: 'From another tab', comments: [] } }));
    expect(screen.getAllByRole('article')[0]!.getAttribute('aria-labelledby')).toBe('post-p3-title');
  });

  it('creates posts and comments through labelled inputs', async () => {
    const api = fakeApi([{ id: 'p1', title: 'First', comments: [] }]);
    const source = renderApp(api);
    act(() => source.ready());
    await screen.findByRole('article', { name: 'First' });

    fireEvent.change(screen.getByLabelText('Title'), { target: { value: 'Brand new' } });
    fireEvent.click(screen.getByRole('button', { name: 'Create post' }));
    expect(await screen.findByRole('article', { name: 'Brand new' })).toBeTruthy();
    expect(api.createPost).toHaveBeenCalledWith('Brand new');

    const first = screen.getByRole('article', { name: 'First' });
    const input = within(first).getByLabelText('Add a comment to “First”');
    fireEvent.change(input, { target: { value: 'Nice' } });
    fireEvent.submit((input as HTMLInputElement).form!);
    await waitFor(() => expect(within(first).getByText('Awaiting moderation')).toBeTruthy());
    expect(api.addComment).toHaveBeenCalledWith('p1', 'Nice');
  });

  it('says when the view cannot be loaded', async () => {
    const api = fakeApi([]);
    api.fetchPosts = vi.fn(async () => {
      throw new Error('The service is unavailable right now; try again in a moment.');
    });
    const source = renderApp(api);
    act(() => source.ready());
    const alert = await screen.findByRole('alert');
    expect(alert.textContent).toContain('Couldn’t load the posts: The service is unavailable');
    expect(within(alert).getByRole('button', { name: 'Try again now' })).toBeTruthy();
  });

  it('a post with more comments than it shows offers the earlier ones, and loads them on request', async () => {
    const api = fakeApi([{ id: 'p1', title: 'Busy', comments: [{ id: 'c9', content: 'latest', status: 'approved' }], commentCount: 3 }]);
    api.fetchEarlierComments = vi.fn(async () => [
      { id: 'c7', content: 'oldest', status: 'approved' as const },
      { id: 'c8', content: 'middle', status: 'approved' as const },
    ]);
    const source = renderApp(api);
    act(() => source.ready());
    const post = await screen.findByRole('article', { name: 'Busy' });
    expect(within(post).getByText('3 comments')).toBeTruthy();
    fireEvent.click(within(post).getByRole('button', { name: 'Show earlier comments (2)' }));
    await waitFor(() => expect(within(post).getByText('oldest')).toBeTruthy());
    expect(api.fetchEarlierComments).toHaveBeenCalledWith('p1', 'c9');
    expect(within(post).getAllByRole('listitem').map((li) => li.textContent)).toEqual(['oldest', 'middle', 'latest']);
    expect(within(post).queryByRole('button', { name: /Show earlier comments/ })).toBeNull();
  });
});

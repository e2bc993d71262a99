import { describe, expect, it, vi } from 'vitest';
import { ApiError, createApi, errorFromResponse } from './api';
import { placeError } from './errors';
import { jsonResponse } from './test/fakes';

describe('errorFromResponse', () => {
  it("takes the server's code, message and field", () => {
    const body = '{"error":{"code":"validation_failed","message":"title must be 1 to 200 characters after trimming (got 0)","field":"title"}}';
    const error = errorFromResponse(422, body);
    expect(error).toBeInstanceOf(ApiError);
    expect(error).toMatchObject({
      status: 422,
      code: 'validation_failed',
      field: 'title',
      message: 'title must be 1 to 200 characters after trimming (got 0)',
    });
  });

  it('has no field for errors that are not about one', () => {
    const error = errorFromResponse(404, '{"error":{"code":"not_found","message":"no post \\"x\\""}}');
    expect(error.field).toBeUndefined();
    expect(error.message).toBe('no post "x"');
  });

  it('falls back to a readable message when the body is not our JSON', () => {
    expect(errorFromResponse(502, '<html>Bad Gateway</html>').message).toMatch(/unavailable/);
    expect(errorFromResponse(413, '').message).toMatch(/too large/);
    expect(errorFromResponse(500, '{"error":"boom"}').message).toBe('The request failed (HTTP 500).');
  });
});

describe('placeError', () => {
  it('puts an error about the form’s field next to it, anything else under the form', () => {
    expect(placeError(new ApiError(422, 'validation_failed', 'too long', 'content'), 'content')).toEqual({ field: 'too long' });
    expect(placeError(new ApiError(422, 'validation_failed', 'bad title', 'title'), 'content')).toEqual({ form: 'bad title' });
    expect(placeError(new ApiError(404, 'not_found', 'no post'), 'content')).toEqual({ form: 'no post' });
    expect(placeError(new Error('boom'), 'title')).toEqual({ form: 'boom' });
  });
});

describe('createApi', () => {
  it('posts JSON to relative URLs', async () => {
    const fetch = vi.fn(async () => jsonResponse(201, { id: 'p1', title: 'Hello' }));
    const api = createApi(fetch);
    await expect(api.createPost('Hello')).resolves.toEqual({ id: 'p1', title: 'Hello' });
    expect(fetch).toHaveBeenCalledWith('/posts/create', expect.objectContaining({ method: 'POST', body: '{"title":"Hello"}' }));
    const init = (fetch.mock.calls[0] as unknown as [string, RequestInit])[1];
    expect(init.headers).toMatchObject({ 'Content-Type': 'application/json' });

    fetch.mockResolvedValueOnce(jsonResponse(201, [{ id: 'c1', content: 'Hi', status: 'pending' }]));
    await expect(api.addComment('p/1', 'Hi')).resolves.toEqual([{ id: 'c1', content: 'Hi', status: 'pending' }]);
    expect(fetch).toHaveBeenLastCalledWith('/posts/p%2F1/comments', expect.objectContaining({ body: '{"content":"Hi"}' }));
  });

  it('reads the view in creation order, with paging', async () => {
    const fetch = vi.fn(async () =>
      jsonResponse(200, { b: { id: 'b', title: 'B', comments: [] }, a: { id: 'a', title: 'A', comments: [] } }),
    );
    const posts = await createApi(fetch).fetchPosts({ limit: 2, before: 'z' });
    expect(posts.map((p) => p.id)).toEqual(['b', 'a']);
    expect(fetch).toHaveBeenCalledWith('/posts?limit=2&before=z', expect.anything());
  });

  it('throws ApiError with the server’s message on refusal, and on network failure', async () => {
    const refuse = vi.fn(async () =>
      jsonResponse(422, { error: { code: 'validation_failed', message: 'content must be 1 to 1000 characters after trimming (got 1001)', field: 'content' } }),
    );
    await expect(createApi(refuse).addComment('p', 'x'.repeat(1001))).rejects.toMatchObject({ status: 422, field: 'content' });
    const down = vi.fn(async () => {
      throw new TypeError('Failed to fetch');
    });
    await expect(createApi(down).createPost('x')).rejects.toMatchObject({ status: 0, code: 'network' });
  });

  it('asks the user to slow down when a rate limit refuses, saying how long to wait', async () => {
    const limited = vi.fn(async () =>
      new Response(JSON.stringify({ error: { code: 'rate_limited', message: 'too many requests' } }), {
        status: 429,
        headers: { 'Content-Type': 'application/json', 'Retry-After': '2' },
      }),
    );
    await expect(createApi(limited).createPost('x')).rejects.toMatchObject({
      status: 429,
      code: 'rate_limited',
      message: 'Slow down: too many requests. Try again in 2 s.',
    });
  });

  it('pages a post’s earlier comments', async () => {
    const fetch = vi.fn(async () => jsonResponse(200, [{ id: 'c1', content: 'old', status: 'approved' }]));
    await expect(createApi(fetch).fetchEarlierComments('p/1', 'c2')).resolves.toHaveLength(1);
    expect(fetch).toHaveBeenCalledWith('/posts/p%2F1/comments?before=c2&limit=100', expect.anything());
  });
});

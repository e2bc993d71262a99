import { describe, expect, it } from 'vitest';
import { commentText } from './status';

describe('commentText', () => {
  it('shows approved content, and a label for pending and rejected', () => {
    expect(commentText({ status: 'approved', content: 'Nice post' })).toBe('Nice post');
    expect(commentText({ status: 'pending', content: 'Nice post' })).toBe('Awaiting moderation');
    expect(commentText({ status: 'rejected', content: 'orange' })).toBe('This comment has been rejected');
  });

  it('never shows the content of a comment in an unknown state', () => {
    expect(commentText({ status: 'weird' as never, content: 'secret' })).toBe('Awaiting moderation');
  });
});

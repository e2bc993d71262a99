import type { Comment } from './state';

export const AWAITING_MODERATION = 'Awaiting moderation';
export const REJECTED = 'This comment has been rejected';

/** What a comment shows: its content once approved, otherwise where moderation stands. */
export function commentText(comment: Pick<Comment, 'status' | 'content'>): string {
  switch (comment.status) {
    case 'approved':
      return comment.content;
    case 'rejected':
      return REJECTED;
    case 'pending':
    default:
      // An unknown status is treated as not yet decided: never show unvetted content.
      return AWAITING_MODERATION;
  }
}

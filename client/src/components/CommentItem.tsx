import type { Comment } from '../state';
import { commentText } from '../status';

export function CommentItem({ comment }: { comment: Comment }) {
  return (
    <li className={`comment comment--${comment.status}`} data-status={comment.status} data-comment-id={comment.id}>
      {comment.status === 'approved' ? null : <span className="comment__icon" aria-hidden="true" />}
      <span className="comment__text">{commentText(comment)}</span>
    </li>
  );
}

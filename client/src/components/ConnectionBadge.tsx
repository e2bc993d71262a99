import type { Connection } from '../state';

const LABELS: Record<Connection, string> = {
  connecting: 'Connecting…',
  live: 'Live',
  reconnecting: 'Reconnecting…',
};

const TITLES: Record<Connection, string> = {
  connecting: 'Connecting to live updates',
  live: 'New posts and moderation results appear as they happen',
  reconnecting: 'Live updates were interrupted; reconnecting',
};

export function ConnectionBadge({ connection }: { connection: Connection }) {
  return (
    <p className={`connection connection--${connection}`} role="status" title={TITLES[connection]}>
      <span className="connection__dot" aria-hidden="true" />
      <span className="sr-only">Live updates: </span>
      {LABELS[connection]}
    </p>
  );
}

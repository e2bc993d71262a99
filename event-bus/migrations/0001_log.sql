-- The event log. `seq` is assigned by the bus under the lock on log_head, so it is
-- gap-free and visible in commit order; `envelope` is the exact JSON delivered and replayed.
CREATE TABLE events (
    seq         BIGINT PRIMARY KEY CHECK (seq > 0),
    id          UUID NOT NULL UNIQUE,
    type        TEXT NOT NULL,
    source      TEXT,
    occurred_at TIMESTAMPTZ NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    envelope    JSON NOT NULL
);

-- The last assigned seq. Every append locks this row first: the single-writer lock that
-- keeps a reader from ever seeing seq N+1 committed before seq N.
CREATE TABLE log_head (
    singleton BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    seq       BIGINT NOT NULL CHECK (seq >= 0)
);
INSERT INTO log_head (singleton, seq) VALUES (TRUE, 0);

-- One durable delivery cursor per subscriber: the last seq it acknowledged.
CREATE TABLE subscriptions (
    name            TEXT PRIMARY KEY,
    url             TEXT NOT NULL,
    cursor          BIGINT NOT NULL DEFAULT 0 CHECK (cursor >= 0),
    last_success_at TIMESTAMPTZ,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

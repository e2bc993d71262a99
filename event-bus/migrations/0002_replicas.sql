-- Any bus replica answers GET /subscriptions from the database, so a delivery loop
-- records its failures here, not in its own memory.
ALTER TABLE subscriptions
    ADD COLUMN last_error           TEXT,
    ADD COLUMN last_error_at        TIMESTAMPTZ,
    ADD COLUMN consecutive_failures INTEGER NOT NULL DEFAULT 0;

-- The replica that runs the delivery loops (it holds the leader's advisory lock) and
-- when it last proved it is alive.
CREATE TABLE delivery_leader (
    singleton    BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    replica      TEXT NOT NULL,
    since        TIMESTAMPTZ NOT NULL,
    heartbeat_at TIMESTAMPTZ NOT NULL
);

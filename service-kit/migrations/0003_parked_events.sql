-- A delivered event this service failed to apply (for a reason that is not an outage),
-- counted across replicas, so that after a few attempts it is parked instead of
-- wedging the stream.
CREATE TABLE delivery_failures (
    seq        BIGINT PRIMARY KEY,
    attempts   INTEGER NOT NULL,
    last_error TEXT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Events set aside with their error: the cursor moved past them. An operator lists,
-- retries (once the cause is fixed) or discards them.
CREATE TABLE parked_events (
    seq       BIGINT PRIMARY KEY,
    event_id  UUID NOT NULL,
    type      TEXT NOT NULL,
    envelope  JSON NOT NULL,
    error     TEXT NOT NULL,
    attempts  INTEGER NOT NULL,
    parked_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

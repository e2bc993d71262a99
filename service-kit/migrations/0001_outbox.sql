-- Events a service has decided to publish, written in the same transaction as the change
-- that caused them, and removed once the bus has committed them (see common::outbox).
CREATE TABLE outbox (
    position    BIGSERIAL PRIMARY KEY,
    event_id    UUID NOT NULL UNIQUE,
    publication JSON NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

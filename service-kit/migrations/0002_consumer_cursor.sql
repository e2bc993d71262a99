-- The seq of the last bus event this service has applied; updated in the same
-- transaction as the event's effects (see common::consumer). One row per service.
CREATE TABLE consumer_cursor (
    singleton  BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (singleton),
    seq        BIGINT NOT NULL DEFAULT 0 CHECK (seq >= 0),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
INSERT INTO consumer_cursor (singleton, seq) VALUES (TRUE, 0);

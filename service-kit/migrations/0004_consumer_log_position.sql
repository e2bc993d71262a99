-- What the cursor points at, not only where: the id of the last event applied (or
-- parked). A bus whose event at that seq is another event, or whose log ends before it,
-- was restored or recreated; `diverged` then says so, and the consumer refuses the bus
-- until an operator resyncs it (see docs/operations.md).
ALTER TABLE consumer_cursor
    ADD COLUMN event_id UUID,
    ADD COLUMN diverged TEXT;

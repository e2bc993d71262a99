-- A subscriber that refused this log as not the one it applied (the bus's database was
-- restored or recreated): kept until the subscriber next acknowledges a delivery, so
-- that GET /subscriptions keeps saying why it stopped while it is not ready.
ALTER TABLE subscriptions ADD COLUMN diverged TEXT;

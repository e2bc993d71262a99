-- Each stored envelope's size in bytes, so that a page can be cut by bytes without
-- reading (and de-TOASTing) the envelopes it will not return.
ALTER TABLE events ADD COLUMN bytes INTEGER;
UPDATE events SET bytes = octet_length(envelope::text);
ALTER TABLE events ALTER COLUMN bytes SET NOT NULL;

-- A grant is for what was approved (issue 12): where the container was
-- when the request was made and approved (`gateway`: the configured
-- gateway id, later the fleet node) and its labels then (`labels`, a JSON
-- object). A grant used where either differs is not honoured. Rows from
-- before this migration have neither and are never honoured.
ALTER TABLE access_requests ADD COLUMN gateway TEXT;
ALTER TABLE access_requests ADD COLUMN labels TEXT;
-- A pending request expires at `pending_until` (unix ms, `[grants]
-- request_ttl` after it was made); `expiry_audited` then marks the
-- request's expiry audited too. Pending rows from before this migration
-- get the default 24 h.
ALTER TABLE access_requests ADD COLUMN pending_until INTEGER;
UPDATE access_requests SET pending_until = created_at + 86400000 WHERE status = 'pending';
CREATE INDEX access_requests_pending ON access_requests (status, pending_until);

-- Mirrors migrations/sqlite/0006: leases on webhook outbox rows, so no two
-- gateways sharing the database post the same row (issue 7).
ALTER TABLE webhook_outbox ADD COLUMN claimed_by TEXT;
ALTER TABLE webhook_outbox ADD COLUMN claimed_until BIGINT;

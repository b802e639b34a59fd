-- Webhook delivery shared by several gateways on one database (issue 7):
-- a gateway claims an outbox row (claimed_by: its delivery worker,
-- claimed_until: end of the lease, unix ms) with a conditional UPDATE
-- before posting it, so no two gateways post the same row. A lease that
-- runs out (the gateway died mid-delivery) frees the row for another.
ALTER TABLE webhook_outbox ADD COLUMN claimed_by TEXT;
ALTER TABLE webhook_outbox ADD COLUMN claimed_until INTEGER;

-- Mirrors migrations/sqlite/0004: access requests and grants (issue 7).
-- Times are unix milliseconds (UTC).
CREATE TABLE access_requests (
    id               TEXT PRIMARY KEY NOT NULL,
    requester        TEXT NOT NULL,
    container        TEXT NOT NULL,
    login            TEXT NOT NULL,
    -- Asked-for length of the grant, seconds.
    duration_seconds BIGINT NOT NULL,
    reason           TEXT NOT NULL,
    -- pending, approved (a grant), denied.
    status           TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'denied')),
    created_at       BIGINT NOT NULL,
    decided_by       TEXT,
    decided_at       BIGINT,
    -- Approval comment or denial reason.
    decision_comment TEXT,
    -- The grant: from approval to expiry or revocation.
    starts_at        BIGINT,
    expires_at       BIGINT,
    revoked_at       BIGINT,
    revoked_by       TEXT,
    revoke_reason    TEXT,
    -- 1 once the grant's expiry was audited.
    expiry_audited   BIGINT NOT NULL DEFAULT 0,
    -- Break-glass: 1 when the requester granted it to themselves; such a
    -- grant is listed for review until a reviewer marks it reviewed.
    break_glass      BIGINT NOT NULL DEFAULT 0,
    reviewed_by      TEXT,
    reviewed_at      BIGINT,
    review_comment   TEXT
);
CREATE INDEX access_requests_requester ON access_requests (requester);
CREATE INDEX access_requests_status ON access_requests (status, expires_at);

-- The grant a session depended on, when it did.
ALTER TABLE sessions ADD COLUMN grant_id TEXT;

-- Webhook outbox (see migrations/sqlite/0004).
CREATE TABLE webhook_outbox (
    id              BIGSERIAL PRIMARY KEY,
    url             TEXT NOT NULL,
    body            TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    delivered_at    BIGINT,
    last_error      TEXT
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (delivered_at, next_attempt_at);

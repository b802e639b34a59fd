-- Just-in-time access (issue 7): access requests and the grants their
-- approval creates. One row per request; an approved request is a grant with
-- the same id. Times are unix milliseconds (UTC).
CREATE TABLE access_requests (
    id               TEXT PRIMARY KEY NOT NULL,
    requester        TEXT NOT NULL,
    container        TEXT NOT NULL,
    login            TEXT NOT NULL,
    -- Asked-for length of the grant, seconds.
    duration_seconds INTEGER NOT NULL,
    reason           TEXT NOT NULL,
    -- pending, approved (a grant), denied.
    status           TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'denied')),
    created_at       INTEGER NOT NULL,
    decided_by       TEXT,
    decided_at       INTEGER,
    -- Approval comment or denial reason.
    decision_comment TEXT,
    -- The grant: from approval to expiry or revocation.
    starts_at        INTEGER,
    expires_at       INTEGER,
    revoked_at       INTEGER,
    revoked_by       TEXT,
    revoke_reason    TEXT,
    -- 1 once the grant's expiry was audited.
    expiry_audited   INTEGER NOT NULL DEFAULT 0,
    -- Break-glass: 1 when the requester granted it to themselves; such a
    -- grant is listed for review until a reviewer marks it reviewed.
    break_glass      INTEGER NOT NULL DEFAULT 0,
    reviewed_by      TEXT,
    reviewed_at      INTEGER,
    review_comment   TEXT
);
CREATE INDEX access_requests_requester ON access_requests (requester);
CREATE INDEX access_requests_status ON access_requests (status, expires_at);

-- The grant a session depended on, when it did.
ALTER TABLE sessions ADD COLUMN grant_id TEXT;

-- Webhook outbox: one row per event and URL, written with the step it
-- reports and delivered (with retries and backoff) by a background task, so
-- a webhook that is down never blocks or loses an event.
CREATE TABLE webhook_outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    url             TEXT NOT NULL,
    body            TEXT NOT NULL,
    created_at      INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    delivered_at    INTEGER,
    last_error      TEXT
);
CREATE INDEX webhook_outbox_due ON webhook_outbox (delivered_at, next_attempt_at);

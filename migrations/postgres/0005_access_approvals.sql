-- Mirrors migrations/sqlite/0005: every approval of an access request, one
-- row per approver per request (issue 7). Times are unix milliseconds (UTC).
CREATE TABLE access_approvals (
    request_id  TEXT NOT NULL,
    approver    TEXT NOT NULL,
    comment     TEXT,
    approved_at BIGINT NOT NULL,
    PRIMARY KEY (request_id, approver)
);

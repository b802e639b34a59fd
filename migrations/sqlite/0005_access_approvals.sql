-- Multi-approval (issue 7): every approval of an access request, one row
-- per approver per request. A request becomes a grant once the policy
-- permits `activate` with the number of approvals so far. Times are unix
-- milliseconds (UTC).
CREATE TABLE access_approvals (
    request_id  TEXT NOT NULL,
    approver    TEXT NOT NULL,
    comment     TEXT,
    approved_at INTEGER NOT NULL,
    PRIMARY KEY (request_id, approver)
);

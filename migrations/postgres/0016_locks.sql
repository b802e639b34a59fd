-- Locks (issue 12): a principal, a container or a login that no session
-- may use until the lock is removed (removed_at) or ends (expires_at).
CREATE TABLE locks (
    id TEXT PRIMARY KEY,
    target TEXT NOT NULL,
    value TEXT NOT NULL,
    reason TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    removed_at BIGINT,
    removed_by TEXT
);
CREATE INDEX locks_active ON locks (removed_at, expires_at);

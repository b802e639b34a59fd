-- Tamper evidence: each audit event carries the hash of the one before
-- (prev_hash) and its own (hash), both lowercase hex SHA-256; see src/audit.rs.
ALTER TABLE audit_events ADD COLUMN prev_hash TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_events ADD COLUMN hash TEXT NOT NULL DEFAULT '';

-- Signed chain heads: the gateway signs (event_id, event_hash) with its
-- ed25519 key (SSHSIG, OpenSSH PROTOCOL.sshsig) at intervals and at shutdown.
CREATE TABLE audit_signatures (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at         INTEGER NOT NULL,
    event_id   INTEGER NOT NULL,
    event_hash TEXT NOT NULL,
    public_key TEXT NOT NULL,
    signature  TEXT NOT NULL
);

-- Live-session control: `sessions kill` asks the gateway serving the session.
ALTER TABLE sessions ADD COLUMN kill_requested_at INTEGER;
ALTER TABLE sessions ADD COLUMN kill_reason TEXT;

-- Transcript text (escape sequences stripped), one row per output line, with
-- the line's time offset in seconds, for `sessions search` (FTS5).
CREATE VIRTUAL TABLE transcript_fts USING fts5(
    text,
    session_id UNINDEXED,
    offset_seconds UNINDEXED,
    tokenize = 'unicode61'
);

-- Which gateway serves a session (config `gateway_id`), so a restarting
-- gateway marks only its own sessions interrupted when several share a database.
ALTER TABLE sessions ADD COLUMN gateway TEXT NOT NULL DEFAULT '';

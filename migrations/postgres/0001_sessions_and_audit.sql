-- Sessions: one row per SSH channel that ran a shell or command in a container.
-- Times are unix milliseconds (UTC). Mirrors migrations/sqlite/0001.
CREATE TABLE sessions (
    id               TEXT PRIMARY KEY NOT NULL,
    principal        TEXT NOT NULL,
    email            TEXT,
    container        TEXT NOT NULL,
    login            TEXT NOT NULL,
    command          TEXT,
    client_addr      TEXT,
    started_at       BIGINT NOT NULL,
    ended_at         BIGINT,
    status           TEXT NOT NULL CHECK (status IN ('running', 'ended', 'failed', 'interrupted')),
    exit_status      BIGINT,
    exit_signal      TEXT,
    recording_path   TEXT NOT NULL,
    recording_bytes  BIGINT,
    recording_sha256 TEXT
);
CREATE INDEX sessions_started_at ON sessions (started_at);

-- Audit events: append-only; written before the action they record.
CREATE TABLE audit_events (
    id          BIGINT PRIMARY KEY,
    at          BIGINT NOT NULL,
    kind        TEXT NOT NULL,
    outcome     TEXT NOT NULL CHECK (outcome IN ('success', 'failure', 'allow', 'deny', 'info')),
    session_id  TEXT,
    principal   TEXT,
    client_addr TEXT,
    detail      TEXT NOT NULL
);
CREATE INDEX audit_events_session ON audit_events (session_id);

-- Mirrors migrations/sqlite/0002.
ALTER TABLE audit_events ADD COLUMN prev_hash TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_events ADD COLUMN hash TEXT NOT NULL DEFAULT '';

CREATE TABLE audit_signatures (
    id         BIGSERIAL PRIMARY KEY,
    at         BIGINT NOT NULL,
    event_id   BIGINT NOT NULL,
    event_hash TEXT NOT NULL,
    public_key TEXT NOT NULL,
    signature  TEXT NOT NULL
);

ALTER TABLE sessions ADD COLUMN kill_requested_at BIGINT;
ALTER TABLE sessions ADD COLUMN kill_reason TEXT;

-- Transcript text for `sessions search` (tsvector with the 'simple' config).
CREATE TABLE transcript_lines (
    session_id     TEXT NOT NULL,
    offset_seconds DOUBLE PRECISION NOT NULL,
    text           TEXT NOT NULL,
    tsv            tsvector GENERATED ALWAYS AS (to_tsvector('simple', text)) STORED
);
CREATE INDEX transcript_lines_tsv ON transcript_lines USING GIN (tsv);
CREATE INDEX transcript_lines_session ON transcript_lines (session_id);

-- Which gateway serves a session (config `gateway_id`), so a restarting
-- gateway marks only its own sessions interrupted when several share a database.
ALTER TABLE sessions ADD COLUMN gateway TEXT NOT NULL DEFAULT '';

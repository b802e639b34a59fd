-- Mirrors migrations/sqlite/0009. Recordings in S3-compatible object storage
-- (issue 16 point 5): one row per
-- recording a node uploads, so an upload that did not finish resumes after
-- a restart, and review commands find a recording whose local copy is gone.
-- Times are unix milliseconds (UTC).
--   state: recording (the session runs, parts stream as it grows),
--          pending (ended; the rest, the manifest and its check are due at
--          next_attempt_at), uploaded (manifest verified, local copy
--          deleted), failed (will not be retried: last_error says why; the
--          local copy is kept).
--   multipart_id, parts (JSON array of part ids), uploaded_bytes: the
--   multipart upload so far (parts of part_bytes, the last one shorter).
CREATE TABLE recording_uploads (
    session_id      TEXT PRIMARY KEY NOT NULL,
    gateway         TEXT NOT NULL,
    local_path      TEXT NOT NULL,
    object_key      TEXT NOT NULL,
    manifest_key    TEXT NOT NULL,
    state           TEXT NOT NULL CHECK (state IN ('recording', 'pending', 'uploaded', 'failed')),
    multipart_id    TEXT,
    parts           TEXT NOT NULL DEFAULT '[]',
    uploaded_bytes  BIGINT NOT NULL DEFAULT 0,
    bytes           BIGINT,
    sha256          TEXT,
    finished        BIGINT NOT NULL DEFAULT 0,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL DEFAULT 0,
    last_error      TEXT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
CREATE INDEX recording_uploads_due ON recording_uploads (gateway, state, next_attempt_at);

-- Mirrors migrations/sqlite/0003: public keys bound to a principal after an
-- IdP login on the same connection. Times are unix milliseconds (UTC).
CREATE TABLE key_bindings (
    fingerprint         TEXT PRIMARY KEY NOT NULL,
    public_key          TEXT NOT NULL,
    principal           TEXT NOT NULL,
    issuer              TEXT NOT NULL,
    email               TEXT,
    groups              TEXT NOT NULL,
    created_at          BIGINT NOT NULL,
    expires_at          BIGINT NOT NULL,
    id_token_expires_at BIGINT NOT NULL,
    refresh_token       TEXT,
    last_used_at        BIGINT,
    revoked_at          BIGINT,
    revoked_reason      TEXT
);
CREATE INDEX key_bindings_principal ON key_bindings (principal);

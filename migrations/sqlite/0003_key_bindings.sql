-- Key bindings: a public key bound to a principal after an IdP login on the
-- same connection (issue 4). Times are unix milliseconds (UTC).
CREATE TABLE key_bindings (
    -- SHA256 fingerprint of the public key, as `ssh-keygen -l` prints it.
    fingerprint         TEXT PRIMARY KEY NOT NULL,
    -- The public key in OpenSSH format (`ssh-ed25519 AAAA...`).
    public_key          TEXT NOT NULL,
    principal           TEXT NOT NULL,
    issuer              TEXT NOT NULL,
    email               TEXT,
    -- JSON array of the groups of the latest token.
    groups              TEXT NOT NULL,
    created_at          INTEGER NOT NULL,
    -- The binding ends here at the latest.
    expires_at          INTEGER NOT NULL,
    -- `exp` of the latest ID token; past it the refresh token is used.
    id_token_expires_at INTEGER NOT NULL,
    -- OAuth 2.0 refresh token (a secret: never logged, never listed).
    refresh_token       TEXT,
    last_used_at        INTEGER,
    revoked_at          INTEGER,
    revoked_reason      TEXT
);
CREATE INDEX key_bindings_principal ON key_bindings (principal);

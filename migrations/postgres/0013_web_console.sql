-- The web console (issue 17). Times are unix milliseconds (UTC). Secrets
-- sent to browsers (the session cookie, the login state) are stored only
-- as lowercase hex SHA-256, so a reader of the database cannot use them.

-- Console logins: one row per browser login, looked up by the hash of the
-- cookie value. Several gateways sharing the database serve one console.
CREATE TABLE web_sessions (
    cookie_sha256 TEXT PRIMARY KEY NOT NULL,
    principal     TEXT NOT NULL,
    email         TEXT,
    -- JSON array of the principal's groups, from the ID token.
    groups_json   TEXT NOT NULL,
    issuer        TEXT NOT NULL,
    -- When the principal last logged in at the issuer (auth_time).
    auth_time     BIGINT NOT NULL,
    created_at    BIGINT NOT NULL,
    last_seen_at  BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    client_addr   TEXT,
    -- Set at logout; the row then matches no cookie.
    ended_at      BIGINT
);

-- Authorization requests in flight (OpenID Connect Core 1.0 §3.1.2):
-- the PKCE verifier (RFC 7636) and nonce of each, by the hash of its
-- `state`, bound to the browser that started it (the hash of a short-lived
-- cookie). Used once.
CREATE TABLE web_login_states (
    state_sha256   TEXT PRIMARY KEY NOT NULL,
    browser_sha256 TEXT NOT NULL,
    issuer         TEXT NOT NULL,
    code_verifier  TEXT NOT NULL,
    nonce          TEXT NOT NULL,
    -- login, fresh (a new login before an action) or ssh (an SSH login
    -- page; ssh_code names it).
    purpose        TEXT NOT NULL,
    ssh_code_sha256 TEXT,
    return_to      TEXT NOT NULL,
    -- Set when the login started: auth_time must not be older (fresh).
    created_at     BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL
);

-- SSH logins waiting for the console (/l/CODE): what the SSH user asks to
-- have approved, and, once the user logged in at the issuer and confirmed,
-- the ID token the waiting SSH connection takes (and clears).
CREATE TABLE ssh_web_logins (
    code_sha256   TEXT PRIMARY KEY NOT NULL,
    client_addr   TEXT NOT NULL,
    fingerprint   TEXT,
    target        TEXT NOT NULL,
    gateway       TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    -- pending, authenticated (logged in, not confirmed yet), confirmed,
    -- taken (the SSH connection has it), refused.
    status        TEXT NOT NULL,
    principal     TEXT,
    -- The hash of the browser cookie that may confirm it.
    browser_sha256 TEXT,
    id_token      TEXT,
    decided_at    BIGINT
);
CREATE INDEX web_sessions_expires ON web_sessions (expires_at);
CREATE INDEX web_login_states_expires ON web_login_states (expires_at);

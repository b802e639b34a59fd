-- Fleet (issue 16): the edge CA, nodes, their join tokens, tunnels,
-- inventory and the edge's second witness of each relayed session.
-- Mirrors migrations/sqlite/0015. Times are unix milliseconds (UTC).

-- The edge CA's public key (one row). Informational: nodes trust the
-- fingerprint they pinned at join, edges their own key file.
CREATE TABLE fleet_ca (
    id          BIGINT PRIMARY KEY NOT NULL CHECK (id = 1),
    public_key  TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    created_by  TEXT NOT NULL
);

CREATE TABLE fleet_nodes (
    name            TEXT PRIMARY KEY NOT NULL,
    -- pending (token issued), active (joined), removed.
    state           TEXT NOT NULL CHECK (state IN ('pending', 'active', 'removed')),
    -- SHA256:... of the node's key; certificates for another key are refused.
    key_fingerprint TEXT,
    version         TEXT,
    created_at      BIGINT NOT NULL,
    joined_at       BIGINT,
    removed_at      BIGINT,
    last_heartbeat  BIGINT,
    cert_valid_before BIGINT
);

-- One-time join tokens, stored as SHA-256 (hex) of the token.
CREATE TABLE fleet_join_tokens (
    token_sha256 TEXT PRIMARY KEY NOT NULL,
    node         TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    expires_at   BIGINT NOT NULL,
    used_at      BIGINT,
    created_by   TEXT NOT NULL
);

-- Tunnels up now: one row per (node, edge), refreshed by the edge.
CREATE TABLE fleet_tunnels (
    node         TEXT NOT NULL,
    edge         TEXT NOT NULL,
    connected_at BIGINT NOT NULL,
    last_seen    BIGINT NOT NULL,
    PRIMARY KEY (node, edge)
);

-- The fleet's containers; a name belongs to one node.
CREATE TABLE fleet_containers (
    name       TEXT PRIMARY KEY NOT NULL,
    node       TEXT NOT NULL,
    state      TEXT NOT NULL,
    labels     TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX fleet_containers_node ON fleet_containers (node);

-- The edge's witness of each relayed session's output.
CREATE TABLE fleet_witness (
    session_id    TEXT PRIMARY KEY NOT NULL,
    edge          TEXT NOT NULL,
    node          TEXT NOT NULL,
    output_bytes  BIGINT NOT NULL,
    output_sha256 TEXT NOT NULL,
    ended_at      BIGINT NOT NULL
);

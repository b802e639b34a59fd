-- Key bindings, issue 14: where and how each binding was made (so its
-- principal can be told: "a new key was bound to you from ADDR at TIME"),
-- when that was shown to them, and a claim that serialises refreshes of
-- one binding across gateways (one rotating refresh token, one user).
-- Times are unix milliseconds (UTC).
-- Client address (`ip:port`) of the connection that made the binding.
ALTER TABLE key_bindings ADD COLUMN bound_from TEXT;
-- `device_flow` or `token`: the login that made it.
ALTER TABLE key_bindings ADD COLUMN bound_by TEXT;
-- When a later login of its principal was told about it; NULL: not yet.
ALTER TABLE key_bindings ADD COLUMN announced_at INTEGER;
-- A gateway refreshing at the IdP holds this until the given time.
ALTER TABLE key_bindings ADD COLUMN refresh_claimed_until INTEGER;
-- Bindings made before this migration are not news.
UPDATE key_bindings SET announced_at = created_at;

-- Mirrors migrations/sqlite/0014: where and how each key binding was made,
-- when its principal was told, and the refresh claim. Unix ms (UTC).
ALTER TABLE key_bindings ADD COLUMN bound_from TEXT;
ALTER TABLE key_bindings ADD COLUMN bound_by TEXT;
ALTER TABLE key_bindings ADD COLUMN announced_at BIGINT;
ALTER TABLE key_bindings ADD COLUMN refresh_claimed_until BIGINT;
UPDATE key_bindings SET announced_at = created_at;

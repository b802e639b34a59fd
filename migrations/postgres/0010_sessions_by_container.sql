-- The inventory's "last session" of each container (`containers list`):
-- the newest session row per (gateway, container).
CREATE INDEX sessions_gateway_container_started ON sessions (gateway, container, started_at);

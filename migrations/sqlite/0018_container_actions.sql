-- Control-plane actions under approval (issue 18): an access request may ask
-- for a lifecycle action on its container (start, stop, restart, snapshot,
-- restore) instead of a login. NULL for a login request (every request made
-- before this migration). A request with an action has login '' and its
-- grant lets that action run once before it expires; it never opens a
-- session.
ALTER TABLE access_requests ADD COLUMN action TEXT;

-- Issue 16 point 4 with issue 18 point 2: a node pushes each container's
-- owner, purpose and inventory backend with its state and labels, so the
-- edge's listing and its policy decisions see them as a node does.
ALTER TABLE fleet_containers ADD COLUMN owner TEXT;
ALTER TABLE fleet_containers ADD COLUMN purpose TEXT;
ALTER TABLE fleet_containers ADD COLUMN backend TEXT NOT NULL DEFAULT 'lxc';

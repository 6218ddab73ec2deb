-- mend store schema, version 4: indexes for the hot paths at scale.

-- Claiming orders by (available_at, id); with `id` in the index, a release that makes many
-- messages due at the same instant does not make each claim sort them.
DROP INDEX messages_ready;
CREATE INDEX messages_ready ON messages (topology, node, available_at, id)
    WHERE state IN ('queued', 'retry', 'limited');

-- The trash view, newest first, without scanning every finished message.
-- (IF NOT EXISTS: an unreleased build created it in 0003.)
CREATE INDEX IF NOT EXISTS messages_trash ON messages (updated_at) WHERE state = 'trash';

-- The flood guard counts recent identical failures of one process and node.
CREATE INDEX messages_flood_guard ON messages (process_id, node, error, updated_at)
    WHERE state = 'trash' AND flood_of IS NULL;

-- Status counts of running and done processes.
CREATE INDEX processes_state ON processes (state);

-- A release keeps `park_key` on the messages it resumed, so a sync's trace can list the
-- messages it unblocked.
CREATE INDEX messages_park_key ON messages (park_key) WHERE park_key IS NOT NULL;

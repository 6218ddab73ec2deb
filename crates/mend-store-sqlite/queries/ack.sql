-- Ends (or re-schedules) a claimed message. The `claimed_by` guard makes a completion from a
-- worker that lost its lease a no-op, so a step is applied at most once.
UPDATE messages
SET state = ?2, outcome = ?3, error = ?4, attempt = ?5, available_at = ?6,
    claimed_by = NULL, lease_until = NULL, updated_at = ?7
WHERE id = ?1 AND state = 'running' AND claimed_by = ?8

-- Second half of the recovery: back to the queue, with the interrupted try counted.
UPDATE messages
SET state = 'queued', claimed_by = NULL, lease_until = NULL, attempt = attempt + 1, updated_at = ?1
WHERE state = 'running' AND lease_until < ?1;

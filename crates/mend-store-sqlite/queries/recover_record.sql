-- Messages whose worker stopped renewing its lease (it crashed or hung) go back to the queue.
-- The interrupted step counts as an attempt, so a message that kills its worker every time
-- ends in the trash instead of looping; the attempt row says what happened.
INSERT INTO attempts (message_id, attempt, node, at, duration_ms, outcome, status, error, response_excerpt)
SELECT id, attempt + 1, node, ?1, 0, 'interrupted', NULL,
       'the worker running this step stopped before committing it (lease expired)', NULL
FROM messages
WHERE state = 'running' AND lease_until < ?1;

-- Ready messages of one node, oldest due first. Reads the partial index `messages_ready`.
-- No row lock is needed: the single writer runs this and the UPDATE that marks the rows
-- `running` in one transaction, so no other worker can see them as ready in between.
SELECT id, process_id, topology, version, node, payload, headers, context, attempt, parent_id, created_at
FROM messages
WHERE topology = ?1 AND node = ?2 AND state IN ('queued', 'retry', 'limited') AND available_at <= ?3
ORDER BY available_at, id
LIMIT ?4

-- Every key with parked messages or a sync in flight: how many wait, since when, and the
-- sync that will release them (only while that sync still runs: a sync that ended in the
-- trash releases nothing).
SELECT k.key, coalesce(m.parked, 0), m.oldest,
       CASE WHEN s.state = 'running' THEN p.since END,
       CASE WHEN s.state = 'running' THEN p.sync_process_id END
FROM (SELECT park_key AS key FROM messages WHERE state = 'parked'
      UNION SELECT key FROM park_keys) AS k
LEFT JOIN (SELECT park_key, count(*) AS parked, min(updated_at) AS oldest
           FROM messages WHERE state = 'parked' GROUP BY park_key) AS m ON m.park_key = k.key
LEFT JOIN park_keys AS p ON p.key = k.key
LEFT JOIN processes AS s ON s.id = p.sync_process_id
ORDER BY coalesce(m.parked, 0) DESC, k.key
LIMIT 10000

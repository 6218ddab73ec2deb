-- Every key with parked messages or a sync in flight: how many wait, since when, and the
-- sync that will release them.
SELECT k.key, coalesce(m.parked, 0), m.oldest, p.since, p.sync_process_id
FROM (SELECT park_key AS key FROM messages WHERE state = 'parked'
      UNION SELECT key FROM park_keys) AS k
LEFT JOIN (SELECT park_key, count(*) AS parked, min(updated_at) AS oldest
           FROM messages WHERE state = 'parked' GROUP BY park_key) AS m ON m.park_key = k.key
LEFT JOIN park_keys AS p ON p.key = k.key
ORDER BY coalesce(m.parked, 0) DESC, k.key
LIMIT 10000

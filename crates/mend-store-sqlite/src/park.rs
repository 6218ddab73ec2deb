//! Wait queues inside a transaction: park with single-flight, release, expire, and the cycle
//! check. Every function here runs in the writer's batch transaction, so each is atomic with
//! the step that called it.

use mend_core::ids::ProcessId;
use mend_store::{CacheWrite, Park, Released, Result};
use rusqlite::{Connection, OptionalExtension, params};

use crate::{backend, insert_process, parse_id};

/// What happened to a message that asked to park.
pub(crate) enum Parked {
    /// Parked; `detoured` when this park opened the key's sync.
    Waiting { detoured: bool },
    /// The key was released after the message's check: it resumes at once.
    ResumedAtOnce,
    /// Parking would wait on itself: the cycle, for the trash reason.
    Cycle(Vec<String>),
}

/// The keys a process and its ancestors were opened to sync, nearest first.
fn sync_chain(conn: &Connection, process: ProcessId) -> Result<Vec<String>> {
    let mut keys = Vec::new();
    let mut current = Some(process.to_string());
    let mut st = conn
        .prepare_cached("SELECT release_key, parent_process_id FROM processes WHERE id = ?1")
        .map_err(backend)?;
    // Bounded: a chain longer than this is a runaway, not a hierarchy.
    for _ in 0..256 {
        let Some(id) = current.take() else { break };
        let row: Option<(Option<String>, Option<String>)> = st
            .query_row(params![id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(backend)?;
        let Some((key, parent)) = row else { break };
        if let Some(k) = key {
            keys.push(k);
        }
        current = parent;
    }
    Ok(keys)
}

/// Follows `key` → its running sync → the keys that sync and the processes it started are
/// parked on → their syncs ..., and returns the keys walked when one of them is in `chain`.
fn waits_on_chain(conn: &Connection, key: &str, chain: &[String]) -> Result<Option<Vec<String>>> {
    let mut path: Vec<(String, usize)> = vec![(key.to_owned(), usize::MAX)];
    let mut seen = std::collections::HashSet::from([key.to_owned()]);
    let mut sync_of = conn
        .prepare_cached(
            "SELECT k.sync_process_id FROM park_keys k JOIN processes p ON p.id = k.sync_process_id
             WHERE k.key = ?1 AND p.state = 'running'",
        )
        .map_err(backend)?;
    let mut waited = conn
        .prepare_cached(
            "WITH RECURSIVE tree (id) AS (
                 SELECT ?1
                 UNION
                 -- Only syncs: a process started by `send` does not hold up its parent's end.
                 SELECT p.id FROM processes p JOIN tree ON p.parent_process_id = tree.id
                 WHERE p.release_key IS NOT NULL
             )
             SELECT DISTINCT park_key FROM messages
             WHERE state = 'parked' AND process_id IN (SELECT id FROM tree)",
        )
        .map_err(backend)?;
    let mut i = 0;
    // Bounded: the walk visits each key once.
    while i < path.len() && path.len() < 10_000 {
        let (k, _) = path[i].clone();
        if chain.contains(&k) {
            // Rebuild the route back to the first key.
            let mut route = vec![k];
            let mut at = path[i].1;
            while at != usize::MAX {
                route.push(path[at].0.clone());
                at = path[at].1;
            }
            route.reverse();
            return Ok(Some(route));
        }
        let sync: Option<String> = sync_of
            .query_row(params![k], |r| r.get(0))
            .optional()
            .map_err(backend)?;
        if let Some(s) = sync {
            let keys = waited
                .query_map(params![s], |r| r.get::<_, String>(0))
                .map_err(backend)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(backend)?;
            for next in keys {
                if seen.insert(next.clone()) {
                    path.push((next, i));
                }
            }
        }
        i += 1;
    }
    Ok(None)
}

/// Parks message `id` (already claimed by the caller's guard) or resumes it, per `park`.
pub(crate) fn park(
    conn: &Connection,
    id: &str,
    process: ProcessId,
    topology: &str,
    node: &str,
    park: &Park,
    now: i64,
) -> Result<Parked> {
    // A sync that needs, directly or through its own syncs, the key it is producing.
    let chain = sync_chain(conn, process)?;
    if let Some(pos) = chain.iter().position(|k| *k == park.key) {
        let mut cycle: Vec<String> = chain[..=pos].iter().rev().cloned().collect();
        cycle.push(park.key.clone());
        return Ok(Parked::Cycle(cycle));
    }
    // The same through other syncs in flight: joining the key's sync would wait on a sync
    // that (through the keys its processes wait on) waits on this one.
    if !chain.is_empty()
        && let Some(through) = waits_on_chain(conn, &park.key, &chain)?
    {
        let mut cycle: Vec<String> = chain.iter().rev().cloned().collect();
        cycle.extend(through);
        if cycle.first() != cycle.last() {
            cycle.push(cycle[0].clone());
        }
        return Ok(Parked::Cycle(cycle));
    }
    let released: Option<(i64, i64)> = conn
        .prepare_cached("SELECT released_at, count FROM releases WHERE key = ?1")
        .and_then(|mut st| {
            st.query_row(params![park.key], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(backend)?;
    let released_since_check = released.is_some_and(|(at, count)| {
        at >= park.checked_at || park.seen_releases.is_some_and(|seen| count > seen)
    });
    if released_since_check {
        conn.prepare_cached(
            "UPDATE messages SET state = 'queued', node = ?2, available_at = ?3, updated_at = ?3,
                    claimed_by = NULL, lease_until = NULL, outcome = 'parked'
             WHERE id = ?1",
        )
        .and_then(|mut st| st.execute(params![id, park.resume_node, now]))
        .map_err(backend)?;
        return Ok(Parked::ResumedAtOnce);
    }
    conn.prepare_cached(
        "UPDATE messages SET state = 'parked', park_key = ?2, resume_node = ?3, parked_until = ?4,
                error = ?5, outcome = 'parked', claimed_by = NULL, lease_until = NULL, updated_at = ?6
         WHERE id = ?1",
    )
    .and_then(|mut st| {
        st.execute(params![id, park.key, park.resume_node, park.deadline, park.expire_error, now])
    })
    .map_err(backend)?;
    conn.prepare_cached("UPDATE processes SET parked = parked + 1 WHERE id = ?1")
        .and_then(|mut st| st.execute(params![process.to_string()]))
        .map_err(backend)?;
    // Single-flight: the key's row exists while its sync is in flight; only the park that
    // creates the row opens the sync. A park without a sync waits for an outside release and
    // marks nothing in flight.
    if park.sync.is_none() {
        return Ok(Parked::Waiting { detoured: false });
    }
    let (cache, ttl) = match &park.cache_on_release {
        Some((c, t)) => (Some(c.as_str()), Some(*t)),
        None => (None, None),
    };
    // A key whose sync already ended (in the trash) is not in flight any more: the next park
    // takes the key over with a new sync; the old sync's trash entry stays for the operator.
    conn.prepare_cached(
        "DELETE FROM park_keys WHERE key = ?1
           AND EXISTS (SELECT 1 FROM processes p WHERE p.id = park_keys.sync_process_id AND p.state = 'done')",
    )
    .and_then(|mut st| st.execute(params![park.key]))
    .map_err(backend)?;
    let inserted = conn
        .prepare_cached(
            "INSERT INTO park_keys (key, sync_process_id, since, topology, node, cache, cache_ttl_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (key) DO NOTHING",
        )
        .and_then(|mut st| {
            st.execute(params![
                park.key,
                park.sync.as_ref().map(|s| s.id.to_string()),
                now,
                topology,
                node,
                cache,
                ttl
            ])
        })
        .map_err(backend)?;
    let detoured = (inserted == 1 || !park.coalesce) && park.sync.is_some();
    if detoured && let Some(sync) = &park.sync {
        let mut sync = sync.clone();
        sync.release_key = Some(park.key.clone());
        insert_process(conn, &sync)?;
    }
    Ok(Parked::Waiting { detoured })
}

/// Moves every message parked under `key` back to its resume node and clears the key's
/// in-flight mark. A release of a key with nothing parked is still recorded.
pub(crate) fn release(
    conn: &Connection,
    key: &str,
    source: &str,
    cache: &[CacheWrite],
    now: i64,
) -> Result<Released> {
    let per_process: Vec<(String, i64)> = conn
        .prepare_cached(
            "SELECT process_id, count(*) FROM messages WHERE state = 'parked' AND park_key = ?1 GROUP BY process_id",
        )
        .and_then(|mut st| {
            st.query_map(params![key], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(backend)?;
    let resumed = conn
        .prepare_cached(
            "UPDATE messages SET state = 'queued', node = resume_node, resume_node = NULL,
                    parked_until = NULL, error = NULL, available_at = ?2, updated_at = ?2
             WHERE state = 'parked' AND park_key = ?1",
        )
        .and_then(|mut st| st.execute(params![key, now]))
        .map_err(backend)? as u64;
    for (pid, n) in &per_process {
        conn.prepare_cached("UPDATE processes SET parked = parked - ?2 WHERE id = ?1")
            .and_then(|mut st| st.execute(params![pid, n]))
            .map_err(backend)?;
    }
    let mark: Option<(Option<String>, Option<i64>)> = conn
        .prepare_cached("SELECT cache, cache_ttl_ms FROM park_keys WHERE key = ?1")
        .and_then(|mut st| {
            st.query_row(params![key], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(backend)?;
    conn.prepare_cached("DELETE FROM park_keys WHERE key = ?1")
        .and_then(|mut st| st.execute(params![key]))
        .map_err(backend)?;
    conn.prepare_cached(
        "INSERT INTO releases (key, released_at, resumed, source, count) VALUES (?1, ?2, ?3, ?4, 1)
         ON CONFLICT (key) DO UPDATE SET released_at = ?2, resumed = ?3, source = ?4, count = count + 1",
    )
    .and_then(|mut st| st.execute(params![key, now, resumed as i64, source]))
    .map_err(backend)?;
    // The park's cache learns the key exists (a positive TTL) or forgets it (no TTL).
    if let Some((Some(cache_name), ttl)) = &mark {
        write_cache(
            conn,
            &CacheWrite {
                cache: cache_name.clone(),
                key: key.to_owned(),
                present: ttl.map(|_| true),
                expires_at: now + ttl.unwrap_or(0),
                observed_at: now,
            },
        )?;
    }
    for w in cache {
        write_cache(conn, w)?;
    }
    Ok(Released {
        key: key.to_owned(),
        resumed,
        was_pending: mark.is_some(),
    })
}

pub(crate) fn write_cache(conn: &Connection, w: &CacheWrite) -> Result<()> {
    match w.present {
        Some(present) => conn
            .prepare_cached(
                "INSERT INTO cache_entries (cache, key, present, expires_at)
                 SELECT ?1, ?2, ?3, ?4
                 WHERE ?3 OR NOT EXISTS (SELECT 1 FROM releases WHERE key = ?2 AND released_at >= ?5)
                 ON CONFLICT (cache, key) DO UPDATE SET present = ?3, expires_at = ?4",
            )
            .and_then(|mut st| st.execute(params![w.cache, w.key, present, w.expires_at, w.observed_at])),
        None => conn
            .prepare_cached("DELETE FROM cache_entries WHERE cache = ?1 AND key = ?2")
            .and_then(|mut st| st.execute(params![w.cache, w.key])),
    }
    .map_err(backend)?;
    Ok(())
}

/// Sends every message parked under `key` to the trash with `reason`, and clears the key.
/// Returns the processes touched, for their done check.
pub(crate) fn trash_parked(
    conn: &Connection,
    key: &str,
    reason: &str,
    now: i64,
) -> Result<Vec<ProcessId>> {
    let per_process: Vec<(String, i64)> = conn
        .prepare_cached(
            "SELECT process_id, count(*) FROM messages WHERE state = 'parked' AND park_key = ?1 GROUP BY process_id",
        )
        .and_then(|mut st| {
            st.query_map(params![key], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(backend)?;
    conn.prepare_cached(
        "UPDATE messages SET state = 'trash', error = ?2, attempt = attempt + 1, updated_at = ?3
         WHERE state = 'parked' AND park_key = ?1",
    )
    .and_then(|mut st| st.execute(params![key, reason, now]))
    .map_err(backend)?;
    conn.prepare_cached("DELETE FROM park_keys WHERE key = ?1")
        .and_then(|mut st| st.execute(params![key]))
        .map_err(backend)?;
    let mut touched = Vec::new();
    for (pid, n) in per_process {
        conn.prepare_cached(
            "UPDATE processes SET parked = parked - ?2, open = open - ?2, trash = trash + ?2 WHERE id = ?1",
        )
        .and_then(|mut st| st.execute(params![pid, n]))
        .map_err(backend)?;
        touched.push(parse_id(&pid)?);
    }
    Ok(touched)
}

/// Parked messages past their deadline go to the trash with the reason written at park time.
/// A key left with nothing parked whose sync already ended (in the trash) is no longer
/// marked in flight, so the next message that needs it asks for a new sync.
pub(crate) fn expire(conn: &Connection, now: i64) -> Result<Vec<ProcessId>> {
    let rows: Vec<(String, String)> = conn
        .prepare_cached(
            "SELECT id, process_id FROM messages WHERE state = 'parked' AND parked_until < ?1 LIMIT 10000",
        )
        .and_then(|mut st| {
            st.query_map(params![now], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(backend)?;
    let mut touched = Vec::new();
    for (id, pid) in rows {
        conn.prepare_cached(
            "UPDATE messages SET state = 'trash', attempt = attempt + 1, updated_at = ?2 WHERE id = ?1 AND state = 'parked'",
        )
        .and_then(|mut st| st.execute(params![id, now]))
        .map_err(backend)?;
        conn.prepare_cached(
            "UPDATE processes SET parked = parked - 1, open = open - 1, trash = trash + 1 WHERE id = ?1",
        )
        .and_then(|mut st| st.execute(params![pid]))
        .map_err(backend)?;
        touched.push(parse_id(&pid)?);
    }
    if !touched.is_empty() {
        conn.prepare_cached(
            "DELETE FROM park_keys
             WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.state = 'parked' AND m.park_key = park_keys.key)
               AND NOT EXISTS (SELECT 1 FROM processes p WHERE p.id = park_keys.sync_process_id AND p.state = 'running')",
        )
        .and_then(|mut st| st.execute([]))
        .map_err(backend)?;
    }
    Ok(touched)
}

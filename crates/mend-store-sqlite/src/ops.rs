//! Operator reads and actions: process lists, traces, store-wide status, the heatmap, and
//! trash edits, bulk actions and dropped keys.

use std::collections::BTreeMap;

use mend_core::ids::{MessageId, ProcessId};
use mend_core::message::Headers;
use mend_store::{
    HeatRow, Heatmap, MessageCounts, ProcessFilter, ProcessState, ProcessSummary, Result,
    StoreStatus, Trace, TraceMessage, TrashAction, TrashFilter,
};
use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

use crate::{backend, corrupt, count, finish_if_done, park, parse_id, trash};

/// The columns `summary` reads, in its order.
pub(crate) const SUMMARY: &str =
    "id, topology, event, state, parent_process_id, created_at, finished_at,
                       total, open, done, filtered, trash, parked, rejected";

/// A process row (the `SUMMARY` columns first) as a summary; ids are parsed by
/// `finish_summary`, outside the row callback.
pub(crate) fn summary(
    r: &rusqlite::Row<'_>,
) -> rusqlite::Result<(ProcessSummary, String, Option<String>)> {
    let id: String = r.get(0)?;
    let parent: Option<String> = r.get(4)?;
    Ok((
        ProcessSummary {
            id: ProcessId::default(),
            topology: r.get(1)?,
            event: r.get(2)?,
            state: if r.get::<_, String>(3)? == "done" {
                ProcessState::Done
            } else {
                ProcessState::Running
            },
            parent_process_id: None,
            created_at: r.get(5)?,
            finished_at: r.get(6)?,
            messages: MessageCounts {
                total: count(r, 7)?,
                open: count(r, 8)?,
                done: count(r, 9)?,
                filtered: count(r, 10)?,
                trash: count(r, 11)?,
                parked: count(r, 12)?,
                rejected: count(r, 13)?,
            },
        },
        id,
        parent,
    ))
}

pub(crate) fn finish_summary(
    (mut s, id, parent): (ProcessSummary, String, Option<String>),
) -> Result<ProcessSummary> {
    s.id = parse_id(&id)?;
    s.parent_process_id = parent.map(|p| parse_id(&p)).transpose()?;
    Ok(s)
}

pub(crate) fn list_processes(conn: &Connection, f: &ProcessFilter) -> Result<Vec<ProcessSummary>> {
    let state = f.state.map(|s| {
        if s == ProcessState::Done {
            "done"
        } else {
            "running"
        }
    });
    let sql = format!(
        "SELECT {SUMMARY} FROM processes
         WHERE (?1 IS NULL OR topology = ?1) AND (?2 IS NULL OR state = ?2)
         ORDER BY created_at DESC, id DESC LIMIT ?3"
    );
    let mut st = conn.prepare_cached(&sql).map_err(backend)?;
    let rows = st
        .query_map(
            params![f.topology, state, f.limit.unwrap_or(100).min(10_000)],
            summary,
        )
        .map_err(backend)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(backend)?;
    rows.into_iter().map(finish_summary).collect()
}

pub(crate) fn trace(conn: &Connection, id: ProcessId) -> Result<Option<Trace>> {
    let sql = format!(
        "WITH RECURSIVE tree (id) AS (
             SELECT id FROM processes WHERE id = ?1
             UNION SELECT p.id FROM processes p JOIN tree ON p.parent_process_id = tree.id
         )
         SELECT {SUMMARY} FROM processes WHERE id IN (SELECT id FROM tree) ORDER BY created_at, id LIMIT 1000"
    );
    let mut st = conn.prepare_cached(&sql).map_err(backend)?;
    let processes = st
        .query_map(params![id.to_string()], summary)
        .map_err(backend)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(backend)?
        .into_iter()
        .map(finish_summary)
        .collect::<Result<Vec<_>>>()?;
    if processes.is_empty() {
        return Ok(None);
    }
    let mut messages = Vec::new();
    for p in &processes {
        messages.extend(trace_messages(conn, "process_id", &p.id.to_string())?);
    }
    messages.sort_by_key(|m| (m.created_at, m.id));
    // A sync lists the messages that waited for its key (they keep `park_key` once resumed).
    let release_key: Option<String> = conn
        .prepare_cached("SELECT release_key FROM processes WHERE id = ?1")
        .and_then(|mut st| st.query_row(params![id.to_string()], |r| r.get(0)))
        .map_err(backend)?;
    let unblocks = match release_key {
        Some(key) => trace_messages(conn, "park_key", &key)?,
        None => Vec::new(),
    };
    Ok(Some(Trace {
        processes,
        messages,
        unblocks,
    }))
}

/// Messages whose `column` (`process_id` or `park_key`) is `value`, in time order.
fn trace_messages(conn: &Connection, column: &str, value: &str) -> Result<Vec<TraceMessage>> {
    let sql = format!(
        "SELECT id, process_id, topology, node, state, outcome, error, parent_id, created_at, updated_at
         FROM messages WHERE {column} = ?1 ORDER BY created_at, id LIMIT 5000"
    );
    let mut st = conn.prepare_cached(&sql).map_err(backend)?;
    let rows = st
        .query_map(params![value], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                r.get::<_, String>(4)?,
                r.get::<_, Option<String>>(5)?,
                r.get::<_, Option<String>>(6)?,
                r.get::<_, Option<String>>(7)?,
                r.get::<_, i64>(8)?,
                r.get::<_, i64>(9)?,
            ))
        })
        .map_err(backend)?;
    let mut out = Vec::new();
    for row in rows {
        let (mid, pid, topology, node, state, outcome, error, parent, created_at, updated_at) =
            row.map_err(backend)?;
        out.push(TraceMessage {
            id: parse_id(&mid)?,
            process_id: parse_id(&pid)?,
            topology,
            node,
            state,
            outcome,
            error,
            parent_id: parent.map(|p| parse_id::<MessageId>(&p)).transpose()?,
            created_at,
            updated_at,
        });
    }
    Ok(out)
}

pub(crate) fn status(conn: &Connection) -> Result<StoreStatus> {
    // Each count names the partial index whose condition it repeats, so it reads only the
    // live rows, however many finished ones the table holds.
    let now = mend_core::clock::now_ms();
    let one =
        |sql: &str| -> Result<u64> { conn.query_row(sql, [], |r| count(r, 0)).map_err(backend) };
    let due = |sql: &str| -> Result<u64> {
        conn.query_row(sql, params![now], |r| count(r, 0))
            .map_err(backend)
    };
    const READY: &str = "SELECT count(*) FROM messages INDEXED BY messages_ready
                         WHERE state IN ('queued', 'retry', 'limited')";
    Ok(StoreStatus {
        processes_running: one("SELECT count(*) FROM processes WHERE state = 'running'")?,
        processes_done: one("SELECT count(*) FROM processes WHERE state = 'done'")?,
        queued: due(&format!(
            "{READY} AND state <> 'limited' AND available_at <= ?1"
        ))?,
        retry: due(&format!(
            "{READY} AND state <> 'limited' AND available_at > ?1"
        ))?,
        limited: one(&format!("{READY} AND state = 'limited'"))?,
        running: one(
            "SELECT count(*) FROM messages INDEXED BY messages_running WHERE state = 'running'",
        )?,
        parked: one(
            "SELECT count(*) FROM messages INDEXED BY messages_parked WHERE state = 'parked'",
        )?,
        trash: one("SELECT coalesce(sum(trash), 0) FROM processes WHERE trash > 0")?,
    })
}

pub(crate) fn heatmap(
    conn: &Connection,
    bucket_ms: i64,
    buckets: usize,
    now: i64,
) -> Result<Heatmap> {
    let bucket_min = (bucket_ms / 60_000).max(1);
    let bucket_ms = bucket_min * 60_000;
    let last = now / bucket_ms;
    let first = last - buckets as i64 + 1;
    let mut st = conn
        .prepare_cached(
            "SELECT minute / ?1, topology, node, outcome, sum(count) FROM node_minutes
             WHERE minute >= ?2 GROUP BY 1, 2, 3, 4",
        )
        .map_err(backend)?;
    let mut rows: BTreeMap<(String, String, String), Vec<u64>> = BTreeMap::new();
    let found = st
        .query_map(params![bucket_min, first * bucket_min], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, String>(3)?,
                count(r, 4)?,
            ))
        })
        .map_err(backend)?;
    for row in found {
        let (bucket, topology, node, outcome, n) = row.map_err(backend)?;
        let i = bucket - first;
        if (0..buckets as i64).contains(&i) {
            rows.entry((topology, node, outcome))
                .or_insert_with(|| vec![0; buckets])[i as usize] += n;
        }
    }
    Ok(Heatmap {
        bucket_ms,
        start: first * bucket_ms,
        buckets,
        rows: rows
            .into_iter()
            .map(|((topology, node, outcome), counts)| HeatRow {
                topology,
                node,
                outcome,
                counts,
            })
            .collect(),
    })
}

pub(crate) fn edit_trash(
    conn: &Connection,
    id: MessageId,
    payload: Option<&Value>,
    headers: Option<&Headers>,
    actor: &str,
    now: i64,
) -> Result<bool> {
    let mid = id.to_string();
    let before: Option<(String, String)> = conn
        .prepare_cached("SELECT payload, headers FROM messages WHERE id = ?1 AND state = 'trash'")
        .and_then(|mut st| {
            st.query_row(params![mid], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(backend)?;
    let Some((old_payload, old_headers)) = before else {
        return Ok(false);
    };
    let previous = serde_json::json!({
        "payload": serde_json::from_str::<Value>(&old_payload).map_err(corrupt)?,
        "headers": serde_json::from_str::<Value>(&old_headers).map_err(corrupt)?,
    });
    if let Some(p) = payload {
        conn.execute(
            "UPDATE messages SET payload = ?2 WHERE id = ?1",
            params![mid, p.to_string()],
        )
        .map_err(backend)?;
    }
    if let Some(h) = headers {
        let text = serde_json::to_string(h).map_err(corrupt)?;
        conn.execute(
            "UPDATE messages SET headers = ?2 WHERE id = ?1",
            params![mid, text],
        )
        .map_err(backend)?;
    }
    conn.prepare_cached(
        "INSERT INTO trash_actions (message_id, action, at, actor, note, previous) VALUES (?1, 'edit', ?2, ?3, NULL, ?4)",
    )
    .and_then(|mut st| st.execute(params![mid, now, actor, previous.to_string()]))
    .map_err(backend)?;
    trash::act(conn, id, &TrashAction::Approve, actor, now)
}

pub(crate) fn bulk_trash(
    conn: &Connection,
    filter: &TrashFilter,
    action: &TrashAction,
    actor: &str,
    now: i64,
) -> Result<u64> {
    let mut f = filter.clone();
    f.limit = Some(10_000);
    let ids: Vec<MessageId> = trash::list(conn, &f)?
        .into_iter()
        .map(|e| e.message_id)
        .collect();
    let mut n = 0;
    for id in ids {
        n += u64::from(trash::act(conn, id, action, actor, now)?);
    }
    Ok(n)
}

pub(crate) fn trash_unknown_nodes(
    conn: &Connection,
    topology: &str,
    version: &str,
    nodes: &[String],
    older_than: i64,
    now: i64,
) -> Result<u64> {
    let known = serde_json::to_string(nodes).map_err(corrupt)?;
    // Two index-bound reads: ready messages of the topology, then parked ones.
    let mut rows: Vec<(String, String, String, String)> = Vec::new();
    for sql in [
        "SELECT id, process_id, state, node FROM messages INDEXED BY messages_ready
         WHERE state IN ('queued', 'retry', 'limited') AND topology = ?1 AND updated_at < ?3
           AND node NOT IN (SELECT value FROM json_each(?2))",
        "SELECT id, process_id, state, resume_node FROM messages INDEXED BY messages_parked
         WHERE state = 'parked' AND topology = ?1 AND updated_at < ?3
           AND resume_node NOT IN (SELECT value FROM json_each(?2))",
    ] {
        let found = conn
            .prepare_cached(sql)
            .and_then(|mut st| {
                st.query_map(params![topology, known, older_than], |r| {
                    Ok((
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        r.get::<_, Option<String>>(3)?.unwrap_or_default(),
                    ))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()
            })
            .map_err(backend)?;
        rows.extend(found);
    }
    let n = rows.len() as u64;
    for (id, pid, state, node) in rows {
        let reason =
            format!("node `{node}` is not in topology `{topology}` (version {version}) any more");
        conn.prepare_cached(
            "UPDATE messages SET state = 'trash', error = ?2, claimed_by = NULL, park_key = NULL, updated_at = ?3 WHERE id = ?1",
        )
        .and_then(|mut st| st.execute(params![id, reason, now]))
        .map_err(backend)?;
        let parked = i64::from(state == "parked");
        conn.prepare_cached(
            "UPDATE processes SET open = open - 1, trash = trash + 1, parked = parked - ?2 WHERE id = ?1",
        )
        .and_then(|mut st| st.execute(params![pid, parked]))
        .map_err(backend)?;
        finish_if_done(conn, parse_id(&pid)?, now)?;
    }
    Ok(n)
}

pub(crate) fn drop_key(conn: &Connection, key: &str, actor: &str, now: i64) -> Result<u64> {
    let reason = format!("dropped by {actor} while waiting for {key}");
    let before: i64 = conn
        .query_row(
            "SELECT count(*) FROM messages WHERE state = 'parked' AND park_key = ?1",
            params![key],
            |r| r.get(0),
        )
        .map_err(backend)?;
    for pid in park::trash_parked(conn, key, &reason, now)? {
        finish_if_done(conn, pid, now)?;
    }
    Ok(before.max(0) as u64)
}

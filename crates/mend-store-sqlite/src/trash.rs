//! Trash entries for operators: list, show, approve (re-run at the failed node, same process,
//! fresh attempts), reject (close; a rejected sync takes the messages waiting on its key to
//! the trash with it).

use mend_core::ids::{MessageId, ProcessId};
use mend_store::{Attempt, Result, TrashAction, TrashDetail, TrashFilter};
use rusqlite::{Connection, OptionalExtension, params};

use crate::{backend, corrupt, finish_if_done, park, parse_id};

fn attempts(conn: &Connection, id: &str) -> Result<Vec<Attempt>> {
    let mut st = conn
        .prepare_cached(
            "SELECT attempt, at, duration_ms, outcome, status, error, response_excerpt
             FROM attempts WHERE message_id = ?1 ORDER BY seq",
        )
        .map_err(backend)?;
    st.query_map(params![id], |r| {
        Ok(Attempt {
            attempt: r.get(0)?,
            at: r.get(1)?,
            duration_ms: r.get(2)?,
            outcome: r.get(3)?,
            status: r.get(4)?,
            error: r.get(5)?,
            response_excerpt: r.get(6)?,
        })
    })
    .map_err(backend)?
    .collect::<rusqlite::Result<Vec<_>>>()
    .map_err(backend)
}

type Row = (
    String,
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    i64,
);

fn detail(conn: &Connection, row: Row) -> Result<TrashDetail> {
    let (id, process, topology, node, payload, headers, error, at) = row;
    let repeats: i64 = conn
        .prepare_cached("SELECT count(*) FROM messages WHERE flood_of = ?1 AND state = 'trash'")
        .and_then(|mut st| st.query_row(params![id], |r| r.get(0)))
        .map_err(backend)?;
    Ok(TrashDetail {
        repeats: repeats.max(0) as u64,
        attempts: attempts(conn, &id)?,
        message_id: parse_id(&id)?,
        process_id: parse_id(&process)?,
        topology,
        node,
        payload: serde_json::from_str(&payload).map_err(corrupt)?,
        headers: serde_json::from_str(&headers).map_err(corrupt)?,
        error,
        at,
    })
}

const COLUMNS: &str = "id, process_id, topology, node, payload, headers, error, updated_at";

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
    ))
}

pub(crate) fn list(conn: &Connection, f: &TrashFilter) -> Result<Vec<TrashDetail>> {
    let sql = format!(
        "SELECT {COLUMNS} FROM messages
         WHERE state = 'trash' AND flood_of IS NULL
           AND (?1 IS NULL OR topology = ?1) AND (?2 IS NULL OR node = ?2)
           AND (?3 IS NULL OR process_id = ?3) AND (?4 IS NULL OR instr(error, ?4) > 0)
           AND (?6 IS NULL OR updated_at >= ?6) AND (?7 IS NULL OR updated_at < ?7)
         ORDER BY updated_at DESC LIMIT ?5"
    );
    let mut st = conn.prepare_cached(&sql).map_err(backend)?;
    let rows = st
        .query_map(
            params![
                f.topology,
                f.node,
                f.process_id.map(|p| p.to_string()),
                f.error,
                f.limit.unwrap_or(100).min(10_000),
                f.since,
                f.until
            ],
            row,
        )
        .map_err(backend)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(backend)?;
    rows.into_iter().map(|r| detail(conn, r)).collect()
}

pub(crate) fn get(conn: &Connection, id: MessageId) -> Result<Option<TrashDetail>> {
    let sql = format!("SELECT {COLUMNS} FROM messages WHERE id = ?1 AND state = 'trash'");
    let found = conn
        .prepare_cached(&sql)
        .and_then(|mut st| st.query_row(params![id.to_string()], row).optional())
        .map_err(backend)?;
    found.map(|r| detail(conn, r)).transpose()
}

pub(crate) fn act(
    conn: &Connection,
    id: MessageId,
    action: &TrashAction,
    actor: &str,
    now: i64,
) -> Result<bool> {
    let mid = id.to_string();
    let process: Option<String> = conn
        .prepare_cached("SELECT process_id FROM messages WHERE id = ?1 AND state = 'trash'")
        .and_then(|mut st| st.query_row(params![mid], |r| r.get(0)).optional())
        .map_err(backend)?;
    let Some(process) = process else {
        return Ok(false);
    };
    let pid: ProcessId = parse_id(&process)?;
    let (name, note) = match action {
        TrashAction::Approve => {
            conn.prepare_cached(
                "UPDATE messages SET state = 'queued', attempt = 0, available_at = ?2, updated_at = ?2, error = NULL,
                        flood_of = NULL
                 WHERE id = ?1",
            )
            .and_then(|mut st| st.execute(params![mid, now]))
            .map_err(backend)?;
            conn.prepare_cached(
                "UPDATE processes SET trash = trash - 1, open = open + 1, state = 'running', finished_at = NULL
                 WHERE id = ?1",
            )
            .and_then(|mut st| st.execute(params![process]))
            .map_err(backend)?;
            ("approve", None)
        }
        TrashAction::Reject => {
            conn.prepare_cached(
                "UPDATE messages SET state = 'rejected', updated_at = ?2 WHERE id = ?1",
            )
            .and_then(|mut st| st.execute(params![mid, now]))
            .map_err(backend)?;
            conn.prepare_cached(
                "UPDATE processes SET trash = trash - 1, rejected = rejected + 1 WHERE id = ?1",
            )
            .and_then(|mut st| st.execute(params![process]))
            .map_err(backend)?;
            // A rejected sync will never produce its key: what waits on it ends now.
            let key: Option<String> = conn
                .prepare_cached("SELECT release_key FROM processes WHERE id = ?1")
                .and_then(|mut st| st.query_row(params![process], |r| r.get(0)))
                .map_err(backend)?;
            let mut note = None;
            // Only while the key still waits on this sync: a later park may have taken the
            // key over with a new one, whose waiters are not this sync's to end.
            let owner: Option<Option<String>> = match &key {
                Some(k) => conn
                    .prepare_cached("SELECT sync_process_id FROM park_keys WHERE key = ?1")
                    .and_then(|mut st| st.query_row(params![k], |r| r.get(0)).optional())
                    .map_err(backend)?,
                None => None,
            };
            let key = key.filter(|_| matches!(&owner, Some(Some(p)) if *p == process));
            if let Some(key) = key {
                let reason = format!("prerequisite {key} rejected");
                for touched in park::trash_parked(conn, &key, &reason, now)? {
                    finish_if_done(conn, touched, now)?;
                }
                note = Some(reason);
            }
            finish_if_done(conn, pid, now)?;
            ("reject", note)
        }
    };
    conn.prepare_cached("INSERT INTO trash_actions (message_id, action, at, actor, note) VALUES (?1, ?2, ?3, ?4, ?5)")
        .and_then(|mut st| st.execute(params![mid, name, now, actor, note]))
        .map_err(backend)?;
    // What the flood guard collapsed under this entry follows it.
    let followers: Vec<String> = conn
        .prepare_cached("SELECT id FROM messages WHERE flood_of = ?1 AND state = 'trash'")
        .and_then(|mut st| {
            st.query_map(params![mid], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(backend)?;
    for f in followers {
        act(conn, parse_id(&f)?, action, actor, now)?;
    }
    Ok(true)
}

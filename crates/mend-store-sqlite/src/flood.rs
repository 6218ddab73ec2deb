//! The trash's flood guard: when one process keeps failing the same way at the same node
//! (10,000 products rejected with the same error), the trash shows the first failures and
//! collapses the rest under them with a count. Nothing is deleted: collapsed messages are
//! still in the trash, counted in the process report, and follow their head on approve or
//! reject.

use mend_core::ids::ProcessId;
use mend_store::Result;
use rusqlite::{Connection, OptionalExtension, params};

use crate::backend;

/// Identical failures shown one by one before the rest are collapsed.
pub(crate) const LIMIT: i64 = 20;
/// How far back "recent" reaches.
pub(crate) const WINDOW_MS: i64 = 60_000;

/// Collapses message `id` (just sent to the trash) under the first identical recent failure
/// once `LIMIT` of them are shown.
pub(crate) fn guard(
    conn: &Connection,
    id: &str,
    process: ProcessId,
    node: &str,
    error: Option<&str>,
    now: i64,
) -> Result<()> {
    let Some(error) = error else { return Ok(()) };
    let pid = process.to_string();
    let shown: i64 = conn
        .prepare_cached(
            "SELECT count(*) FROM messages
             WHERE process_id = ?1 AND state = 'trash' AND node = ?2 AND error = ?3
               AND flood_of IS NULL AND updated_at >= ?4 AND id <> ?5",
        )
        .and_then(|mut st| {
            st.query_row(params![pid, node, error, now - WINDOW_MS, id], |r| r.get(0))
        })
        .map_err(backend)?;
    if shown < LIMIT {
        return Ok(());
    }
    let head: Option<String> = conn
        .prepare_cached(
            "SELECT id FROM messages
             WHERE process_id = ?1 AND state = 'trash' AND node = ?2 AND error = ?3 AND flood_of IS NULL AND id <> ?4
             ORDER BY updated_at LIMIT 1",
        )
        .and_then(|mut st| st.query_row(params![pid, node, error, id], |r| r.get(0)).optional())
        .map_err(backend)?;
    if let Some(head) = head {
        conn.prepare_cached("UPDATE messages SET flood_of = ?2 WHERE id = ?1")
            .and_then(|mut st| st.execute(params![id, head]))
            .map_err(backend)?;
    }
    Ok(())
}

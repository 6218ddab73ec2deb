//! The embedded SQLite store (WAL mode): mend's default, zero setup, one file.
//!
//! Key types: [`SqliteStore`] implements the `mend-store` traits. Writes go through one
//! writer thread that groups many steps into one transaction (see `writer`); reads use a
//! small pool of read-only connections, which WAL lets run beside the writer.

mod flood;
mod ops;
mod park;
mod trash;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indexmap::IndexMap;
use mend_core::ids::{MessageId, ProcessId};
use mend_core::message::Message;
use mend_store::{
    Applied, ClaimRequest, Completion, Disposition, Heatmap, MessageStore, NewMessage, NewProcess,
    OpsStore, ParkStore, ParkedKey, ProcessFilter, ProcessReport, ProcessStore, ProcessSummary,
    Release, Released, Result, ScheduleStore, StoreError, StoreStatus, TopologyStore, Trace,
    TrashAction, TrashDetail, TrashEntry, TrashFilter, TrashStore,
};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::Notify;

use crate::writer::Writer;

const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_init.sql"),
    include_str!("../migrations/0002_park.sql"),
    include_str!("../migrations/0003_operator.sql"),
    include_str!("../migrations/0004_indexes.sql"),
];

/// How the store trades durability for speed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Durability {
    /// Every committed batch is on disk before it is acknowledged (`synchronous=FULL`).
    #[default]
    Full,
    /// Survives a crash of mend but not of the machine (`synchronous=NORMAL`).
    Normal,
}

#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Writer,
    readers: Mutex<Vec<Connection>>,
    work: Notify,
}

fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, Durability::default())
    }

    pub fn open_with(path: &Path, durability: Durability) -> Result<Self> {
        let conn = Connection::open(path)
            .map_err(|e| StoreError::Backend(format!("cannot open {}: {e}", path.display())))?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(backend)?;
        let sync = match durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        };
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = {sync}; PRAGMA foreign_keys = ON;"
        ))
        .map_err(backend)?;
        migrate(&conn)?;
        // Fresh statistics for the query planner where they are stale (cheap when not).
        conn.execute_batch("PRAGMA optimize = 0x10002;")
            .map_err(backend)?;
        Ok(Self {
            inner: Arc::new(Inner {
                path: path.to_path_buf(),
                writer: Writer::start(conn),
                readers: Mutex::new(Vec::new()),
                work: Notify::new(),
            }),
        })
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` on a pooled read-only connection, off the async threads.
    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let conn = match this.inner.readers.lock().map(|mut p| p.pop()) {
                Ok(Some(c)) => c,
                _ => {
                    let c = Connection::open_with_flags(
                        &this.inner.path,
                        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
                    )
                    .map_err(backend)?;
                    c.busy_timeout(Duration::from_secs(10)).map_err(backend)?;
                    c
                }
            };
            let result = f(&conn);
            if let Ok(mut pool) = this.inner.readers.lock()
                && pool.len() < 8
            {
                pool.push(conn);
            }
            result
        })
        .await
        .map_err(|e| StoreError::Backend(format!("reader task failed: {e}")))?
    }
}

fn migrate(conn: &Connection) -> Result<()> {
    let current: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(backend)?;
    let known = MIGRATIONS.len() as i64;
    if current > known {
        return Err(StoreError::SchemaTooNew {
            found: current,
            known,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = i as i64 + 1;
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {sql}\nPRAGMA user_version = {version}; COMMIT;"
        ))
        .map_err(|e| {
            let _ = conn.execute_batch("ROLLBACK");
            StoreError::Backend(format!("schema migration {version} failed: {e}"))
        })?;
    }
    Ok(())
}

fn json_text<T: serde::Serialize>(v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(corrupt)
}

fn insert_message(conn: &Connection, m: &NewMessage, now: i64) -> Result<()> {
    let headers = json_text(&m.headers)?;
    let context = json_text(&m.context)?;
    conn.prepare_cached(include_str!("../queries/insert_message.sql"))
        .and_then(|mut st| {
            st.execute(params![
                m.id.to_string(),
                m.process_id.to_string(),
                m.topology,
                m.version,
                m.node,
                m.payload.to_string(),
                headers,
                context,
                m.parent_id.map(|p| p.to_string()),
                m.available_at,
                now,
            ])
        })
        .map_err(backend)?;
    Ok(())
}

fn insert_process(conn: &Connection, p: &NewProcess) -> Result<()> {
    conn.prepare_cached(
        "INSERT INTO processes (id, topology, version, event, parent_process_id, parent_message_id,
                                state, total, open, created_at, release_key)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'running', 1, 1, ?7, ?8)",
    )
    .and_then(|mut st| {
        st.execute(params![
            p.id.to_string(),
            p.topology,
            p.version,
            p.event,
            p.parent_process_id.map(|x| x.to_string()),
            p.parent_message_id.map(|x| x.to_string()),
            p.created_at,
            p.release_key,
        ])
    })
    .map_err(backend)?;
    insert_message(conn, &p.first, p.created_at)
}

fn parse_id<T: std::str::FromStr>(s: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    s.parse::<T>()
        .map_err(|e| corrupt(format!("bad id `{s}`: {e}")))
}

fn row_to_message(r: &rusqlite::Row<'_>) -> rusqlite::Result<[String; 8]> {
    Ok([
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
    ])
}

fn build_message(
    cols: [String; 8],
    attempt: u32,
    parent: Option<String>,
    created_at: i64,
) -> Result<Message> {
    let [
        id,
        process_id,
        topology,
        version,
        node,
        payload,
        headers,
        context,
    ] = cols;
    Ok(Message {
        id: parse_id(&id)?,
        process_id: parse_id(&process_id)?,
        topology,
        version,
        node,
        payload: serde_json::from_str(&payload).map_err(corrupt)?,
        headers: serde_json::from_str(&headers).map_err(corrupt)?,
        context: serde_json::from_str(&context).map_err(corrupt)?,
        attempt,
        parent_id: parent.map(|p| parse_id::<MessageId>(&p)).transpose()?,
        created_at,
    })
}

fn claim(conn: &Connection, req: &ClaimRequest) -> Result<Vec<Message>> {
    let mut out = Vec::new();
    let mut select = conn
        .prepare_cached(include_str!("../queries/claim_ready.sql"))
        .map_err(backend)?;
    let mut mark = conn
        .prepare_cached(
            "UPDATE messages SET state = 'running', claimed_by = ?2, lease_until = ?3, updated_at = ?4
             WHERE id = ?1",
        )
        .map_err(backend)?;
    for cap in req.nodes.iter().filter(|c| c.max > 0) {
        let room = (req.limit as usize)
            .saturating_sub(out.len())
            .min(cap.max as usize);
        if room == 0 {
            break;
        }
        let rows = select
            .query_map(params![cap.topology, cap.node, req.now, room as i64], |r| {
                Ok((
                    row_to_message(r)?,
                    r.get::<_, u32>(8)?,
                    r.get::<_, Option<String>>(9)?,
                    r.get::<_, i64>(10)?,
                ))
            })
            .map_err(backend)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(backend)?;
        for (cols, attempt, parent, created_at) in rows {
            mark.execute(params![cols[0], req.worker, req.lease_until, req.now])
                .map_err(backend)?;
            out.push(build_message(cols, attempt, parent, created_at)?);
        }
    }
    Ok(out)
}

fn complete(conn: &Connection, c: &Completion) -> Result<Applied> {
    let id = c.message_id.to_string();
    let current_attempt: Option<u32> = conn
        .prepare_cached(
            "SELECT attempt FROM messages WHERE id = ?1 AND state = 'running' AND claimed_by = ?2",
        )
        .and_then(|mut st| st.query_row(params![id, c.worker], |r| r.get(0)).optional())
        .map_err(backend)?;
    let Some(current_attempt) = current_attempt else {
        return Ok(Applied::LeaseLost);
    };
    // A park may turn into an immediate resume (the key was released after the check) or, when
    // it would wait on itself, into the trash.
    let mut disposition = c.disposition;
    let mut error = c.error.clone();
    let mut outcome = c.outcome.clone();
    let mut cycle: Option<(Vec<String>, String)> = None;
    if disposition == Disposition::Parked {
        let p = c
            .park
            .as_ref()
            .ok_or_else(|| corrupt("a parked completion without a park"))?;
        match park::park(conn, &id, c.process_id, &c.topology, &c.node, p, c.now)? {
            park::Parked::Waiting { detoured } => {
                tracing::debug!(key = p.key, detoured, "message parked");
            }
            park::Parked::ResumedAtOnce => {
                tracing::debug!(key = p.key, "key released after the check; resumed at once");
            }
            park::Parked::Cycle(keys) => {
                let reason = format!("prerequisite cycle: {}", keys.join(" → "));
                disposition = Disposition::Trash;
                error = Some(reason.clone());
                outcome = "cycle".into();
                cycle = Some((keys, reason));
            }
        }
    }
    let (state, attempt_delta, available_at) = match disposition {
        Disposition::Done => ("done", 0, c.now),
        Disposition::Filtered => ("filtered", 0, c.now),
        Disposition::Trash => ("trash", 1, c.now),
        Disposition::Retry { at } => ("retry", 1, at),
        Disposition::Parked => ("parked", 0, c.now),
        Disposition::Limited { at } => ("limited", 0, at),
    };
    if disposition != Disposition::Parked {
        let changed = conn
            .prepare_cached(include_str!("../queries/ack.sql"))
            .and_then(|mut st| {
                st.execute(params![
                    id,
                    state,
                    outcome,
                    error,
                    current_attempt + attempt_delta,
                    available_at,
                    c.now,
                    c.worker,
                ])
            })
            .map_err(backend)?;
        if changed == 0 {
            return Ok(Applied::LeaseLost);
        }
    }
    for m in &c.outputs {
        insert_message(conn, m, c.now)?;
    }
    for p in &c.spawned {
        insert_process(conn, p)?;
    }
    if let Some(a) = &c.attempt {
        conn.prepare_cached(
            "INSERT INTO attempts (message_id, attempt, node, at, duration_ms, outcome, status, error, response_excerpt)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )
        .and_then(|mut st| {
            st.execute(params![
                id,
                a.attempt,
                c.node,
                a.at,
                a.duration_ms,
                a.outcome,
                a.status,
                a.error,
                a.response_excerpt,
            ])
        })
        .map_err(backend)?;
    }
    conn.prepare_cached(
        "INSERT INTO process_node_stats (process_id, topology, node, outcome, count) VALUES (?1, ?2, ?3, ?4, 1)
         ON CONFLICT (process_id, topology, node, outcome) DO UPDATE SET count = count + 1",
    )
    .and_then(|mut st| st.execute(params![c.process_id.to_string(), c.topology, c.node, outcome]))
    .map_err(backend)?;
    conn.prepare_cached(
        "INSERT INTO node_minutes (minute, topology, node, outcome, count) VALUES (?1, ?2, ?3, ?4, 1)
         ON CONFLICT (minute, topology, node, outcome) DO UPDATE SET count = count + 1",
    )
    .and_then(|mut st| st.execute(params![c.now / 60_000, c.topology, c.node, outcome]))
    .map_err(backend)?;
    let ended = !matches!(
        disposition,
        Disposition::Retry { .. } | Disposition::Parked | Disposition::Limited { .. }
    );
    let flag = |d: Disposition| i64::from(disposition == d);
    conn.prepare_cached(include_str!("../queries/process_counts.sql"))
        .and_then(|mut st| {
            st.execute(params![
                c.process_id.to_string(),
                c.outputs.len() as i64,
                i64::from(ended),
                flag(Disposition::Done),
                flag(Disposition::Filtered),
                flag(Disposition::Trash),
            ])
        })
        .map_err(backend)?;
    if disposition == Disposition::Trash {
        flood::guard(conn, &id, c.process_id, &c.node, error.as_deref(), c.now)?;
    }
    let mut touched = vec![c.process_id];
    if let Some((keys, reason)) = cycle {
        // Everything waiting on a key of the cycle would wait forever: it ends with the reason.
        for key in &keys {
            touched.extend(park::trash_parked(conn, key, &reason, c.now)?);
        }
    }
    for r in &c.releases {
        park::release(conn, &r.key, &r.source, &r.cache, c.now)?;
    }
    for w in &c.cache {
        park::write_cache(conn, w)?;
    }
    for pid in touched {
        finish_if_done(conn, pid, c.now)?;
    }
    Ok(Applied::Applied)
}

/// Marks the process done when nothing of it is open. A sync process that ends with nothing in
/// the trash releases the key it was opened for.
fn finish_if_done(conn: &Connection, process: ProcessId, now: i64) -> Result<()> {
    let pid = process.to_string();
    let changed = conn
        .prepare_cached(
            "UPDATE processes SET state = 'done', finished_at = ?2 WHERE id = ?1 AND open = 0 AND state = 'running'",
        )
        .and_then(|mut st| st.execute(params![pid, now]))
        .map_err(backend)?;
    if changed == 0 {
        return Ok(());
    }
    let row: Option<(Option<String>, i64)> = conn
        .prepare_cached("SELECT release_key, trash + rejected FROM processes WHERE id = ?1")
        .and_then(|mut st| {
            st.query_row(params![pid], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()
        })
        .map_err(backend)?;
    if let Some((Some(key), 0)) = row {
        park::release(conn, &key, &format!("sync process {pid}"), &[], now)?;
    }
    Ok(())
}

/// Counters are never negative; SQLite has no unsigned integers.
fn count(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<u64> {
    r.get::<_, i64>(i).map(|v| v.max(0).unsigned_abs())
}

fn report(conn: &Connection, id: ProcessId) -> Result<Option<ProcessReport>> {
    let sql = format!(
        "SELECT {}, version, release_key FROM processes WHERE id = ?1",
        ops::SUMMARY
    );
    let row = conn
        .query_row(&sql, params![id.to_string()], |r| {
            Ok((
                ops::summary(r)?,
                r.get::<_, String>(14)?,
                r.get::<_, Option<String>>(15)?,
            ))
        })
        .optional()
        .map_err(backend)?;
    let Some((summary, version, release_key)) = row else {
        return Ok(None);
    };
    let s = ops::finish_summary(summary)?;
    let mut report = ProcessReport {
        id,
        topology: s.topology,
        version,
        event: s.event,
        state: s.state,
        parent_process_id: s.parent_process_id,
        created_at: s.created_at,
        finished_at: s.finished_at,
        messages: s.messages,
        nodes: IndexMap::new(),
        trash: Vec::new(),
        children: Vec::new(),
        release_key,
    };
    let mut nodes: IndexMap<String, IndexMap<String, u64>> = IndexMap::new();
    let mut st = conn
        .prepare_cached(
            "SELECT node, outcome, count FROM process_node_stats WHERE process_id = ?1 ORDER BY rowid",
        )
        .map_err(backend)?;
    let rows = st
        .query_map(params![id.to_string()], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, count(r, 2)?))
        })
        .map_err(backend)?;
    for row in rows {
        let (node, outcome, count) = row.map_err(backend)?;
        *nodes.entry(node).or_default().entry(outcome).or_default() += count;
    }
    let mut st = conn
        .prepare_cached(
            "SELECT id, node, error, attempt, updated_at FROM messages
             WHERE process_id = ?1 AND state = 'trash' ORDER BY updated_at LIMIT 1000",
        )
        .map_err(backend)?;
    let trash = st
        .query_map(params![id.to_string()], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, Option<String>>(2)?,
                r.get::<_, u32>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })
        .map_err(backend)?
        .map(|row| {
            let (mid, node, error, attempts, at) = row.map_err(backend)?;
            Ok(TrashEntry {
                message_id: parse_id(&mid)?,
                node,
                error,
                attempts,
                at,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let mut st = conn
        .prepare_cached(
            "SELECT id FROM processes WHERE parent_process_id = ?1 ORDER BY created_at, id",
        )
        .map_err(backend)?;
    let children = st
        .query_map(params![id.to_string()], |r| r.get::<_, String>(0))
        .map_err(backend)?
        .map(|r| parse_id::<ProcessId>(&r.map_err(backend)?))
        .collect::<Result<Vec<_>>>()?;
    report.nodes = nodes;
    report.trash = trash;
    report.children = children;
    Ok(Some(report))
}

impl TopologyStore for SqliteStore {
    async fn save_topology(&self, name: &str, version: &str, source: &str) -> Result<()> {
        let (name, version, source) = (name.to_owned(), version.to_owned(), source.to_owned());
        self.inner
            .writer
            .exec(move |conn| {
                conn.execute(
                    "INSERT OR IGNORE INTO topologies (name, version, source, loaded_at) VALUES (?1, ?2, ?3, ?4)",
                    params![name, version, source, mend_core::clock::now_ms()],
                )
                .map_err(backend)?;
                Ok(())
            })
            .await
    }
}

impl ProcessStore for SqliteStore {
    async fn start_process(&self, process: NewProcess) -> Result<()> {
        self.inner
            .writer
            .exec(move |conn| insert_process(conn, &process))
            .await?;
        self.inner.work.notify_one();
        Ok(())
    }

    async fn process_report(&self, id: ProcessId) -> Result<Option<ProcessReport>> {
        self.read(move |conn| report(conn, id)).await
    }
}

impl MessageStore for SqliteStore {
    async fn claim(&self, request: ClaimRequest) -> Result<Vec<Message>> {
        self.inner
            .writer
            .exec(move |conn| claim(conn, &request))
            .await
    }

    async fn complete(&self, completion: Completion) -> Result<Applied> {
        // Outputs, child processes, syncs opened by a park, and releases at a process's end all
        // make work; only a retry (due later) does not.
        let wakes = !matches!(
            completion.disposition,
            Disposition::Retry { .. } | Disposition::Limited { .. }
        );
        let applied = self
            .inner
            .writer
            .exec(move |conn| complete(conn, &completion))
            .await?;
        if wakes {
            self.inner.work.notify_one();
        }
        Ok(applied)
    }

    async fn renew_leases(&self, worker: &str, ids: Vec<MessageId>, until: i64) -> Result<u64> {
        if ids.is_empty() {
            return Ok(0);
        }
        let worker = worker.to_owned();
        let ids = serde_json::to_string(&ids).map_err(corrupt)?;
        self.inner
            .writer
            .exec(move |conn| {
                conn.execute(
                    "UPDATE messages SET lease_until = ?2
                     WHERE id IN (SELECT value FROM json_each(?3)) AND claimed_by = ?1 AND state = 'running'",
                    params![worker, until, ids],
                )
                .map(|n| n as u64)
                .map_err(backend)
            })
            .await
    }

    async fn release_claims(&self, worker: &str) -> Result<u64> {
        let worker = worker.to_owned();
        let n = self
            .inner
            .writer
            .exec(move |conn| {
                conn.execute(
                    "UPDATE messages SET state = 'queued', claimed_by = NULL, lease_until = NULL
                     WHERE claimed_by = ?1 AND state = 'running'",
                    params![worker],
                )
                .map(|n| n as u64)
                .map_err(backend)
            })
            .await?;
        Ok(n)
    }

    async fn recover_expired(&self, now: i64) -> Result<u64> {
        let n = self
            .inner
            .writer
            .exec(move |conn| {
                conn.execute(include_str!("../queries/recover_record.sql"), params![now])
                    .map_err(backend)?;
                conn.execute(include_str!("../queries/recover_requeue.sql"), params![now])
                    .map(|n| n as u64)
                    .map_err(backend)
            })
            .await?;
        if n > 0 {
            tracing::warn!(
                messages = n,
                "recovered messages whose worker stopped renewing its lease"
            );
            self.inner.work.notify_one();
        }
        Ok(n)
    }

    async fn wait_for_work(&self, max: Duration) {
        let _ = tokio::time::timeout(max, self.inner.work.notified()).await;
    }
}

impl ParkStore for SqliteStore {
    async fn release(&self, release: Release) -> Result<Released> {
        let released = self
            .inner
            .writer
            .exec(move |conn| {
                let now = mend_core::clock::now_ms();
                park::release(conn, &release.key, &release.source, &release.cache, now)
            })
            .await?;
        if released.resumed > 0 {
            self.inner.work.notify_one();
        }
        Ok(released)
    }

    async fn expire_parked(&self, now: i64) -> Result<u64> {
        self.inner
            .writer
            .exec(move |conn| {
                let touched = park::expire(conn, now)?;
                let n = touched.len() as u64;
                for pid in touched {
                    finish_if_done(conn, pid, now)?;
                }
                Ok(n)
            })
            .await
    }

    async fn key_pending(&self, key: &str) -> Result<bool> {
        let key = key.to_owned();
        self.read(move |conn| {
            // In flight: marked, and its sync (if any) still running.
            conn.prepare_cached(
                "SELECT 1 FROM park_keys k LEFT JOIN processes p ON p.id = k.sync_process_id
                 WHERE k.key = ?1 AND (p.state IS NULL OR p.state = 'running')",
            )
            .and_then(|mut st| st.exists(params![key]))
            .map_err(backend)
        })
        .await
    }

    async fn key_state(&self, key: &str) -> Result<(bool, i64)> {
        let key = key.to_owned();
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM park_keys k LEFT JOIN processes p ON p.id = k.sync_process_id
                                WHERE k.key = ?1 AND (p.state IS NULL OR p.state = 'running')),
                        coalesce((SELECT count FROM releases WHERE key = ?1), 0)",
            )
            .and_then(|mut st| st.query_row(params![key], |r| Ok((r.get::<_, bool>(0)?, r.get::<_, i64>(1)?))))
            .map_err(backend)
        })
        .await
    }

    async fn parked_keys(&self) -> Result<Vec<ParkedKey>> {
        self.read(|conn| {
            let sql = include_str!("../queries/parked_keys.sql");
            let mut st = conn.prepare_cached(sql).map_err(backend)?;
            let rows = st
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        count(r, 1)?,
                        r.get::<_, Option<i64>>(2)?,
                        r.get::<_, Option<i64>>(3)?,
                        r.get::<_, Option<String>>(4)?,
                    ))
                })
                .map_err(backend)?;
            rows.map(|row| {
                let (key, parked, oldest, since, sync) = row.map_err(backend)?;
                Ok(ParkedKey {
                    key,
                    parked,
                    oldest,
                    sync_pending_since: since,
                    sync_process_id: sync.map(|s| parse_id(&s)).transpose()?,
                })
            })
            .collect()
        })
        .await
    }

    async fn limited(&self) -> Result<Vec<mend_store::LimitedCount>> {
        self.read(|conn| {
            let mut st = conn
                .prepare_cached(
                    "SELECT topology, node, count(*), min(updated_at) FROM messages INDEXED BY messages_ready
                     WHERE state IN ('queued', 'retry', 'limited') AND state = 'limited'
                     GROUP BY topology, node ORDER BY 3 DESC",
                )
                .map_err(backend)?;
            st.query_map([], |r| {
                Ok(mend_store::LimitedCount {
                    topology: r.get(0)?,
                    node: r.get(1)?,
                    count: count(r, 2)?,
                    oldest: r.get(3)?,
                })
            })
            .map_err(backend)?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(backend)
        })
        .await
    }

    async fn cache_get(&self, cache: &str, key: &str, now: i64) -> Result<Option<(bool, i64)>> {
        let (cache, key) = (cache.to_owned(), key.to_owned());
        self.read(move |conn| {
            conn.prepare_cached(
                "SELECT present, expires_at FROM cache_entries WHERE cache = ?1 AND key = ?2 AND expires_at > ?3",
            )
            .and_then(|mut st| st.query_row(params![cache, key, now], |r| Ok((r.get(0)?, r.get(1)?))).optional())
            .map_err(backend)
        })
        .await
    }
}

impl TrashStore for SqliteStore {
    async fn list_trash(&self, filter: TrashFilter) -> Result<Vec<TrashDetail>> {
        self.read(move |conn| trash::list(conn, &filter)).await
    }

    async fn trash_entry(&self, id: MessageId) -> Result<Option<TrashDetail>> {
        self.read(move |conn| trash::get(conn, id)).await
    }

    async fn act_on_trash(&self, id: MessageId, action: TrashAction, actor: &str) -> Result<bool> {
        let actor = actor.to_owned();
        let done = self
            .inner
            .writer
            .exec(move |conn| trash::act(conn, id, &action, &actor, mend_core::clock::now_ms()))
            .await?;
        self.inner.work.notify_one();
        Ok(done)
    }
}

impl OpsStore for SqliteStore {
    async fn list_processes(&self, filter: ProcessFilter) -> Result<Vec<ProcessSummary>> {
        self.read(move |conn| ops::list_processes(conn, &filter))
            .await
    }

    async fn trace(&self, id: ProcessId) -> Result<Option<Trace>> {
        self.read(move |conn| ops::trace(conn, id)).await
    }

    async fn status(&self) -> Result<StoreStatus> {
        self.read(ops::status).await
    }

    async fn heatmap(&self, bucket_ms: i64, buckets: usize, now: i64) -> Result<Heatmap> {
        self.read(move |conn| ops::heatmap(conn, bucket_ms, buckets, now))
            .await
    }

    async fn purge_heatmap(&self, before: i64) -> Result<u64> {
        self.inner
            .writer
            .exec(move |conn| {
                conn.execute(
                    "DELETE FROM node_minutes WHERE minute < ?1",
                    params![before / 60_000],
                )
                .map(|n| n as u64)
                .map_err(backend)
            })
            .await
    }

    async fn edit_trash(
        &self,
        id: MessageId,
        payload: Option<serde_json::Value>,
        headers: Option<mend_core::message::Headers>,
        actor: &str,
    ) -> Result<bool> {
        let actor = actor.to_owned();
        let done = self
            .inner
            .writer
            .exec(move |conn| {
                ops::edit_trash(
                    conn,
                    id,
                    payload.as_ref(),
                    headers.as_ref(),
                    &actor,
                    mend_core::clock::now_ms(),
                )
            })
            .await?;
        self.inner.work.notify_one();
        Ok(done)
    }

    async fn bulk_trash(
        &self,
        filter: TrashFilter,
        action: TrashAction,
        actor: &str,
    ) -> Result<u64> {
        let actor = actor.to_owned();
        let n = self
            .inner
            .writer
            .exec(move |conn| {
                ops::bulk_trash(conn, &filter, &action, &actor, mend_core::clock::now_ms())
            })
            .await?;
        self.inner.work.notify_one();
        Ok(n)
    }

    async fn trash_unknown_nodes(
        &self,
        topology: &str,
        version: &str,
        nodes: Vec<String>,
        older_than: i64,
    ) -> Result<u64> {
        let (topology, version) = (topology.to_owned(), version.to_owned());
        self.inner
            .writer
            .exec(move |conn| {
                ops::trash_unknown_nodes(
                    conn,
                    &topology,
                    &version,
                    &nodes,
                    older_than,
                    mend_core::clock::now_ms(),
                )
            })
            .await
    }

    async fn drop_key(&self, key: &str, actor: &str) -> Result<u64> {
        let (key, actor) = (key.to_owned(), actor.to_owned());
        self.inner
            .writer
            .exec(move |conn| ops::drop_key(conn, &key, &actor, mend_core::clock::now_ms()))
            .await
    }
}

impl ScheduleStore for SqliteStore {
    async fn fire_cron(
        &self,
        topology: &str,
        event: &str,
        slot: i64,
        process: NewProcess,
    ) -> Result<bool> {
        let (topology, event) = (topology.to_owned(), event.to_owned());
        let fired = self
            .inner
            .writer
            .exec(move |conn| {
                let n = conn
                    .execute(
                        "INSERT OR IGNORE INTO cron_fires (topology, event, slot, process_id) VALUES (?1, ?2, ?3, ?4)",
                        params![topology, event, slot, process.id.to_string()],
                    )
                    .map_err(backend)?;
                if n == 1 {
                    insert_process(conn, &process)?;
                }
                Ok(n == 1)
            })
            .await?;
        if fired {
            self.inner.work.notify_one();
        }
        Ok(fired)
    }
}

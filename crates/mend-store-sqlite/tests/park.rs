//! The wait queue of the SQLite store, through its public API against a real file: a release
//! between a message's check and its park resumes it at once (no lost wake-up), concurrent
//! parks on one key open one sync (single-flight), the sync's clean end releases the key, a
//! sync that ends in the trash releases nothing, and parked messages past their deadline
//! expire into the trash. After each scenario, every process's counters agree with its
//! messages.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mend_core::clock::now_ms;
use mend_core::ids::{MessageId, ProcessId};
use mend_core::message::{Context, Headers, Message};
use mend_store::{
    Applied, Attempt, ClaimRequest, Completion, Disposition, MessageStore, NewMessage, NewProcess,
    NodeCapacity, Park, ParkStore, ProcessStore, Release,
};
use mend_store_sqlite::SqliteStore;
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use serde_json::{Value, json};

/// The waiting topology: `fan` → `park` (waits for the category) → `push`.
const PRODUCTS: &str = "products";
/// The sync topology: one node, `create`.
const SYNC: &str = "category-sync";
const WORKER: &str = "worker-1";
const KEY: &str = "category:9";
const CACHE: &str = "category";
const CACHE_TTL: i64 = 60_000;
const RESUME: &str = "push";
const PARK_NODE: &str = "push.category.park";
const EXPIRE_ERROR: &str = "prerequisite category:9 not satisfied within 10m";

struct Db {
    store: SqliteStore,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

fn open() -> Db {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mend.db");
    let store = SqliteStore::open(&path).unwrap();
    Db {
        store,
        path,
        _dir: dir,
    }
}

fn new_message(process: ProcessId, topology: &str, node: &str, payload: Value) -> NewMessage {
    NewMessage {
        id: MessageId::new(),
        process_id: process,
        topology: topology.to_owned(),
        version: "v1".to_owned(),
        node: node.to_owned(),
        payload,
        headers: Headers::default(),
        context: Context::default(),
        parent_id: None,
        available_at: now_ms(),
    }
}

fn new_process(topology: &str, node: &str, payload: Value) -> NewProcess {
    let id = ProcessId::new();
    NewProcess {
        id,
        topology: topology.to_owned(),
        version: "v1".to_owned(),
        event: "run".to_owned(),
        parent_process_id: None,
        parent_message_id: None,
        created_at: now_ms(),
        first: new_message(id, topology, node, payload),
        release_key: None,
    }
}

/// The sync a park of `msg` asks for (the engine builds it like a `send`).
fn sync_for(msg: &Message) -> NewProcess {
    NewProcess {
        parent_process_id: Some(msg.process_id),
        parent_message_id: Some(msg.id),
        ..new_process(SYNC, "create", json!({"id": 9}))
    }
}

async fn claim(store: &SqliteStore, topology: &str, node: &str, max: u32) -> Vec<Message> {
    let now = now_ms();
    store
        .claim(ClaimRequest {
            worker: WORKER.to_owned(),
            now,
            lease_until: now + 600_000,
            limit: max,
            nodes: vec![NodeCapacity {
                topology: topology.to_owned(),
                node: node.to_owned(),
                max,
            }],
        })
        .await
        .unwrap()
}

/// A completion of `msg` as `Inner::finish` fills it, with nothing produced yet.
fn completion(msg: &Message, outcome: &str, disposition: Disposition) -> Completion {
    Completion {
        message_id: msg.id,
        process_id: msg.process_id,
        topology: msg.topology.clone(),
        node: msg.node.clone(),
        worker: WORKER.to_owned(),
        now: now_ms(),
        outcome: outcome.to_owned(),
        disposition,
        outputs: Vec::new(),
        spawned: Vec::new(),
        attempt: None,
        error: None,
        park: None,
        releases: Vec::new(),
        cache: Vec::new(),
    }
}

/// `msg` parks under `KEY` (as a park node's step does), having checked at `checked_at`.
fn parked(msg: &Message, checked_at: i64, deadline: Option<i64>, cache: bool) -> Completion {
    Completion {
        park: Some(Park {
            key: KEY.to_owned(),
            resume_node: RESUME.to_owned(),
            deadline,
            expire_error: EXPIRE_ERROR.to_owned(),
            checked_at,
            sync: Some(sync_for(msg)),
            cache_on_release: cache.then(|| (CACHE.to_owned(), Some(CACHE_TTL))),
            coalesce: true,
            seen_releases: None,
        }),
        ..completion(msg, "parked", Disposition::Parked)
    }
}

async fn apply(store: &SqliteStore, c: Completion) {
    let id = c.message_id;
    assert_eq!(
        store.complete(c).await.unwrap(),
        Applied::Applied,
        "completion of {id}"
    );
}

/// Opens `processes` processes, each with a `fan` step that emits `per` messages at the park
/// node, and claims those messages.
async fn waiting_processes(
    store: &SqliteStore,
    processes: usize,
    per: usize,
) -> (Vec<ProcessId>, Vec<Message>) {
    let mut ids = Vec::new();
    for p in 0..processes {
        let process = new_process(PRODUCTS, "fan", json!({"batch": p}));
        ids.push(process.id);
        store.start_process(process).await.unwrap();
    }
    let fans = claim(store, PRODUCTS, "fan", processes as u32).await;
    assert_eq!(fans.len(), processes);
    for fan in &fans {
        let outputs = (0..per)
            .map(|i| NewMessage {
                parent_id: Some(fan.id),
                ..new_message(fan.process_id, PRODUCTS, PARK_NODE, json!({"id": i}))
            })
            .collect();
        apply(
            store,
            Completion {
                outputs,
                ..completion(fan, "item", Disposition::Done)
            },
        )
        .await;
    }
    let total = (processes * per) as u32;
    let msgs = claim(store, PRODUCTS, PARK_NODE, total).await;
    assert_eq!(msgs.len(), processes * per, "claimed every message to park");
    (ids, msgs)
}

// ---- read-only looks at the file -------------------------------------------------------------

fn ro(path: &Path) -> Connection {
    let c = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c
}

fn scalar(path: &Path, sql: &str, args: impl rusqlite::Params) -> i64 {
    ro(path)
        .query_row(sql, args, |r| r.get(0))
        .unwrap_or_else(|e| panic!("{e}: {sql}"))
}

#[derive(Debug, PartialEq)]
struct MessageRow {
    state: String,
    node: String,
    park_key: Option<String>,
    resume_node: Option<String>,
    parked_until: Option<i64>,
    claimed_by: Option<String>,
    error: Option<String>,
}

fn message(path: &Path, id: MessageId) -> MessageRow {
    ro(path)
        .query_row(
            "SELECT state, node, park_key, resume_node, parked_until, claimed_by, error
             FROM messages WHERE id = ?1",
            params![id.to_string()],
            |r| {
                Ok(MessageRow {
                    state: r.get(0)?,
                    node: r.get(1)?,
                    park_key: r.get(2)?,
                    resume_node: r.get(3)?,
                    parked_until: r.get(4)?,
                    claimed_by: r.get(5)?,
                    error: r.get(6)?,
                })
            },
        )
        .unwrap()
}

/// A process row's state and counters.
#[derive(Debug, PartialEq)]
struct Counters {
    state: String,
    total: i64,
    open: i64,
    parked: i64,
    done: i64,
    filtered: i64,
    trash: i64,
}

fn counters(path: &Path, id: ProcessId) -> Counters {
    ro(path)
        .query_row(
            "SELECT state, total, open, parked, done, filtered, trash FROM processes WHERE id = ?1",
            params![id.to_string()],
            |r| {
                Ok(Counters {
                    state: r.get(0)?,
                    total: r.get(1)?,
                    open: r.get(2)?,
                    parked: r.get(3)?,
                    done: r.get(4)?,
                    filtered: r.get(5)?,
                    trash: r.get(6)?,
                })
            },
        )
        .unwrap()
}

fn sync_processes(path: &Path) -> Vec<ProcessId> {
    let conn = ro(path);
    let mut st = conn
        .prepare("SELECT id FROM processes WHERE release_key = ?1 ORDER BY id")
        .unwrap();
    st.query_map(params![KEY], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|r| r.unwrap().parse().unwrap())
        .collect()
}

fn park_key_row(path: &Path) -> Option<(Option<String>, Option<String>, Option<i64>)> {
    ro(path)
        .query_row(
            "SELECT sync_process_id, cache, cache_ttl_ms FROM park_keys WHERE key = ?1",
            params![KEY],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()
        .unwrap()
}

/// The last release of `KEY`: (released_at, resumed, source, count).
fn release_row(path: &Path) -> Option<(i64, i64, String, i64)> {
    ro(path)
        .query_row(
            "SELECT released_at, resumed, source, count FROM releases WHERE key = ?1",
            params![KEY],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()
        .unwrap()
}

/// For every process: `total = open + done + filtered + trash`, `open` counts its messages in
/// queued/running/retry/parked, `parked` those parked, each end counter those in its end state,
/// `total` every message, and the process is done exactly when nothing is open.
fn assert_accounting(path: &Path) {
    let conn = ro(path);
    // (id, state, 6 counters, 6 message counts)
    let mut st = conn
        .prepare(
            "SELECT p.id, p.state, p.total, p.open, p.parked, p.done, p.filtered, p.trash,
                    (SELECT count(*) FROM messages m WHERE m.process_id = p.id),
                    (SELECT count(*) FROM messages m WHERE m.process_id = p.id
                        AND m.state IN ('queued', 'running', 'retry', 'parked')),
                    (SELECT count(*) FROM messages m WHERE m.process_id = p.id AND m.state = 'parked'),
                    (SELECT count(*) FROM messages m WHERE m.process_id = p.id AND m.state = 'done'),
                    (SELECT count(*) FROM messages m WHERE m.process_id = p.id AND m.state = 'filtered'),
                    (SELECT count(*) FROM messages m WHERE m.process_id = p.id AND m.state = 'trash')
             FROM processes p",
        )
        .unwrap();
    let rows: Vec<(String, String, [i64; 12])> = st
        .query_map([], |r| {
            let mut v = [0i64; 12];
            for (i, slot) in v.iter_mut().enumerate() {
                *slot = r.get(i + 2)?;
            }
            Ok((r.get(0)?, r.get(1)?, v))
        })
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert!(!rows.is_empty());
    for (id, state, v) in rows {
        let [
            total,
            open,
            parked,
            done,
            filtered,
            trash,
            m_all,
            m_open,
            m_parked,
            m_done,
            m_filtered,
            m_trash,
        ] = v;
        let what = format!(
            "process {id} ({state}): total {total}, open {open}, parked {parked}, done {done}, \
             filtered {filtered}, trash {trash}; messages: {m_all} in all, {m_open} open, \
             {m_parked} parked, {m_done} done, {m_filtered} filtered, {m_trash} trash"
        );
        assert_eq!(total, open + done + filtered + trash, "{what}");
        assert_eq!(open, m_open, "open counts the open messages: {what}");
        assert_eq!(
            parked, m_parked,
            "parked counts the parked messages: {what}"
        );
        assert_eq!(total, m_all, "total counts every message: {what}");
        assert_eq!(
            (done, filtered, trash),
            (m_done, m_filtered, m_trash),
            "end counters: {what}"
        );
        assert_eq!(
            state == "done",
            open == 0,
            "a process is done exactly when nothing is open: {what}"
        );
    }
}

// ---- a: lost wake-up -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_counted_after_an_in_flight_answer_resumes_the_message() {
    let db = open();
    let (store, path) = (&db.store, db.path.as_path());
    let (_, msgs) = waiting_processes(store, 1, 1).await;
    // The check read "a sync is in flight" and saw 0 releases; the sync's release committed
    // right after that read, with a release time earlier than the check's.
    let (pending, seen) = store.key_state(KEY).await.unwrap();
    assert_eq!((pending, seen), (false, 0));
    store
        .release(Release {
            key: KEY.to_owned(),
            source: "sync".to_owned(),
            cache: Vec::new(),
        })
        .await
        .unwrap();
    let mut late = parked(&msgs[0], now_ms() + 60_000, Some(now_ms() + 600_000), false);
    if let Some(p) = late.park.as_mut() {
        p.seen_releases = Some(seen);
    }
    apply(store, late).await;
    let row = message(path, msgs[0].id);
    assert_eq!(
        (row.state.as_str(), row.node.as_str()),
        ("queued", RESUME),
        "{row:?}"
    );
    assert_eq!(
        sync_processes(path),
        Vec::new(),
        "no second sync for a released key"
    );
    assert_accounting(path);
}

#[tokio::test]
async fn a_release_after_the_check_resumes_the_message_instead_of_parking_it() {
    let db = open();
    let (store, path) = (&db.store, db.path.as_path());
    // Three messages of one process reach the park node: A and C checked before (or in the
    // same millisecond as) the release, B after it.
    let (procs, msgs) = waiting_processes(store, 1, 3).await;
    let [a, c, b] = [&msgs[0], &msgs[1], &msgs[2]];
    let process = procs[0];

    let t0 = now_ms();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let released = store
        .release(Release {
            key: KEY.to_owned(),
            source: "operator".to_owned(),
            cache: Vec::new(),
        })
        .await
        .unwrap();
    assert_eq!((released.resumed, released.was_pending), (0, false));
    let (t1, resumed, source, times) = release_row(path).expect("the release is recorded");
    assert!(t1 > t0, "release at {t1} after the check at {t0}");
    assert_eq!((resumed, source.as_str(), times), (0, "operator", 1));

    // A checked at T0 < T1 and parks now: it must resume at once.
    apply(store, parked(a, t0, Some(now_ms() + 600_000), true)).await;
    let row = message(path, a.id);
    assert_eq!(
        (row.state.as_str(), row.node.as_str()),
        ("queued", RESUME),
        "A resumes at the park's resume node: {row:?}"
    );
    assert_eq!((&row.park_key, &row.claimed_by), (&None, &None), "{row:?}");
    assert_eq!(park_key_row(path), None, "no key marked pending");
    assert!(!store.key_pending(KEY).await.unwrap());
    assert_eq!(sync_processes(path), Vec::new(), "no sync opened");
    assert_eq!(
        scalar(path, "SELECT count(*) FROM processes", []),
        1,
        "no process opened at all"
    );
    assert!(store.parked_keys().await.unwrap().is_empty());
    let k = counters(path, process);
    assert_eq!((k.open, k.parked, k.state.as_str()), (3, 0, "running"));
    assert_accounting(path);

    // C checked in the very millisecond of the release: it cannot know which came first, so
    // it must resume too.
    apply(store, parked(c, t1, Some(now_ms() + 600_000), true)).await;
    let row = message(path, c.id);
    assert_eq!(
        (row.state.as_str(), row.node.as_str()),
        ("queued", RESUME),
        "checked_at == released_at resumes: {row:?}"
    );
    assert_eq!(sync_processes(path), Vec::new());

    // B checked after the release: it parks normally, and its park opens the sync.
    let deadline = now_ms() + 600_000;
    apply(store, parked(b, t1 + 1, Some(deadline), false)).await;
    let row = message(path, b.id);
    assert_eq!(
        row,
        MessageRow {
            state: "parked".into(),
            node: PARK_NODE.into(),
            park_key: Some(KEY.into()),
            resume_node: Some(RESUME.into()),
            parked_until: Some(deadline),
            claimed_by: None,
            error: Some(EXPIRE_ERROR.into()),
        }
    );
    let syncs = sync_processes(path);
    assert_eq!(syncs.len(), 1, "B's park opened the sync");
    let (sync_id, cache, ttl) = park_key_row(path).expect("the key is pending");
    assert_eq!(sync_id, Some(syncs[0].to_string()));
    assert_eq!(
        (cache, ttl),
        (None, None),
        "B asked for no cache on release"
    );
    assert!(store.key_pending(KEY).await.unwrap());
    let report = store.process_report(syncs[0]).await.unwrap().unwrap();
    assert_eq!(report.release_key.as_deref(), Some(KEY));
    assert_eq!(report.parent_process_id, Some(process));
    assert_eq!(report.topology, SYNC);
    let keys = store.parked_keys().await.unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(
        (
            keys[0].key.as_str(),
            keys[0].parked,
            keys[0].sync_process_id
        ),
        (KEY, 1, Some(syncs[0]))
    );
    let k = counters(path, process);
    assert_eq!((k.open, k.parked), (3, 1), "{k:?}");
    // The park node's step is recorded once per message, whether it parked or resumed.
    assert_eq!(
        scalar(
            path,
            "SELECT count FROM process_node_stats WHERE process_id = ?1 AND node = ?2 AND outcome = 'parked'",
            params![process.to_string(), PARK_NODE],
        ),
        3
    );
    assert_accounting(path);

    // A and C are ready to run at once at the resume node; B is not.
    let ready = claim(store, PRODUCTS, RESUME, 10).await;
    let ready: HashSet<MessageId> = ready.iter().map(|m| m.id).collect();
    assert_eq!(ready, HashSet::from([a.id, c.id]));

    // The sync's clean end releases B; no cache is written, since B's park asked for none.
    let sync_msg = claim(store, SYNC, "create", 10).await;
    assert_eq!(sync_msg.len(), 1);
    apply(store, completion(&sync_msg[0], "ok", Disposition::Done)).await;
    let row = message(path, b.id);
    assert_eq!((row.state.as_str(), row.node.as_str()), ("queued", RESUME));
    assert_eq!(
        store
            .cache_get(CACHE, KEY, now_ms())
            .await
            .unwrap()
            .map(|(present, _)| present),
        None,
        "no cache entry without cache_on_release"
    );
    let (_, resumed, _, times) = release_row(path).unwrap();
    assert_eq!((resumed, times), (1, 2));
    assert_accounting(path);
}

// ---- b, c, d: single-flight, release on the sync's end, no release on a failed sync ----------

const HERD_PROCESSES: usize = 5;
const HERD_PER: usize = 10;
const HERD: usize = HERD_PROCESSES * HERD_PER;

struct Herd {
    waiting: Vec<ProcessId>,
    messages: Vec<MessageId>,
    sync: ProcessId,
}

/// 50 messages of 5 processes park on `KEY` at once, each asking for its own sync.
async fn herd(db: &Db) -> Herd {
    let (store, path) = (&db.store, db.path.as_path());
    let (waiting, msgs) = waiting_processes(store, HERD_PROCESSES, HERD_PER).await;
    let checked_at = now_ms();
    let deadline = checked_at + 600_000;
    let mut tasks = Vec::new();
    let mut offered = HashSet::new();
    for m in &msgs {
        let c = parked(m, checked_at, Some(deadline), true);
        offered.insert(c.park.as_ref().unwrap().sync.as_ref().unwrap().id);
        let store = store.clone();
        tasks.push(tokio::spawn(async move { store.complete(c).await }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), Applied::Applied);
    }

    // Exactly one sync, opened by one of the parks, with the key to release.
    let syncs = sync_processes(path);
    assert_eq!(syncs.len(), 1, "single-flight: one sync for {HERD} parks");
    let sync = syncs[0];
    assert!(offered.contains(&sync), "the sync is one of those offered");
    assert_eq!(
        scalar(
            path,
            "SELECT count(*) FROM processes WHERE topology = ?1",
            params![SYNC]
        ),
        1,
        "no other sync process was written"
    );
    let report = store.process_report(sync).await.unwrap().unwrap();
    assert_eq!(report.release_key.as_deref(), Some(KEY));
    assert!(!report.is_done());
    assert!(waiting.contains(&report.parent_process_id.unwrap()));
    assert_eq!(
        scalar(
            path,
            "SELECT count(*) FROM messages WHERE process_id = ?1 AND node = 'create' AND state = 'queued'",
            params![sync.to_string()]
        ),
        1,
        "the sync's first message waits to run"
    );

    // Every message parked under the key.
    let ids: Vec<MessageId> = msgs.iter().map(|m| m.id).collect();
    for id in &ids {
        let row = message(path, *id);
        assert_eq!(
            (
                row.state.as_str(),
                row.park_key.as_deref(),
                row.resume_node.as_deref()
            ),
            ("parked", Some(KEY), Some(RESUME)),
            "{id}: {row:?}"
        );
    }
    assert_eq!(
        scalar(
            path,
            "SELECT count(*) FROM messages WHERE state = 'parked'",
            []
        ),
        HERD as i64
    );
    let (sync_id, cache, ttl) = park_key_row(path).expect("the key is pending");
    assert_eq!(sync_id, Some(sync.to_string()));
    assert_eq!((cache.as_deref(), ttl), (Some(CACHE), Some(CACHE_TTL)));
    assert!(store.key_pending(KEY).await.unwrap());
    let keys = store.parked_keys().await.unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert_eq!(
        (
            keys[0].key.as_str(),
            keys[0].parked,
            keys[0].sync_process_id
        ),
        (KEY, HERD as u64, Some(sync))
    );
    assert!(keys[0].sync_pending_since.is_some() && keys[0].oldest.is_some());
    for p in &waiting {
        let k = counters(path, *p);
        assert_eq!(
            (k.state.as_str(), k.total, k.open, k.parked, k.done),
            (
                "running",
                1 + HERD_PER as i64,
                HERD_PER as i64,
                HERD_PER as i64,
                1
            ),
            "{p}"
        );
    }
    assert_eq!(release_row(path), None, "nothing released yet");
    assert_accounting(path);
    Herd {
        waiting,
        messages: ids,
        sync,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_fifty_concurrent_parks_on_one_key_open_exactly_one_sync() {
    let db = open();
    let h = herd(&db).await;
    assert_eq!(h.messages.len(), HERD);
    assert_eq!(h.waiting.len(), HERD_PROCESSES);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_the_syncs_clean_end_releases_every_parked_message() {
    let db = open();
    let (store, path) = (&db.store, db.path.as_path());
    let h = herd(&db).await;

    let sync_msg = claim(store, SYNC, "create", 10).await;
    assert_eq!(sync_msg.len(), 1);
    let before = now_ms();
    apply(store, completion(&sync_msg[0], "ok", Disposition::Done)).await;

    let report = store.process_report(h.sync).await.unwrap().unwrap();
    assert!(report.is_done(), "{report:#?}");
    assert_eq!(
        (
            report.messages.total,
            report.messages.done,
            report.messages.open
        ),
        (1, 1, 0)
    );
    let (at, resumed, source, times) = release_row(path).expect("the key was released");
    assert!(at >= before);
    assert_eq!(
        (resumed, source, times),
        (HERD as i64, format!("sync process {}", h.sync), 1)
    );
    assert_eq!(park_key_row(path), None, "the pending mark is cleared");
    assert_eq!(scalar(path, "SELECT count(*) FROM park_keys", []), 0);
    assert!(!store.key_pending(KEY).await.unwrap());
    assert!(store.parked_keys().await.unwrap().is_empty());
    for id in &h.messages {
        let row = message(path, *id);
        assert_eq!(
            row,
            MessageRow {
                state: "queued".into(),
                node: RESUME.into(),
                // Kept, so the sync's trace can list the messages it unblocked.
                park_key: Some(KEY.into()),
                resume_node: None,
                parked_until: None,
                claimed_by: None,
                error: None,
            },
            "{id}"
        );
    }
    for p in &h.waiting {
        let k = counters(path, *p);
        assert_eq!(
            (k.state.as_str(), k.open, k.parked),
            ("running", HERD_PER as i64, 0),
            "{p}"
        );
    }
    // The park asked to mark the key present in its cache on release.
    let now = now_ms();
    assert_eq!(
        store
            .cache_get(CACHE, KEY, now)
            .await
            .unwrap()
            .map(|(present, _)| present),
        Some(true)
    );
    assert_eq!(
        store
            .cache_get(CACHE, KEY, now + CACHE_TTL + 1_000)
            .await
            .unwrap()
            .map(|(present, _)| present),
        None,
        "the entry expires after the park's TTL"
    );
    assert_accounting(path);

    // The released messages run at the resume node, and every process ends.
    let ready = claim(store, PRODUCTS, RESUME, 100).await;
    assert_eq!(
        ready.iter().map(|m| m.id).collect::<HashSet<_>>(),
        h.messages.iter().copied().collect::<HashSet<_>>()
    );
    for m in &ready {
        apply(store, completion(m, "ok", Disposition::Done)).await;
    }
    for p in &h.waiting {
        let k = counters(path, *p);
        assert_eq!(
            (k.state.as_str(), k.open, k.done, k.trash),
            ("done", 0, 1 + HERD_PER as i64, 0),
            "{p}"
        );
    }
    assert_accounting(path);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d_a_sync_that_ends_in_the_trash_releases_nothing() {
    let db = open();
    let (store, path) = (&db.store, db.path.as_path());
    let h = herd(&db).await;

    let sync_msg = claim(store, SYNC, "create", 10).await;
    assert_eq!(sync_msg.len(), 1);
    let now = now_ms();
    let error = "gave up after 1 attempts: HTTP 500 from category-sync".to_owned();
    apply(
        store,
        Completion {
            error: Some(error.clone()),
            attempt: Some(Attempt {
                attempt: 1,
                at: now,
                duration_ms: 1,
                outcome: "retry".into(),
                status: Some(500),
                error: Some(error.clone()),
                response_excerpt: None,
            }),
            ..completion(&sync_msg[0], "retry", Disposition::Trash)
        },
    )
    .await;

    let report = store.process_report(h.sync).await.unwrap().unwrap();
    assert!(report.is_done(), "the sync ended: {report:#?}");
    assert_eq!((report.messages.trash, report.messages.open), (1, 0));
    assert_eq!(report.trash[0].error.as_deref(), Some(error.as_str()));
    assert_eq!(release_row(path), None, "nothing released");
    // Its waiters stay parked under the key (the row stays, for `mend parked`), but nothing
    // is in flight any more: the next message that needs the key asks again and opens a new
    // sync instead of joining a dead one.
    assert!(
        !store.key_pending(KEY).await.unwrap(),
        "a key whose sync ended is not in flight"
    );
    assert_eq!(
        park_key_row(path).map(|r| r.0),
        Some(Some(h.sync.to_string()))
    );
    for id in &h.messages {
        assert_eq!(message(path, *id).state, "parked", "{id}");
    }
    let keys = store.parked_keys().await.unwrap();
    assert_eq!(
        keys.iter()
            .map(|k| (k.key.as_str(), k.parked))
            .collect::<Vec<_>>(),
        vec![(KEY, HERD as u64)]
    );
    for p in &h.waiting {
        let k = counters(path, *p);
        assert_eq!(
            (k.state.as_str(), k.open, k.parked),
            ("running", HERD_PER as i64, HERD_PER as i64),
            "{p}"
        );
    }
    assert_eq!(
        store
            .cache_get(CACHE, KEY, now_ms())
            .await
            .unwrap()
            .map(|(present, _)| present),
        None,
        "no cache entry"
    );
    assert!(
        claim(store, PRODUCTS, RESUME, 100).await.is_empty(),
        "nothing is ready at the resume node"
    );
    assert_accounting(path);

    // An operator's release still works: every message resumes, the mark and cache follow.
    let released = store
        .release(Release {
            key: KEY.to_owned(),
            source: "operator".to_owned(),
            cache: Vec::new(),
        })
        .await
        .unwrap();
    assert_eq!(
        (released.resumed, released.was_pending),
        (HERD as u64, true)
    );
    assert!(!store.key_pending(KEY).await.unwrap());
    assert_eq!(
        store
            .cache_get(CACHE, KEY, now_ms())
            .await
            .unwrap()
            .map(|(present, _)| present),
        Some(true)
    );
    assert_eq!(
        scalar(
            path,
            "SELECT count(*) FROM messages WHERE state = 'queued' AND node = ?1",
            params![RESUME]
        ),
        HERD as i64
    );
    assert_accounting(path);
}

// ---- e: expire -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e_a_parked_message_past_its_deadline_expires_into_the_trash() {
    let db = open();
    let (store, path) = (&db.store, db.path.as_path());
    // Three single-message processes park under the key: one deadline already passed, one in
    // the future, one without a deadline.
    let now = now_ms();
    let deadlines = [Some(now - 1), Some(now + 600_000), None];
    let mut procs = Vec::new();
    let mut ids = Vec::new();
    for (i, deadline) in deadlines.into_iter().enumerate() {
        let p = new_process(PRODUCTS, PARK_NODE, json!({"id": i}));
        procs.push(p.id);
        ids.push(p.first.id);
        store.start_process(p).await.unwrap();
        let m = claim(store, PRODUCTS, PARK_NODE, 1).await;
        assert_eq!(m.len(), 1);
        apply(store, parked(&m[0], now_ms(), deadline, false)).await;
    }
    let syncs = sync_processes(path);
    assert_eq!(syncs.len(), 1);
    assert_eq!(
        counters(path, procs[0]),
        Counters {
            state: "running".into(),
            total: 1,
            open: 1,
            parked: 1,
            done: 0,
            filtered: 0,
            trash: 0,
        }
    );
    assert_accounting(path);

    let expired = store.expire_parked(now_ms()).await.unwrap();
    assert_eq!(expired, 1, "only the message past its deadline");
    let row = message(path, ids[0]);
    assert_eq!(row.state, "trash", "{row:?}");
    assert_eq!(row.error.as_deref(), Some(EXPIRE_ERROR));
    assert_eq!(
        counters(path, procs[0]),
        Counters {
            state: "done".into(),
            total: 1,
            open: 0,
            parked: 0,
            done: 0,
            filtered: 0,
            trash: 1,
        }
    );
    let report = store.process_report(procs[0]).await.unwrap().unwrap();
    assert!(report.is_done() && report.finished_at.is_some());
    assert_eq!(report.trash.len(), 1);
    assert_eq!(report.trash[0].error.as_deref(), Some(EXPIRE_ERROR));
    for (p, id) in procs[1..].iter().zip(&ids[1..]) {
        assert_eq!(message(path, *id).state, "parked");
        let k = counters(path, *p);
        assert_eq!((k.state.as_str(), k.open, k.parked), ("running", 1, 1));
    }
    // The others still wait, behind the same sync.
    let keys = store.parked_keys().await.unwrap();
    assert_eq!(
        keys.iter()
            .map(|k| (k.key.as_str(), k.parked, k.sync_process_id))
            .collect::<Vec<_>>(),
        vec![(KEY, 2, Some(syncs[0]))]
    );
    // A second sweep finds nothing more.
    assert_eq!(store.expire_parked(now_ms()).await.unwrap(), 0);
    assert_accounting(path);
}

//! Crash safety: `mend serve` is killed with SIGKILL in the middle of a run of 2,500 HTTP
//! deliveries, started again on the same store, and must finish the run with every item worked
//! exactly once in the store (the HTTP target may see a repeat: delivery is at-least-once, and
//! the idempotency key lets it drop one).

mod common;

use std::collections::HashMap;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use rusqlite::{Connection, params};
use serde_json::{Value, json};

use common::{Mend, TIMEOUT, free_port, get_json, open_store, wait_healthy};

/// Items in the run: one HTTP delivery each.
const ITEMS: i64 = 2_500;
/// Deliveries committed before the kill.
const KILL_AFTER: i64 = 300;
/// Latency of the test HTTP server per request, so the run lasts long enough to be killed.
const LATENCY: Duration = Duration::from_millis(3);
const POLL: Duration = Duration::from_millis(100);
/// The node names of the topology below.
const SPLIT_NODE: &str = "items";
const HTTP_NODE: &str = "deliver";
const LAST_NODE: &str = "finish";

/// What the test HTTP server received, recorded when each request arrives.
#[derive(Default)]
struct Seen {
    requests: u64,
    by_key: HashMap<String, u32>,
    by_n: HashMap<i64, u32>,
    without_key: u64,
}

type Shared = Arc<Mutex<Seen>>;

async fn receive_item(State(seen): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let n = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v.get("n").and_then(Value::as_i64));
    {
        let mut seen = seen.lock().unwrap();
        seen.requests += 1;
        match key {
            Some(k) => *seen.by_key.entry(k).or_default() += 1,
            None => seen.without_key += 1,
        }
        if let Some(n) = n {
            *seen.by_n.entry(n).or_default() += 1;
        }
    }
    tokio::time::sleep(LATENCY).await;
    if n.is_some() {
        StatusCode::OK
    } else {
        StatusCode::BAD_REQUEST
    }
}

fn topology(target: &str) -> String {
    format!(
        r#"name: crash
systems:
  target:
    url: "{target}"
    timeout: 10s
events:
  run: {SPLIT_NODE}
nodes:
  {SPLIT_NODE}:
    split:
      items: .items
      chunk: 200
    next: {HTTP_NODE}
  {HTTP_NODE}:
    http:
      system: target
      post: /items
      idempotency_header: Idempotency-Key
    retry: {{ attempts: 10, base: 100ms, max: 1s }}
    next: {{ ok: {LAST_NODE} }}
  {LAST_NODE}:
    map: "."
"#
    )
}

fn count(conn: &Connection, sql: &str, process: &str) -> i64 {
    conn.query_row(sql, params![process], |r| r.get(0))
        .unwrap_or_else(|e| panic!("query failed: {e}\n{sql}"))
}

fn done_at(conn: &Connection, process: &str, node: &str) -> i64 {
    conn.query_row(
        "SELECT count(*) FROM messages WHERE process_id = ?1 AND node = ?2 AND state = 'done'",
        params![process, node],
        |r| r.get(0),
    )
    .unwrap()
}

#[test]
fn a_killed_server_finishes_the_run_after_a_restart_with_every_step_applied_once() {
    let test_start = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // The HTTP target, in-process.
    let seen: Shared = Arc::default();
    let target_addr = {
        let app = Router::new()
            .route("/items", post(receive_item))
            .with_state(seen.clone());
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind the test HTTP server");
        let addr = listener.local_addr().unwrap();
        rt.spawn(async move { axum::serve(listener, app).await });
        addr
    };

    let dir = tempfile::tempdir().unwrap();
    let topologies = dir.path().join("topologies");
    std::fs::create_dir(&topologies).unwrap();
    std::fs::write(
        topologies.join("crash.yaml"),
        topology(&format!("http://{target_addr}")),
    )
    .unwrap();
    let store = dir.path().join("mend.db");

    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    // No pooled connections: the second mend listens on the same port as the killed one.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    // First run: start the process, let it deliver some items, then kill it.
    let mut first = Mend::start(dir.path(), port, "serve-1.log", &["--workers", "16"]);
    wait_healthy(&rt, &client, &base, &mut first);
    let items: Vec<Value> = (0..ITEMS).map(|n| json!({ "n": n })).collect();
    let body = json!({ "items": items }).to_string();
    let answer: Value = rt.block_on(async {
        let resp = client
            .post(format!("{base}/api/topologies/crash/events/run"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("send the start event");
        assert_eq!(resp.status().as_u16(), 202, "start event not accepted");
        serde_json::from_slice(&resp.bytes().await.unwrap()).unwrap()
    });
    let process = answer["process_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no process id in {answer}"))
        .to_owned();
    let run_start = Instant::now();

    let conn = open_store(&store);
    let delivered_at_kill = loop {
        first.assert_running();
        let n = done_at(&conn, &process, HTTP_NODE);
        if n >= KILL_AFTER {
            first.kill();
            break n;
        }
        assert!(
            run_start.elapsed() < TIMEOUT,
            "only {n} deliveries after {TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let killed_after = run_start.elapsed();

    // The crash left the process unfinished, with messages claimed by the dead engine.
    let state: String = conn
        .query_row(
            "SELECT state FROM processes WHERE id = ?1",
            params![process],
            |r| r.get(0),
        )
        .unwrap();
    let delivered = done_at(&conn, &process, HTTP_NODE);
    let orphaned = count(
        &conn,
        "SELECT count(*) FROM messages WHERE process_id = ?1 AND state = 'running'",
        &process,
    );
    let requests_at_kill = seen.lock().unwrap().requests;
    eprintln!(
        "killed mend after {killed_after:?}: {delivered} items delivered (saw {delivered_at_kill} \
         before the kill), {orphaned} messages left running, {requests_at_kill} requests received"
    );
    assert_eq!(state, "running", "the process must not be done at the kill");
    assert!(
        delivered < ITEMS,
        "the run finished before the kill ({delivered} deliveries); make it slower"
    );

    // Second run on the same store: the dead engine's claims come back after their lease.
    let restart = Instant::now();
    let mut second = Mend::start(dir.path(), port, "serve-2.log", &["--workers", "16"]);
    wait_healthy(&rt, &client, &base, &mut second);
    let report = loop {
        second.assert_running();
        if let Some(r) = get_json(&rt, &client, &format!("{base}/api/processes/{process}"))
            && r["state"] == "done"
        {
            break r;
        }
        assert!(
            restart.elapsed() < TIMEOUT,
            "the process is not done {TIMEOUT:?} after the restart; store: {} deliveries",
            done_at(&conn, &process, HTTP_NODE)
        );
        std::thread::sleep(POLL);
    };
    let finished_after = restart.elapsed();
    second.kill();
    drop(conn);

    // Everything below is read from the store.
    let conn = open_store(&store);
    for node in [HTTP_NODE, LAST_NODE] {
        let (rows, distinct, min, max): (i64, i64, i64, i64) = conn
            .query_row(
                "SELECT count(*), count(DISTINCT json_extract(payload, '$.n')),
                        min(json_extract(payload, '$.n')), max(json_extract(payload, '$.n'))
                 FROM messages WHERE process_id = ?1 AND node = ?2 AND state = 'done'",
                params![process, node],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap();
        assert_eq!(
            (rows, distinct, min, max),
            (ITEMS, ITEMS, 0, ITEMS - 1),
            "node `{node}`: (done messages, distinct items, min n, max n)"
        );
        let all: i64 = conn
            .query_row(
                "SELECT count(*) FROM messages WHERE process_id = ?1 AND node = ?2",
                params![process, node],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(all, ITEMS, "node `{node}`: messages in any state");
    }
    let unfinished = count(
        &conn,
        "SELECT count(*) FROM messages WHERE state IN ('queued', 'running', 'retry') OR process_id <> ?1",
        &process,
    );
    assert_eq!(
        unfinished, 0,
        "messages left queued/running/retry (or of another process)"
    );
    let not_done = count(
        &conn,
        "SELECT count(*) FROM messages WHERE process_id = ?1 AND state <> 'done'",
        &process,
    );
    assert_eq!(not_done, 0, "messages filtered or in the trash");
    let split_steps = count(
        &conn,
        &format!("SELECT count(*) FROM messages WHERE process_id = ?1 AND node = '{SPLIT_NODE}'"),
        &process,
    );
    let chunks = (ITEMS + 199) / 200;
    assert_eq!(split_steps, chunks, "split steps (one per chunk of 200)");

    let (state, total, open, done, filtered, trash, finished_at): (
        String,
        i64,
        i64,
        i64,
        i64,
        i64,
        Option<i64>,
    ) = conn
        .query_row(
            "SELECT state, total, open, done, filtered, trash, finished_at FROM processes WHERE id = ?1",
            params![process],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            },
        )
        .unwrap();
    let messages = count(
        &conn,
        "SELECT count(*) FROM messages WHERE process_id = ?1",
        &process,
    );
    eprintln!(
        "process row: state {state}, total {total}, open {open}, done {done}, filtered {filtered}, trash {trash}; {messages} message rows"
    );
    assert_eq!(state, "done");
    assert!(finished_at.is_some(), "a done process has finished_at");
    assert_eq!(
        (open, trash, filtered),
        (0, 0, 0),
        "(open, trash, filtered)"
    );
    assert_eq!(
        total,
        done + filtered + trash + open,
        "total = done + filtered + trash + open"
    );
    assert_eq!(total, messages, "total counts every message of the process");
    assert_eq!(
        messages,
        chunks + 2 * ITEMS,
        "split steps + deliveries + finishes"
    );

    let mut st = conn
        .prepare("SELECT node, outcome, count FROM process_node_stats WHERE process_id = ?1 ORDER BY node, outcome")
        .unwrap();
    let stats: HashMap<(String, String), i64> = st
        .query_map(params![process], |r| {
            Ok(((r.get(0)?, r.get(1)?), r.get(2)?))
        })
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    eprintln!("node stats: {stats:?}");
    let stat = |node: &str, outcome: &str| {
        stats
            .get(&(node.to_owned(), outcome.to_owned()))
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(
        stat(HTTP_NODE, "ok"),
        ITEMS,
        "`{HTTP_NODE}` ok steps recorded"
    );
    assert_eq!(
        stat(LAST_NODE, "ok"),
        ITEMS,
        "`{LAST_NODE}` ok steps recorded"
    );
    assert_eq!(
        stat(SPLIT_NODE, "item"),
        chunks,
        "`{SPLIT_NODE}` item steps recorded"
    );
    // Retries (a transient HTTP error) are allowed: the message still ends once, done.
    let retries: i64 = stats
        .iter()
        .filter(|((_, o), _)| o != "ok" && o != "item")
        .map(|(_, c)| c)
        .sum();
    eprintln!("retried steps: {retries}");

    // The API's report agrees with the store.
    assert_eq!(report["messages"]["total"], json!(total));
    assert_eq!(report["nodes"][HTTP_NODE]["ok"], json!(ITEMS));

    // The target saw every item at least once, under one idempotency key per item.
    let seen = seen.lock().unwrap();
    let repeats_by_key = seen.by_key.values().filter(|&&c| c > 1).count();
    let duplicates = seen.requests - seen.by_key.len() as u64;
    eprintln!(
        "target: {} requests, {} distinct idempotency keys, {} distinct items; \
         {duplicates} duplicate deliveries ({repeats_by_key} keys delivered more than once)",
        seen.requests,
        seen.by_key.len(),
        seen.by_n.len()
    );
    assert_eq!(seen.without_key, 0, "requests without an Idempotency-Key");
    assert_eq!(seen.by_n.len() as i64, ITEMS, "distinct items delivered");
    assert!(seen.by_n.keys().all(|n| (0..ITEMS).contains(n)));
    assert_eq!(
        seen.by_key.len() as i64,
        ITEMS,
        "one idempotency key (message id) per item"
    );
    let key_repeats: u64 = seen.by_key.values().map(|&c| u64::from(c) - 1).sum();
    let item_repeats: u64 = seen.by_n.values().map(|&c| u64::from(c) - 1).sum();
    assert_eq!(
        key_repeats, item_repeats,
        "an item was repeated only under its own key"
    );

    eprintln!(
        "crash test: killed after {killed_after:?}, done {finished_after:?} after the restart, \
         {:?} in all",
        test_start.elapsed()
    );
}

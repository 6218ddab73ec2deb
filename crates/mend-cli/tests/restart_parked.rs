//! Restart while parked: `mend serve` is killed with SIGKILL while 1,500 products wait parked
//! behind the sync of their missing category (whose request the target holds), started again
//! on the same store, and must finish the run: one sync process for the key, the parked
//! messages released by its clean end after the restart, every product pushed once in the
//! store, and counters that add up.

mod common;

use std::collections::HashSet;

use std::path::Path;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rusqlite::{Connection, OpenFlags, params};
use serde_json::{Value, json};

use common::{Mend, TIMEOUT, free_port, get_json, open_store, wait_healthy};

/// Products in the run, all in one category the target lacks.
const PRODUCTS: u64 = 1_500;
const CATEGORY: u64 = 9;
const KEY: &str = "category:9";
/// Parked messages in the store before the kill.
const KILL_AT_PARKED: i64 = 1_000;
const POLL: Duration = Duration::from_millis(50);
/// The node products are pushed at.
const PUSH: &str = "push";

/// A marketplace that rejects a product whose category it lacks. While `open` is false it
/// holds every category creation (the sync is in flight for as long as the test wants).
#[derive(Clone, Default)]
struct Target {
    open: Arc<AtomicBool>,
    categories: Arc<Mutex<HashSet<u64>>>,
    products: Arc<Mutex<HashSet<u64>>>,
    category_checks: Arc<AtomicU64>,
    category_posts: Arc<AtomicU64>,
    category_created: Arc<AtomicU64>,
    product_posts: Arc<AtomicU64>,
    product_rejected: Arc<AtomicU64>,
}

fn reply(status: u16, body: Value) -> Response {
    (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
}

/// A JSON number or a string of digits.
fn id_of(v: &Value) -> Option<u64> {
    v.as_u64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
}

async fn get_category(State(t): State<Target>, UrlPath(id): UrlPath<u64>) -> Response {
    t.category_checks.fetch_add(1, Ordering::SeqCst);
    if t.categories.lock().unwrap().contains(&id) {
        reply(200, json!({ "id": id }))
    } else {
        reply(404, json!({ "error": "not found" }))
    }
}

async fn post_category(State(t): State<Target>, body: Bytes) -> Response {
    t.category_posts.fetch_add(1, Ordering::SeqCst);
    let Some(id) = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| id_of(&v["id"]))
    else {
        return reply(400, json!({ "error": "no id" }));
    };
    while !t.open.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    t.categories.lock().unwrap().insert(id);
    t.category_created.fetch_add(1, Ordering::SeqCst);
    reply(201, json!({ "id": id }))
}

async fn post_product(State(t): State<Target>, body: Bytes) -> Response {
    t.product_posts.fetch_add(1, Ordering::SeqCst);
    let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let (Some(id), Some(cat)) = (id_of(&v["id"]), id_of(&v["category_id"])) else {
        return reply(400, json!({ "error": "id and category_id required" }));
    };
    if !t.categories.lock().unwrap().contains(&cat) {
        t.product_rejected.fetch_add(1, Ordering::SeqCst);
        return reply(
            422,
            json!({ "error": format!("category {cat} does not exist"), "code": "missing_category" }),
        );
    }
    t.products.lock().unwrap().insert(id);
    reply(201, json!({ "id": id }))
}

fn products_topology(target: &str) -> String {
    format!(
        r#"name: products
systems:
  target: {{ url: "{target}" }}
events:
  run: fan
nodes:
  fan:
    split: {{ items: .products }}
    next: {PUSH}
  {PUSH}:
    http: {{ system: target, post: /products }}
    requires:
      category:
        key: "category:{{{{ payload.category_id }}}}"
        check: {{ system: target, get: "/categories/{{{{ payload.category_id }}}}" }}
        sync: {{ topology: category-sync, event: run, data: {{ id: "{{{{ payload.category_id }}}}" }} }}
"#
    )
}

fn category_sync_topology(target: &str) -> String {
    format!(
        r#"name: category-sync
systems:
  target: {{ url: "{target}" }}
events:
  run: create
nodes:
  create:
    http:
      system: target
      post: /categories
      json: {{ id: "{{{{ payload.id }}}}" }}
      timeout: 60s
    retry: {{ attempts: 5, base: 100ms }}
"#
    )
}

fn scalar(conn: &Connection, sql: &str, args: impl rusqlite::Params) -> i64 {
    conn.query_row(sql, args, |r| r.get(0))
        .unwrap_or_else(|e| panic!("query failed: {e}\n{sql}"))
}

/// The store may not exist yet, or be mid-migration: count 0 until it answers.
fn parked_now(path: &Path) -> i64 {
    Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .and_then(|c| {
            c.busy_timeout(Duration::from_secs(10))?;
            c.query_row(
                "SELECT count(*) FROM messages WHERE state = 'parked'",
                [],
                |r| r.get(0),
            )
        })
        .unwrap_or(0)
}

/// (state, total, open, parked, done, filtered, trash) of a process row.
type Counters = (String, i64, i64, i64, i64, i64, i64);

fn counters(conn: &Connection, process: &str) -> Counters {
    conn.query_row(
        "SELECT state, total, open, parked, done, filtered, trash FROM processes WHERE id = ?1",
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
    .unwrap()
}

#[test]
fn a_server_killed_while_messages_are_parked_releases_them_after_a_restart() {
    let test_start = Instant::now();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // The HTTP target, in-process.
    let target = Target::default();
    let target_url = {
        let app = Router::new()
            .route("/categories/{id}", get(get_category))
            .route("/categories", post(post_category))
            .route("/products", post(post_product))
            .with_state(target.clone());
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind the test HTTP server");
        let addr = listener.local_addr().unwrap();
        rt.spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    };

    let dir = tempfile::tempdir().unwrap();
    let topologies = dir.path().join("topologies");
    std::fs::create_dir(&topologies).unwrap();
    std::fs::write(
        topologies.join("products.yaml"),
        products_topology(&target_url),
    )
    .unwrap();
    std::fs::write(
        topologies.join("category-sync.yaml"),
        category_sync_topology(&target_url),
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

    // First run: the products park behind the category's sync, whose request the target holds.
    let mut first = Mend::start(dir.path(), port, "serve-1.log", &[]);
    wait_healthy(&rt, &client, &base, &mut first);
    let products: Vec<Value> = (1..=PRODUCTS)
        .map(|id| json!({ "id": id, "category_id": CATEGORY }))
        .collect();
    let body = json!({ "products": products }).to_string();
    let answer: Value = rt.block_on(async {
        let resp = client
            .post(format!("{base}/api/topologies/products/events/run"))
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

    let parked_at_kill = loop {
        first.assert_running();
        let parked = parked_now(&store);
        if parked >= KILL_AT_PARKED && target.category_posts.load(Ordering::SeqCst) >= 1 {
            first.kill();
            break parked;
        }
        assert!(
            run_start.elapsed() < TIMEOUT,
            "only {parked} parked after {TIMEOUT:?} ({} category POSTs)",
            target.category_posts.load(Ordering::SeqCst)
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    let killed_after = run_start.elapsed();

    // What the crash left in the store.
    let conn = open_store(&store);
    let parked = scalar(
        &conn,
        "SELECT count(*) FROM messages WHERE state = 'parked' AND park_key = ?1",
        params![KEY],
    );
    let pending = scalar(
        &conn,
        "SELECT count(*) FROM park_keys WHERE key = ?1",
        params![KEY],
    );
    let sync_running = scalar(
        &conn,
        "SELECT count(*) FROM messages m JOIN processes p ON p.id = m.process_id
         WHERE p.release_key = ?1 AND m.state = 'running'",
        params![KEY],
    );
    let (state, ..) = counters(&conn, &process);
    eprintln!(
        "killed mend after {killed_after:?}: {parked} parked under {KEY} (saw {parked_at_kill}), \
         key pending: {pending}, sync messages left running: {sync_running}, \
         {} category POSTs received",
        target.category_posts.load(Ordering::SeqCst)
    );
    assert!(
        parked >= KILL_AT_PARKED,
        "{parked} parked at the kill, want at least {KILL_AT_PARKED}"
    );
    assert_eq!(pending, 1, "the park_keys row for {KEY} survives the kill");
    assert_eq!(state, "running");
    assert_eq!(
        scalar(
            &conn,
            "SELECT count(*) FROM processes WHERE release_key = ?1",
            params![KEY]
        ),
        1,
        "one sync process before the kill"
    );
    assert!(
        target.products.lock().unwrap().is_empty(),
        "no product pushed while its category is missing"
    );

    // Second run on the same store: the sync's step comes back after its lease and asks again.
    let restart = Instant::now();
    let mut second = Mend::start(dir.path(), port, "serve-2.log", &[]);
    wait_healthy(&rt, &client, &base, &mut second);
    let posts_before = target.category_posts.load(Ordering::SeqCst);
    loop {
        second.assert_running();
        if target.category_posts.load(Ordering::SeqCst) > posts_before {
            break;
        }
        assert!(
            restart.elapsed() < TIMEOUT,
            "the restarted engine never retried the sync's category POST"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let sync_repeated_after = restart.elapsed();
    target.open.store(true, Ordering::SeqCst);

    let report = loop {
        second.assert_running();
        if let Some(r) = get_json(&rt, &client, &format!("{base}/api/processes/{process}"))
            && r["state"] == "done"
        {
            break r;
        }
        assert!(
            restart.elapsed() < TIMEOUT,
            "the products process is not done {TIMEOUT:?} after the restart; store: {} parked, \
             {} done at `{PUSH}`",
            parked_now(&store),
            scalar(
                &conn,
                "SELECT count(*) FROM messages WHERE process_id = ?1 AND node = ?2 AND state = 'done'",
                params![process, PUSH]
            )
        );
        std::thread::sleep(POLL);
    };
    let finished_after = restart.elapsed();
    // Let the sync process's end settle in the store, then stop the server.
    let sync_done_wait = Instant::now();
    while scalar(
        &conn,
        "SELECT count(*) FROM processes WHERE state <> 'done'",
        [],
    ) > 0
    {
        assert!(
            sync_done_wait.elapsed() < TIMEOUT,
            "a process is still running"
        );
        std::thread::sleep(POLL);
    }
    second.kill();
    drop(conn);

    // The target.
    let posts = target.category_posts.load(Ordering::SeqCst);
    let created = target.category_created.load(Ordering::SeqCst);
    let product_posts = target.product_posts.load(Ordering::SeqCst);
    let rejected = target.product_rejected.load(Ordering::SeqCst);
    eprintln!(
        "target: {posts} POST /categories ({created} answered 201; a repeat after the kill is \
         at-least-once delivery), {} GET /categories/{{id}}, {product_posts} POST /products \
         ({rejected} rejected with 422)",
        target.category_checks.load(Ordering::SeqCst)
    );
    assert_eq!(
        *target.categories.lock().unwrap(),
        HashSet::from([CATEGORY]),
        "one category created"
    );
    assert!(
        posts >= 2,
        "the sync's POST was sent before and after the kill"
    );
    assert_eq!(
        *target.products.lock().unwrap(),
        (1..=PRODUCTS).collect::<HashSet<_>>(),
        "the target holds every product"
    );
    assert_eq!(
        rejected, 0,
        "no product was pushed before its category existed"
    );
    assert!(product_posts >= PRODUCTS);

    // The store.
    let conn = open_store(&store);
    let syncs: Vec<String> = conn
        .prepare("SELECT id FROM processes WHERE release_key = ?1")
        .unwrap()
        .query_map(params![KEY], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert_eq!(syncs.len(), 1, "exactly one sync process for {KEY}");
    assert_eq!(
        scalar(
            &conn,
            "SELECT count(*) FROM processes WHERE topology = 'category-sync'",
            []
        ),
        1,
        "no other sync process"
    );
    let (pushed, distinct): (i64, i64) = conn
        .query_row(
            "SELECT count(*), count(DISTINCT json_extract(payload, '$.id'))
             FROM messages WHERE process_id = ?1 AND node = ?2 AND state = 'done'",
            params![process, PUSH],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        (pushed, distinct),
        (PRODUCTS as i64, PRODUCTS as i64),
        "(done messages at `{PUSH}`, distinct product ids)"
    );
    assert_eq!(
        scalar(
            &conn,
            "SELECT count(*) FROM messages WHERE state IN ('queued', 'running', 'retry', 'parked')",
            []
        ),
        0,
        "nothing queued, running, waiting for a retry or parked"
    );
    assert_eq!(scalar(&conn, "SELECT count(*) FROM park_keys", []), 0);
    let (released_resumed, release_source): (i64, String) = conn
        .query_row(
            "SELECT resumed, source FROM releases WHERE key = ?1",
            params![KEY],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("the key was released");
    eprintln!("release of {KEY}: {released_resumed} resumed, by {release_source}");
    assert_eq!(release_source, format!("sync process {}", syncs[0]));
    assert!(released_resumed >= KILL_AT_PARKED);

    for (p, what) in [(&process, "products"), (&syncs[0], "category-sync")] {
        let (state, total, open, parked, done, filtered, trash) = counters(&conn, p);
        let messages = scalar(
            &conn,
            "SELECT count(*) FROM messages WHERE process_id = ?1",
            params![p],
        );
        eprintln!(
            "{what} process: state {state}, total {total}, open {open}, parked {parked}, \
             done {done}, filtered {filtered}, trash {trash}; {messages} message rows"
        );
        assert_eq!(state, "done", "{what}");
        assert_eq!(
            total,
            done + filtered + trash + open,
            "{what}: total = done + filtered + trash + open"
        );
        assert_eq!(
            (open, parked, trash),
            (0, 0, 0),
            "{what}: (open, parked, trash)"
        );
        assert_eq!(total, messages, "{what}: total counts every message");
    }
    let push_ok = scalar(
        &conn,
        "SELECT coalesce(sum(count), 0) FROM process_node_stats
         WHERE process_id = ?1 AND node = ?2 AND outcome = 'ok'",
        params![process, PUSH],
    );
    assert_eq!(push_ok, PRODUCTS as i64, "`{PUSH}` ok steps recorded");
    let mut st = conn
        .prepare(
            "SELECT node, outcome, count FROM process_node_stats WHERE process_id = ?1 ORDER BY node, outcome",
        )
        .unwrap();
    let stats: Vec<(String, String, i64)> = st
        .query_map(params![process], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    eprintln!("node stats: {stats:?}");

    // The API's report agrees with the store.
    assert_eq!(report["messages"]["trash"], json!(0));
    assert_eq!(report["nodes"][PUSH]["ok"], json!(PRODUCTS));

    eprintln!(
        "restart-parked test: killed after {killed_after:?}, sync repeated \
         {sync_repeated_after:?} after the restart, done {finished_after:?} after it, \
         {:?} in all",
        test_start.elapsed()
    );
}

//! Each node kind against a real HTTP server on 127.0.0.1: templating, status mapping,
//! retries with backoff, Retry-After, trash after the last attempt, switch/map/send, split
//! with paging and chunking.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use mend_core::ids::ProcessId;
use mend_core::load::load_sources;
use mend_engine::{Engine, EngineConfig};
use mend_store::ProcessReport;
use mend_store_sqlite::SqliteStore;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// One request as the test server saw it.
#[derive(Clone, Debug)]
struct Seen {
    method: String,
    path: String,
    query: HashMap<String, String>,
    headers: HeaderMap,
    body: String,
    at: std::time::Instant,
}

type Handler = Arc<dyn Fn(&Seen, usize) -> Response + Send + Sync>;

#[derive(Clone)]
struct Server {
    seen: Arc<Mutex<Vec<Seen>>>,
    handler: Handler,
}

async fn record(
    State(s): State<Server>,
    method: Method,
    uri: Uri,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let seen = Seen {
        method: method.to_string(),
        path: uri.path().to_owned(),
        query,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        at: std::time::Instant::now(),
    };
    let n = {
        let mut all = s.seen.lock().unwrap();
        all.push(seen.clone());
        all.iter().filter(|x| x.path == seen.path).count()
    };
    (s.handler)(&seen, n)
}

/// Starts a server answering with `handler(request, how many times this path was called)`.
async fn server(
    handler: impl Fn(&Seen, usize) -> Response + Send + Sync + 'static,
) -> (String, Arc<Mutex<Vec<Seen>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let state = Server {
        seen: seen.clone(),
        handler: Arc::new(handler),
    };
    let app = Router::new()
        .route("/{*path}", any(record))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), seen)
}

fn json_reply(status: u16, body: Value) -> Response {
    (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
}

struct Harness {
    engine: Engine<SqliteStore>,
    db: PathBuf,
    token: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Harness {
    async fn new(topologies: &[&str], env: HashMap<String, String>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("mend.db");
        let files = topologies
            .iter()
            .enumerate()
            .map(|(i, t)| (PathBuf::from(format!("t{i}.yaml")), (*t).to_owned()))
            .collect();
        let catalog = Arc::new(load_sources(files).unwrap_or_else(|e| panic!("{e}")));
        let store = SqliteStore::open(&db).unwrap();
        let config = EngineConfig {
            poll: Duration::from_millis(20),
            ..EngineConfig::default()
        };
        let engine = Engine::with_env(store, catalog, config, &move |k| env.get(k).cloned())
            .await
            .unwrap();
        let token = CancellationToken::new();
        let runner = engine.clone();
        let t = token.clone();
        tokio::spawn(async move { runner.run(t).await.unwrap() });
        Self {
            engine,
            db,
            token,
            _dir: dir,
        }
    }

    async fn run(&self, topology: &str, payload: Value) -> ProcessReport {
        let id = self
            .engine
            .start(topology, "run", payload, Default::default())
            .await
            .unwrap();
        self.wait(id).await
    }

    async fn wait(&self, id: ProcessId) -> ProcessReport {
        tokio::time::timeout(
            Duration::from_secs(60),
            self.engine.wait_done(id, Duration::from_millis(20)),
        )
        .await
        .expect("the process should finish (this bounds a hang, it is not a speed check)")
        .unwrap()
    }

    fn query<T>(&self, sql: &str, f: impl Fn(&rusqlite::Row<'_>) -> rusqlite::Result<T>) -> Vec<T> {
        let conn = rusqlite::Connection::open(&self.db).unwrap();
        let mut st = conn.prepare(sql).unwrap();
        st.query_map([], |r| f(r))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

fn count(r: &ProcessReport, node: &str, outcome: &str) -> u64 {
    r.nodes
        .get(node)
        .and_then(|o| o.get(outcome))
        .copied()
        .unwrap_or(0)
}

#[tokio::test]
async fn http_renders_url_query_headers_and_json_body_and_passes_the_response_on() {
    let (url, seen) = server(|_, _| json_reply(201, json!({"created": true, "sku": "A-1"}))).await;
    let topology = r#"
name: push
systems:
  target:
    url: "${TARGET_URL}"
    auth: { bearer_env: TARGET_TOKEN }
    headers: { X-Static: yes }
events:
  run: send
nodes:
  send:
    http:
      system: target
      put: "/products/{{ payload.id }}"
      query: { lang: "{{ payload.lang | default('en') }}" }
      headers: { X-Process: "{{ process_id }}" }
      json: { id: "{{ payload.id }}", title: "{{ payload.name | upper }}", tags: ["t-{{ payload.id }}"] }
      idempotency_header: Idempotency-Key
    next: after
  after:
    switch:
      cases:
        - { when: "response.status == 201 and response.body.sku == 'A-1'", outcome: seen }
    next: { seen: keep }
  keep:
    map: "{id, sku: $response.body.sku}"
    next: end
  end:
    map: "."
"#;
    let env = HashMap::from([
        ("TARGET_URL".to_owned(), url),
        ("TARGET_TOKEN".to_owned(), "s3cret".to_owned()),
    ]);
    let h = Harness::new(&[topology], env).await;
    let report = h.run("push", json!({"id": 7, "name": "lamp"})).await;
    assert_eq!(report.messages.trash, 0, "{report:#?}");
    assert_eq!(count(&report, "send", "ok"), 1);
    assert_eq!(
        count(&report, "after", "seen"),
        1,
        "the switch saw the response: {report:#?}"
    );
    assert_eq!(count(&report, "keep", "ok"), 1);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert_eq!((r.method.as_str(), r.path.as_str()), ("PUT", "/products/7"));
    assert_eq!(r.query.get("lang").map(String::as_str), Some("en"));
    assert_eq!(r.headers["authorization"], "Bearer s3cret");
    assert_eq!(r.headers["x-static"], "yes");
    assert_eq!(r.headers["x-process"], report.id.to_string().as_str());
    assert_eq!(r.headers["content-type"], "application/json");
    assert!(!r.headers["idempotency-key"].is_empty());
    let body: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(
        body,
        json!({"id": 7, "title": "LAMP", "tags": ["t-7"]}),
        "a lone {{{{ }}}} keeps its JSON type"
    );
    let keep: Vec<String> = h.query("SELECT payload FROM messages WHERE node = 'end'", |r| {
        r.get(0)
    });
    assert_eq!(
        serde_json::from_str::<Value>(&keep[0]).unwrap(),
        json!({"id": 7, "sku": "A-1"})
    );
}

#[tokio::test]
async fn status_codes_map_to_outcomes_and_unwired_failures_go_to_the_trash() {
    let (url, _) = server(|req, _| {
        let code: u16 = req.path.trim_start_matches("/s/").parse().unwrap();
        json_reply(code, json!({"code": code}))
    })
    .await;
    let topology = format!(
        r#"
name: statuses
events:
  run: fan
nodes:
  fan:
    split: {{ items: .codes }}
    next: call
  call:
    http:
      get: "{url}/s/{{{{ payload }}}}"
      outcomes: {{ "409": ok, "410": gone }}
    next: {{ ok: done, missing: done, gone: done }}
  done:
    map: "."
"#
    );
    let h = Harness::new(&[&topology], HashMap::new()).await;
    let report = h
        .run(
            "statuses",
            json!({"codes": [200, 204, 409, 404, 410, 400, 422]}),
        )
        .await;
    assert_eq!(count(&report, "call", "ok"), 3, "{report:#?}");
    assert_eq!(count(&report, "call", "missing"), 1);
    assert_eq!(count(&report, "call", "gone"), 1);
    assert_eq!(count(&report, "call", "failed"), 2);
    assert_eq!(count(&report, "done", "ok"), 5);
    assert_eq!(report.messages.trash, 2);
    let errors: Vec<String> = report
        .trash
        .iter()
        .map(|t| t.error.clone().unwrap_or_default())
        .collect();
    assert!(
        errors
            .iter()
            .all(|e| e.contains("outcome `failed`") && e.contains("has no edge")),
        "{errors:?}"
    );
    let m = &report.messages;
    assert_eq!(m.total, m.done + m.filtered + m.trash + m.open);
}

#[tokio::test]
async fn retries_back_off_then_succeed_and_record_every_attempt() {
    let (url, seen) = server(|_, n| {
        if n <= 2 {
            json_reply(503, json!({"busy": true}))
        } else {
            json_reply(200, json!({}))
        }
    })
    .await;
    let topology = format!(
        r#"
name: flaky
events:
  run: call
nodes:
  call:
    http: {{ post: "{url}/flaky" }}
    retry: {{ attempts: 4, base: 100ms, max: 1s }}
"#
    );
    let h = Harness::new(&[&topology], HashMap::new()).await;
    let report = h.run("flaky", json!({"x": 1})).await;
    assert_eq!(report.messages.trash, 0, "{report:#?}");
    assert_eq!(count(&report, "call", "retry"), 2);
    assert_eq!(count(&report, "call", "ok"), 1);
    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), 3);
    // Backoff with jitter: retry n waits at least half of base * 2^(n-1).
    let gap1 = seen[1].at - seen[0].at;
    let gap2 = seen[2].at - seen[1].at;
    assert!(
        gap1 >= Duration::from_millis(50),
        "first retry after {gap1:?}"
    );
    assert!(
        gap2 >= Duration::from_millis(100),
        "second retry after {gap2:?}"
    );
    let attempts: Vec<(u32, Option<u16>, String)> = h.query(
        "SELECT attempt, status, outcome FROM attempts ORDER BY attempt",
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    );
    assert_eq!(
        attempts,
        vec![
            (1, Some(503), "retry".into()),
            (2, Some(503), "retry".into())
        ]
    );
}

#[tokio::test]
async fn the_last_failed_attempt_sends_the_message_to_the_trash_with_its_history() {
    let (url, seen) = server(|_, _| json_reply(500, json!({"error": "database on fire"}))).await;
    let topology = format!(
        r#"
name: broken
events:
  run: call
nodes:
  call:
    http: {{ post: "{url}/broken" }}
    retry: {{ attempts: 3, base: 10ms, max: 50ms }}
"#
    );
    let h = Harness::new(&[&topology], HashMap::new()).await;
    let report = h.run("broken", json!({"x": 1})).await;
    assert_eq!(seen.lock().unwrap().len(), 3);
    assert_eq!(report.messages.trash, 1);
    assert_eq!(report.trash[0].attempts, 3);
    let error = report.trash[0].error.clone().unwrap();
    assert!(
        error.starts_with("gave up after 3 attempts: HTTP 500"),
        "{error}"
    );
    let excerpts: Vec<Option<String>> = h.query(
        "SELECT response_excerpt FROM attempts ORDER BY attempt",
        |r| r.get(0),
    );
    assert_eq!(excerpts.len(), 3);
    assert!(
        excerpts
            .iter()
            .all(|e| e.as_deref().unwrap_or("").contains("database on fire"))
    );
}

// Multi-threaded: the slow handler blocks its thread, the engine's timer must keep running.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retry_after_is_honoured_and_timeouts_and_refused_connections_are_retried() {
    let (url, seen) = server(|req, n| {
        if req.path == "/slow" {
            std::thread::sleep(Duration::from_millis(300));
            return json_reply(200, json!({}));
        }
        if n == 1 {
            let mut r = json_reply(429, json!({"slow": "down"}));
            r.headers_mut().insert("retry-after", "1".parse().unwrap());
            r
        } else {
            json_reply(200, json!({}))
        }
    })
    .await;
    // A port nothing listens on: bind, read the port, close.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let topology = format!(
        r#"
name: limits
events:
  run: call
  slow: slow
  refused: refused
nodes:
  call:
    http: {{ get: "{url}/limited" }}
    retry: {{ attempts: 3, base: 10ms }}
  slow:
    http: {{ get: "{url}/slow", timeout: 50ms }}
    retry: {{ attempts: 2, base: 10ms }}
  refused:
    http: {{ get: "http://{closed}/x" }}
    retry: {{ attempts: 2, base: 10ms }}
"#
    );
    let h = Harness::new(&[&topology], HashMap::new()).await;
    let report = h.run("limits", json!({})).await;
    assert_eq!(report.messages.trash, 0, "{report:#?}");
    {
        let seen = seen.lock().unwrap();
        let limited: Vec<&Seen> = seen.iter().filter(|s| s.path == "/limited").collect();
        assert_eq!(limited.len(), 2);
        let gap = limited[1].at - limited[0].at;
        assert!(
            gap >= Duration::from_millis(1000),
            "Retry-After: 1 was not honoured: {gap:?}"
        );
    }
    let id = h
        .engine
        .start("limits", "slow", json!({}), Default::default())
        .await
        .unwrap();
    let slow = h.wait(id).await;
    assert_eq!(slow.messages.trash, 1);
    assert!(
        slow.trash[0]
            .error
            .as_deref()
            .unwrap()
            .contains("timed out"),
        "{slow:#?}"
    );
    let id = h
        .engine
        .start("limits", "refused", json!({}), Default::default())
        .await
        .unwrap();
    let refused = h.wait(id).await;
    assert_eq!(refused.messages.trash, 1);
    assert!(
        refused.trash[0]
            .error
            .as_deref()
            .unwrap()
            .contains("could not connect"),
        "{refused:#?}"
    );
}

#[tokio::test]
async fn switch_map_and_send_route_filter_and_start_linked_processes() {
    let a = r#"
name: orders
events:
  run: fan
nodes:
  fan:
    split: { items: .orders }
    next: route
  route:
    switch:
      cases:
        - { when: "payload.total >= 100", outcome: big }
        - { when: "payload.total == 0", outcome: empty }
      default: small
    next: { big: notify, small: shape }
  notify:
    send: { topology: review, event: run, data: { order: "{{ payload.id }}", why: "big" } }
    next: shape
  shape:
    map: "select(.total > 1) | {id, cents: (.total * 100)}"
    next: { ok: keep }
  keep:
    map: "."
"#;
    let b = r#"
name: review
events:
  run: look
nodes:
  look:
    map: ".order"
"#;
    let h = Harness::new(&[a, b], HashMap::new()).await;
    let orders = json!({"orders": [{"id": 1, "total": 150}, {"id": 2, "total": 20}, {"id": 3, "total": 0}, {"id": 4, "total": 1}]});
    let report = h.run("orders", orders).await;
    assert_eq!(count(&report, "route", "big"), 1, "{report:#?}");
    assert_eq!(count(&report, "route", "small"), 2);
    assert_eq!(count(&report, "route", "empty"), 1);
    assert_eq!(count(&report, "shape", "ok"), 2);
    assert_eq!(
        count(&report, "shape", "empty"),
        1,
        "total 1 is dropped by select"
    );
    assert_eq!(
        report.messages.filtered, 2,
        "the unwired switch branch and the empty map"
    );
    assert_eq!(report.children.len(), 1);
    let child = h.wait(report.children[0]).await;
    assert_eq!(child.topology, "review");
    assert_eq!(child.parent_process_id, Some(report.id));
    let look: Vec<String> = h.query(
        "SELECT payload FROM messages WHERE topology = 'review' AND node = 'look'",
        |r| r.get(0),
    );
    assert_eq!(look, vec!["{\"order\":1,\"why\":\"big\"}".to_owned()]);
    let keep: Vec<String> = h.query(
        "SELECT payload FROM messages WHERE node = 'keep' ORDER BY payload",
        |r| r.get(0),
    );
    assert_eq!(
        keep,
        vec![
            "{\"id\":1,\"cents\":15000}".to_owned(),
            "{\"id\":2,\"cents\":2000}".to_owned()
        ]
    );
}

#[tokio::test]
async fn split_follows_page_counters_and_next_links_and_chunks_payload_arrays() {
    let (url, seen) = server(|req, _| match req.path.as_str() {
        "/pages" => {
            let page: u32 = req.query["page"].parse().unwrap();
            let items: Vec<u32> = if page <= 3 {
                (1..=4).map(|i| page * 10 + i).collect()
            } else {
                vec![]
            };
            json_reply(200, json!({"items": items}))
        }
        "/links/1" => json_reply(200, json!({"data": [1, 2], "next": "/links/2"})),
        "/links/2" => json_reply(200, json!({"data": [3], "next": null})),
        _ => json_reply(404, json!({})),
    })
    .await;
    let topology = format!(
        r#"
name: pages
events:
  run: by-counter
  links: by-link
  chunks: by-chunk
nodes:
  by-counter:
    split:
      http: {{ get: "{url}/pages", query: {{ page: "{{{{ page }}}}" }} }}
      items: .items
      paging: {{ page: 1 }}
    next: item
  by-link:
    split:
      http: {{ get: "{url}/links/1" }}
      items: .data
      paging: {{ next: ".next | if . then \"{url}\" + . else null end" }}
    next: item
  by-chunk:
    split: {{ items: ".numbers", chunk: 3 }}
    next: item
  item:
    map: "."
"#
    );
    let h = Harness::new(&[&topology], HashMap::new()).await;
    let report = h.run("pages", json!({})).await;
    assert_eq!(count(&report, "item", "ok"), 12, "{report:#?}");
    assert_eq!(
        count(&report, "by-counter", "item"),
        4,
        "three full pages and the empty one"
    );
    let pages: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|s| s.path == "/pages")
        .map(|s| s.query["page"].clone())
        .collect();
    assert_eq!(pages, vec!["1", "2", "3", "4"]);

    let id = h
        .engine
        .start("pages", "links", json!({}), Default::default())
        .await
        .unwrap();
    let links = h.wait(id).await;
    assert_eq!(count(&links, "item", "ok"), 3, "{links:#?}");

    let id = h
        .engine
        .start(
            "pages",
            "chunks",
            json!({"numbers": (0..10).collect::<Vec<_>>()}),
            Default::default(),
        )
        .await
        .unwrap();
    let chunks = h.wait(id).await;
    assert_eq!(count(&chunks, "item", "ok"), 10, "{chunks:#?}");
    assert_eq!(
        count(&chunks, "by-chunk", "item"),
        4,
        "10 items in chunks of 3 take four steps"
    );
    let m = &chunks.messages;
    assert_eq!((m.total, m.done, m.open), (14, 14, 0));
}

#[tokio::test]
async fn a_template_that_fails_to_render_sends_the_message_to_the_trash_with_the_cause() {
    let topology = r#"
name: bad
events:
  run: call
nodes:
  call:
    http: { get: "http://127.0.0.1:9/items/{{ payload.missing.deeper }}" }
"#;
    let h = Harness::new(&[topology], HashMap::new()).await;
    let report = h.run("bad", json!({"id": 1})).await;
    assert_eq!(report.messages.trash, 1);
    let error = report.trash[0].error.clone().unwrap();
    assert!(
        error.starts_with("url:") && error.contains("undefined"),
        "{error}"
    );
}

#[tokio::test]
async fn a_missing_environment_variable_stops_the_engine_from_starting() {
    let topology = r#"
name: env
systems:
  target: { url: "${NOT_SET_ANYWHERE}", auth: { bearer_env: ALSO_NOT_SET } }
events:
  run: call
nodes:
  call:
    http: { system: target, get: /x }
"#;
    let dir = tempfile::tempdir().unwrap();
    let catalog =
        Arc::new(load_sources(vec![(PathBuf::from("env.yaml"), topology.to_owned())]).unwrap());
    let store = SqliteStore::open(&dir.path().join("m.db")).unwrap();
    let err = match Engine::with_env(store, catalog, EngineConfig::default(), &|_| None).await {
        Ok(_) => panic!("the engine must not start"),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("system `target` of topology `env`") && err.contains("NOT_SET_ANYWHERE"),
        "{err}"
    );
    assert!(
        err.contains("ALSO_NOT_SET"),
        "every missing variable is named: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn node_concurrency_bounds_requests_in_flight() {
    use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
    #[derive(Clone, Default)]
    struct Gauge {
        now: Arc<AtomicUsize>,
        peak: Arc<AtomicUsize>,
        total: Arc<AtomicUsize>,
    }
    async fn slow(State(g): State<Gauge>) -> StatusCode {
        let now = g.now.fetch_add(1, SeqCst) + 1;
        g.peak.fetch_max(now, SeqCst);
        tokio::time::sleep(Duration::from_millis(20)).await;
        g.now.fetch_sub(1, SeqCst);
        g.total.fetch_add(1, SeqCst);
        StatusCode::OK
    }
    let gauge = Gauge::default();
    let app = Router::new()
        .route("/x", axum::routing::post(slow))
        .with_state(gauge.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let topology = |limit: u32| {
        format!(
            r#"
name: bounded
events:
  run: fan
nodes:
  fan:
    split: {{ items: .items }}
    next: call
  call:
    http: {{ post: "{url}/x" }}
    concurrency: {limit}
"#
        )
    };
    // With a limit of 2 the server never sees a third request at once...
    let h = Harness::new(&[&topology(2)], HashMap::new()).await;
    let report = h
        .run("bounded", json!({"items": (0..30).collect::<Vec<_>>()}))
        .await;
    assert_eq!(count(&report, "call", "ok"), 30);
    assert_eq!(gauge.total.load(SeqCst), 30);
    let peak = gauge.peak.load(SeqCst);
    assert!(
        (1..=2).contains(&peak),
        "at most 2 requests at once, saw {peak}"
    );
    drop(h);
    // ...and with a limit of 8 the same run does overlap, so the check above can fail.
    gauge.peak.store(0, SeqCst);
    let h = Harness::new(&[&topology(8)], HashMap::new()).await;
    h.run("bounded", json!({"items": (0..30).collect::<Vec<_>>()}))
        .await;
    assert!(
        gauge.peak.load(SeqCst) > 2,
        "requests overlap without the limit"
    );
}

#[tokio::test]
async fn identical_failures_beyond_the_flood_limit_are_counted_under_one_entry() {
    use mend_store::{TrashAction, TrashFilter, TrashStore};
    let (url, _) = server(|_, _| json_reply(400, json!({"error": "always"}))).await;
    let topology = format!(
        r#"
name: flood
events:
  run: fan
nodes:
  fan:
    split: {{ items: .items }}
    next: call
  call:
    http: {{ post: "{url}/x" }}
"#
    );
    let h = Harness::new(&[&topology], HashMap::new()).await;
    let report = h
        .run("flood", json!({"items": (0..60).collect::<Vec<_>>()}))
        .await;
    assert_eq!(
        report.messages.trash, 60,
        "every failure is kept and counted"
    );
    let shown = h
        .engine
        .store()
        .list_trash(TrashFilter {
            topology: Some("flood".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        shown.len(),
        20,
        "the first 20 identical failures are listed one by one"
    );
    let collapsed: u64 = shown.iter().map(|e| e.repeats).sum();
    assert_eq!(collapsed, 40, "the rest are counted under the first");
    let head = shown.iter().find(|e| e.repeats == 40).unwrap().message_id;
    assert!(
        h.engine
            .store()
            .act_on_trash(head, TrashAction::Reject, "test")
            .await
            .unwrap()
    );
    let report = h.wait(report.id).await;
    assert_eq!(
        (report.messages.trash, report.messages.rejected),
        (19, 41),
        "rejecting the entry rejects what it collapsed"
    );
}

#[tokio::test]
async fn messages_at_a_node_that_no_longer_exists_go_to_the_trash_with_the_reason() {
    use mend_core::ids::MessageId;
    use mend_store::{NewMessage, NewProcess, ProcessStore};
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("m.db")).unwrap();
    // A message left waiting at `old-name` by an earlier version of the topology.
    let now = mend_core::clock::now_ms();
    let id = ProcessId::new();
    store
        .start_process(NewProcess {
            id,
            topology: "renamed".into(),
            version: "v1".into(),
            event: "run".into(),
            parent_process_id: None,
            parent_message_id: None,
            created_at: now,
            release_key: None,
            first: NewMessage {
                id: MessageId::new(),
                process_id: id,
                topology: "renamed".into(),
                version: "v1".into(),
                node: "old-name".into(),
                payload: json!({}),
                headers: Default::default(),
                context: Default::default(),
                parent_id: None,
                available_at: now,
            },
        })
        .await
        .unwrap();
    let topology = "name: renamed\nevents: { run: new-name }\nnodes:\n  new-name: { map: \".\" }\n";
    let catalog =
        Arc::new(load_sources(vec![(PathBuf::from("renamed.yaml"), topology.to_owned())]).unwrap());
    let engine = Engine::new(
        store,
        catalog,
        EngineConfig {
            poll: Duration::from_millis(20),
            stranded_after: Duration::ZERO,
            ..EngineConfig::default()
        },
    )
    .await
    .unwrap();
    let token = CancellationToken::new();
    let (runner, t) = (engine.clone(), token.clone());
    tokio::spawn(async move { runner.run(t).await.unwrap() });
    let report = tokio::time::timeout(
        Duration::from_secs(30),
        engine.wait_done(id, Duration::from_millis(20)),
    )
    .await
    .expect("the process ends instead of waiting forever")
    .unwrap();
    token.cancel();
    assert_eq!(report.messages.trash, 1);
    let error = report.trash[0].error.clone().unwrap();
    assert!(
        error.contains("node `old-name` is not in topology `renamed`"),
        "{error}"
    );
}

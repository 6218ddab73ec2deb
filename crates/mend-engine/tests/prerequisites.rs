//! The self-correcting blocks against a real target on 127.0.0.1: detect, cache, detour,
//! callback and coalesce, with `requires` in check and optimistic mode, nested prerequisites,
//! cycles, bounded waits and manual release.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use mend_core::ids::ProcessId;
use mend_core::load::load_sources;
use mend_engine::{Engine, EngineConfig};
use mend_store::{ParkStore, ProcessReport, ProcessStore};
use mend_store_sqlite::SqliteStore;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// A marketplace that rejects a product whose category it lacks, and a category whose parent
/// it lacks; plus a source of category parents.
#[derive(Clone, Default)]
struct Target {
    categories: Arc<Mutex<HashSet<u64>>>,
    products: Arc<Mutex<HashSet<u64>>>,
    requests: Arc<Mutex<HashMap<String, u64>>>,
    /// Source data: category → parent.
    parents: Arc<Mutex<HashMap<u64, Option<u64>>>>,
    /// Categories whose creation fails with 500.
    broken: Arc<Mutex<HashSet<u64>>>,
}

impl Target {
    fn count(&self, route: &str) -> u64 {
        self.requests
            .lock()
            .unwrap()
            .get(route)
            .copied()
            .unwrap_or(0)
    }
    fn hit(&self, route: &str) {
        *self
            .requests
            .lock()
            .unwrap()
            .entry(route.to_owned())
            .or_default() += 1;
    }
}

fn reply(status: u16, body: Value) -> Response {
    (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
}

async fn get_category(State(t): State<Target>, Path(id): Path<u64>) -> Response {
    t.hit("GET /categories/{id}");
    if t.categories.lock().unwrap().contains(&id) {
        reply(200, json!({"id": id}))
    } else {
        reply(404, json!({"error": "not found"}))
    }
}

async fn post_category(State(t): State<Target>, body: Bytes) -> Response {
    t.hit("POST /categories");
    let v: Value = serde_json::from_slice(&body).unwrap();
    let id = v["id"].as_u64().unwrap();
    if t.broken.lock().unwrap().contains(&id) {
        return reply(500, json!({"error": "category service down"}));
    }
    if let Some(parent) = v["parent_id"].as_u64()
        && !t.categories.lock().unwrap().contains(&parent)
    {
        return reply(
            422,
            json!({"error": format!("parent category {parent} does not exist"), "code": "missing_parent"}),
        );
    }
    t.categories.lock().unwrap().insert(id);
    reply(201, json!({"id": id}))
}

async fn post_product(State(t): State<Target>, body: Bytes) -> Response {
    t.hit("POST /products");
    let v: Value = serde_json::from_slice(&body).unwrap();
    let cat = v["category_id"].as_u64().unwrap();
    if !t.categories.lock().unwrap().contains(&cat) {
        return reply(
            422,
            json!({"error": format!("category {cat} does not exist"), "code": "missing_category"}),
        );
    }
    t.products.lock().unwrap().insert(v["id"].as_u64().unwrap());
    reply(201, json!({}))
}

async fn source_category(State(t): State<Target>, Path(id): Path<u64>) -> Response {
    t.hit("GET /source/categories/{id}");
    match t.parents.lock().unwrap().get(&id) {
        Some(parent) => reply(200, json!({"id": id, "parent_id": parent})),
        None => reply(404, json!({})),
    }
}

async fn target() -> (String, Target) {
    let t = Target::default();
    let app = Router::new()
        .route("/categories/{id}", get(get_category))
        .route("/categories", post(post_category))
        .route("/products", post(post_product))
        .route("/source/categories/{id}", get(source_category))
        .with_state(t.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, t)
}

const PRODUCTS: &str = r#"
name: products
systems:
  target: { url: "${TARGET_URL}" }
events:
  run: fan
nodes:
  fan:
    split: { items: .products }
    next: push
  push:
    http: { system: target, post: /products }
    requires:
      category:
        key: "category:{{ payload.category_id }}"
        check: { system: target, get: "/categories/{{ payload.category_id }}" }
        sync: { topology: category-sync, event: run, data: { id: "{{ payload.category_id }}" } }
        max_wait: MAX_WAIT
"#;

const CATEGORY_SYNC: &str = r#"
name: category-sync
systems:
  target: { url: "${TARGET_URL}" }
events:
  run: fetch
nodes:
  fetch:
    http: { system: target, get: "/source/categories/{{ payload.id }}" }
    next: shape
  shape:
    map: "$response.body"
    next: create
  create:
    http: { system: target, post: /categories }
    retry: { attempts: 1 }
    requires:
      parent:
        key: "category:{{ payload.parent_id }}"
        when: "payload.parent_id is not none"
        check: { system: target, get: "/categories/{{ payload.parent_id }}" }
        sync: { topology: category-sync, event: run, data: { id: "{{ payload.parent_id }}" } }
"#;

struct Harness {
    engine: Engine<SqliteStore>,
    db: PathBuf,
    token: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

async fn harness(url: &str, topologies: &[&str], workers: u32) -> Harness {
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
        workers,
        poll: Duration::from_millis(20),
        lease: Duration::from_millis(600),
        ..EngineConfig::default()
    };
    let url = url.to_owned();
    let engine = Engine::with_env(store, catalog, config, &move |k| {
        (k == "TARGET_URL").then(|| url.clone())
    })
    .await
    .unwrap();
    let token = CancellationToken::new();
    let (runner, t) = (engine.clone(), token.clone());
    tokio::spawn(async move { runner.run(t).await.unwrap() });
    Harness {
        engine,
        db,
        token,
        _dir: dir,
    }
}

impl Harness {
    async fn wait(&self, id: ProcessId) -> ProcessReport {
        tokio::time::timeout(
            Duration::from_secs(120),
            self.engine.wait_done(id, Duration::from_millis(20)),
        )
        .await
        .expect("the process should finish (this bounds a hang, it is not a speed check)")
        .unwrap()
    }

    async fn run(&self, products: Value) -> ProcessReport {
        let id = self
            .engine
            .start(
                "products",
                "run",
                json!({"products": products}),
                Default::default(),
            )
            .await
            .unwrap();
        self.wait(id).await
    }

    fn scalar(&self, sql: &str) -> i64 {
        let conn = rusqlite::Connection::open(&self.db).unwrap();
        conn.query_row(sql, [], |r| r.get(0)).unwrap()
    }
}

fn products(n: u64, category: impl Fn(u64) -> u64) -> Value {
    Value::Array(
        (1..=n)
            .map(|i| json!({"id": i, "category_id": category(i)}))
            .collect(),
    )
}

fn topologies(max_wait: &str) -> [String; 2] {
    [
        PRODUCTS.replace("MAX_WAIT", max_wait),
        CATEGORY_SYNC.to_owned(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thundering_herd_one_new_category_costs_one_sync() {
    let (url, target) = target().await;
    target.parents.lock().unwrap().insert(77, None);
    let [p, c] = topologies("10m");
    let h = harness(&url, &[&p, &c], 8).await;
    let report = h.run(products(5000, |_| 77)).await;
    assert_eq!(report.messages.trash, 0, "{report:#?}");
    assert_eq!(target.products.lock().unwrap().len(), 5000);
    assert_eq!(
        target.count("POST /categories"),
        1,
        "exactly one sync for the new category"
    );
    assert_eq!(
        target.count("POST /products"),
        5000,
        "no product was pushed before its category existed"
    );
    assert_eq!(
        target.count("GET /categories/{id}"),
        1,
        "one check, shared by every worker"
    );
    assert_eq!(report.children.len(), 1, "one detour");
    assert_eq!(
        h.scalar("SELECT count(*) FROM park_keys"),
        0,
        "nothing is left pending"
    );
    assert_eq!(
        h.scalar(
            "SELECT present FROM cache_entries WHERE cache = 'category' AND key = 'category:77'"
        ),
        1,
        "the release marked the category present in the shared cache"
    );
    assert_eq!(
        h.scalar("SELECT count(*) FROM messages WHERE state = 'parked'"),
        0
    );
    let parked = report.nodes["push.category.park"]["parked"];
    assert!(parked >= 1, "products parked behind the sync: {report:#?}");
    // The sync's trace links back to every message it unblocked.
    use mend_store::OpsStore;
    let trace = h
        .engine
        .store()
        .trace(report.children[0])
        .await
        .unwrap()
        .unwrap();
    // (A product that parks just after the release resumes at once and waited for nothing.)
    let unblocked = trace.unblocks.len() as u64;
    assert!(
        (1..=parked).contains(&unblocked),
        "{unblocked} unblocked of {parked} park steps"
    );
    assert!(
        trace
            .unblocks
            .iter()
            .all(|m| m.process_id == report.id && m.state == "done")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_arrival_with_nested_parents_syncs_each_missing_category_once() {
    let (url, target) = target().await;
    {
        // 1 exists; 10 → 1; 20 → 10; 30 → 20 (a chain of missing ancestors); 40 is a new root.
        let mut parents = target.parents.lock().unwrap();
        for (c, p) in [
            (1, None),
            (10, Some(1)),
            (20, Some(10)),
            (30, Some(20)),
            (40, None),
        ] {
            parents.insert(c, p);
        }
        target.categories.lock().unwrap().insert(1);
    }
    let [p, c] = topologies("10m");
    let h = harness(&url, &[&p, &c], 8).await;
    // Products of every category, in random order, arriving as separate processes (webhooks).
    let cats = [30u64, 1, 40, 20, 10];
    let mut ids = Vec::new();
    for i in 0..200u64 {
        let cat = cats[((i * 7919) % 5) as usize];
        let id = h
            .engine
            .start(
                "products",
                "run",
                json!({"products": [{"id": i, "category_id": cat}]}),
                Default::default(),
            )
            .await
            .unwrap();
        ids.push(id);
    }
    let mut trash = 0;
    for id in ids {
        trash += h.wait(id).await.messages.trash;
    }
    assert_eq!(trash, 0);
    assert_eq!(target.products.lock().unwrap().len(), 200);
    assert_eq!(
        target.count("POST /categories"),
        4,
        "10, 20, 30 and 40: one create each"
    );
    assert_eq!(
        *target.categories.lock().unwrap(),
        HashSet::from([1, 10, 20, 30, 40])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cycle_ends_in_the_trash_with_the_cycle_named() {
    let (url, target) = target().await;
    {
        let mut parents = target.parents.lock().unwrap();
        parents.insert(1, Some(2));
        parents.insert(2, Some(1));
    }
    let [p, c] = topologies("10m");
    let h = harness(&url, &[&p, &c], 4).await;
    let report = h.run(products(3, |_| 1)).await;
    assert_eq!(report.messages.trash, 3, "{report:#?}");
    for t in &report.trash {
        let e = t.error.as_deref().unwrap();
        assert!(
            e.contains("prerequisite cycle: category:1 → category:2 → category:1"),
            "{e}"
        );
    }
    assert_eq!(
        h.scalar("SELECT count(*) FROM messages WHERE state = 'parked'"),
        0,
        "no deadlock left behind"
    );
    assert_eq!(target.count("POST /products"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sync_keeps_messages_parked_until_max_wait_then_trashes_them() {
    let (url, target) = target().await;
    target.parents.lock().unwrap().insert(5, None);
    target.broken.lock().unwrap().insert(5);
    let [p, c] = topologies("300ms");
    let h = harness(&url, &[&p, &c], 4).await;
    let report = h.run(products(4, |_| 5)).await;
    assert_eq!(report.messages.trash, 4, "{report:#?}");
    for t in &report.trash {
        assert_eq!(
            t.error.as_deref(),
            Some("prerequisite category:5 not satisfied within 300ms")
        );
    }
    let sync = h.wait(report.children[0]).await;
    assert_eq!(
        sync.messages.trash, 1,
        "the sync's own failure is in its trash"
    );
    assert_eq!(target.count("POST /products"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_release_resumes_parked_messages() {
    let (url, target) = target().await;
    target.parents.lock().unwrap().insert(8, None);
    target.broken.lock().unwrap().insert(8);
    let [p, c] = topologies("10m");
    let h = harness(&url, &[&p, &c], 4).await;
    let id = h
        .engine
        .start(
            "products",
            "run",
            json!({"products": products(6, |_| 8)}),
            Default::default(),
        )
        .await
        .unwrap();
    // Wait until the six products are parked behind the failed sync.
    for _ in 0..500 {
        if h.scalar("SELECT count(*) FROM messages WHERE state = 'parked'") == 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        h.scalar("SELECT count(*) FROM messages WHERE state = 'parked'"),
        6
    );
    let keys = h.engine.store().parked_keys().await.unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!((keys[0].key.as_str(), keys[0].parked), ("category:8", 6));
    // An operator creates the category in the target by hand and releases the key.
    target.categories.lock().unwrap().insert(8);
    let released = h.engine.release("category:8", "operator").await.unwrap();
    assert_eq!(released.resumed, 6);
    let report = h.wait(id).await;
    assert_eq!(report.messages.trash, 0, "{report:#?}");
    assert_eq!(target.products.lock().unwrap().len(), 6);
    // A release with nothing parked is a no-op that is still recorded.
    let again = h.engine.release("category:999", "operator").await.unwrap();
    assert_eq!(again.resumed, 0);
    assert_eq!(
        h.scalar("SELECT count(*) FROM releases WHERE key = 'category:999'"),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optimistic_mode_pushes_first_and_costs_nothing_for_existing_categories() {
    let (url, target) = target().await;
    {
        let mut parents = target.parents.lock().unwrap();
        parents.insert(1, None);
        parents.insert(2, None);
        target.categories.lock().unwrap().insert(1);
    }
    let optimistic = r#"
name: products
systems:
  target: { url: "${TARGET_URL}" }
events:
  run: fan
nodes:
  fan:
    split: { items: .products }
    next: push
  push:
    http: { system: target, post: /products }
    requires:
      category:
        mode: optimistic
        key: "category:{{ payload.category_id }}"
        missing_response: { status: "422", body_contains: missing_category }
        sync: { topology: category-sync, event: run, data: { id: "{{ payload.category_id }}" } }
"#;
    let h = harness(&url, &[optimistic, CATEGORY_SYNC], 4).await;
    let report = h
        .run(products(100, |i| if i % 2 == 0 { 1 } else { 2 }))
        .await;
    assert_eq!(report.messages.trash, 0, "{report:#?}");
    assert_eq!(target.products.lock().unwrap().len(), 100);
    assert_eq!(
        target.count("GET /categories/{id}"),
        0,
        "optimistic mode asks nothing first"
    );
    assert_eq!(
        target.count("POST /categories"),
        1,
        "one sync for the missing category"
    );
    let rejected = report.nodes["push"]
        .get("missing.category")
        .copied()
        .unwrap_or(0);
    assert!(
        (1..=50).contains(&rejected),
        "only products of the missing category were rejected: {rejected}"
    );
    assert_eq!(target.count("POST /products"), 100 + rejected);
}

/// Parks four products behind a sync that fails (its create answers 500), and returns the
/// products process and the sync's trash entry.
async fn parked_behind_failed_sync(h: &Harness) -> (ProcessId, mend_core::ids::MessageId) {
    use mend_store::{TrashFilter, TrashStore};
    let id = h
        .engine
        .start(
            "products",
            "run",
            json!({"products": products(4, |_| 5)}),
            Default::default(),
        )
        .await
        .unwrap();
    for _ in 0..500 {
        let trash = h
            .engine
            .store()
            .list_trash(TrashFilter {
                topology: Some("category-sync".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        if h.scalar("SELECT count(*) FROM messages WHERE state = 'parked'") == 4 && trash.len() == 1
        {
            assert!(
                trash[0].error.as_deref().unwrap().contains("HTTP 500"),
                "{trash:#?}"
            );
            assert!(!trash[0].attempts.is_empty());
            return (id, trash[0].message_id);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the products did not park behind a failed sync");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approving_the_failed_sync_releases_the_waiting_messages() {
    use mend_store::{TrashAction, TrashStore};
    let (url, target) = target().await;
    target.parents.lock().unwrap().insert(5, None);
    target.broken.lock().unwrap().insert(5);
    let [p, c] = topologies("10m");
    let h = harness(&url, &[&p, &c], 4).await;
    let (id, sync_message) = parked_behind_failed_sync(&h).await;
    // Still parked, visible and counted, while the sync sits in the trash.
    let report = h.engine.store().process_report(id).await.unwrap().unwrap();
    assert_eq!((report.messages.parked, report.is_done()), (4, false));
    // The operator fixes the cause and approves the sync's message: it re-runs at the failed
    // node, succeeds, and its process's clean end releases the key.
    target.broken.lock().unwrap().clear();
    assert!(
        h.engine
            .store()
            .act_on_trash(sync_message, TrashAction::Approve, "test")
            .await
            .unwrap()
    );
    let report = h.wait(id).await;
    assert_eq!(report.messages.trash, 0, "{report:#?}");
    assert_eq!(target.products.lock().unwrap().len(), 4);
    let sync = h.wait(report.children[0]).await;
    assert_eq!((sync.messages.trash, sync.messages.rejected), (0, 0));
    assert!(
        !h.engine
            .store()
            .act_on_trash(sync_message, TrashAction::Approve, "test")
            .await
            .unwrap(),
        "no longer in the trash"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejecting_the_failed_sync_sends_the_waiting_messages_to_the_trash() {
    use mend_store::{TrashAction, TrashStore};
    let (url, target) = target().await;
    target.parents.lock().unwrap().insert(5, None);
    target.broken.lock().unwrap().insert(5);
    let [p, c] = topologies("10m");
    let h = harness(&url, &[&p, &c], 4).await;
    let (id, sync_message) = parked_behind_failed_sync(&h).await;
    assert!(
        h.engine
            .store()
            .act_on_trash(sync_message, TrashAction::Reject, "test")
            .await
            .unwrap()
    );
    let report = h.wait(id).await;
    assert_eq!(report.messages.trash, 4, "{report:#?}");
    for t in &report.trash {
        assert_eq!(t.error.as_deref(), Some("prerequisite category:5 rejected"));
    }
    let sync = h.wait(report.children[0]).await;
    assert_eq!((sync.messages.trash, sync.messages.rejected), (0, 1));
    assert_eq!(h.scalar("SELECT count(*) FROM park_keys"), 0);
    assert_eq!(
        h.scalar("SELECT count(*) FROM trash_actions WHERE action = 'reject'"),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_set_to_invalidate_forgets_the_key_on_release() {
    let (url, target) = target().await;
    target.parents.lock().unwrap().insert(3, None);
    let p = PRODUCTS.replace("MAX_WAIT", "10m").replace(
        "        check: { system: target, get: \"/categories/{{ payload.category_id }}\" }",
        "        check: { system: target, get: \"/categories/{{ payload.category_id }}\" }\n        cache: { ttl: 10m, on_release: invalidate }",
    );
    assert!(p.contains("on_release"));
    let h = harness(&url, &[&p, CATEGORY_SYNC], 4).await;
    let report = h.run(products(20, |_| 3)).await;
    assert_eq!(report.messages.trash, 0, "{report:#?}");
    assert_eq!(target.products.lock().unwrap().len(), 20);
    assert_eq!(
        h.scalar("SELECT count(*) FROM cache_entries WHERE key = 'category:3'"),
        0
    );
    assert_eq!(
        h.scalar("SELECT count(*) FROM releases WHERE key = 'category:3'"),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_message_takes_over_a_key_whose_sync_died() {
    let (url, target) = target().await;
    target.parents.lock().unwrap().insert(5, None);
    target.broken.lock().unwrap().insert(5);
    let [p, c] = topologies("10m");
    let h = harness(&url, &[&p, &c], 4).await;
    let (first, _sync_message) = parked_behind_failed_sync(&h).await;
    // The cause goes away by itself; a new product of the same category arrives. It does not
    // join the dead sync: it asks, parks and opens a new one, whose success releases everyone.
    target.broken.lock().unwrap().clear();
    let second = h
        .engine
        .start(
            "products",
            "run",
            json!({"products": [{"id": 99, "category_id": 5}]}),
            Default::default(),
        )
        .await
        .unwrap();
    let (a, b) = (h.wait(first).await, h.wait(second).await);
    assert_eq!(
        (a.messages.trash, b.messages.trash),
        (0, 0),
        "{a:#?} {b:#?}"
    );
    assert_eq!(target.products.lock().unwrap().len(), 5);
    assert_eq!(
        h.scalar("SELECT count(*) FROM processes WHERE topology = 'category-sync'"),
        2
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cycle_that_closes_through_two_syncs_in_flight_is_named_not_waited_out() {
    let (url, target) = target().await;
    {
        let mut parents = target.parents.lock().unwrap();
        parents.insert(1, Some(2));
        parents.insert(2, Some(1));
    }
    let [p, c] = topologies("10m");
    let h = harness(&url, &[&p, &c], 8).await;
    // Products of both categories at once: each category's sync joins the other's.
    let report = h.run(products(6, |i| if i % 2 == 0 { 1 } else { 2 })).await;
    assert_eq!(report.messages.trash, 6, "{report:#?}");
    for t in &report.trash {
        let e = t.error.as_deref().unwrap();
        assert!(e.starts_with("prerequisite cycle: category:"), "{e}");
    }
    assert_eq!(
        h.scalar("SELECT count(*) FROM messages WHERE state = 'parked'"),
        0,
        "no deadlock left behind"
    );
    assert_eq!(target.count("POST /products"), 0);
}

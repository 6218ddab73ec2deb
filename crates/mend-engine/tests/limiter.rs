//! The per-system limiter against a real server on 127.0.0.1: a 429 with Retry-After pauses
//! the system, a rate caps requests per second (plus the burst), a concurrency cap bounds
//! requests in flight, and messages wait in the visible `limited` state instead of failing.

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use mend_core::load::load_sources;
use mend_engine::{Engine, EngineConfig};
use mend_store::ProcessReport;
use mend_store_sqlite::SqliteStore;
use serde_json::json;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Default)]
struct Target {
    arrivals: Arc<Mutex<Vec<Instant>>>,
    now: Arc<AtomicUsize>,
    peak: Arc<AtomicUsize>,
    /// Answer 429 + Retry-After: 1 to the first request.
    throttle_first: bool,
}

async fn item(State(t): State<Target>) -> Response {
    let n = {
        let mut a = t.arrivals.lock().unwrap();
        a.push(Instant::now());
        a.len()
    };
    if t.throttle_first && n == 1 {
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [("retry-after", "1")],
            "slow down",
        )
            .into_response();
    }
    let now = t.now.fetch_add(1, SeqCst) + 1;
    t.peak.fetch_max(now, SeqCst);
    tokio::time::sleep(Duration::from_millis(30)).await;
    t.now.fetch_sub(1, SeqCst);
    StatusCode::CREATED.into_response()
}

async fn target(throttle_first: bool) -> (String, Target) {
    let t = Target {
        throttle_first,
        ..Target::default()
    };
    let app = Router::new()
        .route("/items", post(item))
        .with_state(t.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, t)
}

async fn run(
    url: &str,
    system: &str,
    items: usize,
) -> (ProcessReport, CancellationToken, tempfile::TempDir) {
    let topology = format!(
        r#"
name: push
systems:
  target: {{ url: "{url}", {system} }}
events:
  run: fan
nodes:
  fan:
    split: {{ items: .items }}
    next: send
  send:
    http: {{ system: target, post: /items }}
    retry: {{ attempts: 2, base: 10ms }}
"#
    );
    let dir = tempfile::tempdir().unwrap();
    let catalog = load_sources(vec![(PathBuf::from("push.yaml"), topology)])
        .unwrap_or_else(|e| panic!("{e}"));
    let store = SqliteStore::open(&dir.path().join("m.db")).unwrap();
    let config = EngineConfig {
        workers: 16,
        poll: Duration::from_millis(20),
        ..EngineConfig::default()
    };
    let engine = Engine::new(store, Arc::new(catalog), config).await.unwrap();
    let token = CancellationToken::new();
    let (runner, t) = (engine.clone(), token.clone());
    tokio::spawn(async move { runner.run(t).await.unwrap() });
    let id = engine
        .start(
            "push",
            "run",
            json!({"items": (0..items).collect::<Vec<_>>()}),
            Default::default(),
        )
        .await
        .unwrap();
    let report = tokio::time::timeout(
        Duration::from_secs(60),
        engine.wait_done(id, Duration::from_millis(20)),
    )
    .await
    .expect("bounds a hang, not a speed check")
    .unwrap();
    (report, token, dir)
}

fn limited(r: &ProcessReport) -> u64 {
    r.nodes["send"].get("limited").copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_429_with_retry_after_pauses_the_system_and_everything_completes() {
    let (url, t) = target(true).await;
    // One request at a time, so the 429 is back before anything else is sent; requests
    // already in flight when a 429 arrives cannot be called back.
    let (report, token, _dir) = run(&url, "max_concurrent: 1", 12).await;
    token.cancel();
    assert_eq!(report.messages.trash, 0, "{report:#?}");
    assert_eq!(report.nodes["send"]["ok"], 12);
    assert_eq!(
        report.nodes["send"].get("retry"),
        None,
        "a 429 costs no attempt"
    );
    let arrivals = t.arrivals.lock().unwrap();
    assert_eq!(
        arrivals.len(),
        13,
        "the throttled request is sent again, once"
    );
    let first = arrivals[0];
    assert!(
        arrivals[1..]
            .iter()
            .all(|a| a.duration_since(first) >= Duration::from_millis(1000)),
        "no request during the Retry-After second: {:?}",
        arrivals
            .iter()
            .map(|a| a.duration_since(first))
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rate_caps_requests_per_second_and_waiting_messages_are_limited_not_failed() {
    let (url, t) = target(false).await;
    let (report, token, _dir) = run(&url, "rate: 20/s, burst: 5", 40).await;
    token.cancel();
    assert_eq!(report.messages.trash, 0, "{report:#?}");
    assert_eq!(report.nodes["send"]["ok"], 40);
    assert!(
        limited(&report) > 0,
        "messages waited in the limited state: {report:#?}"
    );
    let arrivals = t.arrivals.lock().unwrap();
    assert_eq!(arrivals.len(), 40);
    // In any window of one second at most the burst plus one second's worth arrive (one
    // more for a request landing right on the window's edge).
    for (i, start) in arrivals.iter().enumerate() {
        let within = arrivals[i..]
            .iter()
            .filter(|a| a.duration_since(*start) < Duration::from_secs(1))
            .count();
        assert!(within <= 5 + 20 + 1, "{within} requests within one second");
    }
    let span = arrivals[39].duration_since(arrivals[0]);
    assert!(
        span >= Duration::from_millis(1000),
        "40 requests at 20/s with a burst of 5 take over a second: {span:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_concurrent_bounds_requests_in_flight() {
    let (url, t) = target(false).await;
    let (report, token, _dir) = run(&url, "max_concurrent: 2", 20).await;
    token.cancel();
    assert_eq!(report.nodes["send"]["ok"], 20);
    let peak = t.peak.load(SeqCst);
    assert!((1..=2).contains(&peak), "at most 2 in flight, saw {peak}");
}

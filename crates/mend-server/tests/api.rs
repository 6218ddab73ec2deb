//! The HTTP API against a real server on 127.0.0.1: start events, process reports, webhooks,
//! and clear 4xx answers for bad input.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mend_core::load::load_sources;
use mend_engine::{Engine, EngineConfig};
use mend_store_sqlite::SqliteStore;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const TOPOLOGY: &str = r#"
name: echo
events:
  run: shape
  hook: { node: shape, webhook: { token_env: MEND_TEST_HOOK_TOKEN } }
  hold: wait
nodes:
  shape:
    map: "{n: (.n + 1)}"
  wait:
    park: { key: "k:{{ payload.k }}", resume: shape, max_wait: 1h }
"#;

struct Api {
    base: String,
    client: reqwest::Client,
    token: CancellationToken,
    _dir: tempfile::TempDir,
}

impl Drop for Api {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

async fn api() -> Api {
    api_with(None).await
}

async fn api_with(api_token: Option<&str>) -> Api {
    let dir = tempfile::tempdir().unwrap();
    let catalog = load_sources(vec![(PathBuf::from("echo.yaml"), TOPOLOGY.to_owned())]).unwrap();
    let store = SqliteStore::open(&dir.path().join("mend.db")).unwrap();
    let config = EngineConfig {
        poll: Duration::from_millis(20),
        ..EngineConfig::default()
    };
    let engine = Engine::new(store, Arc::new(catalog), config).await.unwrap();
    let token = CancellationToken::new();
    let (runner, t) = (engine.clone(), token.clone());
    tokio::spawn(async move { runner.run(t).await.unwrap() });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let t = token.clone();
    tokio::spawn(mend_server::serve(
        listener,
        engine,
        mend_server::ServerConfig {
            api_token: api_token.map(str::to_owned),
        },
        async move { t.cancelled().await },
    ));
    Api {
        base,
        client: reqwest::Client::new(),
        token,
        _dir: dir,
    }
}

impl Api {
    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&str>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_owned());
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn post(&self, path: &str, body: &str) -> (u16, Value) {
        self.send(reqwest::Method::POST, path, Some(body), &[])
            .await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, path, None, &[]).await
    }

    async fn wait_done(&self, id: &str) -> Value {
        for _ in 0..500 {
            let (status, report) = self.get(&format!("/api/processes/{id}")).await;
            assert_eq!(status, 200, "{report}");
            if report["state"] == "done" {
                return report;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("process {id} did not finish");
    }
}

#[tokio::test]
async fn a_start_event_opens_a_process_whose_report_adds_up() {
    let api = api().await;
    let (status, body) = api
        .post("/api/topologies/echo/events/run", r#"{"n": 41}"#)
        .await;
    assert_eq!(status, 202, "{body}");
    let id = body["process_id"].as_str().unwrap().to_owned();
    let report = api.wait_done(&id).await;
    assert_eq!(report["messages"]["total"], 1);
    assert_eq!(report["messages"]["done"], 1);
    assert_eq!(report["nodes"]["shape"]["ok"], 1);
    assert!(report["duration_ms"].as_i64().unwrap() >= 0);
    let (status, list) = api.get("/api/topologies").await;
    assert_eq!(status, 200);
    assert_eq!(list[0]["name"], "echo");
    assert_eq!(list[0]["events"][1]["webhook"], true);
    let (status, health) = api.get("/health").await;
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
}

#[tokio::test]
async fn bad_requests_get_a_4xx_with_a_message() {
    let api = api().await;
    let (status, body) = api
        .post("/api/topologies/echo/events/run", "{not json")
        .await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("not valid JSON"),
        "{body}"
    );

    let (status, body) = api.post("/api/topologies/nope/events/run", "{}").await;
    assert_eq!(status, 404);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("unknown topology `nope`"),
        "{body}"
    );

    let (status, body) = api.post("/api/topologies/echo/events/nope", "{}").await;
    assert_eq!(status, 404);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("no start event `nope`"),
        "{body}"
    );

    let (status, body) = api.get("/api/processes/not-a-uuid").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = api
        .get("/api/processes/01a23cd6-f1a0-70ef-8964-4ad14d216989")
        .await;
    assert_eq!(status, 404);
    assert!(
        body["error"].as_str().unwrap().contains("no process"),
        "{body}"
    );

    let (status, body) = api.get("/api/nothing/here").await;
    assert_eq!(status, 404);
    assert!(body["error"].is_string());
}

#[tokio::test]
async fn webhooks_need_their_token() {
    // The variable name is unique to this test, so setting it cannot disturb other tests.
    // SAFETY: no other thread of this test binary reads or writes MEND_TEST_HOOK_TOKEN.
    unsafe { std::env::set_var("MEND_TEST_HOOK_TOKEN", "hook-secret") };
    let api = api().await;
    let (status, body) = api.post("/hooks/echo/hook", r#"{"n": 1}"#).await;
    assert_eq!(status, 401, "{body}");
    let (status, _) = api
        .send(
            reqwest::Method::POST,
            "/hooks/echo/hook",
            Some("{}"),
            &[("authorization", "Bearer wrong")],
        )
        .await;
    assert_eq!(status, 401);
    let (status, body) = api.post("/hooks/echo/run", "{}").await;
    assert_eq!(
        status, 404,
        "an event without a webhook is not a webhook: {body}"
    );
    let (status, body) = api.post("/api/topologies/echo/events/hook", "{}").await;
    assert_eq!(
        status, 403,
        "the API does not bypass the webhook's token: {body}"
    );
    let (status, body) = api
        .send(
            reqwest::Method::POST,
            "/hooks/echo/hook",
            Some(r#"{"n": 1}"#),
            &[("authorization", "Bearer hook-secret")],
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let report = api.wait_done(body["process_id"].as_str().unwrap()).await;
    assert_eq!(report["event"], "hook");
}

#[tokio::test]
async fn parked_keys_are_listed_and_released_by_hand() {
    let api = api().await;
    let (status, body) = api
        .post("/api/topologies/echo/events/hold", r#"{"k": 7, "n": 1}"#)
        .await;
    assert_eq!(status, 202, "{body}");
    let id = body["process_id"].as_str().unwrap().to_owned();
    let mut listed = Value::Null;
    for _ in 0..500 {
        let (_, parked) = api.get("/api/parked").await;
        if parked[0]["parked"] == 1 {
            listed = parked;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(listed[0]["key"], "k:7", "{listed}");
    let (status, report) = api.get(&format!("/api/processes/{id}")).await;
    assert_eq!((status, report["state"].as_str()), (200, Some("running")));
    assert_eq!(report["messages"]["parked"], 1);
    let (status, released) = api.post("/api/keys/k:7/release", "").await;
    assert_eq!(status, 200, "{released}");
    assert_eq!(released["resumed"], 1);
    let report = api.wait_done(&id).await;
    assert_eq!(report["nodes"]["shape"]["ok"], 1);
    assert_eq!(report["messages"]["parked"], 0);
    let (_, parked) = api.get("/api/parked").await;
    assert_eq!(parked, serde_json::json!([]));
}

#[tokio::test]
async fn trash_entries_are_listed_shown_approved_and_rejected() {
    let api = api().await;
    // `shape` fails for a payload whose `n` is not a number: the message goes to the trash.
    let (status, body) = api
        .post("/api/topologies/echo/events/run", r#"{"n": "x"}"#)
        .await;
    assert_eq!(status, 202, "{body}");
    let id = body["process_id"].as_str().unwrap().to_owned();
    let report = api.wait_done(&id).await;
    assert_eq!(report["messages"]["trash"], 1);
    let (status, list) = api.get("/api/trash?topology=echo").await;
    assert_eq!(status, 200);
    let entry = &list[0];
    assert_eq!(entry["node"], "shape");
    assert!(
        entry["error"].as_str().unwrap().contains("jq error"),
        "{entry}"
    );
    let mid = entry["message_id"].as_str().unwrap().to_owned();
    let (status, shown) = api.get(&format!("/api/trash/{mid}")).await;
    assert_eq!((status, shown["payload"]["n"].as_str()), (200, Some("x")));
    assert_eq!(shown["attempts"].as_array().unwrap().len(), 1);
    let (status, _) = api.post(&format!("/api/trash/{mid}/explode"), "").await;
    assert_eq!(status, 404);
    let (status, _) = api.post("/api/trash/not-an-id/approve", "").await;
    assert_eq!(status, 400);
    // Approve: it runs again at `shape`, fails again the same way, and is back in the trash.
    let (status, body) = api.post(&format!("/api/trash/{mid}/approve"), "").await;
    assert_eq!(status, 200, "{body}");
    let report = api.wait_done(&id).await;
    assert_eq!(report["messages"]["trash"], 1);
    let (_, shown) = api.get(&format!("/api/trash/{mid}")).await;
    assert_eq!(
        shown["attempts"].as_array().unwrap().len(),
        2,
        "the history keeps both runs"
    );
    // Reject: closed, counted, and no longer in the trash.
    let (status, _) = api.post(&format!("/api/trash/{mid}/reject"), "").await;
    assert_eq!(status, 200);
    let (_, report) = api.get(&format!("/api/processes/{id}")).await;
    assert_eq!(
        (
            report["messages"]["trash"].as_u64(),
            report["messages"]["rejected"].as_u64()
        ),
        (Some(0), Some(1))
    );
    let (status, _) = api.post(&format!("/api/trash/{mid}/reject"), "").await;
    assert_eq!(status, 404, "a rejected entry is no longer in the trash");
}

#[tokio::test]
async fn with_a_token_every_api_route_needs_it_but_health_does_not() {
    let api = api_with(Some("s3cret")).await;
    let id = "01a23cd6-f1a0-70ef-8964-4ad14d216989";
    let routes = [
        ("GET", "/api/topologies".to_owned()),
        ("POST", "/api/topologies/echo/events/run".to_owned()),
        ("GET", "/api/processes".to_owned()),
        ("GET", format!("/api/processes/{id}")),
        ("GET", format!("/api/processes/{id}/trace")),
        ("GET", "/api/status".to_owned()),
        ("GET", "/api/heatmap".to_owned()),
        ("GET", "/api/limiter".to_owned()),
        ("GET", "/api/parked".to_owned()),
        ("POST", "/api/keys/k:1/release".to_owned()),
        ("POST", "/api/keys/k:1/drop".to_owned()),
        ("GET", "/api/trash".to_owned()),
        ("GET", format!("/api/trash/{id}")),
        ("POST", format!("/api/trash/{id}/edit")),
        ("POST", format!("/api/trash/{id}/approve")),
        ("POST", format!("/api/trash/{id}/reject")),
        ("POST", "/api/trash/bulk".to_owned()),
        ("GET", "/metrics".to_owned()),
    ];
    for (method, path) in &routes {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let (status, body) = api.send(m, path, Some("{}"), &[]).await;
        assert_eq!(status, 401, "{method} {path}: {body}");
        assert!(
            body["error"].as_str().unwrap().contains("Bearer"),
            "{method} {path}: {body}"
        );
    }
    let (status, _) = api
        .send(
            reqwest::Method::GET,
            "/api/topologies",
            None,
            &[("authorization", "Bearer nope")],
        )
        .await;
    assert_eq!(status, 401);
    let (status, list) = api
        .send(
            reqwest::Method::GET,
            "/api/topologies",
            None,
            &[("authorization", "Bearer s3cret")],
        )
        .await;
    assert_eq!((status, list[0]["name"].as_str()), (200, Some("echo")));
    let (status, _) = api.post("/api/topologies/echo/events/run", "{}").await;
    assert_eq!(status, 401, "starting an event needs the token too");
    let (status, _) = api.get("/health").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn operator_views_answer_with_their_shapes() {
    let api = api().await;
    let (status, body) = api
        .post("/api/topologies/echo/events/run", r#"{"n": 1}"#)
        .await;
    assert_eq!(status, 202, "{body}");
    let id = body["process_id"].as_str().unwrap().to_owned();
    api.wait_done(&id).await;
    let (status, list) = api.get("/api/processes?topology=echo&state=done").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list[0]["id"], id.as_str());
    assert_eq!(list[0]["messages"]["done"], 1);
    let (status, trace) = api.get(&format!("/api/processes/{id}/trace")).await;
    assert_eq!(status, 200);
    assert_eq!(trace["processes"].as_array().unwrap().len(), 1);
    assert_eq!(trace["messages"][0]["node"], "shape");
    let (status, _) = api
        .get("/api/processes/01a23cd6-f1a0-70ef-8964-4ad14d216989/trace")
        .await;
    assert_eq!(status, 404);
    let (status, s) = api.get("/api/status").await;
    assert_eq!((status, s["processes"]["done"].as_u64()), (200, Some(1)));
    let (status, heat) = api.get("/api/heatmap?window=1h").await;
    assert_eq!(status, 200);
    assert_eq!(heat["buckets"], 60);
    let row = heat["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["node"] == "shape")
        .unwrap();
    assert_eq!(
        row["counts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_u64().unwrap())
            .sum::<u64>(),
        1
    );
    let (status, body) = api.get("/api/heatmap?window=2w").await;
    assert_eq!(status, 400, "{body}");
    let (status, limiter) = api.get("/api/limiter").await;
    assert_eq!(
        (status, limiter.as_array().map(Vec::len)),
        (200, Some(0)),
        "the echo topology calls no system"
    );
}

#[tokio::test]
async fn edit_and_bulk_actions_validate_their_input() {
    let api = api().await;
    for n in ["x", "y"] {
        let (status, _) = api
            .post(
                "/api/topologies/echo/events/run",
                &format!(r#"{{"n": "{n}"}}"#),
            )
            .await;
        assert_eq!(status, 202);
    }
    let mut entries = Value::Null;
    for _ in 0..500 {
        let (_, list) = api.get("/api/trash?topology=echo").await;
        if list.as_array().map(Vec::len) == Some(2) {
            entries = list;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mid = entries[0]["message_id"]
        .as_str()
        .expect("two trash entries")
        .to_owned();
    let (status, body) = api
        .post(&format!("/api/trash/{mid}/edit"), "{not json")
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = api.post(&format!("/api/trash/{mid}/edit"), "{}").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = api
        .post(
            &format!("/api/trash/{mid}/edit"),
            r#"{"payload": {"n": 41}}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // The edited message runs again and succeeds; the other one is still in the trash.
    for _ in 0..500 {
        let (_, list) = api.get("/api/trash?topology=echo").await;
        if list.as_array().map(Vec::len) == Some(1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body) = api
        .post("/api/trash/bulk", r#"{"action": "explode"}"#)
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = api
        .post(
            "/api/trash/bulk",
            r#"{"action": "reject", "filter": {"topology": "echo"}}"#,
        )
        .await;
    assert_eq!((status, body["count"].as_u64()), (200, Some(1)), "{body}");
    let (_, list) = api.get("/api/trash").await;
    assert_eq!(list, serde_json::json!([]));
}

#[tokio::test]
async fn metrics_are_served_in_the_prometheus_format() {
    let api = api().await;
    let (status, body) = api
        .post("/api/topologies/echo/events/run", r#"{"n": 1}"#)
        .await;
    assert_eq!(status, 202);
    api.wait_done(body["process_id"].as_str().unwrap()).await;
    let resp = api
        .client
        .get(format!("{}/metrics", api.base))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let text = String::from_utf8_lossy(&resp.bytes().await.unwrap()).into_owned();
    assert!(
        text.contains("# TYPE mend_queue_depth_messages gauge"),
        "{text}"
    );
    assert!(text.contains("mend_trash_messages "), "{text}");
    assert!(
        text.lines().any(|l| l.starts_with("mend_messages_total{")
            && l.contains("node=\"shape\"")
            && l.contains("outcome=\"ok\"")),
        "{text}"
    );
}

#[tokio::test]
async fn the_openapi_document_describes_every_route() {
    let api = api_with(Some("s3cret")).await;
    let (status, doc) = api.get("/api/openapi.json").await;
    assert_eq!(status, 200, "the document is readable without the token");
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{doc}");
    for path in [
        "/api/topologies/{topology}/events/{event}",
        "/api/processes",
        "/api/processes/{id}",
        "/api/processes/{id}/trace",
        "/api/trash",
        "/api/trash/{id}/edit",
        "/api/trash/bulk",
        "/api/parked",
        "/api/keys/{key}/release",
        "/api/limiter",
        "/api/heatmap",
        "/hooks/{topology}/{event}",
    ] {
        assert!(
            doc["paths"][path].is_object(),
            "{path} is missing from the document"
        );
    }
    for schema in [
        "ProcessReport",
        "TrashDetail",
        "ErrorBody",
        "ParkedKey",
        "Heatmap",
    ] {
        assert!(
            doc["components"]["schemas"][schema].is_object(),
            "schema {schema} is missing"
        );
    }
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}

#[tokio::test]
async fn bulk_approve_by_filter_reruns_every_matching_entry() {
    let api = api().await;
    let mut ids = Vec::new();
    for n in ["a", "b", "c"] {
        let (_, body) = api
            .post(
                "/api/topologies/echo/events/run",
                &format!(r#"{{"n": "{n}"}}"#),
            )
            .await;
        ids.push(body["process_id"].as_str().unwrap().to_owned());
    }
    for id in &ids {
        api.wait_done(id).await;
    }
    let now = mend_core::clock::now_ms();
    let (_, list) = api
        .get(&format!("/api/trash?topology=echo&since={}", now - 60_000))
        .await;
    assert_eq!(list.as_array().unwrap().len(), 3, "{list}");
    let (_, none) = api
        .get(&format!("/api/trash?topology=echo&until={}", now - 60_000))
        .await;
    assert_eq!(
        none,
        serde_json::json!([]),
        "nothing failed more than a minute ago"
    );
    let (status, body) = api
        .post(
            "/api/trash/bulk",
            r#"{"action": "approve", "filter": {"topology": "echo", "node": "shape"}}"#,
        )
        .await;
    assert_eq!((status, body["count"].as_u64()), (200, Some(3)), "{body}");
    // They run again (and fail again the same way): each process ran `shape` twice.
    for id in &ids {
        let mut report = Value::Null;
        for _ in 0..500 {
            let (_, r) = api.get(&format!("/api/processes/{id}")).await;
            if r["state"] == "done" && r["nodes"]["shape"]["error"] == 2 {
                report = r;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(report["messages"]["trash"], 1, "{report}");
    }
}

#[tokio::test]
async fn bad_query_strings_and_unfiltered_bulk_actions_get_json_400s() {
    let api = api().await;
    let (status, body) = api.get("/api/processes?state=sideways").await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("bad query string"),
        "{body}"
    );
    let (status, body) = api.get("/api/trash?limit=lots").await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = api.post("/api/trash/bulk", r#"{"action": "reject"}"#).await;
    assert_eq!(status, 400);
    assert!(
        body["error"].as_str().unwrap().contains("needs a filter"),
        "{body}"
    );
    let (status, body) = api
        .post(
            "/api/trash/bulk",
            r#"{"action": "reject", "filter": {"error": ""}}"#,
        )
        .await;
    assert_eq!(status, 400, "an empty filter field is no filter: {body}");
    let (status, body) = api
        .post("/api/trash/bulk", r#"{"action": "reject", "all": true}"#)
        .await;
    assert_eq!((status, body["count"].as_u64()), (200, Some(0)), "{body}");
    // A page on another site cannot drive the API through the operator's browser.
    let (status, body) = api
        .send(
            reqwest::Method::POST,
            "/api/trash/bulk",
            Some(r#"{"action": "reject", "all": true}"#),
            &[("origin", "http://evil.example")],
        )
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, _) = api
        .send(
            reqwest::Method::GET,
            "/api/status",
            None,
            &[("sec-fetch-site", "cross-site")],
        )
        .await;
    assert_eq!(status, 403);
    let origin = api.base.clone();
    let (status, _) = api
        .send(
            reqwest::Method::GET,
            "/api/status",
            None,
            &[("origin", origin.as_str())],
        )
        .await;
    assert_eq!(status, 200, "same origin is fine");
}

//! The HTTP surface of `mend serve`: start events, webhooks, process reports and health.
//!
//! Key types: [`router`] builds the axum router over an [`Engine`]; [`ApiError`] is every
//! error answer, always a JSON body `{"error": "..."}` with a 4xx/5xx status.

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use mend_core::ids::ProcessId;
use mend_core::message::Headers;
use mend_engine::{Engine, StartError};
use mend_store::Store;
use serde_json::{Value, json};

pub mod metrics;
mod ui;

/// Query parameters whose errors are answered like every other error: 400 with a JSON body
/// naming the parameter.
pub struct JsonQuery<T>(pub T);

impl<T, St> axum::extract::FromRequestParts<St> for JsonQuery<T>
where
    T: serde::de::DeserializeOwned,
    St: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &St,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| JsonQuery(v))
            .map_err(|e| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("bad query string: {}", e.body_text()),
                )
            })
    }
}

/// The body of every error answer.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// What was wrong, and what to do.
    pub error: String,
}

/// The OpenAPI document of this API, generated from the handlers' annotations.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "mend", description = "The HTTP API of mend serve: start events, processes, prerequisites, trash, limiter, heatmap."),
    paths(
        health, topologies, start_event, processes, process, trace, status, heatmap, limiter, parked,
        release, drop_key, trash_list, trash_show, trash_edit, trash_act, trash_bulk, webhook
    ),
    components(schemas(ErrorBody)),
    modifiers(&BearerAuth)
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        openapi.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
    }
}

async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(<ApiDoc as utoipa::OpenApi>::openapi())
}

/// An error answer: status plus a sentence saying what was wrong.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({ "error": self.message }))).into_response()
    }
}

impl From<StartError> for ApiError {
    fn from(e: StartError) -> Self {
        let status = match e {
            StartError::UnknownTopology { .. } | StartError::UnknownEvent { .. } => {
                StatusCode::NOT_FOUND
            }
            StartError::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        Self::new(status, e.to_string())
    }
}

impl From<mend_store::StoreError> for ApiError {
    fn from(e: mend_store::StoreError) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
    }
}

/// How the server is set up.
#[derive(Clone, Debug, Default)]
pub struct ServerConfig {
    /// When set, every `/api` route requires `Authorization: Bearer <token>`.
    pub api_token: Option<String>,
}

/// Rejects `/api` requests without the configured bearer token.
async fn require_token(
    State(config): State<std::sync::Arc<ServerConfig>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // A web page elsewhere must not drive the API through an operator's browser (the API may
    // run without a token on loopback): refuse cross-site browser requests.
    let headers = request.headers();
    let cross_site =
        headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) == Some("cross-site");
    let foreign_origin = match (
        headers.get("origin").and_then(|v| v.to_str().ok()),
        headers.get("host").and_then(|v| v.to_str().ok()),
    ) {
        (Some(origin), Some(host)) => {
            let origin_host = origin.split_once("://").map(|(_, h)| h).unwrap_or(origin);
            origin_host != host
        }
        (Some(_), None) => true,
        _ => false,
    };
    if cross_site || foreign_origin {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "cross-site requests to the API are refused",
        )
        .into_response();
    }
    if let Some(expected) = &config.api_token {
        let given = request
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match given {
            Some(t) if same_secret(t.as_bytes(), expected.as_bytes()) => {}
            Some(_) => {
                return ApiError::new(StatusCode::UNAUTHORIZED, "wrong API token").into_response();
            }
            None => {
                return ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "this API needs `Authorization: Bearer TOKEN` (the token mend serve was started with)",
                )
                .into_response();
            }
        }
    }
    next.run(request).await
}

pub fn router<S: Store>(engine: Engine<S>, config: ServerConfig) -> Router {
    metrics::handle();
    let config = std::sync::Arc::new(config);
    let api = Router::new()
        .route("/api/topologies", get(topologies::<S>))
        .route(
            "/api/topologies/{topology}/events/{event}",
            post(start_event::<S>),
        )
        .route("/api/processes/{id}", get(process::<S>))
        .route("/api/parked", get(parked::<S>))
        .route("/api/processes", get(processes::<S>))
        .route("/api/processes/{id}/trace", get(trace::<S>))
        .route("/api/status", get(status::<S>))
        .route("/api/heatmap", get(heatmap::<S>))
        .route("/api/limiter", get(limiter::<S>))
        .route("/api/trash/bulk", post(trash_bulk::<S>))
        .route("/api/keys/{key}/drop", post(drop_key::<S>))
        .route("/api/trash", get(trash_list::<S>))
        .route("/api/trash/{id}", get(trash_show::<S>))
        .route("/api/trash/{id}/edit", post(trash_edit::<S>))
        .route("/api/trash/{id}/{action}", post(trash_act::<S>))
        .route("/api/keys/{key}/release", post(release::<S>))
        .route("/metrics", get(metrics::scrape::<S>))
        .route_layer(axum::middleware::from_fn_with_state(config, require_token));
    Router::new()
        .route("/health", get(health))
        .route("/api/openapi.json", get(openapi_json))
        .route("/hooks/{topology}/{event}", post(webhook::<S>))
        .merge(api)
        .merge(ui::routes())
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no such route; see GET /api/topologies",
            )
        })
        .with_state(engine)
}

/// Serves the API on `listener` until `shutdown` completes.
pub async fn serve<S: Store>(
    listener: tokio::net::TcpListener,
    engine: Engine<S>,
    config: ServerConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(engine, config))
        .with_graceful_shutdown(shutdown)
        .await
}

#[utoipa::path(get, path = "/health", tag = "health", responses((status = 200, description = "The server is up")))]
async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

#[utoipa::path(get, path = "/api/topologies", tag = "topologies", responses((status = 200, description = "Loaded topologies with their events and nodes (edges, park resumes, detours)"), (status = 401, description = "API token missing or wrong", body = ErrorBody)))]
async fn topologies<S: Store>(State(engine): State<Engine<S>>) -> Json<Value> {
    let list: Vec<Value> = engine
        .catalog()
        .topologies
        .values()
        .map(|t| {
            json!({
                "name": t.name,
                "version": t.version,
                "description": t.description,
                "events": t.events.values().map(|e| json!({
                    "name": e.name,
                    "node": e.node,
                    "cron": e.cron.as_ref().map(|c| c.expression.clone()),
                    "webhook": e.webhook.is_some(),
                })).collect::<Vec<_>>(),
                "nodes": t.nodes.values().map(|n| node_json(&engine, n)).collect::<Vec<_>>(),
            })
        })
        .collect();
    Json(Value::Array(list))
}

/// An empty body is `{}`; anything else must be JSON.
fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the request body is not valid JSON: {e}"),
        )
    })
}

/// `X-Mend-Header-Name: value` request headers become message headers `name: value`.
fn message_headers(headers: &HeaderMap) -> Headers {
    headers
        .iter()
        .filter_map(|(k, v)| {
            let name = k.as_str().strip_prefix("x-mend-header-")?;
            Some((name.to_owned(), v.to_str().ok()?.to_owned()))
        })
        .collect()
}

#[utoipa::path(post, path = "/api/topologies/{topology}/events/{event}", tag = "topologies", params(("topology" = String, Path), ("event" = String, Path)), request_body(content = Object, description = "The start message's payload (an empty body is {})"), responses((status = 202, description = "Process opened: {\"process_id\": ...}"), (status = 400, description = "The body is not JSON", body = ErrorBody), (status = 403, description = "A webhook event: use /hooks", body = ErrorBody), (status = 404, description = "Unknown topology or event", body = ErrorBody), (status = 401, description = "API token missing or wrong", body = ErrorBody)))]
async fn start_event<S: Store>(
    State(engine): State<Engine<S>>,
    Path((topology, event)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    // A webhook event is guarded by its token: it is started at /hooks, not here, until the
    // API itself requires authentication.
    if let Some(e) = engine
        .catalog()
        .get(&topology)
        .and_then(|t| t.events.get(&event))
        && e.webhook.is_some()
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "`{event}` is a webhook event: POST it to /hooks/{topology}/{event} with its token"
            ),
        ));
    }
    let payload = parse_body(&body)?;
    let id = engine
        .start(&topology, &event, payload, message_headers(&headers))
        .await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "process_id": id }))))
}

#[utoipa::path(get, path = "/api/processes/{id}", tag = "processes", params(("id" = String, Path, description = "Process id")), responses((status = 200, body = mend_store::ProcessReport), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 401, description = "API token missing or wrong", body = ErrorBody)))]
async fn process<S: Store>(
    State(engine): State<Engine<S>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id: ProcessId = id.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("`{id}` is not a process id (a UUID)"),
        )
    })?;
    let report = engine
        .store()
        .process_report(id)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no process {id}")))?;
    Ok(Json(report_json(&report)))
}

#[utoipa::path(get, path = "/api/parked", tag = "prerequisites", responses((status = 200, body = Vec<mend_store::ParkedKey>), (status = 401, description = "API token missing or wrong", body = ErrorBody)))]
async fn parked<S: Store>(State(engine): State<Engine<S>>) -> Result<Json<Value>, ApiError> {
    let keys = engine.store().parked_keys().await?;
    Ok(Json(serde_json::to_value(keys).unwrap_or(Value::Null)))
}

/// Releases a key by hand: every message parked under it resumes.
#[utoipa::path(post, path = "/api/keys/{key}/release", tag = "prerequisites", params(("key" = String, Path)), responses((status = 200, body = mend_store::Released), (status = 401, description = "API token missing or wrong", body = ErrorBody)))]
async fn release<S: Store>(
    State(engine): State<Engine<S>>,
    Path(key): Path<String>,
) -> Result<Json<Value>, ApiError> {
    if key.trim().is_empty() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "the key is empty"));
    }
    let released = engine.release(&key, "operator (API)").await?;
    Ok(Json(serde_json::to_value(released).unwrap_or(Value::Null)))
}

#[utoipa::path(get, path = "/api/trash", tag = "trash", params(mend_store::TrashFilter), responses((status = 200, body = Vec<mend_store::TrashDetail>), (status = 401, description = "API token missing or wrong", body = ErrorBody)))]
async fn trash_list<S: Store>(
    State(engine): State<Engine<S>>,
    JsonQuery(filter): JsonQuery<mend_store::TrashFilter>,
) -> Result<Json<Value>, ApiError> {
    let entries = engine.store().list_trash(filter).await?;
    Ok(Json(serde_json::to_value(entries).unwrap_or(Value::Null)))
}

fn message_id(id: &str) -> Result<mend_core::ids::MessageId, ApiError> {
    id.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("`{id}` is not a message id (a UUID)"),
        )
    })
}

#[utoipa::path(get, path = "/api/trash/{id}", tag = "trash", params(("id" = String, Path)), responses((status = 200, body = mend_store::TrashDetail), (status = 404, body = ErrorBody), (status = 401, description = "API token missing or wrong", body = ErrorBody)))]
async fn trash_show<S: Store>(
    State(engine): State<Engine<S>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = message_id(&id)?;
    let entry = engine.store().trash_entry(id).await?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("message {id} is not in the trash"),
        )
    })?;
    Ok(Json(serde_json::to_value(entry).unwrap_or(Value::Null)))
}

#[utoipa::path(post, path = "/api/trash/{id}/{action}", tag = "trash", params(("id" = String, Path), ("action" = String, Path, description = "approve or reject")), responses((status = 200, description = "Done"), (status = 404, body = ErrorBody), (status = 401, description = "API token missing or wrong", body = ErrorBody)))]
async fn trash_act<S: Store>(
    State(engine): State<Engine<S>>,
    Path((id, action)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let id = message_id(&id)?;
    let action = match action.as_str() {
        "approve" => mend_store::TrashAction::Approve,
        "reject" => mend_store::TrashAction::Reject,
        other => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no trash action `{other}`; use approve or reject"),
            ));
        }
    };
    if !engine
        .store()
        .act_on_trash(id, action.clone(), "operator (API)")
        .await?
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("message {id} is not in the trash"),
        ));
    }
    Ok(Json(json!({ "message_id": id, "action": action })))
}

/// A node for pictures: its edges, where a park resumes, and where a detour goes.
fn node_json<S: Store>(engine: &Engine<S>, n: &mend_core::topology::Node) -> Value {
    use mend_core::topology::NodeKind;
    let (resume, detour) = match &n.kind {
        NodeKind::Park(p) => (Some(p.resume.clone()), p.sync.as_ref()),
        NodeKind::Send(s) => (None, Some(s)),
        _ => (None, None),
    };
    let detour = detour.map(|s| {
        let node = engine
            .catalog()
            .get(&s.topology)
            .and_then(|t| t.events.get(&s.event))
            .map(|e| e.node.clone());
        json!({ "topology": s.topology, "event": s.event, "node": node })
    });
    json!({
        "name": n.name,
        "kind": n.kind.kind_name(),
        "next": n.edges,
        "origin": n.origin,
        "resume": resume,
        "detour": detour,
        "system": n.system(),
        "concurrency": n.concurrency,
    })
}

fn to_json<T: serde::Serialize>(value: &T) -> Json<Value> {
    Json(serde_json::to_value(value).unwrap_or(Value::Null))
}

#[utoipa::path(get, path = "/api/processes", tag = "processes", params(mend_store::ProcessFilter), responses((status = 200, body = Vec<mend_store::ProcessSummary>), (status = 401, description = "API token missing or wrong", body = ErrorBody)))]
async fn processes<S: Store>(
    State(engine): State<Engine<S>>,
    JsonQuery(filter): JsonQuery<mend_store::ProcessFilter>,
) -> Result<Json<Value>, ApiError> {
    Ok(to_json(&engine.store().list_processes(filter).await?))
}

#[utoipa::path(get, path = "/api/processes/{id}/trace", tag = "processes", params(("id" = String, Path)), responses((status = 200, body = mend_store::Trace), (status = 404, body = ErrorBody), (status = 401, description = "API token missing or wrong", body = ErrorBody)))]
async fn trace<S: Store>(
    State(engine): State<Engine<S>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id: ProcessId = id.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("`{id}` is not a process id (a UUID)"),
        )
    })?;
    let trace = engine
        .store()
        .trace(id)
        .await?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no process {id}")))?;
    Ok(to_json(&trace))
}

#[utoipa::path(get, path = "/api/status", tag = "operations", responses((status = 200, description = "Processes running/done and messages by state"), (status = 401, description = "API token missing or wrong", body = ErrorBody)))]
async fn status<S: Store>(State(engine): State<Engine<S>>) -> Result<Json<Value>, ApiError> {
    let s = engine.store().status().await?;
    Ok(Json(json!({
        "processes": { "running": s.processes_running, "done": s.processes_done },
        "messages": {
            "queued": s.queued, "running": s.running, "retry": s.retry,
            "limited": s.limited, "parked": s.parked, "trash": s.trash,
        },
    })))
}

#[derive(serde::Deserialize)]
struct Window {
    window: Option<String>,
}

#[utoipa::path(get, path = "/api/heatmap", tag = "operations", params(("window" = Option<String>, Query, description = "1h (default), 24h or 7d")), responses((status = 200, body = mend_store::Heatmap), (status = 400, body = ErrorBody), (status = 401, description = "API token missing or wrong", body = ErrorBody)))]
async fn heatmap<S: Store>(
    State(engine): State<Engine<S>>,
    JsonQuery(w): JsonQuery<Window>,
) -> Result<Json<Value>, ApiError> {
    // 60 one-minute cells for an hour, 96 quarter-hours for a day, 168 hours for a week.
    let (bucket_ms, buckets) = match w.window.as_deref().unwrap_or("1h") {
        "1h" => (60_000, 60),
        "24h" => (15 * 60_000, 96),
        "7d" => (3_600_000, 168),
        other => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("window `{other}` is not one of 1h, 24h, 7d"),
            ));
        }
    };
    let map = engine
        .store()
        .heatmap(bucket_ms, buckets, mend_core::clock::now_ms())
        .await?;
    Ok(to_json(&map))
}

#[utoipa::path(get, path = "/api/limiter", tag = "operations", responses((status = 200, description = "Per system: limits, in flight, pause, waiting messages by topology and node"), (status = 401, description = "API token missing or wrong", body = ErrorBody)))]
async fn limiter<S: Store>(State(engine): State<Engine<S>>) -> Result<Json<Value>, ApiError> {
    Ok(Json(Value::Array(engine.limiter_view().await?)))
}

#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Edit {
    #[schema(value_type = Option<Object>)]
    payload: Option<Value>,
    headers: Option<mend_core::message::Headers>,
}

/// Replaces a trash entry's payload and/or headers, keeps the old ones in the audit trail, and
/// approves it.
#[utoipa::path(post, path = "/api/trash/{id}/edit", tag = "trash", params(("id" = String, Path)), request_body = Edit, responses((status = 200, description = "Edited and approved"), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 401, description = "API token missing or wrong", body = ErrorBody)))]
async fn trash_edit<S: Store>(
    State(engine): State<Engine<S>>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let id = message_id(&id)?;
    let edit: Edit = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the edit must be JSON like {{\"payload\": {{...}}, \"headers\": {{\"name\": \"value\"}}}}: {e}"),
        )
    })?;
    if edit.payload.is_none() && edit.headers.is_none() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "give `payload` and/or `headers` to change",
        ));
    }
    if !engine
        .store()
        .edit_trash(id, edit.payload, edit.headers, "operator (API)")
        .await?
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("message {id} is not in the trash"),
        ));
    }
    Ok(Json(json!({ "message_id": id, "action": "edit" })))
}

#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Bulk {
    action: mend_store::TrashAction,
    #[serde(default)]
    filter: mend_store::TrashFilter,
    /// Act on the whole trash: required when the filter is empty, so nobody does it by accident.
    #[serde(default)]
    all: bool,
}

#[utoipa::path(post, path = "/api/trash/bulk", tag = "trash", request_body = Bulk, responses((status = 200, description = "{\"count\": n}"), (status = 400, body = ErrorBody), (status = 401, description = "API token missing or wrong", body = ErrorBody)))]
async fn trash_bulk<S: Store>(
    State(engine): State<Engine<S>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let bulk: Bulk = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            format!("the body must be JSON like {{\"action\": \"approve\", \"filter\": {{\"topology\": \"products\"}}}}: {e}"),
        )
    })?;
    let given = |v: &Option<String>| v.as_deref().is_some_and(|s| !s.trim().is_empty());
    let f = &bulk.filter;
    let filtered = given(&f.topology)
        || given(&f.node)
        || given(&f.error)
        || f.process_id.is_some()
        || f.since.is_some()
        || f.until.is_some();
    if !filtered && !bulk.all {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "a bulk action needs a filter (topology, node, process_id, error, since or until), or \"all\": true to act on the whole trash",
        ));
    }
    let count = engine
        .store()
        .bulk_trash(bulk.filter, bulk.action, "operator (API, bulk)")
        .await?;
    Ok(Json(json!({ "count": count })))
}

#[utoipa::path(post, path = "/api/keys/{key}/drop", tag = "prerequisites", params(("key" = String, Path)), responses((status = 200, description = "{\"key\", \"count\"}: messages sent to the trash"), (status = 401, description = "API token missing or wrong", body = ErrorBody)))]
async fn drop_key<S: Store>(
    State(engine): State<Engine<S>>,
    Path(key): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let count = engine.store().drop_key(&key, "operator (API)").await?;
    Ok(Json(json!({ "key": key, "count": count })))
}

/// A process report as JSON, with its duration.
pub fn report_json(report: &mend_store::ProcessReport) -> Value {
    let mut v = serde_json::to_value(report).unwrap_or(Value::Null);
    if let (Value::Object(map), Some(end)) = (&mut v, report.finished_at) {
        map.insert("duration_ms".into(), json!(end - report.created_at));
    }
    v
}

/// Compares without an early exit, so the time taken says nothing about the token.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[utoipa::path(post, path = "/hooks/{topology}/{event}", tag = "topologies", params(("topology" = String, Path), ("event" = String, Path)), request_body(content = Object), responses((status = 202, description = "Process opened"), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody), (status = 503, description = "Token not configured", body = ErrorBody)))]
async fn webhook<S: Store>(
    State(engine): State<Engine<S>>,
    Path((topology, event)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no webhook `{event}` on topology `{topology}`"),
        )
    };
    let t = engine.catalog().get(&topology).ok_or_else(not_found)?;
    let hook = t
        .events
        .get(&event)
        .and_then(|e| e.webhook.clone())
        .ok_or_else(not_found)?;
    let expected = std::env::var(&hook.token_env)
        .ok()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "the webhook's token is not configured: set {} where mend serve runs",
                    hook.token_env
                ),
            )
        })?;
    let given = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .or_else(|| headers.get("x-mend-token").and_then(|v| v.to_str().ok()))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "send the webhook token as `Authorization: Bearer TOKEN`",
            )
        })?;
    if !same_secret(given.as_bytes(), expected.as_bytes()) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "wrong webhook token",
        ));
    }
    let payload = parse_body(&body)?;
    let id = engine
        .start(&topology, &event, payload, message_headers(&headers))
        .await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "process_id": id }))))
}

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

pub fn router<S: Store>(engine: Engine<S>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/api/topologies", get(topologies::<S>))
        .route(
            "/api/topologies/{topology}/events/{event}",
            post(start_event::<S>),
        )
        .route("/api/processes/{id}", get(process::<S>))
        .route("/api/parked", get(parked::<S>))
        .route("/api/trash", get(trash_list::<S>))
        .route("/api/trash/{id}", get(trash_show::<S>))
        .route("/api/trash/{id}/{action}", post(trash_act::<S>))
        .route("/api/keys/{key}/release", post(release::<S>))
        .route("/hooks/{topology}/{event}", post(webhook::<S>))
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
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(engine))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

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
                "nodes": t.nodes.values().map(|n| json!({
                    "name": n.name,
                    "kind": n.kind.kind_name(),
                    "next": n.edges,
                })).collect::<Vec<_>>(),
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

async fn parked<S: Store>(State(engine): State<Engine<S>>) -> Result<Json<Value>, ApiError> {
    let keys = engine.store().parked_keys().await?;
    Ok(Json(serde_json::to_value(keys).unwrap_or(Value::Null)))
}

/// Releases a key by hand: every message parked under it resumes.
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

async fn trash_list<S: Store>(
    State(engine): State<Engine<S>>,
    axum::extract::Query(filter): axum::extract::Query<mend_store::TrashFilter>,
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

//! The middleware in front of both simulators: it counts every request by route, applies
//! the rate limit, latency and injected faults of [`SimOptions`], and serves the counts.
//!
//! Key types: [`Gate`] is the shared state of one simulator's middleware; [`gate`] is the
//! axum middleware function; [`error`] builds every JSON error answer.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::options::{Fault, SimOptions};

/// The route whose requests are neither counted nor throttled.
const STATS_PATH: &str = "/stats";

/// A JSON error answer: `{"error": message, "code": code}`.
#[derive(Debug)]
pub(crate) struct Rejection {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl Rejection {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        let body = Json(json!({ "error": self.message, "code": self.code }));
        (self.status, body).into_response()
    }
}

/// A [`Rejection`] as a response.
pub(crate) fn error(
    status: StatusCode,
    code: &'static str,
    message: impl Into<String>,
) -> Response {
    Rejection::new(status, code, message).into_response()
}

/// The answer to an id in a path that is not a whole number.
pub(crate) fn bad_id(e: &PathRejection) -> Response {
    error(
        StatusCode::BAD_REQUEST,
        "bad_request",
        format!("{e}; ids are whole numbers"),
    )
}

/// The answer to `GET /{what}s/{id}`: the record, 404 when there is none, 400 for an id that
/// is not a whole number. `find` looks the id up.
pub(crate) fn by_id<T: Serialize>(
    what: &str,
    id: Result<axum::extract::Path<u64>, PathRejection>,
    find: impl FnOnce(u64) -> Option<T>,
) -> Response {
    let id = match id {
        Ok(axum::extract::Path(id)) => id,
        Err(e) => return bad_id(&e),
    };
    match find(id) {
        Some(record) => Json(record).into_response(),
        None => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{what} {id} does not exist"),
        ),
    }
}

/// The fallback of both routers.
pub(crate) async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not_found", "no such route")
}

/// The answer to a known route called with another method.
pub(crate) async fn method_not_allowed() -> Response {
    error(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
}

/// Request counts of one simulator, as served under `/stats`.
#[derive(Debug, Default, Clone, Serialize)]
pub(crate) struct Counts {
    /// Requests received per `METHOD /route/{pattern}`, whatever their answer.
    pub requests: BTreeMap<String, u64>,
    /// Sum of `requests`.
    pub requests_total: u64,
    /// Answers per route and status code.
    pub responses: BTreeMap<String, BTreeMap<u16, u64>>,
}

/// A token bucket holding up to one second's worth of requests.
#[derive(Debug)]
struct Bucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: u32) -> Self {
        Self {
            rate: f64::from(rate),
            tokens: f64::from(rate),
            at: Instant::now(),
        }
    }

    fn take(&mut self) -> bool {
        let now = Instant::now();
        let refill = now.duration_since(self.at).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + refill).min(self.rate);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The middleware state of one simulator.
#[derive(Debug)]
pub(crate) struct Gate {
    options: SimOptions,
    bucket: Option<Mutex<Bucket>>,
    admitted: AtomicU64,
    counts: Mutex<Counts>,
    cancel: CancellationToken,
}

impl Gate {
    /// `cancel` cuts latency and hangs short when the simulator stops.
    pub(crate) fn new(options: SimOptions, cancel: CancellationToken) -> Arc<Self> {
        Arc::new(Self {
            bucket: options.rate_limit.map(|rate| Mutex::new(Bucket::new(rate))),
            options,
            admitted: AtomicU64::new(0),
            counts: Mutex::new(Counts::default()),
            cancel,
        })
    }

    /// A snapshot of the counts.
    pub(crate) fn counts(&self) -> Counts {
        lock(&self.counts).clone()
    }

    fn count_request(&self, route: &str) {
        let mut counts = lock(&self.counts);
        *counts.requests.entry(route.to_owned()).or_default() += 1;
        counts.requests_total += 1;
    }

    fn count_response(&self, route: &str, status: StatusCode) {
        let mut counts = lock(&self.counts);
        *counts
            .responses
            .entry(route.to_owned())
            .or_default()
            .entry(status.as_u16())
            .or_default() += 1;
    }

    fn admit(&self) -> bool {
        self.bucket.as_ref().is_none_or(|b| lock(b).take())
    }

    /// Sleeps for `duration`, or less when the simulator stops.
    async fn pause(&self, duration: Duration) {
        if !duration.is_zero() {
            tokio::select! {
                () = tokio::time::sleep(duration) => {}
                () = self.cancel.cancelled() => {}
            }
        }
    }
}

/// Takes a lock even if a panic poisoned it: no critical section here can leave its data
/// half-updated (each is a lookup, an insert or an increment).
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The middleware: count, throttle, delay, inject, then answer.
pub(crate) async fn gate(State(gate): State<Arc<Gate>>, req: Request, next: Next) -> Response {
    let matched = req
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    if matched == Some(STATS_PATH) {
        return next.run(req).await;
    }
    let route = format!("{} {}", req.method(), matched.unwrap_or("(no route)"));
    gate.count_request(&route);

    if !gate.admit() {
        let mut response = error(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!(
                "rate limit of {} requests per second exceeded; retry after 1 s",
                gate.options.rate_limit.unwrap_or_default()
            ),
        );
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        gate.count_response(&route, response.status());
        return response;
    }

    let n = gate.admitted.fetch_add(1, Ordering::Relaxed);
    let fault = gate.options.fault_for(n);
    gate.pause(gate.options.latency).await;
    if fault == Fault::Unavailable {
        tracing::debug!(route, n, "Simulator injected a 503.");
        let response = error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "injected failure: the service is unavailable, retry later",
        );
        gate.count_response(&route, response.status());
        return response;
    }

    let response = next.run(req).await;
    gate.count_response(&route, response.status());
    if fault == Fault::Hang {
        tracing::debug!(route, n, "Simulator holds an answer back.");
        gate.pause(gate.options.hang).await;
    }
    response
}

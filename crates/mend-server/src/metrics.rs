//! `GET /metrics` in the Prometheus text format: the engine's counters and histograms
//! (messages by topology/node/outcome, HTTP latency per system, cache lookups) and gauges read
//! from the store at each scrape (queue depth, running, retry, limited, parked, trash).

use std::sync::OnceLock;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use mend_engine::Engine;
use mend_store::Store;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// The process-wide recorder, installed on first use (a process has one global recorder).
pub fn handle() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("mend_http_request_duration_seconds".into()),
                    &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
                )
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            match metrics::set_global_recorder(recorder) {
                Ok(()) => Some(handle),
                Err(e) => {
                    tracing::warn!(error = %e, "a metrics recorder is already installed; /metrics shows store gauges only");
                    None
                }
            }
        })
        .as_ref()
}

pub(crate) async fn scrape<S: Store>(State(engine): State<Engine<S>>) -> Response {
    let status = match engine.store().status().await {
        Ok(s) => s,
        Err(e) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("# store unavailable: {e}\n"),
            )
                .into_response();
        }
    };
    let mut out = handle().map(|h| h.render()).unwrap_or_default();
    let gauges = [
        (
            "mend_queue_depth_messages",
            "Messages ready to run.",
            status.queued,
        ),
        (
            "mend_running_messages",
            "Messages being worked on.",
            status.running,
        ),
        (
            "mend_retry_messages",
            "Messages waiting for a retry.",
            status.retry,
        ),
        (
            "mend_limited_messages",
            "Messages waiting for their system's capacity.",
            status.limited,
        ),
        (
            "mend_parked_messages",
            "Messages parked under a prerequisite key.",
            status.parked,
        ),
        (
            "mend_trash_messages",
            "Messages in the trash.",
            status.trash,
        ),
        (
            "mend_running_processes",
            "Processes not done yet.",
            status.processes_running,
        ),
    ];
    for (name, help, value) in gauges {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
        ));
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}

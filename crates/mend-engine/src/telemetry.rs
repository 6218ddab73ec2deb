//! Metrics the engine records, through the `metrics` facade (a no-op until a recorder is
//! installed, as `mend serve` does for `/metrics`). Names follow `mend_<noun>_<unit>`; labels
//! are bounded: topology, node, outcome, system and cache names, never ids.

use std::time::Duration;

/// One step of a node ended with `outcome`.
pub(crate) fn step(topology: &str, node: &str, outcome: &str) {
    metrics::counter!(
        "mend_messages_total",
        "topology" => topology.to_owned(),
        "node" => node.to_owned(),
        "outcome" => outcome.to_owned()
    )
    .increment(1);
}

/// One HTTP request to `system` took `elapsed` (answered or not).
pub(crate) fn http(system: &str, elapsed: Duration) {
    metrics::histogram!("mend_http_request_duration_seconds", "system" => system.to_owned())
        .record(elapsed.as_secs_f64());
}

/// A check asked its cache: answered from it (`hit`) or not (`miss`).
pub(crate) fn cache(cache: &str, hit: bool) {
    metrics::counter!(
        "mend_cache_lookups_total",
        "cache" => cache.to_owned(),
        "result" => if hit { "hit" } else { "miss" }
    )
    .increment(1);
}

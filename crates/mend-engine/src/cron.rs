//! Cron start events: each engine computes the next slot of every schedule and fires it; the
//! store makes sure a slot fires once even when many engines share it.

use std::time::Duration;

use chrono::Utc;
use mend_core::load::event_default_data;
use mend_store::Store;
use tokio_util::sync::CancellationToken;

use crate::Engine;

pub(crate) async fn run<S: Store>(engine: Engine<S>, stop: CancellationToken) {
    let mut tasks = Vec::new();
    for t in engine.catalog().topologies.values() {
        for e in t.events.values() {
            if e.cron.is_some() {
                tasks.push(tokio::spawn(schedule(
                    engine.clone(),
                    t.name.clone(),
                    e.name.clone(),
                    stop.clone(),
                )));
            }
        }
    }
    stop.cancelled().await;
    for t in tasks {
        t.abort();
    }
}

async fn schedule<S: Store>(
    engine: Engine<S>,
    topology: String,
    event: String,
    stop: CancellationToken,
) {
    loop {
        let Some(t) = engine.catalog().get(&topology).cloned() else {
            return;
        };
        let Some(e) = t.events.get(&event) else {
            return;
        };
        let Some(cron) = &e.cron else { return };
        let now = Utc::now();
        let next = match cron.schedule.find_next_occurrence(&now, false) {
            Ok(n) => n,
            Err(err) => {
                tracing::error!(topology, event, error = %err, "cron schedule has no next time; it will not fire again");
                return;
            }
        };
        let wait = (next - now).to_std().unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
        let slot = next.timestamp_millis();
        let process = match engine.new_process(
            &topology,
            &event,
            event_default_data(e),
            Default::default(),
        ) {
            Ok(p) => p,
            Err(err) => {
                tracing::error!(topology, event, error = %err, "cannot fire a cron event");
                continue;
            }
        };
        let id = process.id;
        match engine
            .store()
            .fire_cron(&topology, &event, slot, process)
            .await
        {
            Ok(true) => tracing::info!(topology, event, process = %id, "cron event fired"),
            Ok(false) => {
                tracing::debug!(topology, event, "cron slot already fired by another engine")
            }
            Err(err) => tracing::error!(topology, event, error = %err, "cannot fire a cron event"),
        }
    }
}

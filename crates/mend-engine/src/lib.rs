//! The engine: workers claim ready messages from the store, run their node, and commit each
//! step in one transaction.
//!
//! Key types: [`Engine`] (cheap to clone) owns the loaded [`Catalog`], the store, one HTTP
//! client and the resolved systems; [`EngineConfig`] holds the knobs. [`Engine::run`] is the
//! worker loop until the shutdown token fires; [`Engine::start`] opens a process at a start
//! event. Node behaviour lives in `exec`, cron in `cron`.

mod cache;
mod cron;
mod exec;
mod limiter;
mod telemetry;

pub use limiter::LimiterView;
mod systems;

use std::sync::Arc;
use std::time::Duration;

use mend_core::clock::now_ms;
use mend_core::ids::{MessageId, ProcessId};
use mend_core::message::{Context, Headers};
use mend_core::topology::{Catalog, Topology, Unwired};
use mend_store::{
    Applied, Attempt, ClaimRequest, Completion, Disposition, NewMessage, NewProcess, NodeCapacity,
    ProcessReport, Store, StoreError,
};
use rand::Rng;
use serde_json::Value;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::exec::{Step, StepKind};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot build the HTTP client: {0}")]
    Http(String),
}

/// Why a start event could not be sent.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("unknown topology `{name}`; loaded topologies: {known}")]
    UnknownTopology { name: String, known: String },
    #[error("topology `{topology}` has no start event `{event}`; it has: {known}")]
    UnknownEvent {
        topology: String,
        event: String,
        known: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Names this engine's claims in the store.
    pub worker_id: String,
    /// Messages worked on at once by this engine, over all nodes.
    pub workers: u32,
    /// How long a claim holds without renewal; a crashed engine's messages come back after it.
    pub lease: Duration,
    /// Longest idle wait between looks at the store.
    pub poll: Duration,
    /// On shutdown, how long running steps may take to finish before their claims are released.
    pub shutdown_grace: Duration,
    /// Request timeout when neither the node nor its system sets one.
    pub default_timeout: Duration,
    /// Fire cron start events.
    pub cron: bool,
    /// How long per-minute outcome counts (the heatmap) are kept.
    pub heatmap_retention: Duration,
    /// A message waiting this long at a node the loaded topology no longer has goes to the
    /// trash (engines still on the previous version get this long to finish it).
    pub stranded_after: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            worker_id: format!(
                "mend-{}-{}",
                std::process::id(),
                &uuid::Uuid::now_v7().simple().to_string()[20..]
            ),
            workers: 32,
            lease: Duration::from_secs(30),
            poll: Duration::from_millis(200),
            shutdown_grace: Duration::from_secs(10),
            default_timeout: Duration::from_secs(30),
            cron: false,
            heatmap_retention: Duration::from_secs(7 * 24 * 3600),
            stranded_after: Duration::from_secs(600),
        }
    }
}

#[derive(Clone)]
pub struct Engine<S: Store> {
    inner: Arc<Inner<S>>,
}

pub(crate) struct Inner<S: Store> {
    pub(crate) store: S,
    pub(crate) catalog: Arc<Catalog>,
    pub(crate) http: reqwest::Client,
    pub(crate) config: EngineConfig,
    pub(crate) systems: systems::Systems,
    pub(crate) caches: cache::Caches,
    pub(crate) limiters: limiter::Limiters,
    /// (topology, node) → its concurrency limit.
    limits: Vec<(String, String, Arc<Semaphore>)>,
    global: Arc<Semaphore>,
    freed: Notify,
    /// Messages this engine is working on now: the only leases it renews.
    running: std::sync::Mutex<std::collections::HashSet<MessageId>>,
}

impl<S: Store> Engine<S> {
    /// Builds an engine over `catalog`, reading system URLs and credentials from the process
    /// environment, and records the topology versions in the store.
    pub async fn new(
        store: S,
        catalog: Arc<Catalog>,
        config: EngineConfig,
    ) -> Result<Self, EngineError> {
        Self::with_env(store, catalog, config, &|k| std::env::var(k).ok()).await
    }

    pub async fn with_env(
        store: S,
        catalog: Arc<Catalog>,
        config: EngineConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, EngineError> {
        let systems = systems::resolve_all(&catalog, env)?;
        let limiters = limiter::Limiters::new(&catalog, &systems);
        let http = reqwest::Client::builder()
            .user_agent(concat!("mend/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| EngineError::Http(e.to_string()))?;
        for t in catalog.topologies.values() {
            store.save_topology(&t.name, &t.version, &t.source).await?;
        }
        let workers = config.workers.max(1);
        let limits = catalog
            .topologies
            .values()
            .flat_map(|t| {
                t.nodes.values().map(move |n| {
                    let permits = n.concurrency.unwrap_or(workers).min(workers) as usize;
                    (
                        t.name.clone(),
                        n.name.clone(),
                        Arc::new(Semaphore::new(permits)),
                    )
                })
            })
            .collect();
        Ok(Self {
            inner: Arc::new(Inner {
                store,
                catalog,
                http,
                systems,
                caches: cache::Caches::default(),
                limiters,
                limits,
                global: Arc::new(Semaphore::new(workers as usize)),
                freed: Notify::new(),
                running: Default::default(),
                config,
            }),
        })
    }

    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.inner.catalog
    }

    pub fn store(&self) -> &S {
        &self.inner.store
    }

    /// Opens a process at `topology`'s start event `event` with `payload`.
    pub async fn start(
        &self,
        topology: &str,
        event: &str,
        payload: Value,
        headers: Headers,
    ) -> Result<ProcessId, StartError> {
        let process = self.new_process(topology, event, payload, headers)?;
        let id = process.id;
        self.inner.store.start_process(process).await?;
        tracing::info!(process = %id, topology, event, "process started");
        Ok(id)
    }

    /// Builds (without writing) the process a start event opens.
    pub fn new_process(
        &self,
        topology: &str,
        event: &str,
        payload: Value,
        headers: Headers,
    ) -> Result<NewProcess, StartError> {
        let catalog = &self.inner.catalog;
        let t = catalog
            .get(topology)
            .ok_or_else(|| StartError::UnknownTopology {
                name: topology.to_owned(),
                known: names(catalog.topologies.keys()),
            })?;
        let e = t
            .events
            .get(event)
            .ok_or_else(|| StartError::UnknownEvent {
                topology: topology.to_owned(),
                event: event.to_owned(),
                known: names(t.events.keys()),
            })?;
        let now = now_ms();
        let id = ProcessId::new();
        Ok(NewProcess {
            id,
            topology: t.name.clone(),
            version: t.version.clone(),
            event: e.name.clone(),
            parent_process_id: None,
            parent_message_id: None,
            created_at: now,
            release_key: None,
            first: NewMessage {
                id: MessageId::new(),
                process_id: id,
                topology: t.name.clone(),
                version: t.version.clone(),
                node: e.node.clone(),
                payload,
                headers,
                context: Context::default(),
                parent_id: None,
                available_at: now,
            },
        })
    }

    /// Releases `key` by hand (an operator fixed the prerequisite in the target): every message
    /// parked under it resumes. Recorded even when nothing waits.
    pub async fn release(
        &self,
        key: &str,
        source: &str,
    ) -> Result<mend_store::Released, StoreError> {
        let released = self
            .inner
            .store
            .release(mend_store::Release {
                key: key.to_owned(),
                source: source.to_owned(),
                cache: Vec::new(),
            })
            .await?;
        self.inner.caches.forget_missing(key).await;
        tracing::info!(key, resumed = released.resumed, source, "key released");
        Ok(released)
    }

    /// Every system's limiter with the messages waiting for it, per topology and node.
    pub async fn limiter_view(&self) -> Result<Vec<serde_json::Value>, StoreError> {
        let waiting = self.inner.store.limited().await?;
        let limiters = &self.inner.limiters;
        Ok(limiters
            .all()
            .iter()
            .map(|l| {
                let nodes: Vec<&(String, String)> = limiters.nodes_of(l).collect();
                let mine: Vec<&mend_store::LimitedCount> = waiting
                    .iter()
                    .filter(|w| nodes.iter().any(|(t, n)| *t == w.topology && *n == w.node))
                    .collect();
                let mut v = serde_json::to_value(l.view()).unwrap_or_default();
                if let serde_json::Value::Object(map) = &mut v {
                    map.insert(
                        "waiting".into(),
                        serde_json::to_value(&mine).unwrap_or_default(),
                    );
                    map.insert(
                        "oldest_wait".into(),
                        serde_json::json!(mine.iter().map(|w| w.oldest).min()),
                    );
                }
                v
            })
            .collect())
    }

    /// Polls the store until the process is done.
    pub async fn wait_done(
        &self,
        id: ProcessId,
        poll: Duration,
    ) -> Result<ProcessReport, StoreError> {
        loop {
            if let Some(r) = self.inner.store.process_report(id).await?
                && r.is_done()
            {
                return Ok(r);
            }
            tokio::time::sleep(poll).await;
        }
    }

    /// The worker loop: claims and runs messages until `shutdown` fires, then lets running
    /// steps finish (up to the grace period) and releases whatever it still holds.
    pub async fn run(&self, shutdown: CancellationToken) -> Result<(), EngineError> {
        let inner = &self.inner;
        let tracker = TaskTracker::new();
        let background = CancellationToken::new();
        tracker.spawn(lease_keeper(self.inner.clone(), background.clone()));
        if inner.config.cron {
            tracker.spawn(cron::run(self.clone(), background.clone()));
        }
        // Messages left `running` by an engine that died come back once their lease ends.
        inner.store.recover_expired(now_ms()).await?;
        let mut rotate = 0usize;
        let mut store_errors = 0u32;
        let workers = inner.config.workers.max(1);
        // Claim when a useful batch of capacity is free, not for every single finished step:
        // each claim is a store transaction.
        let refill = (workers / 4).max(1);
        while !shutdown.is_cancelled() {
            let budget = inner.global.available_permits() as u32;
            let busy = budget < workers;
            if budget == 0 || (busy && budget < refill) {
                tokio::select! {
                    _ = inner.freed.notified() => {}
                    _ = tokio::time::sleep(inner.config.poll) => {}
                    _ = shutdown.cancelled() => {}
                }
                continue;
            }
            // Every node with room asks for up to its room; the store stops at `budget` in
            // all. The starting node rotates so no node starves behind a busy one.
            let n = inner.limits.len();
            // A system's room (in-flight cap, pause, rate) is shared by all the nodes that
            // call it, within this round.
            // Keyed by the limiter's address: one entry per system.
            let mut system_room: std::collections::HashMap<usize, u32> =
                std::collections::HashMap::new();
            let nodes: Vec<NodeCapacity> = (0..n)
                .map(|i| &inner.limits[(i + rotate) % n])
                .filter_map(|(t, node, sem)| {
                    let mut free = (sem.available_permits() as u32).min(budget);
                    if let Some(l) = inner.limiters.node(t, node) {
                        let room = system_room
                            .entry(Arc::as_ptr(l) as usize)
                            .or_insert_with(|| l.room().unwrap_or(u32::MAX));
                        free = free.min(*room);
                        *room -= free;
                    }
                    (free > 0).then(|| NodeCapacity {
                        topology: t.clone(),
                        node: node.clone(),
                        max: free,
                    })
                })
                .collect();
            rotate = rotate.wrapping_add(1);
            if nodes.is_empty() {
                // Nothing has room: wait for a step to finish, or for a pause (429) to end.
                tokio::select! {
                    _ = inner.freed.notified() => {}
                    _ = tokio::time::sleep(inner.config.poll) => {}
                    _ = shutdown.cancelled() => {}
                }
                continue;
            }
            let now = now_ms();
            let claimed = match inner
                .store
                .claim(ClaimRequest {
                    worker: inner.config.worker_id.clone(),
                    now,
                    lease_until: now + inner.config.lease.as_millis() as i64,
                    limit: budget,
                    nodes,
                })
                .await
            {
                Ok(c) => {
                    store_errors = 0;
                    c
                }
                Err(e) => {
                    store_errors += 1;
                    let wait = Duration::from_millis(100 * u64::from(store_errors.min(50)));
                    tracing::error!(error = %e, retry_in_ms = wait.as_millis() as u64, "cannot claim messages");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.cancelled() => {}
                    }
                    continue;
                }
            };
            if claimed.is_empty() {
                tokio::select! {
                    _ = inner.store.wait_for_work(inner.config.poll) => {}
                    _ = shutdown.cancelled() => {}
                }
                continue;
            }
            for msg in claimed {
                let permits = self.permits(&msg.topology, &msg.node);
                let this = self.inner.clone();
                this.running_set().insert(msg.id);
                tracker.spawn(async move {
                    // Even if the step panics, its lease stops being renewed (and another
                    // claim recovers it) and its permits come back.
                    let _running = Running {
                        inner: this.clone(),
                        id: msg.id,
                        permits: Some(permits),
                    };
                    this.work(msg).await;
                });
            }
        }
        tracker.close();
        // Running steps may finish; the lease keeper runs on meanwhile so their claims hold.
        let steps = async {
            while tracker.len() > 1 + usize::from(inner.config.cron) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        if tokio::time::timeout(inner.config.shutdown_grace, steps)
            .await
            .is_err()
        {
            tracing::warn!(
                "steps still running after the shutdown grace period; releasing their claims"
            );
        }
        background.cancel();
        tracker.wait().await;
        let released = inner.store.release_claims(&inner.config.worker_id).await?;
        if released > 0 {
            tracing::info!(
                messages = released,
                "released claimed messages back to the queue"
            );
        }
        Ok(())
    }

    fn permits(
        &self,
        topology: &str,
        node: &str,
    ) -> (Option<OwnedSemaphorePermit>, Option<OwnedSemaphorePermit>) {
        let node = self
            .inner
            .limits
            .iter()
            .find(|(t, n, _)| t == topology && n == node)
            .and_then(|(_, _, s)| s.clone().try_acquire_owned().ok());
        (node, self.inner.global.clone().try_acquire_owned().ok())
    }
}

fn names<'a>(it: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<&str> = it.map(String::as_str).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// A step in progress: while it lives, its lease is renewed and its permits are held.
struct Running<S: Store> {
    inner: Arc<Inner<S>>,
    id: MessageId,
    permits: Option<(Option<OwnedSemaphorePermit>, Option<OwnedSemaphorePermit>)>,
}

impl<S: Store> Drop for Running<S> {
    fn drop(&mut self) {
        self.inner.running_set().remove(&self.id);
        // Permits back first, then wake the claim loop, which counts them.
        drop(self.permits.take());
        self.inner.freed.notify_one();
    }
}

/// Renews this engine's leases and recovers messages of engines that stopped renewing theirs.
async fn lease_keeper<S: Store>(inner: Arc<Inner<S>>, stop: CancellationToken) {
    // Also the sweep of parked messages past their deadline: at least once a second.
    let every = (inner.config.lease / 3).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let mut last_purge = 0i64;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        let now = now_ms();
        let until = now + inner.config.lease.as_millis() as i64;
        if let Err(e) = inner
            .store
            .renew_leases(&inner.config.worker_id, inner.running_ids(), until)
            .await
        {
            tracing::error!(error = %e, "cannot renew leases");
        }
        if let Err(e) = inner.store.recover_expired(now).await {
            tracing::error!(error = %e, "cannot recover expired leases");
        }
        // Once a minute, drop heatmap counts past their retention.
        if now / 60_000 != last_purge / 60_000 {
            last_purge = now;
            let before = now - inner.config.heatmap_retention.as_millis() as i64;
            if let Err(e) = inner.store.purge_heatmap(before).await {
                tracing::error!(error = %e, "cannot purge old heatmap counts");
            }
            // Messages waiting at a node this catalog no longer has would wait forever: after
            // the grace period they go to the trash, where an operator sees why.
            let older_than = now - inner.config.stranded_after.as_millis() as i64;
            for t in inner.catalog.topologies.values() {
                let nodes = t.nodes.keys().cloned().collect();
                match inner
                    .store
                    .trash_unknown_nodes(&t.name, &t.version, nodes, older_than)
                    .await
                {
                    Ok(0) => {}
                    Ok(n) => tracing::warn!(
                        topology = t.name,
                        messages = n,
                        "messages at nodes that no longer exist moved to the trash"
                    ),
                    Err(e) => {
                        tracing::error!(error = %e, "cannot look for messages at removed nodes")
                    }
                }
            }
        }
        match inner.store.expire_parked(now).await {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                messages = n,
                "parked messages passed their max_wait; moved to the trash"
            ),
            Err(e) => tracing::error!(error = %e, "cannot expire parked messages"),
        }
    }
}

/// Delay before retry number `attempt` (1-based): exponential from `base`, capped at `max`,
/// with jitter in [50%, 100%] so that many failures do not retry in lockstep.
pub fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20));
    let capped = exp.min(max);
    let factor = rand::rng().random_range(0.5..=1.0);
    capped.mul_f64(factor)
}

impl<S: Store> Inner<S> {
    fn running_set(&self) -> std::sync::MutexGuard<'_, std::collections::HashSet<MessageId>> {
        match self.running.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    fn running_ids(&self) -> Vec<MessageId> {
        self.running_set().iter().copied().collect()
    }

    async fn work(&self, msg: mend_core::message::Message) {
        let started = now_ms();
        let topo = self.catalog.get(&msg.topology).cloned();
        let interrupted = topo
            .as_ref()
            .and_then(|t| t.nodes.get(&msg.node))
            .is_some_and(|n| msg.attempt >= n.retry.attempts);
        let step = match &topo {
            // Only recovery after a crashed step raises `attempt` to the limit: this message
            // stopped its worker every time it ran, so stop trying.
            Some(_) if interrupted => Step::fail(
                "interrupted",
                format!(
                    "gave up after {} attempts, the last ones interrupted: the engine running this step stopped before committing it (see the attempts)",
                    msg.attempt
                ),
            ),
            Some(t) => self.run_node(t, &msg).await,
            None => Step::fail(
                "error",
                format!("topology `{}` is not loaded by this engine", msg.topology),
            ),
        };
        let completion = self.finish(topo.as_deref(), &msg, step, started);
        let (id, node, disposition) = (msg.id, msg.node.clone(), completion.disposition);
        let outcome = completion.outcome.clone();
        match self.store.complete(completion).await {
            Ok(Applied::Applied) => {
                telemetry::step(&msg.topology, &node, &outcome);
                tracing::debug!(message = %id, node, ?disposition, "step committed");
            }
            Ok(Applied::LeaseLost) => {
                tracing::warn!(message = %id, node, "lost the claim before committing; another worker will redo this step");
            }
            Err(e) => {
                tracing::error!(message = %id, node, error = %e, "cannot commit a step; the message returns to the queue when its lease ends");
            }
        }
    }

    /// Turns a node's step into the completion written to the store.
    fn finish(
        &self,
        topo: Option<&Topology>,
        msg: &mend_core::message::Message,
        step: Step,
        started: i64,
    ) -> Completion {
        let now = now_ms();
        let node = topo.and_then(|t| t.nodes.get(&msg.node));
        let attempt_no = msg.attempt + 1;
        let record = |outcome: &str, error: Option<String>| Attempt {
            attempt: attempt_no,
            at: started,
            duration_ms: now - started,
            outcome: outcome.to_owned(),
            status: step.status,
            error,
            response_excerpt: step.excerpt.clone(),
        };
        let mut completion = Completion {
            message_id: msg.id,
            process_id: msg.process_id,
            topology: msg.topology.clone(),
            node: msg.node.clone(),
            worker: self.config.worker_id.clone(),
            now,
            outcome: step.outcome.clone(),
            disposition: Disposition::Done,
            outputs: Vec::new(),
            spawned: Vec::new(),
            attempt: None,
            error: None,
            park: None,
            releases: step.releases,
            cache: step.cache,
        };
        match step.kind {
            StepKind::Limited { at } => {
                completion.disposition = Disposition::Limited { at };
            }
            StepKind::Park(park) => {
                completion.disposition = Disposition::Parked;
                completion.park = Some(*park);
                completion.spawned = step.spawned;
            }
            StepKind::Retry { after } => {
                let policy = node.map(|n| n.retry).unwrap_or_default();
                let error = step.error.clone().unwrap_or_else(|| "retry".into());
                if attempt_no < policy.attempts {
                    let delay = backoff(policy.base.0, policy.max.0, attempt_no)
                        .max(after.unwrap_or_default());
                    completion.disposition = Disposition::Retry {
                        at: now + delay.as_millis() as i64,
                    };
                    tracing::info!(message = %msg.id, node = msg.node, attempt = attempt_no, retry_in_ms = delay.as_millis() as u64, error, "step will be retried");
                    completion.error = Some(error.clone());
                } else {
                    completion.disposition = Disposition::Trash;
                    let e = format!("gave up after {attempt_no} attempts: {error}");
                    tracing::warn!(message = %msg.id, node = msg.node, error = e, "message moved to the trash");
                    completion.error = Some(e);
                }
                completion.attempt = Some(record(&step.outcome, Some(error)));
            }
            StepKind::Fail => {
                completion.disposition = Disposition::Trash;
                completion.error = step.error.clone();
                tracing::warn!(message = %msg.id, node = msg.node, error = step.error.as_deref().unwrap_or(""), "message moved to the trash");
                completion.attempt = Some(record(&step.outcome, step.error.clone()));
            }
            StepKind::Route => {
                let Some(node) = node else {
                    completion.disposition = Disposition::Trash;
                    completion.error = Some(format!("node `{}` is not loaded", msg.node));
                    return completion;
                };
                let edge = node.edge(&step.outcome);
                for out in step.outputs {
                    let target = match (&out.node, edge) {
                        (Some(n), _) => n.clone(),
                        (None, Some(e)) => e.to_owned(),
                        (None, None) => continue,
                    };
                    completion.outputs.push(NewMessage {
                        id: MessageId::new(),
                        process_id: msg.process_id,
                        topology: msg.topology.clone(),
                        version: topo
                            .map(|t| t.version.clone())
                            .unwrap_or_else(|| msg.version.clone()),
                        node: target,
                        payload: out.payload,
                        headers: msg.headers.clone(),
                        context: out.context,
                        parent_id: Some(msg.id),
                        available_at: now,
                    });
                }
                completion.spawned = step.spawned;
                if edge.is_none() {
                    match node.kind.unwired(&step.outcome) {
                        Unwired::Deliver => {}
                        Unwired::Filter => completion.disposition = Disposition::Filtered,
                        Unwired::Trash => {
                            let why = step
                                .error
                                .clone()
                                .unwrap_or_else(|| format!("outcome `{}`", step.outcome));
                            let e = format!("{why} has no edge in node `{}`", msg.node);
                            completion.disposition = Disposition::Trash;
                            completion.attempt = Some(record(&step.outcome, Some(e.clone())));
                            completion.error = Some(e);
                        }
                    }
                }
            }
        }
        completion
    }
}

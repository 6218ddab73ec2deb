//! Running one node on one message. The result is a [`Step`]: an outcome, the messages it
//! produces and whether the node asks for a retry or failed for good. `Engine::finish` turns
//! a step into the store `Completion` written in one transaction.

use std::time::Duration;

use mend_core::ids::{MessageId, ProcessId};
use mend_core::message::{Context, Cursor, Message, Response};
use mend_core::template::{TplContext, context};
use mend_core::topology::{Body, HttpSpec, NodeKind, Paging, SplitSpec, Topology, outcome};
use mend_core::topology::{CheckSpec, ParkSpec, SendSpec};
use mend_store::{CacheWrite, NewMessage, NewProcess, Park, Release};
use serde_json::{Value, json};

use crate::Inner;

/// At most this much of a response body is read; a larger body is an error.
const MAX_BODY: usize = 16 * 1024 * 1024;
/// How much of a response body an attempt record keeps.
const EXCERPT: usize = 500;

pub(crate) enum StepKind {
    /// Follow the outcome's edge (or the unwired rule).
    Route,
    /// Wait under a key (the store may resume it at once or detect a cycle).
    Park(Box<Park>),
    /// The system has no capacity now: wait, visibly, until `at` (Unix ms).
    Limited { at: i64 },
    /// Transient failure: retry with backoff until the attempts run out.
    Retry { after: Option<Duration> },
    /// Permanent failure: to the trash.
    Fail,
}

pub(crate) struct Output {
    /// `None`: the node the outcome's edge leads to. `Some`: this node (a split continuing).
    pub node: Option<String>,
    pub payload: Value,
    pub context: Context,
}

pub(crate) struct Step {
    pub outcome: String,
    pub kind: StepKind,
    pub outputs: Vec<Output>,
    pub spawned: Vec<NewProcess>,
    pub error: Option<String>,
    pub status: Option<u16>,
    pub excerpt: Option<String>,
    pub releases: Vec<Release>,
    pub cache: Vec<CacheWrite>,
}

impl Step {
    fn route(outcome: &str, outputs: Vec<Output>) -> Self {
        Self {
            outcome: outcome.to_owned(),
            kind: StepKind::Route,
            outputs,
            spawned: Vec::new(),
            error: None,
            status: None,
            excerpt: None,
            releases: Vec::new(),
            cache: Vec::new(),
        }
    }

    pub(crate) fn fail(outcome: &str, error: String) -> Self {
        Self {
            kind: StepKind::Fail,
            error: Some(error),
            ..Self::route(outcome, Vec::new())
        }
    }

    fn limited(at: i64) -> Self {
        Self {
            kind: StepKind::Limited { at },
            ..Self::route("limited", Vec::new())
        }
    }

    fn retry(
        error: String,
        status: Option<u16>,
        excerpt: Option<String>,
        after: Option<Duration>,
    ) -> Self {
        Self {
            kind: StepKind::Retry { after },
            error: Some(error),
            status,
            excerpt,
            ..Self::route(outcome::RETRY, Vec::new())
        }
    }
}

/// Why a check did not say "exists": shared by every caller waiting on the same request.
#[derive(Debug)]
pub(crate) enum CheckMiss {
    Missing {
        at: i64,
    },
    Limited {
        at: i64,
    },
    Retry {
        error: String,
        status: Option<u16>,
        excerpt: Option<String>,
        after: Option<Duration>,
    },
    Fail {
        error: String,
        status: Option<u16>,
        excerpt: Option<String>,
    },
}

/// The values templates see.
fn template_context(msg: &Message, page: Option<i64>) -> TplContext {
    context(&json!({
        "payload": msg.payload,
        "headers": msg.headers,
        "process_id": msg.process_id,
        "message_id": msg.id,
        "topology": msg.topology,
        "node": msg.node,
        "attempt": msg.attempt + 1,
        "response": msg.context.response,
        "page": page,
    }))
}

pub(crate) struct HttpReply {
    /// When the request left (Unix ms): what the answer says was true at least then.
    pub sent_at: i64,
    pub status: u16,
    pub response: Response,
    pub excerpt: String,
    pub retry_after: Option<Duration>,
}

pub(crate) enum HttpFailure {
    /// The request could not be built (a template failed): retrying will not help.
    Build(String),
    /// The system's limiter says not before this time (Unix ms); nothing was sent.
    Limited(i64),
    /// Timeout, connection refused, reset...: worth a retry.
    Transport(String),
}

fn excerpt_of(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut s: String = text.chars().take(EXCERPT).collect();
    if text.chars().count() > EXCERPT {
        s.push('…');
    }
    s
}

impl<S: mend_store::Store> Inner<S> {
    pub(crate) async fn run_node(&self, topo: &Topology, msg: &Message) -> Step {
        let Some(node) = topo.nodes.get(&msg.node) else {
            return Step::fail(
                "error",
                format!(
                    "node `{}` is not in topology `{}` (version {}) any more",
                    msg.node, topo.name, topo.version
                ),
            );
        };
        match &node.kind {
            NodeKind::Http(spec) => self.http_node(topo, spec, msg).await,
            NodeKind::Switch(spec) => {
                let ctx = template_context(msg, None);
                for case in &spec.cases {
                    match topo.templates.test(&case.when, &ctx) {
                        Ok(true) => return Step::route(&case.outcome, vec![same(msg)]),
                        Ok(false) => {}
                        Err(e) => {
                            return Step::fail("error", format!("switch condition failed: {e}"));
                        }
                    }
                }
                Step::route(&spec.default, vec![same(msg)])
            }
            NodeKind::Map(spec) => {
                let response = msg
                    .context
                    .response
                    .as_ref()
                    .map(|r| serde_json::to_value(r).unwrap_or(Value::Null))
                    .unwrap_or(Value::Null);
                let vars = [
                    &serde_json::to_value(&msg.headers).unwrap_or(Value::Null),
                    &response,
                    &Value::String(msg.process_id.to_string()),
                    &Value::String(msg.id.to_string()),
                ];
                match spec.program.run(&msg.payload, &vars) {
                    Ok(values) if values.is_empty() => Step::route(outcome::EMPTY, vec![same(msg)]),
                    Ok(values) => Step::route(
                        outcome::OK,
                        values
                            .into_iter()
                            .map(|payload| Output {
                                node: None,
                                payload,
                                context: carried(msg),
                            })
                            .collect(),
                    ),
                    Err(e) => Step::fail("error", e),
                }
            }
            NodeKind::Send(spec) => match self.child_process(topo, spec, msg) {
                Ok(process) => {
                    let mut step = Step::route(outcome::OK, vec![same(msg)]);
                    step.spawned.push(process);
                    step
                }
                Err(e) => Step::fail("error", e),
            },
            NodeKind::Split(spec) => self.split_node(topo, spec, msg).await,
            NodeKind::Check(spec) => self.check_node(topo, spec, msg).await,
            NodeKind::Park(spec) => self.park_node(topo, spec, msg),
            NodeKind::Release(spec) => {
                let key = match topo
                    .templates
                    .render(&spec.key, &template_context(msg, None))
                {
                    Ok(k) => k,
                    Err(e) => return Step::fail("error", format!("release key: {e}")),
                };
                let now = mend_core::clock::now_ms();
                let mut step = Step::route(outcome::OK, vec![same(msg)]);
                let cache: Vec<CacheWrite> = spec
                    .cache
                    .iter()
                    .map(|c| CacheWrite {
                        cache: c.name.clone(),
                        key: key.clone(),
                        present: Some(true),
                        expires_at: now + c.ttl.as_millis(),
                        observed_at: now,
                    })
                    .collect();
                step.releases.push(Release {
                    key,
                    source: format!("node {}/{}", topo.name, msg.node),
                    cache,
                });
                step
            }
        }
    }

    /// A child process at `spec`'s start event, linked to `msg`.
    fn child_process(
        &self,
        topo: &Topology,
        spec: &SendSpec,
        msg: &Message,
    ) -> Result<NewProcess, String> {
        let payload = match &spec.data {
            None => msg.payload.clone(),
            Some(t) => topo
                .templates
                .render_json(t, &template_context(msg, None))
                .map_err(|e| format!("send data: {e}"))?,
        };
        let target = self
            .catalog
            .get(&spec.topology)
            .ok_or_else(|| format!("topology `{}` is not loaded", spec.topology))?;
        let event = target.events.get(&spec.event).ok_or_else(|| {
            format!(
                "topology `{}` has no start event `{}`",
                spec.topology, spec.event
            )
        })?;
        let now = mend_core::clock::now_ms();
        let process_id = ProcessId::new();
        Ok(NewProcess {
            id: process_id,
            topology: target.name.clone(),
            version: target.version.clone(),
            event: event.name.clone(),
            parent_process_id: Some(msg.process_id),
            parent_message_id: Some(msg.id),
            created_at: now,
            release_key: None,
            first: NewMessage {
                id: MessageId::new(),
                process_id,
                topology: target.name.clone(),
                version: target.version.clone(),
                node: event.node.clone(),
                payload,
                headers: msg.headers.clone(),
                context: Context::default(),
                parent_id: Some(msg.id),
                available_at: now,
            },
        })
    }

    /// Detect, through the cache: local tier, then "a sync is in flight" (no request needed),
    /// then the store tier, then one request per key however many messages ask at once.
    async fn check_node(&self, topo: &Topology, spec: &CheckSpec, msg: &Message) -> Step {
        let ctx = template_context(msg, None);
        let key = match topo.templates.render(&spec.key, &ctx) {
            Ok(k) => k,
            Err(e) => return Step::fail("error", format!("check key: {e}")),
        };
        let exists = |fetched: bool| {
            let now = mend_core::clock::now_ms();
            let mut step = Step::route(outcome::EXISTS, vec![checked(msg, now)]);
            if fetched {
                step.cache.push(CacheWrite {
                    cache: spec.cache.name.clone(),
                    key: key.clone(),
                    present: Some(true),
                    expires_at: now + spec.cache.ttl.as_millis(),
                    observed_at: now,
                });
            }
            step
        };
        let missing = |at: i64| Step::route(outcome::MISSING, vec![checked(msg, at)]);
        if spec.cache.ttl.0.is_zero() {
            // No cache: every check asks.
            let answer = match self.request(topo, &spec.http, msg, &ctx, None).await {
                Err(HttpFailure::Build(error)) => Err(CheckMiss::Fail {
                    error,
                    status: None,
                    excerpt: None,
                }),
                Err(HttpFailure::Limited(at)) => Err(CheckMiss::Limited { at }),
                Err(HttpFailure::Transport(error)) => Err(CheckMiss::Retry {
                    error,
                    status: None,
                    excerpt: None,
                    after: None,
                }),
                Ok(reply) => self.classify_check(topo, spec, msg, reply),
            };
            return match answer {
                Ok(_) => Step::route(
                    outcome::EXISTS,
                    vec![checked(msg, mend_core::clock::now_ms())],
                ),
                Err(miss) => miss_step(&miss, missing),
            };
        }
        let tier = self.caches.tier(&spec.cache);
        // Every answer below that needs no request is a cache hit; a request is a miss.
        let hit = |step: Step| {
            crate::telemetry::cache(&spec.cache.name, true);
            step
        };
        if tier.positive.get(&key).await.is_some() {
            return hit(exists(false));
        }
        if let Some(neg) = &tier.negative
            && let Some(at) = neg.get(&key).await
        {
            return hit(missing(at));
        }
        if let Some(at) = self.recently_missing(&key).await {
            return hit(missing(at));
        }
        match self.store.key_state(&key).await {
            Ok((true, releases)) => {
                let mut step = hit(missing(mend_core::clock::now_ms()));
                for out in &mut step.outputs {
                    out.context.seen_releases = Some((key.clone(), releases));
                }
                return step;
            }
            Ok((false, _)) => {}
            Err(e) => return Step::retry(format!("store: {e}"), None, None, None),
        }
        let now = mend_core::clock::now_ms();
        match self.store.cache_get(&spec.cache.name, &key, now).await {
            Ok(Some((true, _))) => {
                tier.positive.insert(key.clone(), true).await;
                return hit(exists(false));
            }
            // A shared "missing": it was seen `negative_ttl` before it expires.
            Ok(Some((false, expires_at))) => {
                return hit(missing(expires_at - spec.cache.negative_ttl.as_millis()));
            }
            Ok(None) => {}
            Err(e) => return Step::retry(format!("store: {e}"), None, None, None),
        }
        // Single flight: concurrent checks of one key in this engine share one request.
        let result = tier
            .positive
            .try_get_with(key.clone(), async {
                // Checked again here: a caller that got past the look-ups above just as an
                // earlier request came back "missing" must not ask again.
                if let Some(at) = self.recently_missing(&key).await {
                    return Err(CheckMiss::Missing { at });
                }
                crate::telemetry::cache(&spec.cache.name, false);
                // The key's release count before asking: a later release makes the answer stale.
                let releases_before = self.store.key_state(&key).await.ok().map(|(_, n)| n);
                let answer = match self.request(topo, &spec.http, msg, &ctx, None).await {
                    Err(HttpFailure::Build(error)) => Err(CheckMiss::Fail {
                        error,
                        status: None,
                        excerpt: None,
                    }),
                    Err(HttpFailure::Limited(at)) => Err(CheckMiss::Limited { at }),
                    Err(HttpFailure::Transport(error)) => Err(CheckMiss::Retry {
                        error,
                        status: None,
                        excerpt: None,
                        after: None,
                    }),
                    Ok(reply) => self.classify_check(topo, spec, msg, reply),
                };
                if let (Err(CheckMiss::Missing { at }), Some(n)) = (&answer, releases_before) {
                    self.caches
                        .recent_missing
                        .insert(key.clone(), (*at, n))
                        .await;
                }
                answer
            })
            .await;
        match result {
            Ok(_) => exists(true),
            Err(miss) => {
                let mut step = miss_step(&miss, missing);
                if let (CheckMiss::Missing { at }, Some(neg)) = (&*miss, &tier.negative) {
                    neg.insert(key.clone(), *at).await;
                    step.cache.push(CacheWrite {
                        cache: spec.cache.name.clone(),
                        key: key.clone(),
                        present: Some(false),
                        expires_at: at + spec.cache.negative_ttl.as_millis(),
                        observed_at: *at,
                    });
                }
                step
            }
        }
    }

    /// A "missing" this engine just learned for `key`, unless the key was released since.
    async fn recently_missing(&self, key: &str) -> Option<i64> {
        let (at, releases) = self.caches.recent_missing.get(key).await?;
        match self.store.key_state(key).await {
            Ok((_, now)) if now == releases => Some(at),
            _ => {
                self.caches.recent_missing.invalidate(key).await;
                None
            }
        }
    }

    /// Maps a check's answer: `exists` / `missing` conditions (default 2xx / 404), the status
    /// map's `retry`, anything else a failure.
    fn classify_check(
        &self,
        topo: &Topology,
        spec: &CheckSpec,
        msg: &Message,
        reply: HttpReply,
    ) -> Result<bool, CheckMiss> {
        let status = reply.status;
        let ctx = context(&json!({
            "payload": msg.payload,
            "headers": msg.headers,
            "status": status,
            "body": reply.response.body,
            "response": reply.response,
        }));
        let test = |t: &Option<mend_core::template::Tpl>, default: bool| match t {
            Some(t) => topo.templates.test(t, &ctx).map_err(|e| CheckMiss::Fail {
                error: format!("check condition: {e}"),
                status: Some(status),
                excerpt: None,
            }),
            None => Ok(default),
        };
        if test(&spec.exists, (200..300).contains(&status))? {
            return Ok(true);
        }
        if test(&spec.missing, status == 404)? {
            // A release after the request left may already have made this answer stale.
            return Err(CheckMiss::Missing { at: reply.sent_at });
        }
        if spec.http.statuses.outcome(status) == outcome::RETRY {
            return Err(CheckMiss::Retry {
                error: format!("HTTP {status} checking"),
                status: Some(status),
                excerpt: Some(reply.excerpt),
                after: reply.retry_after,
            });
        }
        Err(CheckMiss::Fail {
            error: format!("HTTP {status}: neither exists nor missing"),
            status: Some(status),
            excerpt: Some(reply.excerpt),
        })
    }

    fn park_node(&self, topo: &Topology, spec: &ParkSpec, msg: &Message) -> Step {
        let key = match topo
            .templates
            .render(&spec.key, &template_context(msg, None))
        {
            Ok(k) => k,
            Err(e) => return Step::fail("error", format!("park key: {e}")),
        };
        let sync = match &spec.sync {
            Some(s) => match self.child_process(topo, s, msg) {
                Ok(p) => Some(p),
                Err(e) => return Step::fail("error", e),
            },
            None => None,
        };
        let now = mend_core::clock::now_ms();
        let max_wait = spec.max_wait.unwrap_or(DEFAULT_MAX_WAIT);
        // Only a release count read for this very key says anything about its releases.
        let seen_releases = msg
            .context
            .seen_releases
            .as_ref()
            .filter(|(k, _)| *k == key)
            .map(|(_, n)| *n);
        let park = Park {
            deadline: Some(now + max_wait.as_millis()),
            expire_error: format!("prerequisite {key} not satisfied within {max_wait}"),
            key,
            resume_node: spec.resume.clone(),
            checked_at: msg.context.checked_at.unwrap_or(msg.created_at),
            seen_releases,
            sync,
            cache_on_release: spec
                .cache
                .as_ref()
                .map(|c| (c.name.clone(), c.set_on_release.then(|| c.ttl.as_millis()))),
            coalesce: spec.coalesce,
        };
        Step {
            kind: StepKind::Park(Box::new(park)),
            ..Step::route(outcome::PARKED, Vec::new())
        }
    }

    async fn http_node(&self, topo: &Topology, spec: &HttpSpec, msg: &Message) -> Step {
        let ctx = template_context(msg, None);
        match self.request(topo, spec, msg, &ctx, None).await {
            Err(HttpFailure::Build(e)) => Step::fail("error", e),
            Err(HttpFailure::Limited(at)) => Step::limited(at),
            Err(HttpFailure::Transport(e)) => Step::retry(e, None, None, None),
            Ok(reply) => {
                let body_text = match &reply.response.body {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                let classified = spec.classify.iter().find(|c| {
                    c.status.matches(reply.status)
                        && c.body_contains
                            .as_ref()
                            .is_none_or(|t| body_text.contains(t.as_str()))
                });
                let outcome = match classified {
                    Some(c) => c.outcome.clone(),
                    None => spec.statuses.outcome(reply.status).to_owned(),
                };
                if outcome == outcome::RETRY {
                    return Step::retry(
                        format!("HTTP {} from {}", reply.status, topo.name),
                        Some(reply.status),
                        Some(reply.excerpt),
                        reply.retry_after,
                    );
                }
                let mut step = Step::route(
                    &outcome,
                    vec![Output {
                        node: None,
                        payload: msg.payload.clone(),
                        context: Context {
                            response: Some(reply.response),
                            cursor: None,
                            checked_at: Some(reply.sent_at),
                            seen_releases: None,
                        },
                    }],
                );
                step.status = Some(reply.status);
                if outcome != outcome::OK {
                    step.error = Some(format!("HTTP {} (outcome `{outcome}`)", reply.status));
                    step.excerpt = Some(reply.excerpt);
                }
                step
            }
        }
    }

    async fn split_node(&self, topo: &Topology, spec: &SplitSpec, msg: &Message) -> Step {
        let cursor = msg.context.cursor.clone().unwrap_or_default();
        let response_var = |r: Option<&Response>| {
            r.map(|r| serde_json::to_value(r).unwrap_or(Value::Null))
                .unwrap_or(Value::Null)
        };
        let headers = serde_json::to_value(&msg.headers).unwrap_or(Value::Null);
        let pid = Value::String(msg.process_id.to_string());
        let mid = Value::String(msg.id.to_string());
        let Some(http) = &spec.http else {
            // Items from the payload. At most `chunk` items leave per step: the first chunk
            // at once, the rest as chunk messages back to this node, each holding its own
            // items, so the work stays linear in the number of items.
            let items = if cursor.chunk {
                match msg.payload.as_array() {
                    Some(a) => a.clone(),
                    None => return Step::fail("error", "split chunk is not an array".into()),
                }
            } else {
                let resp = response_var(msg.context.response.as_ref());
                match spec.items.run(&msg.payload, &[&headers, &resp, &pid, &mid]) {
                    Ok(v) => flatten_items(v),
                    Err(e) => return Step::fail("error", format!("split items: {e}")),
                }
            };
            let mut chunks = items.chunks(spec.chunk.max(1));
            let mut outputs: Vec<Output> = chunks
                .next()
                .unwrap_or_default()
                .iter()
                .map(|payload| Output {
                    node: None,
                    payload: payload.clone(),
                    context: carried(msg),
                })
                .collect();
            outputs.extend(chunks.map(|chunk| Output {
                node: Some(msg.node.clone()),
                payload: Value::Array(chunk.to_vec()),
                context: Context {
                    cursor: Some(Cursor {
                        chunk: true,
                        ..Cursor::default()
                    }),
                    ..carried(msg)
                },
            }));
            return Step::route(outcome::ITEM, outputs);
        };

        // One page per step: fetch it, emit its items, and continue with the next page.
        let page = match spec.paging {
            Paging::Counter { start } => Some(cursor.page.unwrap_or(start)),
            _ => None,
        };
        let ctx = template_context(msg, page);
        let reply = match self
            .request(topo, http, msg, &ctx, cursor.next.clone())
            .await
        {
            Err(HttpFailure::Build(e)) => return Step::fail("error", e),
            Err(HttpFailure::Limited(at)) => return Step::limited(at),
            Err(HttpFailure::Transport(e)) => return Step::retry(e, None, None, None),
            Ok(r) => r,
        };
        let status_outcome = http.statuses.outcome(reply.status);
        if status_outcome == outcome::RETRY {
            return Step::retry(
                format!("HTTP {} fetching a page", reply.status),
                Some(reply.status),
                Some(reply.excerpt),
                reply.retry_after,
            );
        }
        if status_outcome != outcome::OK {
            let mut step = Step::fail(
                status_outcome,
                format!(
                    "HTTP {} fetching a page (outcome `{status_outcome}`)",
                    reply.status
                ),
            );
            step.status = Some(reply.status);
            step.excerpt = Some(reply.excerpt);
            return step;
        }
        let resp = response_var(Some(&reply.response));
        let items = match spec
            .items
            .run(&reply.response.body, &[&headers, &resp, &pid, &mid])
        {
            Ok(v) => flatten_items(v),
            Err(e) => return Step::fail("error", format!("split items: {e}")),
        };
        let pages = cursor.pages + 1;
        let next_cursor = match &spec.paging {
            Paging::None => None,
            Paging::Counter { .. } if items.is_empty() => None,
            Paging::Counter { start } => Some(Cursor {
                page: Some(page.unwrap_or(*start) + 1),
                next: None,
                chunk: false,
                pages,
            }),
            Paging::NextLink(jq) => match jq.run(&reply.response.body, &[]) {
                Ok(v) => match v.into_iter().next() {
                    Some(Value::String(link)) if !link.is_empty() => Some(Cursor {
                        page: None,
                        next: Some(link),
                        chunk: false,
                        pages,
                    }),
                    _ => None,
                },
                Err(e) => return Step::fail("error", format!("split paging.next: {e}")),
            },
        };
        let mut outputs: Vec<Output> = items
            .into_iter()
            .map(|payload| Output {
                node: None,
                payload,
                context: carried(msg),
            })
            .collect();
        if next_cursor.is_some() && pages >= spec.max_pages {
            tracing::warn!(
                message = %msg.id,
                node = msg.node,
                max_pages = spec.max_pages,
                "split stopped at max_pages although the source has more pages"
            );
        }
        if let Some(c) = next_cursor
            && pages < spec.max_pages
        {
            outputs.push(Output {
                node: Some(msg.node.clone()),
                payload: msg.payload.clone(),
                context: Context {
                    cursor: Some(c),
                    ..carried(msg)
                },
            });
        }
        let mut step = Step::route(outcome::ITEM, outputs);
        step.status = Some(reply.status);
        step
    }

    /// Builds and sends one request. `url_override` is a next-page link.
    pub(crate) async fn request(
        &self,
        topo: &Topology,
        spec: &HttpSpec,
        msg: &Message,
        ctx: &TplContext,
        url_override: Option<String>,
    ) -> Result<HttpReply, HttpFailure> {
        let build = |e: mend_core::template::RenderError, what: &str| {
            HttpFailure::Build(format!("{what}: {e}"))
        };
        let system = match &spec.system {
            Some(name) => Some(
                self.systems
                    .get(&(topo.name.clone(), name.clone()))
                    .ok_or_else(|| {
                        HttpFailure::Build(format!("system `{name}` is not configured"))
                    })?,
            ),
            None => None,
        };
        let paged_link = url_override.is_some();
        let target = match url_override {
            Some(u) => u,
            None => topo
                .templates
                .render(&spec.url, ctx)
                .map_err(|e| build(e, "url"))?,
        };
        let url = if target.starts_with("http://") || target.starts_with("https://") {
            target
        } else {
            let base = system.map(|s| s.base_url.as_str()).unwrap_or("");
            format!(
                "{}/{}",
                base.trim_end_matches('/'),
                target.trim_start_matches('/')
            )
        };
        let method = reqwest::Method::from_bytes(spec.method.as_bytes())
            .map_err(|_| HttpFailure::Build(format!("`{}` is not an HTTP method", spec.method)))?;
        // The system's limiter: a request goes only with capacity; otherwise the message waits.
        let limit = spec
            .system
            .as_ref()
            .and_then(|s| self.limiters.system(&topo.name, s));
        let _in_flight = match limit.map(|l| l.admit()) {
            Some(Err(until)) => return Err(HttpFailure::Limited(until)),
            Some(Ok(guard)) => Some(guard),
            None => None,
        };
        let mut req = self.http.request(method, &url);
        if let Some(s) = system {
            req = req.headers(s.headers.clone());
            if let Some((u, p)) = &s.basic {
                req = req.basic_auth(u, Some(p));
            }
        }
        let timeout = spec
            .timeout
            .map(|d| d.0)
            .or(system.and_then(|s| s.timeout))
            .unwrap_or(self.config.default_timeout);
        req = req.timeout(timeout);
        // A next-page link already carries its query.
        if !spec.query.is_empty() && !paged_link {
            let mut pairs = Vec::with_capacity(spec.query.len());
            for (k, t) in &spec.query {
                pairs.push((
                    k.as_str(),
                    topo.templates
                        .render(t, ctx)
                        .map_err(|e| build(e, &format!("query `{k}`")))?,
                ));
            }
            req = req.query(&pairs);
        }
        let mut has_content_type = false;
        for (k, t) in &spec.headers {
            let v = topo
                .templates
                .render(t, ctx)
                .map_err(|e| build(e, &format!("header `{k}`")))?;
            has_content_type |= k.eq_ignore_ascii_case("content-type");
            req = req.header(k.as_str(), v);
        }
        if let Some(h) = &spec.idempotency_header {
            req = req.header(h.as_str(), msg.id.to_string());
        }
        let json_type = |req: reqwest::RequestBuilder| {
            if has_content_type {
                req
            } else {
                req.header("content-type", "application/json")
            }
        };
        req = match &spec.body {
            Body::None => req,
            Body::Payload => json_type(req).body(msg.payload.to_string()),
            Body::Json(t) => {
                let v = topo
                    .templates
                    .render_json(t, ctx)
                    .map_err(|e| build(e, "json body"))?;
                json_type(req).body(v.to_string())
            }
            Body::Text(t) => {
                let text = topo
                    .templates
                    .render(t, ctx)
                    .map_err(|e| build(e, "body"))?;
                if serde_json::from_str::<Value>(&text).is_ok() {
                    json_type(req).body(text)
                } else {
                    req.body(text)
                }
            }
        };
        let sent_at = mend_core::clock::now_ms();
        let started = std::time::Instant::now();
        let system_label = spec.system.as_deref().unwrap_or("none");
        let sent = req.send().await;
        crate::telemetry::http(system_label, started.elapsed());
        let mut resp = sent.map_err(|e| HttpFailure::Transport(describe_transport(&e, &url)))?;
        let status = resp.status().as_u16();
        let mut headers = mend_core::message::Headers::new();
        for (k, v) in resp.headers() {
            if let Ok(v) = v.to_str() {
                headers.insert(k.as_str().to_owned(), v.to_owned());
            }
        }
        let retry_after = headers
            .get("retry-after")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        if status == 429
            && let Some(l) = limit
        {
            // Too many requests: pause the whole system for this engine, then carry on.
            let wait = retry_after.unwrap_or(Duration::from_secs(1));
            let until = mend_core::clock::now_ms() + wait.as_millis() as i64;
            l.pause_until(until);
            tracing::warn!(
                system = l.name,
                pause_ms = wait.as_millis() as u64,
                "system answered 429; paused"
            );
            return Err(HttpFailure::Limited(until));
        }
        let mut bytes = Vec::new();
        loop {
            match resp.chunk().await {
                Ok(Some(chunk)) => {
                    if bytes.len() + chunk.len() > MAX_BODY {
                        return Err(HttpFailure::Build(format!(
                            "response body from {url} is larger than {MAX_BODY} bytes"
                        )));
                    }
                    bytes.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => return Err(HttpFailure::Transport(describe_transport(&e, &url))),
            }
        }
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Ok(HttpReply {
            sent_at,
            status,
            excerpt: excerpt_of(&bytes),
            response: Response {
                status,
                headers,
                body,
            },
            retry_after,
        })
    }
}

fn describe_transport(e: &reqwest::Error, url: &str) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "failed"
    };
    let mut msg = format!("request to {url} {what}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    msg
}

/// A program that yields one array gives its elements; otherwise each value is an item.
fn flatten_items(values: Vec<Value>) -> Vec<Value> {
    if values.len() == 1 && values[0].is_array() {
        match values.into_iter().next() {
            Some(Value::Array(a)) => a,
            _ => Vec::new(),
        }
    } else {
        values.into_iter().filter(|v| !v.is_null()).collect()
    }
}

/// The step for a check that did not say "exists".
fn miss_step(miss: &CheckMiss, missing: impl Fn(i64) -> Step) -> Step {
    match miss {
        CheckMiss::Missing { at } => missing(*at),
        CheckMiss::Limited { at } => Step::limited(*at),
        CheckMiss::Retry {
            error,
            status,
            excerpt,
            after,
        } => Step::retry(error.clone(), *status, excerpt.clone(), *after),
        CheckMiss::Fail {
            error,
            status,
            excerpt,
        } => {
            let mut step = Step::fail(outcome::FAILED, error.clone());
            step.status = *status;
            step.excerpt = excerpt.clone();
            step
        }
    }
}

/// A parked message without `max_wait` still has a deadline: nothing waits forever.
const DEFAULT_MAX_WAIT: mend_core::duration::Dur = mend_core::duration::Dur::from_secs(24 * 3600);

/// The message passed on, remembering when it learned about its prerequisite.
fn checked(msg: &Message, at: i64) -> Output {
    let mut out = same(msg);
    out.context.checked_at = Some(at);
    out
}

/// A fresh context that keeps when the message learned about its prerequisite, so a park
/// further down still sees a release that happened in between.
fn carried(msg: &Message) -> Context {
    Context {
        checked_at: msg.context.checked_at,
        seen_releases: msg.context.seen_releases.clone(),
        ..Context::default()
    }
}

/// The message itself, passed on unchanged.
fn same(msg: &Message) -> Output {
    Output {
        node: None,
        payload: msg.payload.clone(),
        context: msg.context.clone(),
    }
}

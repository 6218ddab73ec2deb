//! The validated topology model the engine runs.
//!
//! Key types: [`Catalog`] holds every loaded [`Topology`]; a topology has [`System`]s,
//! [`Event`]s and [`Node`]s; a node's behaviour is the closed [`NodeKind`] enum, so every
//! match over kinds is exhaustive. Outcomes are plain names; [`NodeKind::outcomes`] says which
//! a kind can produce and [`NodeKind::unwired`] what happens to a message whose outcome has no
//! edge.

use std::path::PathBuf;
use std::sync::Arc;

use indexmap::IndexMap;
use serde_json::Value;

use crate::config::RetryDoc;
use crate::duration::Dur;
use crate::jq::Jq;
use crate::template::{JsonTpl, Templates, Tpl};

/// Outcome names with a meaning to the engine.
pub mod outcome {
    pub const OK: &str = "ok";
    pub const MISSING: &str = "missing";
    pub const FAILED: &str = "failed";
    /// Not routable: the engine retries with backoff, then trashes after the last attempt.
    pub const RETRY: &str = "retry";
    pub const ITEM: &str = "item";
    /// A `map` that produced nothing.
    pub const EMPTY: &str = "empty";
    pub const DEFAULT: &str = "default";
}

/// Every loaded topology, by name.
#[derive(Debug, Default)]
pub struct Catalog {
    pub topologies: IndexMap<String, Arc<Topology>>,
}

impl Catalog {
    pub fn get(&self, name: &str) -> Option<&Arc<Topology>> {
        self.topologies.get(name)
    }
}

#[derive(Debug)]
pub struct Topology {
    pub name: String,
    /// Content hash of the file (first 16 hex digits of its SHA-256).
    pub version: String,
    pub file: PathBuf,
    /// The file's text, kept so the store can record exactly what ran.
    pub source: String,
    pub description: Option<String>,
    pub systems: IndexMap<String, System>,
    pub events: IndexMap<String, Event>,
    pub nodes: IndexMap<String, Node>,
    pub templates: Templates,
}

#[derive(Clone, Debug, PartialEq)]
pub struct System {
    pub name: String,
    /// Base URL as written; `${VAR}` is resolved when the engine starts.
    pub url: String,
    pub timeout: Option<Dur>,
    pub headers: IndexMap<String, String>,
    pub auth: Option<Auth>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Auth {
    Bearer {
        env: String,
    },
    Header {
        name: String,
        env: String,
    },
    Basic {
        user_env: String,
        password_env: String,
    },
}

#[derive(Debug)]
pub struct Event {
    pub name: String,
    pub node: String,
    pub cron: Option<CronSpec>,
    pub webhook: Option<Webhook>,
    pub data: Option<Value>,
}

#[derive(Debug)]
pub struct CronSpec {
    pub expression: String,
    pub schedule: croner::Cron,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Webhook {
    pub token_env: String,
}

#[derive(Debug)]
pub struct Node {
    pub name: String,
    pub kind: NodeKind,
    /// Outcome → next node.
    pub edges: IndexMap<String, String>,
    pub retry: RetryPolicy,
    pub concurrency: Option<u32>,
}

impl Node {
    /// The node a message with this outcome goes to, if any.
    pub fn edge(&self, outcome: &str) -> Option<&str> {
        self.edges.get(outcome).map(String::as_str)
    }
}

pub type RetryPolicy = RetryDoc;

#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "one per node, built once at load; boxing buys nothing"
)]
pub enum NodeKind {
    Http(HttpSpec),
    Switch(SwitchSpec),
    Split(SplitSpec),
    Map(MapSpec),
    Send(SendSpec),
}

/// What happens to a message whose outcome has no edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unwired {
    /// The message is done: it reached the end of its path.
    Deliver,
    /// The message is done without being delivered, on purpose (a switch branch not taken).
    Filter,
    /// An unhandled non-success answer: it must stay visible, so it goes to the trash.
    Trash,
}

impl NodeKind {
    pub fn kind_name(&self) -> &'static str {
        match self {
            NodeKind::Http(_) => "http",
            NodeKind::Switch(_) => "switch",
            NodeKind::Split(_) => "split",
            NodeKind::Map(_) => "map",
            NodeKind::Send(_) => "send",
        }
    }

    /// The outcome that `next: node` (the short form) wires.
    pub fn main_outcome(&self) -> Option<&'static str> {
        match self {
            NodeKind::Http(_) | NodeKind::Map(_) | NodeKind::Send(_) => Some(outcome::OK),
            NodeKind::Split(_) => Some(outcome::ITEM),
            NodeKind::Switch(_) => None,
        }
    }

    /// Every routable outcome this kind can produce.
    pub fn outcomes(&self) -> Vec<String> {
        let mut out: Vec<String> = match self {
            NodeKind::Http(h) => h.statuses.outcomes(),
            NodeKind::Switch(s) => s
                .cases
                .iter()
                .map(|c| c.outcome.clone())
                .chain(std::iter::once(s.default.clone()))
                .collect(),
            NodeKind::Split(_) => vec![outcome::ITEM.into()],
            NodeKind::Map(_) => vec![outcome::OK.into(), outcome::EMPTY.into()],
            NodeKind::Send(_) => vec![outcome::OK.into()],
        };
        let mut seen = std::collections::HashSet::new();
        out.retain(|o| o != outcome::RETRY && seen.insert(o.clone()));
        out
    }

    pub fn unwired(&self, name: &str) -> Unwired {
        match self {
            NodeKind::Switch(_) => Unwired::Filter,
            NodeKind::Map(_) if name == outcome::EMPTY => Unwired::Filter,
            _ if name == outcome::OK || name == outcome::ITEM => Unwired::Deliver,
            _ => Unwired::Trash,
        }
    }
}

/// An HTTP request, compiled.
#[derive(Debug)]
pub struct HttpSpec {
    pub system: Option<String>,
    pub method: String,
    pub url: Tpl,
    pub query: Vec<(String, Tpl)>,
    pub headers: Vec<(String, Tpl)>,
    pub body: Body,
    pub timeout: Option<Dur>,
    pub statuses: StatusMap,
    pub idempotency_header: Option<String>,
}

#[derive(Debug)]
pub enum Body {
    None,
    /// The payload as JSON (the default for POST, PUT and PATCH).
    Payload,
    Text(Tpl),
    Json(JsonTpl),
}

/// A status pattern: one code, a range, or a class (`4xx`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusPattern {
    pub low: u16,
    pub high: u16,
}

impl StatusPattern {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let bad = || format!("`{s}` is not a status pattern: write `404`, `4xx` or `400-499`");
        let code = |t: &str| -> Result<u16, String> {
            t.trim()
                .parse::<u16>()
                .ok()
                .filter(|c| (100..=599).contains(c))
                .ok_or_else(bad)
        };
        if let Some((a, b)) = s.split_once('-') {
            let (low, high) = (code(a)?, code(b)?);
            if low > high {
                return Err(bad());
            }
            return Ok(Self { low, high });
        }
        if s.len() == 3 && s[1..].eq_ignore_ascii_case("xx") {
            let d = s[..1].parse::<u16>().map_err(|_| bad())?;
            if !(1..=5).contains(&d) {
                return Err(bad());
            }
            return Ok(Self {
                low: d * 100,
                high: d * 100 + 99,
            });
        }
        let c = code(s)?;
        Ok(Self { low: c, high: c })
    }

    fn width(&self) -> u16 {
        self.high - self.low
    }

    pub fn matches(&self, status: u16) -> bool {
        (self.low..=self.high).contains(&status)
    }
}

/// Status → outcome. The narrowest matching user rule wins; then the defaults: 2xx `ok`,
/// 404 `missing`, 408/429/5xx `retry`, other codes `failed`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StatusMap {
    rules: Vec<(StatusPattern, String)>,
}

impl StatusMap {
    pub fn new(mut rules: Vec<(StatusPattern, String)>) -> Self {
        rules.sort_by_key(|(p, _)| p.width());
        Self { rules }
    }

    pub fn outcome(&self, status: u16) -> &str {
        if let Some((_, o)) = self.rules.iter().find(|(p, _)| p.matches(status)) {
            return o;
        }
        match status {
            200..=299 => outcome::OK,
            404 => outcome::MISSING,
            408 | 429 | 500..=599 => outcome::RETRY,
            _ => outcome::FAILED,
        }
    }

    fn outcomes(&self) -> Vec<String> {
        let mut out: Vec<String> = self.rules.iter().map(|(_, o)| o.clone()).collect();
        out.extend([outcome::OK, outcome::MISSING, outcome::FAILED].map(String::from));
        out
    }
}

#[derive(Debug)]
pub struct SwitchSpec {
    pub cases: Vec<Case>,
    pub default: String,
}

#[derive(Debug)]
pub struct Case {
    pub when: Tpl,
    pub outcome: String,
}

#[derive(Debug)]
pub struct SplitSpec {
    /// Selects the items from the payload or the response body.
    pub items: Jq,
    pub http: Option<HttpSpec>,
    pub paging: Paging,
    pub chunk: usize,
    pub max_pages: u64,
}

#[derive(Debug)]
pub enum Paging {
    None,
    Counter { start: i64 },
    NextLink(Jq),
}

#[derive(Debug)]
pub struct MapSpec {
    pub program: Jq,
}

/// Variables a `map` program sees besides its input (the payload).
pub const MAP_VARS: [&str; 4] = ["headers", "response", "process_id", "message_id"];

#[derive(Debug)]
pub struct SendSpec {
    pub topology: String,
    pub event: String,
    pub data: Option<JsonTpl>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_map_prefers_narrow_user_rules_then_defaults() {
        let map = StatusMap::new(vec![
            (StatusPattern::parse("4xx").unwrap(), "bad".into()),
            (StatusPattern::parse("409").unwrap(), "ok".into()),
        ]);
        assert_eq!(map.outcome(409), "ok");
        assert_eq!(map.outcome(404), "bad");
        assert_eq!(map.outcome(503), "retry");
        assert_eq!(map.outcome(201), "ok");
        assert!(StatusPattern::parse("6xx").is_err());
        assert!(StatusPattern::parse("499-400").is_err());
        assert_eq!(
            StatusPattern::parse("400-499").unwrap(),
            StatusPattern {
                low: 400,
                high: 499
            }
        );
    }
}

//! The YAML of a topology file as written, before graph checks.
//!
//! Every field that a later check may complain about is [`Spanned`], so the error can name its
//! line and column. Unknown fields are errors (`deny_unknown_fields`): a typo must not be
//! silently ignored. A node names its kind by one key (`http:`, `switch:`, ...); the loader turns
//! these documents into the closed [`crate::topology::NodeKind`] enum.

use std::fmt;

use indexmap::IndexMap;
use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde_json::Value;
pub use serde_saphyr::{Location, Spanned};

use crate::duration::Dur;

/// One topology file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopologyDoc {
    /// The topology's name: what `mend run NAME` and `send: { topology: NAME }` refer to.
    pub name: Spanned<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// External endpoints the nodes call, by name.
    #[serde(default)]
    pub systems: IndexMap<String, Spanned<SystemDoc>>,
    /// Named entry points. `run: first-node` or `{ node, cron, webhook, data }`.
    #[serde(default)]
    pub events: IndexMap<String, Spanned<EventDoc>>,
    #[serde(default)]
    pub nodes: IndexMap<String, Spanned<NodeDoc>>,
}

/// A system: base URL (may read `${ENV}`), default timeout, static headers and auth.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemDoc {
    /// Base URL. `${VAR}` and `${VAR:-default}` read the environment when the engine starts.
    pub url: Spanned<String>,
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// Headers sent on every request to this system (not secrets: use `auth` for those).
    #[serde(default)]
    pub headers: IndexMap<String, String>,
    #[serde(default)]
    pub auth: Option<Spanned<AuthDoc>>,
    /// Requests per time unit this engine sends to the system, e.g. `20/s`.
    #[serde(default)]
    pub rate: Option<crate::rate::Rate>,
    /// Requests allowed at once above the steady rate (default: one second's worth, at least 1).
    #[serde(default)]
    pub burst: Option<u32>,
    /// Requests in flight at once to the system.
    #[serde(default)]
    pub max_concurrent: Option<u32>,
}

/// Credentials, always read from environment variables, never written in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthDoc {
    /// `Authorization: Bearer $VAR`.
    #[serde(default)]
    pub bearer_env: Option<String>,
    /// A custom header name, with its value from `value_env`.
    #[serde(default)]
    pub header: Option<String>,
    #[serde(default)]
    pub value_env: Option<String>,
    /// HTTP basic auth from two variables.
    #[serde(default)]
    pub basic_user_env: Option<String>,
    #[serde(default)]
    pub basic_password_env: Option<String>,
}

/// A start event. Written either as the first node's name or as a map.
#[derive(Debug)]
pub struct EventDoc {
    pub node: Spanned<String>,
    pub cron: Option<Spanned<String>>,
    pub webhook: Option<WebhookDoc>,
    /// Payload used when the event fires without data (cron).
    pub data: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventMap {
    node: Spanned<String>,
    #[serde(default)]
    cron: Option<Spanned<String>>,
    #[serde(default)]
    webhook: Option<WebhookDoc>,
    #[serde(default)]
    data: Option<Value>,
}

/// A webhook start event: `POST /hooks/{topology}/{event}` with the token from `token_env`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookDoc {
    pub token_env: String,
}

fn unknown<T>(value: T) -> Spanned<T> {
    Spanned::new(value, Location::UNKNOWN, Location::UNKNOWN)
}

impl<'de> Deserialize<'de> for EventDoc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = EventDoc;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(
                    "a node name, or a map with `node` and optional `cron`, `webhook`, `data`",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<EventDoc, E> {
                Ok(EventDoc {
                    node: unknown(v.to_owned()),
                    cron: None,
                    webhook: None,
                    data: None,
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<EventDoc, A::Error> {
                let m = EventMap::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(EventDoc {
                    node: m.node,
                    cron: m.cron,
                    webhook: m.webhook,
                    data: m.data,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// Where messages go next: one node name (for the kind's main outcome) or outcome → node.
#[derive(Debug)]
pub enum NextDoc {
    One(String),
    ByOutcome(IndexMap<String, Spanned<String>>),
}

impl<'de> Deserialize<'de> for NextDoc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NextDoc;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a node name, or a map from outcome to node name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<NextDoc, E> {
                Ok(NextDoc::One(v.to_owned()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<NextDoc, A::Error> {
                IndexMap::deserialize(de::value::MapAccessDeserializer::new(map))
                    .map(NextDoc::ByOutcome)
            }
        }
        d.deserialize_any(V)
    }
}

/// One node: exactly one kind key plus the common fields.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeDoc {
    #[serde(default)]
    pub description: Option<String>,
    /// Call a system over HTTP.
    #[serde(default)]
    pub http: Option<Spanned<HttpDoc>>,
    /// Route by conditions over the message.
    #[serde(default)]
    pub switch: Option<Spanned<SwitchDoc>>,
    /// One message per element of an array, optionally fetched page by page.
    #[serde(default)]
    pub split: Option<Spanned<SplitDoc>>,
    /// Reshape the payload with a jq program.
    #[serde(default)]
    pub map: Option<Spanned<String>>,
    /// Start another topology's event (or this one's).
    #[serde(default)]
    pub send: Option<Spanned<SendDoc>>,
    /// Ask a system whether a prerequisite exists (`exists` / `missing`), through a cache.
    #[serde(default)]
    pub check: Option<Spanned<CheckDoc>>,
    /// Wait under a key until it is released; the first to wait asks a sync for it.
    #[serde(default)]
    pub park: Option<Spanned<ParkDoc>>,
    /// Release a key: every message parked under it resumes.
    #[serde(default)]
    pub release: Option<Spanned<ReleaseDoc>>,
    /// Prerequisites of this node, by name; each expands into check → park → sync → resume.
    #[serde(default)]
    pub requires: IndexMap<String, Spanned<RequiresDoc>>,
    #[serde(default)]
    pub next: Option<Spanned<NextDoc>>,
    #[serde(default)]
    pub retry: Option<RetryDoc>,
    /// Messages of this node worked on at once by one engine.
    #[serde(default)]
    pub concurrency: Option<u32>,
}

/// An HTTP request. Give the method and URL as `get: /path` (or post/put/patch/delete), or as
/// `method` + `url`. A URL that does not start with `http://` or `https://` is relative to the
/// system's base URL.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpDoc {
    #[serde(default)]
    pub system: Option<Spanned<String>>,
    #[serde(default)]
    pub method: Option<Spanned<String>>,
    #[serde(default)]
    pub url: Option<Spanned<String>>,
    #[serde(default)]
    pub get: Option<Spanned<String>>,
    #[serde(default)]
    pub post: Option<Spanned<String>>,
    #[serde(default)]
    pub put: Option<Spanned<String>>,
    #[serde(default)]
    pub patch: Option<Spanned<String>>,
    #[serde(default)]
    pub delete: Option<Spanned<String>>,
    /// Query parameters, values are templates.
    #[serde(default)]
    pub query: IndexMap<String, Spanned<String>>,
    /// Request headers, values are templates.
    #[serde(default)]
    pub headers: IndexMap<String, Spanned<String>>,
    /// A text body template, e.g. `"{{ payload | tojson }}"`.
    #[serde(default)]
    pub body: Option<Spanned<String>>,
    /// A JSON body whose strings are templates.
    #[serde(default)]
    pub json: Option<Spanned<Value>>,
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// Status → outcome: keys `"200"`, `"2xx"` or `"400-499"`; values are outcome names, or
    /// `retry` to retry with backoff.
    #[serde(default)]
    pub outcomes: IndexMap<String, Spanned<String>>,
    /// Send the message id in this header, so the receiver can drop a repeat after a crash.
    #[serde(default)]
    pub idempotency_header: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchDoc {
    pub cases: Vec<CaseDoc>,
    /// The outcome when no case matches (`default` if not given).
    #[serde(default)]
    pub default: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaseDoc {
    /// A condition, e.g. `payload.price > 100`.
    pub when: Spanned<String>,
    pub outcome: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SplitDoc {
    /// jq program selecting the items (default `.`): from the payload, or from the response
    /// body when `http` is given.
    #[serde(default)]
    pub items: Option<Spanned<String>>,
    /// Fetch the items over HTTP (one page per step when `paging` is given).
    #[serde(default)]
    pub http: Option<Spanned<HttpDoc>>,
    #[serde(default)]
    pub paging: Option<Spanned<PagingDoc>>,
    /// Items emitted per step when splitting a payload array (default 500).
    #[serde(default)]
    pub chunk: Option<usize>,
    /// Stop after this many pages (default 100000).
    #[serde(default)]
    pub max_pages: Option<u64>,
}

/// `page: 1` counts pages from 1 (templates see `page`) until a page has no items;
/// `next: .links.next` follows a next-page link from the response body until it is null.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PagingDoc {
    #[serde(default)]
    pub page: Option<i64>,
    #[serde(default)]
    pub next: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SendDoc {
    /// Defaults to this topology.
    #[serde(default)]
    pub topology: Option<Spanned<String>>,
    pub event: Spanned<String>,
    /// The new process's payload (a JSON template); defaults to this message's payload.
    #[serde(default)]
    pub data: Option<Spanned<Value>>,
}

/// The request of a check: the same keys as `http` (`system`, `get:` ...), minus the body.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckDoc {
    #[serde(default)]
    pub system: Option<Spanned<String>>,
    #[serde(default)]
    pub get: Option<Spanned<String>>,
    #[serde(default)]
    pub method: Option<Spanned<String>>,
    #[serde(default)]
    pub url: Option<Spanned<String>>,
    #[serde(default)]
    pub query: IndexMap<String, Spanned<String>>,
    #[serde(default)]
    pub headers: IndexMap<String, Spanned<String>>,
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// The cache key, e.g. `category:{{ payload.category_id }}` (in `requires`, the
    /// requirement's key).
    #[serde(default)]
    pub key: Option<Spanned<String>>,
    /// When the answer means "exists" (default: a 2xx status). Sees `status` and `body`.
    #[serde(default)]
    pub exists: Option<Spanned<String>>,
    /// When the answer means "missing" (default: status 404).
    #[serde(default)]
    pub missing: Option<Spanned<String>>,
    #[serde(default)]
    pub cache: Option<CacheDoc>,
}

impl CheckDoc {
    /// The request part as an `http` document.
    pub fn request(&self) -> HttpDoc {
        HttpDoc {
            system: self.system.clone(),
            get: self.get.clone(),
            method: self.method.clone(),
            url: self.url.clone(),
            query: self.query.clone(),
            headers: self.headers.clone(),
            timeout: self.timeout,
            ..HttpDoc::default()
        }
    }
}

/// A named TTL cache of existence answers: in each engine, in front of the store's.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheDoc {
    /// Defaults to the requirement's name (or the check node's).
    #[serde(default)]
    pub name: Option<String>,
    /// How long "exists" is believed (default 10m). `0s` turns the cache off: every check
    /// asks the system, and concurrent checks of one key are not merged.
    #[serde(default = "CacheDoc::default_ttl")]
    pub ttl: Dur,
    /// How long "missing" is believed (default 0: not cached).
    #[serde(default)]
    pub negative_ttl: Dur,
    /// What a release does to the key's entry (default `exists`).
    #[serde(default)]
    pub on_release: OnRelease,
}

/// What a release does to a key's cache entry.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OnRelease {
    /// Mark it present: resumed and later messages need no re-check.
    #[default]
    Exists,
    /// Forget it: the next check asks the system.
    Invalidate,
}

impl CacheDoc {
    fn default_ttl() -> Dur {
        Dur::from_secs(600)
    }
}

impl Default for CacheDoc {
    fn default() -> Self {
        Self {
            name: None,
            ttl: Self::default_ttl(),
            negative_ttl: Dur::default(),
            on_release: OnRelease::default(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParkDoc {
    /// e.g. `category:{{ payload.category_id }}`.
    pub key: Spanned<String>,
    /// The node the message continues at once the key is released.
    pub resume: Spanned<String>,
    /// The sync to ask, once per key while it is in flight.
    #[serde(default)]
    pub sync: Option<Spanned<SendDoc>>,
    /// After this long parked, the message goes to the trash.
    #[serde(default)]
    pub max_wait: Option<Dur>,
    /// On release, mark the key present in this cache.
    #[serde(default)]
    pub cache: Option<CacheDoc>,
    /// One sync per key while it is in flight (default). `false`: every parked message asks
    /// for its own sync (only for comparisons).
    #[serde(default)]
    pub coalesce: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseDoc {
    pub key: Spanned<String>,
    /// Mark the key present in this cache (its `ttl`), so resumed messages skip the check.
    #[serde(default)]
    pub cache: Option<CacheDoc>,
}

/// A prerequisite of a node. `mode: check` (default) asks before the node runs;
/// `mode: optimistic` runs the node first and treats a `missing_response` as missing.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequiresDoc {
    pub key: Spanned<String>,
    /// Only when this holds (e.g. `payload.parent_id is not none`).
    #[serde(default)]
    pub when: Option<Spanned<String>>,
    #[serde(default)]
    pub check: Option<Spanned<CheckDoc>>,
    #[serde(default)]
    pub cache: Option<CacheDoc>,
    pub sync: Spanned<SendDoc>,
    #[serde(default)]
    pub max_wait: Option<Dur>,
    #[serde(default)]
    pub mode: Option<Spanned<String>>,
    #[serde(default)]
    pub missing_response: Option<Spanned<MissingResponseDoc>>,
    /// One sync per key while it is in flight (default `true`).
    #[serde(default)]
    pub coalesce: Option<bool>,
}

/// How the target says a prerequisite is missing (optimistic mode).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MissingResponseDoc {
    /// Status pattern, e.g. `422` or `4xx`.
    pub status: String,
    /// Text the response body must contain.
    #[serde(default)]
    pub body_contains: Option<String>,
}

/// Retry policy for outcomes that ask for a retry (5xx, 429, timeouts, connection errors).
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RetryDoc {
    /// Total attempts, the first included (default 5).
    #[serde(default = "RetryDoc::default_attempts")]
    pub attempts: u32,
    /// Delay before the first retry; doubles each time (default 500ms).
    #[serde(default = "RetryDoc::default_base")]
    pub base: Dur,
    /// Upper bound of one delay (default 1m).
    #[serde(default = "RetryDoc::default_max")]
    pub max: Dur,
}

impl RetryDoc {
    fn default_attempts() -> u32 {
        5
    }
    fn default_base() -> Dur {
        Dur::from_millis(500)
    }
    fn default_max() -> Dur {
        Dur::from_secs(60)
    }
}

impl Default for RetryDoc {
    fn default() -> Self {
        Self {
            attempts: Self::default_attempts(),
            base: Self::default_base(),
            max: Self::default_max(),
        }
    }
}

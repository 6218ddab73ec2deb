//! The store contract: what the engine needs from durable storage, as small capability traits
//! with one implementation per backend (SQLite now, PostgreSQL later) and no I/O here.
//!
//! Key types: [`NewProcess`] and [`NewMessage`] are written; [`ClaimRequest`] hands ready
//! messages to one worker under a lease; a [`Completion`] is everything one step of a node
//! produced, applied in one transaction; [`ProcessReport`] is what a process did.
//!
//! Message states: `queued` → `running` (claimed) → `done` | `filtered` | `trash`, or back to
//! `retry` (waiting for `available_at`) → `running` ..., or `parked` under a key until a
//! release moves it back to `queued` (or its deadline sends it to the trash). A process is done
//! when none of its messages is `queued`, `running`, `retry` or `parked`.

use std::future::Future;
use std::time::Duration;

use indexmap::IndexMap;
use mend_core::ids::{MessageId, ProcessId};
use mend_core::message::{Context, Headers, Message};
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store error: {0}")]
    Backend(String),
    #[error(
        "the store's schema is newer than this mend (version {found}, this mend knows {known}); upgrade mend"
    )]
    SchemaTooNew { found: i64, known: i64 },
    #[error("the store has been closed")]
    Closed,
    #[error("corrupt row in the store: {0}")]
    Corrupt(String),
}

/// A message to write.
#[derive(Clone, Debug, PartialEq)]
pub struct NewMessage {
    pub id: MessageId,
    pub process_id: ProcessId,
    pub topology: String,
    pub version: String,
    pub node: String,
    pub payload: Value,
    pub headers: Headers,
    pub context: Context,
    pub parent_id: Option<MessageId>,
    /// Unix ms before which no worker claims it.
    pub available_at: i64,
}

/// A process to open with its first message.
#[derive(Clone, Debug, PartialEq)]
pub struct NewProcess {
    pub id: ProcessId,
    pub topology: String,
    pub version: String,
    pub event: String,
    pub parent_process_id: Option<ProcessId>,
    pub parent_message_id: Option<MessageId>,
    pub created_at: i64,
    pub first: NewMessage,
    /// For a sync process opened by a park: the key released when the process ends with
    /// nothing in the trash.
    pub release_key: Option<String>,
}

/// How many messages of one node a worker can take now.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeCapacity {
    pub topology: String,
    pub node: String,
    pub max: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ClaimRequest {
    pub worker: String,
    pub now: i64,
    pub lease_until: i64,
    /// At most this many messages in all.
    pub limit: u32,
    pub nodes: Vec<NodeCapacity>,
}

/// Where the input message of a step ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Handled: its outputs (if any) carry on.
    Done,
    /// Dropped on purpose by a node (a switch branch with no edge, an empty map).
    Filtered,
    /// Try the same node again at `at` (Unix ms).
    Retry { at: i64 },
    /// Failed for good: visible in the trash with its error and attempts.
    Trash,
    /// Waits under `Completion::park`'s key.
    Parked,
    /// Its system had no capacity: wait until `at` (Unix ms), visibly, without an attempt.
    Limited { at: i64 },
}

/// Parks the input message under a key (with `Disposition::Parked`).
#[derive(Clone, Debug, PartialEq)]
pub struct Park {
    pub key: String,
    pub resume_node: String,
    /// Unix ms after which the message goes to the trash with `expire_error`.
    pub deadline: Option<i64>,
    pub expire_error: String,
    /// When the message learned the key was missing: a release after this resumes it at once.
    pub checked_at: i64,
    /// The key's release count when the message learned it was missing from "a sync is in
    /// flight" (no request was sent): a higher count at park time resumes it at once.
    pub seen_releases: Option<i64>,
    /// The sync to open if no sync is in flight for the key (single-flight); the store sets
    /// its `release_key`.
    pub sync: Option<NewProcess>,
    /// On release, mark the key present in this cache for this long (ms), or with `None`
    /// remove it from the cache (the next check asks the system).
    pub cache_on_release: Option<(String, Option<i64>)>,
    /// Open the sync only if none is in flight for the key (single-flight). `false` opens
    /// one per parked message.
    pub coalesce: bool,
}

/// Releases a key: every message parked under it resumes, the in-flight mark is cleared.
#[derive(Clone, Debug, PartialEq)]
pub struct Release {
    pub key: String,
    /// Who released it: a node, a sync process, an operator.
    pub source: String,
    /// Cache entries to write with the release (e.g. the key now exists).
    pub cache: Vec<CacheWrite>,
}

/// One entry of a check cache's store tier.
#[derive(Clone, Debug, PartialEq)]
pub struct CacheWrite {
    pub cache: String,
    pub key: String,
    /// `None` removes the entry.
    pub present: Option<bool>,
    pub expires_at: i64,
    /// When the answer was seen (Unix ms). A "missing" seen before the key's last release is
    /// stale and not written.
    pub observed_at: i64,
}

/// What a release did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Released {
    pub key: String,
    /// Messages moved back to their resume node.
    pub resumed: u64,
    /// Whether a sync was marked in flight for the key.
    pub was_pending: bool,
}

/// Messages of one node waiting in the `limited` state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LimitedCount {
    pub topology: String,
    pub node: String,
    pub count: u64,
    /// When the oldest of them started waiting (Unix ms).
    pub oldest: i64,
}

/// A key with parked messages or a sync in flight, for operators.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ParkedKey {
    pub key: String,
    pub parked: u64,
    pub oldest: Option<i64>,
    pub sync_pending_since: Option<i64>,
    pub sync_process_id: Option<ProcessId>,
}

/// One try of one node on one message, kept for the trash view and reports.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Attempt {
    pub attempt: u32,
    pub at: i64,
    pub duration_ms: i64,
    pub outcome: String,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub response_excerpt: Option<String>,
}

/// Everything one step produced. Applied atomically, and only if `worker` still holds the
/// message's claim.
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    pub message_id: MessageId,
    pub process_id: ProcessId,
    pub topology: String,
    pub node: String,
    pub worker: String,
    pub now: i64,
    pub outcome: String,
    pub disposition: Disposition,
    pub outputs: Vec<NewMessage>,
    pub spawned: Vec<NewProcess>,
    pub attempt: Option<Attempt>,
    pub error: Option<String>,
    pub park: Option<Park>,
    pub releases: Vec<Release>,
    pub cache: Vec<CacheWrite>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    Applied,
    /// The claim had expired or been released: nothing was written.
    LeaseLost,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum ProcessState {
    Running,
    Done,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MessageCounts {
    /// Every message the process created.
    pub total: u64,
    /// Still queued, running, waiting for a retry, or parked.
    pub open: u64,
    /// Of `open`, parked under a key.
    #[serde(default)]
    pub parked: u64,
    pub done: u64,
    pub filtered: u64,
    pub trash: u64,
    /// Trash entries an operator rejected (closed; not counted in `trash`).
    #[serde(default)]
    pub rejected: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TrashEntry {
    pub message_id: MessageId,
    pub node: String,
    pub error: Option<String>,
    pub attempts: u32,
    pub at: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProcessReport {
    pub id: ProcessId,
    pub topology: String,
    pub version: String,
    pub event: String,
    pub state: ProcessState,
    pub parent_process_id: Option<ProcessId>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    pub messages: MessageCounts,
    /// Node → outcome → count, in the order first recorded.
    pub nodes: IndexMap<String, IndexMap<String, u64>>,
    pub trash: Vec<TrashEntry>,
    /// Processes started by this one's `send` nodes.
    pub children: Vec<ProcessId>,
    /// For a sync process: the key its clean end releases.
    #[serde(default)]
    pub release_key: Option<String>,
}

impl ProcessReport {
    pub fn is_done(&self) -> bool {
        self.state == ProcessState::Done
    }
}

/// Records what each topology version was, so a message's version can be read back.
pub trait TopologyStore {
    fn save_topology(
        &self,
        name: &str,
        version: &str,
        source: &str,
    ) -> impl Future<Output = Result<()>> + Send;
}

pub trait ProcessStore {
    /// Opens a process and writes its first message, atomically.
    fn start_process(&self, process: NewProcess) -> impl Future<Output = Result<()>> + Send;
    fn process_report(
        &self,
        id: ProcessId,
    ) -> impl Future<Output = Result<Option<ProcessReport>>> + Send;
}

pub trait MessageStore {
    /// Marks up to each node's capacity of ready messages as running under `worker` until
    /// `lease_until`, and returns them. No two workers ever hold the same message.
    fn claim(&self, request: ClaimRequest) -> impl Future<Output = Result<Vec<Message>>> + Send;
    fn complete(&self, completion: Completion) -> impl Future<Output = Result<Applied>> + Send;
    /// Extends the leases of `ids` while `worker` still holds them. Only the steps actually
    /// running are renewed: a message whose completion could not be written is not, so its
    /// lease ends and another claim recovers it.
    fn renew_leases(
        &self,
        worker: &str,
        ids: Vec<MessageId>,
        until: i64,
    ) -> impl Future<Output = Result<u64>> + Send;
    /// Puts every message `worker` holds back in the queue (clean shutdown).
    fn release_claims(&self, worker: &str) -> impl Future<Output = Result<u64>> + Send;
    /// Puts messages whose lease ended before `now` back in the queue (their worker died).
    fn recover_expired(&self, now: i64) -> impl Future<Output = Result<u64>> + Send;
    /// Returns when new work may be ready, or after `max`.
    fn wait_for_work(&self, max: Duration) -> impl Future<Output = ()> + Send;
}

/// Wait queues and the store tier of check caches.
pub trait ParkStore {
    /// Releases `release.key` now (an operator, or a release node outside a step).
    fn release(&self, release: Release) -> impl Future<Output = Result<Released>> + Send;
    /// Sends parked messages whose deadline passed to the trash; returns how many.
    fn expire_parked(&self, now: i64) -> impl Future<Output = Result<u64>> + Send;
    /// Whether a sync is in flight for `key`.
    fn key_pending(&self, key: &str) -> impl Future<Output = Result<bool>> + Send;
    /// Whether a sync is in flight for `key`, and how many times the key was released so far,
    /// read together: a park that compares the count sees a release committed after the read.
    fn key_state(&self, key: &str) -> impl Future<Output = Result<(bool, i64)>> + Send;
    fn parked_keys(&self) -> impl Future<Output = Result<Vec<ParkedKey>>> + Send;
    /// Messages waiting for their system's capacity, per topology and node.
    fn limited(&self) -> impl Future<Output = Result<Vec<LimitedCount>>> + Send;
    /// The store tier's answer for `key`, if fresh at `now`, with when it expires.
    fn cache_get(
        &self,
        cache: &str,
        key: &str,
        now: i64,
    ) -> impl Future<Output = Result<Option<(bool, i64)>>> + Send;
}

/// One trash entry in full, for operators.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TrashDetail {
    pub message_id: MessageId,
    pub process_id: ProcessId,
    pub topology: String,
    pub node: String,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub payload: Value,
    pub headers: Headers,
    pub error: Option<String>,
    pub at: i64,
    pub attempts: Vec<Attempt>,
    /// Identical failures (same process, node and error) collapsed under this entry by the
    /// flood guard; approving or rejecting the entry does the same to them.
    #[serde(default)]
    pub repeats: u64,
}

/// Filter for listing the trash.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema, utoipa::IntoParams))]
pub struct TrashFilter {
    pub topology: Option<String>,
    pub node: Option<String>,
    pub process_id: Option<ProcessId>,
    /// Text the error contains.
    pub error: Option<String>,
    /// Failed at or after this time (Unix ms).
    pub since: Option<i64>,
    /// Failed before this time (Unix ms).
    pub until: Option<i64>,
    pub limit: Option<u32>,
}

/// What an operator did to a trash entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum TrashAction {
    /// Re-run at the failed node, in the same process, with fresh attempts.
    Approve,
    /// Close it. A rejected sync sends the messages waiting on its key to the trash.
    Reject,
}

/// The failed-message store: list, show, approve, reject.
pub trait TrashStore {
    fn list_trash(
        &self,
        filter: TrashFilter,
    ) -> impl Future<Output = Result<Vec<TrashDetail>>> + Send;
    fn trash_entry(
        &self,
        id: MessageId,
    ) -> impl Future<Output = Result<Option<TrashDetail>>> + Send;
    /// Returns false when the message is not (or no longer) in the trash.
    fn act_on_trash(
        &self,
        id: MessageId,
        action: TrashAction,
        actor: &str,
    ) -> impl Future<Output = Result<bool>> + Send;
}

/// A process in a list.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ProcessSummary {
    pub id: ProcessId,
    pub topology: String,
    pub event: String,
    pub state: ProcessState,
    pub parent_process_id: Option<ProcessId>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    pub messages: MessageCounts,
}

#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
pub struct ProcessFilter {
    pub topology: Option<String>,
    pub state: Option<ProcessState>,
    pub limit: Option<u32>,
}

/// One message on a process's timeline.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TraceMessage {
    pub id: MessageId,
    pub process_id: ProcessId,
    pub topology: String,
    pub node: String,
    pub state: String,
    pub outcome: Option<String>,
    pub error: Option<String>,
    pub parent_id: Option<MessageId>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A process and every process it started (sends, prerequisite syncs), with their messages
/// in time order.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Trace {
    pub processes: Vec<ProcessSummary>,
    pub messages: Vec<TraceMessage>,
    /// For a sync process: the messages (of any process) that waited for the key it was
    /// opened for, and resumed when it ended.
    #[serde(default)]
    pub unblocks: Vec<TraceMessage>,
}

/// Counts across the whole store.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StoreStatus {
    pub processes_running: u64,
    pub processes_done: u64,
    pub queued: u64,
    pub running: u64,
    pub retry: u64,
    pub limited: u64,
    pub parked: u64,
    pub trash: u64,
}

/// Outcome counts per topology × node × outcome over time buckets.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Heatmap {
    pub bucket_ms: i64,
    /// Start of the first bucket (Unix ms).
    pub start: i64,
    pub buckets: usize,
    pub rows: Vec<HeatRow>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HeatRow {
    pub topology: String,
    pub node: String,
    pub outcome: String,
    pub counts: Vec<u64>,
}

/// Reads and actions for operators.
pub trait OpsStore {
    fn list_processes(
        &self,
        filter: ProcessFilter,
    ) -> impl Future<Output = Result<Vec<ProcessSummary>>> + Send;
    fn trace(&self, id: ProcessId) -> impl Future<Output = Result<Option<Trace>>> + Send;
    fn status(&self) -> impl Future<Output = Result<StoreStatus>> + Send;
    /// `buckets` buckets of `bucket_ms` (a multiple of a minute) ending now.
    fn heatmap(
        &self,
        bucket_ms: i64,
        buckets: usize,
        now: i64,
    ) -> impl Future<Output = Result<Heatmap>> + Send;
    /// Deletes heatmap counts older than `before` (Unix ms).
    fn purge_heatmap(&self, before: i64) -> impl Future<Output = Result<u64>> + Send;
    /// Replaces a trash entry's payload and/or headers (the previous ones are kept in the audit
    /// trail), then approves it. False when it is not in the trash.
    fn edit_trash(
        &self,
        id: MessageId,
        payload: Option<Value>,
        headers: Option<Headers>,
        actor: &str,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// Applies `action` to every trash entry matching `filter`; returns how many.
    fn bulk_trash(
        &self,
        filter: TrashFilter,
        action: TrashAction,
        actor: &str,
    ) -> impl Future<Output = Result<u64>> + Send;
    /// Sends every message parked under `key` to the trash; returns how many.
    fn drop_key(&self, key: &str, actor: &str) -> impl Future<Output = Result<u64>> + Send;
    /// Sends to the trash the waiting messages of `topology` whose node (or resume node) is not
    /// in `nodes` any more (a node was renamed or removed), and that have waited since before
    /// `older_than` (Unix ms), so engines still on the previous version get to finish theirs.
    fn trash_unknown_nodes(
        &self,
        topology: &str,
        version: &str,
        nodes: Vec<String>,
        older_than: i64,
    ) -> impl Future<Output = Result<u64>> + Send;
}

pub trait ScheduleStore {
    /// Opens `process` for the cron slot unless some engine already fired that slot.
    /// Returns whether this call fired it.
    fn fire_cron(
        &self,
        topology: &str,
        event: &str,
        slot: i64,
        process: NewProcess,
    ) -> impl Future<Output = Result<bool>> + Send;
}

/// Everything a backend offers.
pub trait Store:
    TopologyStore
    + ProcessStore
    + MessageStore
    + ParkStore
    + TrashStore
    + OpsStore
    + ScheduleStore
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<T> Store for T where
    T: TopologyStore
        + ProcessStore
        + MessageStore
        + ParkStore
        + TrashStore
        + OpsStore
        + ScheduleStore
        + Clone
        + Send
        + Sync
        + 'static
{
}

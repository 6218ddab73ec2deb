//! Messages as the engine sees them: the payload a node works on plus the context it needs
//! (the previous HTTP response, a split's cursor).

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::{MessageId, ProcessId};

/// String headers carried with a message (not HTTP headers of a request: those are rendered
/// by an `http` node, which may copy some of these).
pub type Headers = IndexMap<String, String>;

/// What a node needs besides the payload. Stored as one JSON column.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Context {
    /// The response of the last `http` node this message went through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<Response>,
    /// Where a `split` node continues: the next page or the next chunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<Cursor>,
    /// When this message last learned whether its prerequisite exists (Unix ms): a release
    /// after this moment resumes it even if it parks later.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checked_at: Option<i64>,
    /// The key and its release count when "missing" came from "a sync is in flight" (no
    /// request was sent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen_releases: Option<(String, i64)>,
}

/// An HTTP response as later nodes see it (`response.status`, `response.body`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub status: u16,
    #[serde(default)]
    pub headers: Headers,
    /// Parsed JSON when the body was JSON, otherwise the text.
    #[serde(default)]
    pub body: Value,
}

/// A split's position: the page counter or the next-page link, or a chunk of items.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub page: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// The payload is a ready list of items (a chunk of a large array).
    #[serde(default)]
    pub chunk: bool,
    /// Pages fetched so far (guards `max_pages`).
    #[serde(default)]
    pub pages: u64,
}

/// A message claimed for work.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub id: MessageId,
    pub process_id: ProcessId,
    pub topology: String,
    /// The content hash of the topology file that created this message.
    pub version: String,
    pub node: String,
    pub payload: Value,
    pub headers: Headers,
    pub context: Context,
    /// Failed attempts so far at this node.
    pub attempt: u32,
    pub parent_id: Option<MessageId>,
    /// Unix milliseconds.
    pub created_at: i64,
}

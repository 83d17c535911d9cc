//! A session's record in the `sessions` capability: what the cluster knows about it (its
//! owner and fencing token, the client's `initialize`, upstream session ids), its key, and
//! the format readers check.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::mcp::upstream::Hello;

/// The format version of [`SessionRecord`]; readers refuse records of a newer format.
pub const RECORD_FORMAT: u32 = 1;

/// What the cluster knows about one session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    pub format: u32,
    pub id: String,
    pub binding: String,
    /// The revision agreed with the client.
    pub protocol_version: String,
    /// The client's `initialize`, replayed to upstreams that must be reconnected.
    pub hello: Hello,
    /// Per upstream name: its HTTP session id, when it has one.
    #[serde(default)]
    pub upstream_sessions: HashMap<String, String>,
    /// Per upstream name: the revision that upstream agreed to (sent again on resumption).
    #[serde(default)]
    pub upstream_versions: HashMap<String, String>,
    /// Per upstream name (pools of several endpoints only): the endpoint the session is
    /// pinned to, so a replica taking it over talks to the same one. Absent in records of
    /// earlier releases and of single-endpoint upstreams, which read as before.
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub upstream_endpoints: HashMap<String, String>,
    /// The replica that owns the session (serves it and holds its upstream conversations);
    /// empty once its owner handed it over on shutdown, so any replica may claim it at once.
    pub owner: String,
    /// The fencing token of the owner's ownership lease when it claimed the session. A write
    /// is accepted only from the replica and lease the record names.
    #[serde(default)]
    pub owner_token: u64,
    /// The session's ownership epoch: 1 when it is created, one more at each claim (a
    /// takeover, a sweep's claim, a claim back under a new ownership lease), each made by
    /// compare-and-swap on this record. It is the fencing token the session's requests carry
    /// to upstreams configured with `fencing_token`: unlike the owner's lease token (one lease
    /// per replica, its token counted per lease name), it grows with every change of owner, so
    /// an upstream can refuse a request of an earlier owner. 0 in records of earlier releases
    /// (their next claim makes it 1).
    #[serde(default)]
    pub epoch: u64,
    pub created_ms: u64,
    /// When the owner last saw a request of the session (updated with each refresh of the
    /// record, at most every tenth of the idle TTL). How the cluster finds sessions that were
    /// left idle by a replica that is gone.
    #[serde(default)]
    pub active_ms: u64,
    /// The client's `logging/setLevel` level, for upstreams that speak only 2026-07-28
    /// (stamped on the session's requests there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<Value>,
    /// Per upstream name, for upstreams that speak only 2026-07-28: the resource URIs the
    /// client subscribed to (watched by a listen, started again by a replica taking over).
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub listened: HashMap<String, Vec<String>>,
    /// Who created the session (`token:<name>`, `jwt:<subject>`), on a binding with `auth`.
    /// Only that identity may use it: anyone else presenting the id is told it does not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
}

impl SessionRecord {
    /// This record as `owner` claims it under its ownership lease's `token`: the session's
    /// next epoch (the claim itself is the caller's compare-and-swap on the stored record).
    pub fn claimed(&self, owner: &str, token: u64) -> Self {
        Self {
            owner: owner.to_owned(),
            owner_token: token,
            epoch: self.epoch + 1,
            ..self.clone()
        }
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// A new session id: 128 random bits, hex (visible ASCII, as the transport requires).
pub fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

pub fn record_key(id: &str) -> String {
    format!("s/{id}")
}

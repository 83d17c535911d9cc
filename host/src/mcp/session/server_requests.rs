//! Server-to-client requests of a legacy session: an upstream's request gets a fresh id that
//! is remembered in the `pipelines` capability with the upstream and its own id, so the
//! client's answer, arriving at any replica, finds the upstream that asked.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::Live;
use crate::capabilities::Capability;
use crate::mcp::route::names::UpstreamIdx;
use crate::mcp::wire::jsonrpc::{Message, RpcError, code};

/// How long a relayed server-to-client request waits for the client's answer.
const CLIENT_ANSWER_TTL: Duration = Duration::from_secs(600);

/// A server-to-client request awaiting the client's answer, kept in the `pipelines` store.
#[derive(Debug, Serialize, Deserialize)]
struct PendingClientRequest {
    format: u32,
    /// The upstream by name (indices differ between configurations).
    upstream: String,
    upstream_id: Value,
}

/// The `pipelines` capability, where pending server requests are kept.
pub struct ServerRequests {
    cap: Capability,
}

impl ServerRequests {
    pub fn new(cap: Capability) -> Self {
        Self { cap }
    }

    /// Turns an upstream's request into one for the client: a fresh id, remembered in the
    /// `pipelines` store with the upstream and its own id.
    pub async fn to_client_request(
        &self,
        sid: &str,
        upstream: &str,
        mut m: Message,
    ) -> Result<Message, RpcError> {
        let upstream_id = m.get("id").cloned().unwrap_or(Value::Null);
        let gid = format!("mcpg-{}", uuid::Uuid::new_v4().simple());
        let rec = PendingClientRequest {
            format: 1,
            upstream: upstream.to_owned(),
            upstream_id,
        };
        self.cap
            .store
            .put(
                &format!("req/{sid}/{gid}"),
                serde_json::to_vec(&rec).expect("serialisable"),
                Some(CLIENT_ANSWER_TTL),
            )
            .await
            .map_err(|e| RpcError::new(code::INTERNAL_ERROR, e.to_string()))?;
        m.insert("id".into(), json!(gid));
        Ok(m)
    }

    /// The client answered a server-to-client request: hand the answer to the upstream that
    /// asked, under its own id.
    pub async fn answered(&self, live: &Arc<Live>, mut m: Message) {
        let Some(gid) = m.get("id").and_then(Value::as_str).map(str::to_owned) else {
            return;
        };
        let waiter = live.waiters.lock().expect("lock").remove(&gid);
        if let Some(w) = waiter {
            let _ = w.send(m);
            return;
        }
        let key = format!("req/{}/{gid}", live.id);
        let store = &self.cap.store;
        let Ok(Some(entry)) = store.get(&key).await else {
            tracing::debug!(session = %live.id, id = %gid, "answer to an unknown server request; dropped");
            return;
        };
        let _ = store.delete(&key, None).await;
        let Ok(rec) = serde_json::from_slice::<PendingClientRequest>(&entry.value) else {
            return;
        };
        m.insert("id".into(), rec.upstream_id);
        let Some(up) = live
            .binding
            .upstreams
            .iter()
            .position(|u| u.name == rec.upstream)
        else {
            return;
        };
        if let Ok(conn) = live.conn(UpstreamIdx(up)).await
            && let Err(e) = conn.send(m).await
        {
            tracing::warn!(session = %live.id, error = %e, "cannot hand the client's answer to the upstream");
        }
    }
}

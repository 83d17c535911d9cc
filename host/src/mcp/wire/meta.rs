//! The 2026-07-28 per-request `_meta` keys, and reading and stamping them.

use serde_json::{Map, Value, json};

use super::jsonrpc::{self, Message};

pub const PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
pub const CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
pub const CLIENT_INFO: &str = "io.modelcontextprotocol/clientInfo";
pub const SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";
pub const LOG_LEVEL: &str = "io.modelcontextprotocol/logLevel";
pub const SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";

/// A request's `params._meta`, if it has one.
pub fn of(m: &Message) -> Option<&Map<String, Value>> {
    jsonrpc::params(m)?.get("_meta")?.as_object()
}

/// The protocol version a request's `_meta` names.
pub fn protocol_version(m: &Message) -> Option<&str> {
    of(m)?.get(PROTOCOL_VERSION)?.as_str()
}

/// Removes the 2026-07-28 per-request fields from a request's `_meta` (for a legacy
/// conversation), keeping everything else (progress token, trace context, vendor keys).
pub fn strip_request_fields(m: &mut Message) {
    if let Some(p) = m.get_mut("params").and_then(Value::as_object_mut) {
        strip_params_fields(p);
    }
}

/// [`strip_request_fields`] on request params.
pub fn strip_params_fields(params: &mut Map<String, Value>) {
    if let Some(meta) = params.get_mut("_meta").and_then(Value::as_object_mut) {
        for k in [
            PROTOCOL_VERSION,
            CLIENT_CAPABILITIES,
            CLIENT_INFO,
            LOG_LEVEL,
        ] {
            meta.remove(k);
        }
    }
}

/// Marks a result as complete (`resultType`), as 2026-07-28 requires and legacy results lack.
pub fn complete(result: &mut Value) {
    if let Some(o) = result.as_object_mut() {
        o.entry("resultType").or_insert(json!("complete"));
    }
}

/// Adds the caching hints 2026-07-28 requires on cacheable results that a legacy upstream
/// did not give: immediately stale, and private to the caller (the safe choice).
pub fn cache_hints(result: &mut Value) {
    if let Some(o) = result.as_object_mut() {
        o.entry("ttlMs").or_insert(json!(0));
        o.entry("cacheScope").or_insert(json!("private"));
    }
}

/// Whether a method's complete result carries caching hints in 2026-07-28.
pub fn cacheable(method: &str) -> bool {
    matches!(
        method,
        "server/discover"
            | "tools/list"
            | "prompts/list"
            | "resources/list"
            | "resources/templates/list"
            | "resources/read"
    )
}

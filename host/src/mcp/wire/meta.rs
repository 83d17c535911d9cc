//! The 2026-07-28 per-request `_meta` keys, and reading and stamping them.

use serde_json::{Map, Value, json};

use super::jsonrpc::{self, Message};

pub const PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
pub const CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
pub const CLIENT_INFO: &str = "io.modelcontextprotocol/clientInfo";
pub const SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";
pub const LOG_LEVEL: &str = "io.modelcontextprotocol/logLevel";
pub const SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";
/// mcpg's own key in an `initialize` or `server/discover` result: the binding's upstreams that
/// could not be reached, each with the cause the last attempt found.
pub const UNAVAILABLE_UPSTREAMS: &str = "dev.mcpg/unavailableUpstreams";
/// The fencing token of the replica that owns the session, for upstreams configured with
/// `fencing_token: meta`.
pub const FENCING_TOKEN: &str = "dev.mcpg/fencingToken";

/// A request's `params._meta`, if it has one.
pub fn of(m: &Message) -> Option<&Map<String, Value>> {
    jsonrpc::member(jsonrpc::params(m)?, "_meta")?.as_object()
}

/// The protocol version a request's `_meta` names.
pub fn protocol_version(m: &Message) -> Option<&str> {
    jsonrpc::member(of(m)?, PROTOCOL_VERSION)?.as_str()
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

/// Adds per-request `_meta` (what a legacy client's `initialize` declared, and its log level)
/// to the params of a request sent to an upstream that speaks only 2026-07-28.
pub fn stamp(params: &mut Map<String, Value>, caps: Value, info: Value, level: Option<Value>) {
    let m = params
        .entry("_meta")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(m) = m.as_object_mut() {
        m.insert(
            PROTOCOL_VERSION.into(),
            json!(super::version::LATEST_MODERN),
        );
        m.insert(CLIENT_CAPABILITIES.into(), caps);
        if !info.is_null() {
            m.insert(CLIENT_INFO.into(), info);
        }
        if let Some(l) = level {
            m.insert(LOG_LEVEL.into(), l);
        }
    }
}

/// Adds mcpg's own per-request `_meta` to params that carry none (requests mcpg makes itself
/// on a 2026-07-28 conversation, such as searching a list).
pub fn stamp_gateway(params: &mut Map<String, Value>) {
    let has = params
        .get("_meta")
        .and_then(|m| m.get(PROTOCOL_VERSION))
        .is_some();
    if !has {
        stamp(
            params,
            json!({}),
            json!({"name": "mcpg", "version": env!("CARGO_PKG_VERSION")}),
            None,
        );
    }
}

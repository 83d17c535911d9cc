//! JSON-RPC 2.0 messages as MCP carries them, kept as raw JSON objects so that every field
//! mcpg does not know passes through unchanged. Accessors read the few fields the gateway
//! routes on; rewrites touch only those fields.

use serde_json::{Map, Value, json};

/// One JSON-RPC message, exactly as received (a JSON object).
pub type Message = Map<String, Value>;

/// JSON-RPC and MCP error codes the gateway produces.
pub mod code {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    pub const INTERNAL_ERROR: i64 = -32603;
    /// Implementation-defined server errors (`-32000` to `-32099`), numbered as the MCP SDKs
    /// number them: the upstream's connection is closed or could not be made.
    pub const CONNECTION_CLOSED: i64 = -32000;
    /// The request ran out of time.
    pub const REQUEST_TIMEOUT: i64 = -32001;
    /// MCP: a resource that does not exist.
    pub const RESOURCE_NOT_FOUND: i64 = -32002;
    /// MCP 2026-07-28: an `Mcp-Method` / `Mcp-Name` header disagrees with the body.
    pub const HEADER_MISMATCH: i64 = -32020;
    /// MCP 2026-07-28: the request needs a client capability it did not declare.
    pub const MISSING_CAPABILITY: i64 = -32021;
    /// MCP 2026-07-28: the requested protocol version is not supported.
    /// Over a rate limit. MCP defines no code for it; 2026-07-28 reserves -32020..-32099
    /// for the specification and asks new codes to be outside the JSON-RPC range, so this
    /// mirrors HTTP 429 (as ToolHive does).
    pub const RATE_LIMITED: i64 = 429;
    pub const UNSUPPORTED_VERSION: i64 = -32022;
}

/// What kind of message a JSON object is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Request,
    Notification,
    Response,
    Invalid,
}

/// Member `key` of a JSON object. A small object (a message's top level, its `params`, its
/// `_meta`) is scanned: serde_json's order-preserving map hashes the key with SipHash on every
/// lookup, which costs more than comparing a handful of short keys, and the request path looks
/// up dozens of members per request.
pub fn member<'a>(m: &'a Message, key: &str) -> Option<&'a Value> {
    if m.len() <= 8 {
        m.iter().find_map(|(k, v)| (k == key).then_some(v))
    } else {
        m.get(key)
    }
}

/// Member `key` of `v` when it is an object, as [`member`] finds it.
pub fn field<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    v.as_object().and_then(|m| member(m, key))
}

/// What the message is. One pass over its (few) top-level members: a map lookup hashes its
/// key (SipHash, in serde_json's order-preserving map), and this runs several times per
/// request.
pub fn kind(m: &Message) -> Kind {
    let (mut version, mut id, mut method) = (None, None, None);
    let (mut result, mut error) = (false, false);
    for (k, v) in m {
        match k.as_str() {
            "jsonrpc" => version = Some(v),
            "id" => id = Some(v),
            "method" => method = Some(v),
            "result" => result = true,
            "error" => error = true,
            _ => {}
        }
    }
    if version.and_then(Value::as_str) != Some("2.0") {
        return Kind::Invalid;
    }
    match (method, id) {
        (Some(Value::String(_)), Some(id)) if valid_id(id) => Kind::Request,
        (Some(Value::String(_)), None) => Kind::Notification,
        (None, Some(_)) if result != error => Kind::Response,
        _ => Kind::Invalid,
    }
}

/// The id to answer an unusable message with: its own when it is a valid id, else `null`. An
/// integer beyond 64 bits has already lost digits when parsed (mcpg does not parse numbers with
/// arbitrary precision), so it is never echoed: the client could not match it.
pub fn answerable_id(m: &Message) -> Value {
    member(m, "id")
        .filter(|v| valid_id(v))
        .cloned()
        .unwrap_or(Value::Null)
}

/// A request id must be a string or an integer that fits in 64 bits (MCP forbids null).
fn valid_id(v: &Value) -> bool {
    v.is_string() || v.as_i64().is_some() || v.as_u64().is_some()
}

pub fn method(m: &Message) -> Option<&str> {
    member(m, "method").and_then(Value::as_str)
}

pub fn id(m: &Message) -> Option<&Value> {
    member(m, "id")
}

pub fn params(m: &Message) -> Option<&Map<String, Value>> {
    member(m, "params").and_then(Value::as_object)
}

pub fn params_mut(m: &mut Message) -> &mut Map<String, Value> {
    let p = m
        .entry("params")
        .or_insert_with(|| Value::Object(Map::new()));
    if !p.is_object() {
        *p = Value::Object(Map::new());
    }
    p.as_object_mut().expect("made an object above")
}

/// `params._meta.progressToken`, when the request asks for progress.
pub fn progress_token(m: &Message) -> Option<&Value> {
    member(member(params(m)?, "_meta")?.as_object()?, "progressToken")
}

pub fn set_progress_token(m: &mut Message, token: Value) {
    let meta = params_mut(m)
        .entry("_meta")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Some(meta) = meta.as_object_mut() {
        meta.insert("progressToken".into(), token);
    }
}

pub fn request(id: Value, method: &str, params: Option<Value>) -> Message {
    let mut m = Map::new();
    m.insert("jsonrpc".into(), json!("2.0"));
    m.insert("id".into(), id);
    m.insert("method".into(), json!(method));
    if let Some(p) = params {
        m.insert("params".into(), p);
    }
    m
}

pub fn notification(method: &str, params: Option<Value>) -> Message {
    let mut m = Map::new();
    m.insert("jsonrpc".into(), json!("2.0"));
    m.insert("method".into(), json!(method));
    if let Some(p) = params {
        m.insert("params".into(), p);
    }
    m
}

pub fn result(id: Value, result: Value) -> Message {
    let mut m = Map::new();
    m.insert("jsonrpc".into(), json!("2.0"));
    m.insert("id".into(), id);
    m.insert("result".into(), result);
    m
}

/// An error response. `id` is `null` when the request's id could not be read.
pub fn error(id: Value, code: i64, message: impl Into<String>, data: Option<Value>) -> Message {
    let mut e = Map::new();
    e.insert("code".into(), json!(code));
    e.insert("message".into(), json!(message.into()));
    if let Some(d) = data {
        e.insert("data".into(), d);
    }
    let mut m = Map::new();
    m.insert("jsonrpc".into(), json!("2.0"));
    m.insert("id".into(), id);
    m.insert("error".into(), Value::Object(e));
    m
}

/// A JSON-RPC error as the gateway raises it, before it has an id to answer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            data: None,
        }
    }

    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self::new(code::INVALID_PARAMS, message)
    }

    pub fn to_message(&self, id: Value) -> Message {
        error(id, self.code, self.message.clone(), self.data.clone())
    }
}

/// Parses one message from bytes. A JSON array (a batch, allowed only by 2025-03-26) is
/// reported separately so the caller can answer it as that revision requires.
pub enum Parsed {
    One(Message),
    Batch(Vec<Value>),
}

pub fn parse(bytes: &[u8]) -> Result<Parsed, RpcError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(Parsed::One(m)),
        Ok(Value::Array(a)) => Ok(Parsed::Batch(a)),
        Ok(_) => Err(RpcError::new(
            code::INVALID_REQUEST,
            "a JSON-RPC message must be a JSON object",
        )),
        Err(e) => Err(RpcError::new(
            code::PARSE_ERROR,
            format!("the body is not valid JSON: {e}"),
        )),
    }
}

/// The message as compact JSON (`json_out.rs`: serde_json's text, written faster).
pub fn to_bytes(m: &Message) -> Vec<u8> {
    super::json_out::to_vec(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(v: Value) -> Message {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn kinds() {
        assert_eq!(
            kind(&obj(json!({"jsonrpc":"2.0","id":1,"method":"ping"}))),
            Kind::Request
        );
        assert_eq!(
            kind(&obj(json!({"jsonrpc":"2.0","method":"x"}))),
            Kind::Notification
        );
        assert_eq!(
            kind(&obj(json!({"jsonrpc":"2.0","id":"a","result":{}}))),
            Kind::Response
        );
        assert_eq!(
            kind(&obj(json!({"jsonrpc":"2.0","id":null,"method":"ping"}))),
            Kind::Invalid
        );
        assert_eq!(
            kind(&obj(json!({"jsonrpc":"1.0","id":1,"method":"ping"}))),
            Kind::Invalid
        );
        assert_eq!(
            kind(&obj(json!({"jsonrpc":"2.0","id":1,"result":{},"error":{}}))),
            Kind::Invalid
        );
    }

    #[test]
    fn progress_token_rewrite_keeps_other_meta() {
        let mut m = obj(
            json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","_meta":{"progressToken":"p","x":1}}}),
        );
        set_progress_token(&mut m, json!(7));
        assert_eq!(
            Value::Object(m),
            json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","_meta":{"progressToken":7,"x":1}}})
        );
    }
}

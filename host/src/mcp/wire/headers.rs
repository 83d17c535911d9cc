//! The 2026-07-28 request metadata headers: which body field `Mcp-Name` mirrors for each
//! method, and the `=?base64?…?=` encoding of header values that are not plain ASCII.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

use super::jsonrpc::{self, Message};

/// The legacy session header (2025-11-25 Streamable HTTP).
pub const SESSION_HEADER: &str = "mcp-session-id";
/// The protocol revision header, in both eras.
pub const VERSION_HEADER: &str = "mcp-protocol-version";

pub const METHOD: &str = "mcp-method";
pub const NAME: &str = "mcp-name";
pub const PARAM_PREFIX: &str = "mcp-param-";
/// The fencing token of the replica that owns the session, for HTTP upstreams configured
/// with `fencing_token: header`.
pub const FENCING_TOKEN: &str = "mcp-fencing-token";

/// The body field `Mcp-Name` mirrors for a method, if the method has one.
pub fn name_field(method: &str) -> Option<&'static str> {
    match method {
        "tools/call" | "prompts/get" => Some("name"),
        "resources/read" => Some("uri"),
        "tasks/get" | "tasks/update" | "tasks/cancel" => Some("taskId"),
        _ => None,
    }
}

/// The value `Mcp-Name` must carry for a message, if any.
pub fn name_value(m: &Message) -> Option<String> {
    let field = name_field(jsonrpc::method(m)?)?;
    jsonrpc::member(jsonrpc::params(m)?, field)
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// A header value as the specification encodes it: plain when it is visible ASCII without
/// surrounding whitespace and does not look like an encoded value, else `=?base64?…?=`.
pub fn encode(v: &str) -> String {
    let plain = !v.is_empty()
        && v.bytes().all(|b| (0x20..0x7f).contains(&b))
        && v.trim() == v
        && !(v.starts_with("=?base64?") && v.ends_with("?="));
    if plain || v.is_empty() {
        v.to_owned()
    } else {
        format!("=?base64?{}?=", STANDARD.encode(v.as_bytes()))
    }
}

/// Decodes a header value; `None` when it claims base64 and is not valid base64 UTF-8.
pub fn decode(v: &str) -> Option<String> {
    match v
        .strip_prefix("=?base64?")
        .and_then(|r| r.strip_suffix("?="))
    {
        Some(b64) => STANDARD
            .decode(b64)
            .ok()
            .and_then(|b| String::from_utf8(b).ok()),
        None => Some(v.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_examples() {
        assert_eq!(encode("Hello, 世界"), "=?base64?SGVsbG8sIOS4lueVjA==?=");
        assert_eq!(encode(" padded "), "=?base64?IHBhZGRlZCA=?=");
        assert_eq!(encode("line1\nline2"), "=?base64?bGluZTEKbGluZTI=?=");
        assert_eq!(
            encode("=?base64?literal?="),
            "=?base64?PT9iYXNlNjQ/bGl0ZXJhbD89?="
        );
        assert_eq!(encode("get_weather"), "get_weather");
        for s in ["Hello, 世界", " padded ", "=?base64?literal?=", "plain"] {
            assert_eq!(decode(&encode(s)).as_deref(), Some(s));
        }
        assert_eq!(decode("=?base64?***?="), None);
    }
}

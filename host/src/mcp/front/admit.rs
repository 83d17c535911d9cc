//! What a request must show before the data plane serves it: who sent it (a client, or a
//! replica presenting the inter-replica secret), the DNS-rebinding guard, the caller's
//! credentials, the content and accept headers, a body that is one JSON-RPC message, its era,
//! and for 2026-07-28 requests the metadata headers checked against the body.

use std::sync::Arc;

use axum::body::{Body, Bytes, HttpBody as _};
use axum::http::HeaderMap;
use axum::http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use serde_json::Value;

use super::respond::McpError;
use crate::mcp::Gateway;
use crate::mcp::access::Caller;
use crate::mcp::binding::Binding;
use crate::mcp::cluster::forward::{self, Origin};
use crate::mcp::wire::headers::{self as mcp_headers, VERSION_HEADER};
use crate::mcp::wire::jsonrpc::{self, Kind, Message, Parsed, code};
use crate::mcp::wire::meta;
use crate::mcp::wire::version::{self, Era};

/// Where protected-resource metadata is published (RFC 9728 §3.1): inserted between the
/// resource's host and path.
pub const METADATA_PREFIX: &str = "/.well-known/oauth-protected-resource";

/// A header's value, when it is visible ASCII.
pub fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Whether the `Accept` header admits a media type (`type/subtype`, lowercase): the most
/// specific range that matches it (`type/subtype`, then `type/*`, then `*/*`) decides, and a
/// weight of `q=0` means "not acceptable" (RFC 9110 §12.5.1). Every revision of the transport
/// requires the header, so an absent one admits nothing.
fn accepts(headers: &HeaderMap, media: &str) -> bool {
    let (kind, _) = media.split_once('/').unwrap_or((media, ""));
    let mut best: Option<(u8, bool)> = None;
    for value in headers.get_all(ACCEPT) {
        let Ok(value) = value.to_str() else { continue };
        for range in value.split(',') {
            let mut parts = range.split(';');
            let range = parts.next().unwrap_or("").trim().to_ascii_lowercase();
            let specificity = if range == media {
                3
            } else if range == format!("{kind}/*") {
                2
            } else if range == "*/*" {
                1
            } else {
                continue;
            };
            let acceptable = parts
                .filter_map(|p| p.split_once('='))
                .find(|(k, _)| k.trim().eq_ignore_ascii_case("q"))
                .is_none_or(|(_, q)| q.trim().parse::<f32>().is_ok_and(|q| q > 0.0));
            if best.is_none_or(|(s, _)| specificity > s) {
                best = Some((specificity, acceptable));
            }
        }
    }
    best.is_some_and(|(_, acceptable)| acceptable)
}

/// Whether `Content-Type` names `application/json` (parameters such as `charset` allowed).
fn is_json(headers: &HeaderMap) -> bool {
    header(headers, CONTENT_TYPE.as_str())
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

/// Who sent the request: a client (checked by the DNS-rebinding guard) or another replica
/// presenting the inter-replica secret.
pub fn origin(gw: &Gateway, headers: &HeaderMap) -> Result<Origin, McpError> {
    match gw.forwarder.origin(headers) {
        // Judged when read: a forward that waited (in this replica's socket while it was
        // paused, say) past the deadline of the replica that sent it is not run.
        Origin::Replica if forward::expired(headers) => Err(McpError::ForwardExpired),
        Origin::Replica => Ok(Origin::Replica),
        Origin::Forged => Err(McpError::ForgedForward),
        Origin::Client => {
            gw.guard.check(headers).map_err(McpError::Rebinding)?;
            Ok(Origin::Client)
        }
    }
}

/// Who the caller is on a binding with `auth` (`None` without). A request without a valid
/// token is refused (401, or 403 for a missing scope) with a challenge naming the binding's
/// protected-resource metadata.
pub async fn caller(gw: &Gateway, b: &Binding, headers: &HeaderMap) -> Result<Caller, McpError> {
    let Some(auth) = &b.access.auth else {
        return Ok(None);
    };
    match auth
        .authenticate(header(headers, AUTHORIZATION.as_str()))
        .await
    {
        Ok(id) => Ok(Some(Arc::new(id))),
        Err(error) => {
            tracing::info!(binding = %b.name, reason = error.reason(), "request refused: {error}");
            crate::telemetry::metrics::metrics().auth_failure(&b.name, error.reason());
            let challenge = auth.challenge(&error, &metadata_url(gw, b, headers));
            Err(McpError::Unauthenticated { error, challenge })
        }
    }
}

/// The binding's resource identifier: configured, or derived from how the client reached us.
pub fn resource(gw: &Gateway, b: &Binding, headers: &HeaderMap) -> String {
    if let Some(r) = b
        .access
        .auth
        .as_ref()
        .and_then(|a| a.config.resource.clone())
    {
        return r;
    }
    let scheme = header(headers, "x-forwarded-proto")
        .and_then(|v| v.split(',').next())
        .map(str::trim)
        .filter(|v| *v == "http" || *v == "https")
        .unwrap_or(if gw.tls { "https" } else { "http" });
    let host = header(headers, "x-forwarded-host")
        .or_else(|| header(headers, "host"))
        .unwrap_or("localhost");
    format!("{scheme}://{host}{}", b.path)
}

/// The URL of the binding's protected-resource metadata.
fn metadata_url(gw: &Gateway, b: &Binding, headers: &HeaderMap) -> String {
    let parsed = match &b.access.resource {
        Some(u) => Ok(u.clone()),
        None => url::Url::parse(&resource(gw, b, headers)),
    };
    match parsed {
        Ok(u) => {
            let origin = u.origin().ascii_serialization();
            format!(
                "{origin}{METADATA_PREFIX}{}",
                u.path().trim_end_matches('/')
            )
        }
        Err(_) => format!("{METADATA_PREFIX}{}", b.path),
    }
}

/// A POST's content headers: a JSON body, and an answer as JSON or an SSE stream.
pub fn post_headers(headers: &HeaderMap) -> Result<(), McpError> {
    if !is_json(headers) {
        return Err(McpError::ContentType);
    }
    if !(accepts(headers, "application/json") && accepts(headers, "text/event-stream")) {
        return Err(McpError::AcceptPost);
    }
    Ok(())
}

/// A GET stream's accept header.
pub fn stream_headers(headers: &HeaderMap) -> Result<(), McpError> {
    if accepts(headers, "text/event-stream") {
        Ok(())
    } else {
        Err(McpError::AcceptStream)
    }
}

/// A POST body of at most `limit` bytes holding one JSON-RPC message. On error, the id to
/// answer with (the message's, when it has a usable one). A declared `Content-Length` above
/// the limit is refused before any of the body is read; a body that breaks off, is malformed
/// (bad chunking) is a 400, not a 413; one that stalls is a 408.
pub async fn message(body: Body, limit: usize) -> Result<(Bytes, Message), (Value, McpError)> {
    if body.size_hint().lower() > limit as u64 {
        return Err((Value::Null, McpError::TooLarge { limit }));
    }
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|e| (Value::Null, body_error(e, limit)))?;
    let msg = match jsonrpc::parse(&bytes) {
        Ok(Parsed::One(m)) => m,
        Ok(Parsed::Batch(_)) => return Err((Value::Null, McpError::Batch)),
        Err(e) => return Err((Value::Null, McpError::Unparsable(e))),
    };
    if jsonrpc::kind(&msg) == Kind::Invalid {
        return Err((jsonrpc::answerable_id(&msg), McpError::NotJsonRpc));
    }
    Ok((bytes, msg))
}

/// Why a body could not be read: over the limit (413), stalled (408, RFC 9110 §15.5.9), or
/// broken (400).
fn body_error(e: axum::Error, limit: usize) -> McpError {
    let e = e.into_inner();
    if e.is::<http_body_util::LengthLimitError>() {
        return McpError::TooLarge { limit };
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e.as_ref());
    while let Some(c) = cause {
        if let Some(stalled) = c.downcast_ref::<crate::errors::BodyStalled>() {
            return McpError::BodyStalled(stalled.to_string());
        }
        cause = c.source();
    }
    let mut why = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        why = format!("{why}: {s}");
        source = s.source();
    }
    McpError::Unparsable(jsonrpc::RpcError::new(
        code::INVALID_REQUEST,
        format!("Bad Request: the request body could not be read: {why}"),
    ))
}

/// The era a message is sent in: 2026-07-28 when its header or `_meta` names a modern
/// revision, or it is a `server/discover`; the legacy era otherwise.
pub fn era(headers: &HeaderMap, msg: &Message) -> Era {
    let modern = header(headers, VERSION_HEADER).is_some_and(version::is_modern)
        || meta::protocol_version(msg).is_some()
        || jsonrpc::method(msg) == Some("server/discover");
    if modern { Era::Modern } else { Era::Legacy }
}

/// The legacy protocol version header, when present, must name a revision mcpg speaks.
pub fn legacy_version(headers: &HeaderMap) -> Result<(), McpError> {
    match header(headers, VERSION_HEADER) {
        Some(v) if !version::is_legacy(v) => Err(McpError::UnsupportedVersion(v.to_owned())),
        _ => Ok(()),
    }
}

/// GET and DELETE belong to the legacy era; a 2026-07-28 client gets 405.
pub fn not_modern(headers: &HeaderMap) -> Result<(), McpError> {
    if header(headers, VERSION_HEADER).is_some_and(version::is_modern) {
        Err(McpError::ModernMethod)
    } else {
        Ok(())
    }
}

fn mismatch(message: String) -> McpError {
    McpError::ModernHeaders {
        code: code::HEADER_MISMATCH,
        message,
    }
}

fn missing_meta(key: &str) -> McpError {
    McpError::ModernHeaders {
        code: code::INVALID_PARAMS,
        message: format!("params._meta[\"{key}\"] is required"),
    }
}

/// A 2026-07-28 request's metadata headers checked against its body (the body is the source
/// of truth). Returns the `Mcp-Param-*` headers, which mirror tool arguments the upstream
/// annotated: the upstream that defined them validates them, mcpg forwards them.
pub fn modern_headers(
    headers: &HeaderMap,
    msg: &Message,
) -> Result<Vec<(String, String)>, McpError> {
    let method = jsonrpc::method(msg).unwrap_or_default();
    let Some(header_version) = header(headers, VERSION_HEADER) else {
        return Err(mismatch(
            "Header mismatch: the MCP-Protocol-Version header is required".into(),
        ));
    };
    let Some(body_version) = meta::protocol_version(msg) else {
        return Err(missing_meta(meta::PROTOCOL_VERSION));
    };
    if header_version != body_version {
        return Err(mismatch(format!(
            "Header mismatch: MCP-Protocol-Version header value '{header_version}' does not match body value '{body_version}'"
        )));
    }
    if !version::is_modern(body_version) {
        return Err(McpError::ModernVersion {
            requested: body_version.to_owned(),
        });
    }
    if meta::of(msg)
        .and_then(|m| jsonrpc::member(m, meta::CLIENT_CAPABILITIES))
        .is_none()
    {
        return Err(missing_meta(meta::CLIENT_CAPABILITIES));
    }
    match header(headers, mcp_headers::METHOD) {
        Some(h) if h == method => {}
        Some(h) => {
            return Err(mismatch(format!(
                "Header mismatch: Mcp-Method header value '{h}' does not match body value '{method}'"
            )));
        }
        None => {
            return Err(mismatch(
                "Header mismatch: the Mcp-Method header is required".into(),
            ));
        }
    }
    if let Some(field) = mcp_headers::name_field(method) {
        let body_name = mcp_headers::name_value(msg);
        let header_name = header(headers, mcp_headers::NAME).map(mcp_headers::decode);
        match (header_name, body_name) {
            (None, _) => {
                return Err(mismatch(format!(
                    "Header mismatch: the Mcp-Name header is required for {method}"
                )));
            }
            (Some(None), _) => {
                return Err(mismatch(
                    "Header mismatch: the Mcp-Name header is not valid base64".into(),
                ));
            }
            (Some(Some(h)), body) if body.as_deref() != Some(h.as_str()) => {
                return Err(mismatch(format!(
                    "Header mismatch: Mcp-Name header value '{h}' does not match body value '{}' (params.{field})",
                    body.unwrap_or_default()
                )));
            }
            _ => {}
        }
    }
    Ok(headers
        .iter()
        .filter(|(k, _)| k.as_str().starts_with(mcp_headers::PARAM_PREFIX))
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect())
}

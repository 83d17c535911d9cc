//! Where an error becomes a response: every refusal the data plane makes is an [`McpError`],
//! and this module alone turns one into an HTTP status, headers and a JSON-RPC error body; it
//! also turns a [`Reply`] into JSON, a 202 or an SSE stream.

use std::convert::Infallible;
use std::time::Duration;

use axum::http::header::{ALLOW, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::sse::{KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde_json::{Value, json};

use super::sse;
use crate::auth::AuthError;
use crate::mcp::cluster::forward::MISDIRECTED;
use crate::mcp::limits::Refusal;
use crate::mcp::observe::{self, Observed};
use crate::mcp::relay::Reply;
use crate::mcp::session::{Busy, SessionError};
use crate::mcp::wire::jsonrpc::{self, Message, RpcError, code};
use crate::mcp::wire::version;

/// Why the gateway answers a client with an error of its own rather than an upstream's answer.
#[derive(Debug, thiserror::Error)]
pub enum McpError {
    /// The request carries the inter-replica header with a wrong secret.
    #[error("Forbidden")]
    ForgedForward,
    /// The DNS-rebinding guard refused the request's `Origin` or `Host`.
    #[error("{0}")]
    Rebinding(String),
    /// No valid credentials (401), or a token without a required scope (403); `challenge` is
    /// the `WWW-Authenticate` value.
    #[error("{}: {error}", if *.error == AuthError::InsufficientScope { "Forbidden" } else { "Unauthorized" })]
    Unauthenticated { error: AuthError, challenge: String },
    #[error("Unsupported Media Type: Content-Type must be application/json")]
    ContentType,
    #[error("Not Acceptable: Accept must list both application/json and text/event-stream")]
    AcceptPost,
    #[error("Not Acceptable: Accept must list text/event-stream")]
    AcceptStream,
    #[error("Payload Too Large: the limit is {limit} bytes")]
    TooLarge { limit: usize },
    /// The request body stalled past `server.limits.body_read_timeout_ms`.
    #[error("Request Timeout: {0}")]
    BodyStalled(String),
    #[error("JSON-RPC batches are not supported (removed from MCP in 2025-06-18)")]
    Batch,
    /// The body is not JSON, or not a JSON object (the parse error's own code).
    #[error("{}", .0.message)]
    Unparsable(RpcError),
    #[error("Invalid Request: not a JSON-RPC 2.0 request, notification or response")]
    NotJsonRpc,
    /// A legacy request names a revision mcpg does not speak.
    #[error("Bad Request: unsupported MCP-Protocol-Version `{0}` (supported: {all})", all = version::all().join(", "))]
    UnsupportedVersion(String),
    #[error("Bad Request: Mcp-Session-Id header is required (send initialize first)")]
    NoSessionId,
    #[error("Session not found: it expired or was ended; initialize a new one")]
    SessionNotFound,
    /// A forwarded request reached a replica that does not own its session.
    #[error("this replica does not own the session")]
    Misdirected,
    /// The session's store, owner or coordinator cannot be used now.
    #[error("{}", .0.message)]
    SessionUnavailable(RpcError),
    #[error("the session's owner could not be settled; try again")]
    OwnerUnsettled,
    /// A forwarded request read after the forwarding replica's deadline: not run.
    #[error("the forwarded request's deadline passed before it could run; it was not run")]
    ForwardExpired,
    /// The session is owned here but the ownership lease cannot be proven now.
    #[error("{0}")]
    Fenced(String),
    /// This replica serves its maximum of sessions.
    #[error("this replica serves its maximum of {max} sessions; try again later")]
    SessionLimit { max: usize },
    /// A draining replica starts no session and had nowhere to send this one.
    #[error("this replica is shutting down and starts no new session ({0}); try again")]
    Draining(String),
    /// A 2026-07-28 request whose headers contradict its body or lack what it needs.
    #[error("{message}")]
    ModernHeaders { code: i64, message: String },
    #[error("Unsupported protocol version")]
    ModernVersion { requested: String },
    #[error("clients send no responses in MCP 2026-07-28")]
    ModernResponse,
    /// GET and DELETE belong to the legacy era.
    #[error("GET and DELETE are not part of MCP 2026-07-28")]
    ModernMethod,
    /// The GET stream cannot be opened (the `delivery` capability failed).
    #[error("{}", .0.message)]
    StreamUnavailable(RpcError),
    /// A retry names an exchange parked on a replica that is gone or unreachable.
    #[error(
        "requestState refers to an exchange held by replica {node}, which {why}; send the request again without it"
    )]
    ParkedGone { node: String, why: String },
    /// A JSON-RPC error answered as the request's response (200).
    #[error("{}", .0.message)]
    Rpc(RpcError),
    /// Over a rate limit of the binding (429 with `Retry-After`).
    #[error("Too Many Requests: rate limit `{limit}` exceeded; retry after {} s", retry_secs(*.retry_after))]
    RateLimited {
        limit: String,
        retry_after: Duration,
    },
    /// A rate limit that fails closed could not be counted: its coordinator failed.
    #[error("rate limit `{limit}` cannot be counted now (its coordinator failed); try again")]
    RateUnavailable { limit: String },
}

/// A wait as whole seconds for `Retry-After`, rounded up: never 0, so that a client honouring
/// it does not come back before the budget has a unit again.
fn retry_secs(d: Duration) -> u64 {
    d.as_millis().div_ceil(1000).max(1) as u64
}

impl From<Refusal> for McpError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Limited { limit, retry_after } => McpError::RateLimited { limit, retry_after },
            Refusal::Unavailable { limit } => McpError::RateUnavailable { limit },
        }
    }
}

impl From<SessionError> for McpError {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::NotFound | SessionError::WrongBinding => McpError::SessionNotFound,
            SessionError::Misdirected => McpError::Misdirected,
            SessionError::Limit { max } => McpError::SessionLimit { max },
            SessionError::Unsettled => McpError::OwnerUnsettled,
            e @ SessionError::Fenced => McpError::Fenced(e.to_string()),
            SessionError::Rpc(e) => McpError::SessionUnavailable(e),
        }
    }
}

impl McpError {
    /// A session that could not be started: the replica's limit is refused with 503; anything
    /// else answers the `initialize` request.
    pub fn not_started(e: SessionError) -> Self {
        match e {
            SessionError::Rpc(e) => McpError::Rpc(e),
            other => other.into(),
        }
    }

    /// The HTTP status the transport specification (or, for mcpg's own refusals, the nearest
    /// HTTP meaning) gives this error.
    pub fn status(&self) -> StatusCode {
        use McpError::*;
        match self {
            ForgedForward | Rebinding(_) => StatusCode::FORBIDDEN,
            Unauthenticated { error, .. } if *error == AuthError::InsufficientScope => {
                StatusCode::FORBIDDEN
            }
            Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
            ContentType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            AcceptPost | AcceptStream => StatusCode::NOT_ACCEPTABLE,
            TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            BodyStalled(_) => StatusCode::REQUEST_TIMEOUT,
            Batch | Unparsable(_) | NotJsonRpc | UnsupportedVersion(_) | NoSessionId => {
                StatusCode::BAD_REQUEST
            }
            ModernHeaders { .. } | ModernVersion { .. } | ModernResponse => StatusCode::BAD_REQUEST,
            ModernMethod => StatusCode::METHOD_NOT_ALLOWED,
            SessionNotFound => StatusCode::NOT_FOUND,
            Misdirected => StatusCode::MISDIRECTED_REQUEST,
            SessionUnavailable(_)
            | OwnerUnsettled
            | Fenced(_)
            | ForwardExpired
            | SessionLimit { .. }
            | Draining(_)
            | StreamUnavailable(_)
            | RateUnavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ParkedGone { .. } | Rpc(_) => StatusCode::OK,
        }
    }

    /// The JSON-RPC error code of the body.
    fn code(&self) -> i64 {
        use McpError::*;
        match self {
            Unparsable(e) | SessionUnavailable(e) | StreamUnavailable(e) | Rpc(e) => e.code,
            ModernHeaders { code, .. } => *code,
            ModernVersion { .. } => code::UNSUPPORTED_VERSION,
            SessionLimit { .. } | Draining(_) => code::CONNECTION_CLOSED,
            OwnerUnsettled | Fenced(_) | ForwardExpired | RateUnavailable { .. } => {
                code::INTERNAL_ERROR
            }
            RateLimited { .. } => code::RATE_LIMITED,
            ParkedGone { .. } => code::INVALID_PARAMS,
            _ => code::INVALID_REQUEST,
        }
    }

    fn data(&self) -> Option<Value> {
        match self {
            McpError::ModernVersion { requested } => {
                Some(json!({"supported": version::all(), "requested": requested}))
            }
            McpError::SessionLimit { .. } => Some(json!({"reason": "session_limit"})),
            McpError::RateLimited { limit, retry_after } => Some(json!({
                "reason": "rate_limited",
                "limit": limit,
                "retryAfterMs": retry_after.as_millis() as u64,
                "retryAfterSeconds": retry_secs(*retry_after),
            })),
            McpError::RateUnavailable { limit } => {
                Some(json!({"reason": "rate_limit_unavailable", "limit": limit}))
            }
            McpError::Rpc(e) => e.data.clone(),
            _ => None,
        }
    }

    /// The JSON-RPC error message answering request `id` (what the audit log records).
    pub fn to_message(&self, id: Value) -> Message {
        jsonrpc::error(id, self.code(), self.to_string(), self.data())
    }

    /// The response: status, headers the error needs, and the JSON-RPC error body.
    pub fn respond(self, id: Value) -> Response {
        match &self {
            // The inter-replica protocol: the forwarding replica looks again.
            McpError::Misdirected => {
                return (
                    StatusCode::MISDIRECTED_REQUEST,
                    [(
                        HeaderName::from_static(MISDIRECTED),
                        HeaderValue::from_static("1"),
                    )],
                    "this replica does not own the session\n",
                )
                    .into_response();
            }
            McpError::ModernMethod => {
                return (
                    StatusCode::METHOD_NOT_ALLOWED,
                    [(ALLOW, HeaderValue::from_static("POST"))],
                )
                    .into_response();
            }
            _ => {}
        }
        let status = self.status();
        let mut r = message(&self.to_message(id), status);
        match &self {
            McpError::Unauthenticated { challenge, .. } => {
                if let Ok(v) = HeaderValue::from_str(challenge) {
                    r.headers_mut().insert(WWW_AUTHENTICATE, v);
                }
            }
            McpError::Draining(_) | McpError::Fenced(_) | McpError::RateUnavailable { .. } => {
                r.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from_static("1"));
            }
            McpError::RateLimited { retry_after, .. } => {
                r.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(retry_secs(*retry_after)));
            }
            _ => {}
        }
        r
    }
}

/// A request refused by a rate limit: its observation records the error it gets.
pub fn limited(refusal: Refusal, obs: Observed, id: Value) -> Response {
    let limit = refusal.limit().to_owned();
    let e = McpError::from(refusal);
    obs.rate_limited(&limit, &e.to_message(id.clone()));
    e.respond(id)
}

/// One JSON-RPC message as the body of a response with `status`.
pub fn message(m: &Message, status: StatusCode) -> Response {
    (
        status,
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        jsonrpc::to_bytes(m),
    )
        .into_response()
}

/// 202: a notification or response was taken.
pub fn accepted() -> Response {
    StatusCode::ACCEPTED.into_response()
}

/// A legacy-era reply. `busy` (the request counted as running on its session) lasts until
/// the reply, streamed or not, has been sent; `obs` observes a streamed reply's messages as
/// they go out.
pub fn reply(r: Reply, busy: Option<Busy>, mut obs: Option<Observed>) -> Response {
    match r {
        Reply::Json(m) => message(&m, StatusCode::OK),
        Reply::Accepted => accepted(),
        Reply::Stream(rx) => {
            let events = tokio_stream::wrappers::ReceiverStream::new(rx).map(move |m| {
                let _held = &busy;
                observe::saw(&mut obs, &m);
                Ok::<_, Infallible>(sse::event(&m))
            });
            Sse::new(events)
                .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
                .into_response()
        }
    }
}

/// A 2026-07-28 reply: errors the specification gives a status get it (method not found 404,
/// header, capability and version errors 400).
pub fn modern_reply(r: Reply, obs: Option<Observed>) -> Response {
    if let Reply::Json(m) = &r
        && let Some(code) = m
            .get("error")
            .and_then(|e| e.get("code"))
            .and_then(Value::as_i64)
    {
        let status = match code {
            code::METHOD_NOT_FOUND => Some(StatusCode::NOT_FOUND),
            code::HEADER_MISMATCH | code::MISSING_CAPABILITY | code::UNSUPPORTED_VERSION => {
                Some(StatusCode::BAD_REQUEST)
            }
            _ => None,
        };
        if let Some(status) = status {
            return message(m, status);
        }
    }
    reply(r, None, obs)
}

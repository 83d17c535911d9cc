//! The downstream Streamable HTTP endpoint of each binding: header and body checks with the
//! statuses the transport specification names, then the legacy session flow (POST with
//! `initialize` or `Mcp-Session-Id`, the GET stream, DELETE). Only this module and
//! `upstream/http.rs` know HTTP.

// Handlers return `Result<_, Response>` to refuse early; the size of `Response` is irrelevant here.
#![allow(clippy::result_large_err)]

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use futures::StreamExt;
use serde_json::Value;

use super::Gateway;
use crate::mcp::binding::{Binding, Reply};
use crate::mcp::jsonrpc::{self, Kind, Message, Parsed, code};
use crate::mcp::session::SessionError;
use crate::mcp::upstream::http::{SESSION_HEADER, VERSION_HEADER};
use crate::mcp::version;

type S = State<(Arc<Gateway>, Arc<Binding>)>;

/// The routes of one binding at its path.
pub fn routes(gw: Arc<Gateway>, b: Arc<Binding>) -> Router {
    let path = b.path.clone();
    let mr: MethodRouter<(Arc<Gateway>, Arc<Binding>)> =
        axum::routing::post(post).get(get).delete(delete);
    Router::new().route(&path, mr.with_state((gw, b)))
}

/// An HTTP error carrying a JSON-RPC error body, as the transport asks for.
fn http_error(status: StatusCode, id: Value, code: i64, message: impl Into<String>) -> Response {
    let body = jsonrpc::to_bytes(&jsonrpc::error(id, code, message, None));
    (
        status,
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body,
    )
        .into_response()
}

fn json_response(m: &Message) -> Response {
    (
        StatusCode::OK,
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        jsonrpc::to_bytes(m),
    )
        .into_response()
}

/// Whether an `Accept` header admits a media type (absent admits everything).
fn accepts(headers: &HeaderMap, media: &str) -> bool {
    let Some(v) = headers.get(ACCEPT).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let (kind, _) = media.split_once('/').unwrap_or((media, ""));
    v.split(',').any(|part| {
        let t = part
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        t == media || t == "*/*" || t == format!("{kind}/*")
    })
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Common checks: DNS-rebinding guard, and the protocol version header when present.
fn precheck(gw: &Gateway, headers: &HeaderMap) -> Result<(), Response> {
    if let Err(why) = gw.guard.check(headers) {
        return Err(http_error(
            StatusCode::FORBIDDEN,
            Value::Null,
            code::INVALID_REQUEST,
            why,
        ));
    }
    if let Some(v) = header(headers, VERSION_HEADER)
        && !version::is_supported(v)
    {
        return Err(http_error(
            StatusCode::BAD_REQUEST,
            Value::Null,
            code::INVALID_REQUEST,
            format!(
                "Bad Request: unsupported MCP-Protocol-Version `{v}` (supported: {})",
                version::all().join(", ")
            ),
        ));
    }
    Ok(())
}

async fn post(State((gw, b)): S, headers: HeaderMap, body: Body) -> Response {
    if let Err(r) = precheck(&gw, &headers) {
        return r;
    }
    let ct = header(&headers, CONTENT_TYPE.as_str()).unwrap_or_default();
    if !ct.to_ascii_lowercase().starts_with("application/json") {
        return http_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Value::Null,
            code::INVALID_REQUEST,
            "Unsupported Media Type: Content-Type must be application/json",
        );
    }
    if !(accepts(&headers, "application/json") && accepts(&headers, "text/event-stream")) {
        return http_error(
            StatusCode::NOT_ACCEPTABLE,
            Value::Null,
            code::INVALID_REQUEST,
            "Not Acceptable: Accept must list both application/json and text/event-stream",
        );
    }
    let bytes: Bytes = match axum::body::to_bytes(body, gw.max_body).await {
        Ok(b) => b,
        Err(_) => {
            return http_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                Value::Null,
                code::INVALID_REQUEST,
                format!("Payload Too Large: the limit is {} bytes", gw.max_body),
            );
        }
    };
    let msg = match jsonrpc::parse(&bytes) {
        Ok(Parsed::One(m)) => m,
        Ok(Parsed::Batch(_)) => {
            return http_error(
                StatusCode::BAD_REQUEST,
                Value::Null,
                code::INVALID_REQUEST,
                "JSON-RPC batches are not supported (removed from MCP in 2025-06-18)",
            );
        }
        Err(e) => return http_error(StatusCode::BAD_REQUEST, Value::Null, e.code, e.message),
    };
    let kind = jsonrpc::kind(&msg);
    let id = msg.get("id").cloned().unwrap_or(Value::Null);
    if kind == Kind::Invalid {
        return http_error(
            StatusCode::BAD_REQUEST,
            if id.is_string() || id.is_number() {
                id
            } else {
                Value::Null
            },
            code::INVALID_REQUEST,
            "Invalid Request: not a JSON-RPC 2.0 request, notification or response",
        );
    }
    if kind == Kind::Request && jsonrpc::method(&msg) == Some("initialize") {
        return initialize(&gw, &b, id, &msg).await;
    }
    let live = match session(&gw, &b, &headers).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    match kind {
        Kind::Request => reply(b.request(&live, msg).await),
        Kind::Notification => {
            b.client_notification(&live, msg).await;
            StatusCode::ACCEPTED.into_response()
        }
        Kind::Response => {
            b.client_response(&live, msg).await;
            StatusCode::ACCEPTED.into_response()
        }
        Kind::Invalid => unreachable!("answered above"),
    }
}

async fn initialize(gw: &Arc<Gateway>, b: &Arc<Binding>, id: Value, msg: &Message) -> Response {
    let params = msg.get("params").cloned().unwrap_or(Value::Null);
    match gw.sessions.create(b, &params).await {
        Ok((live, result)) => {
            let mut r = json_response(&jsonrpc::result(id, result));
            r.headers_mut().insert(
                SESSION_HEADER,
                HeaderValue::from_str(&live.id).expect("hex session ids are valid headers"),
            );
            r
        }
        Err(e) => json_response(&e.to_message(id)),
    }
}

/// The live session a request names, or the response refusing it.
async fn session(
    gw: &Gateway,
    b: &Arc<Binding>,
    headers: &HeaderMap,
) -> Result<Arc<crate::mcp::session::Live>, Response> {
    let Some(sid) = header(headers, SESSION_HEADER) else {
        return Err(http_error(
            StatusCode::BAD_REQUEST,
            Value::Null,
            code::INVALID_REQUEST,
            "Bad Request: Mcp-Session-Id header is required (send initialize first)",
        ));
    };
    match gw.sessions.get(b, sid).await {
        Ok(l) => Ok(l),
        Err(SessionError::NotFound | SessionError::WrongBinding) => Err(http_error(
            StatusCode::NOT_FOUND,
            Value::Null,
            code::INVALID_REQUEST,
            "Session not found: it expired or was ended; initialize a new one",
        )),
        Err(SessionError::Rpc(e)) => Err(http_error(
            StatusCode::SERVICE_UNAVAILABLE,
            Value::Null,
            e.code,
            e.message,
        )),
    }
}

fn reply(r: Reply) -> Response {
    match r {
        Reply::Json(m) => json_response(&m),
        Reply::Accepted => StatusCode::ACCEPTED.into_response(),
        Reply::Stream(rx) => {
            let events = tokio_stream::wrappers::ReceiverStream::new(rx)
                .map(|m| Ok::<_, Infallible>(event(&m)));
            Sse::new(events)
                .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
                .into_response()
        }
    }
}

fn event(m: &Message) -> Event {
    Event::default()
        .event("message")
        .data(serde_json::to_string(m).expect("a JSON map always serialises"))
}

/// The GET stream: what upstreams send outside any request, for one session.
async fn get(State((gw, b)): S, headers: HeaderMap) -> Response {
    if let Err(r) = precheck(&gw, &headers) {
        return r;
    }
    if !accepts(&headers, "text/event-stream") {
        return http_error(
            StatusCode::NOT_ACCEPTABLE,
            Value::Null,
            code::INVALID_REQUEST,
            "Not Acceptable: Accept must list text/event-stream",
        );
    }
    let live = match session(&gw, &b, &headers).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    let stream = match b.delivery_stream(&live.id).await {
        Ok(s) => s,
        Err(e) => {
            return http_error(
                StatusCode::SERVICE_UNAVAILABLE,
                Value::Null,
                e.code,
                e.message,
            );
        }
    };
    let events = stream.map(|m| Ok::<_, Infallible>(event(&m)));
    Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// DELETE ends the session and its upstream sessions.
async fn delete(State((gw, b)): S, headers: HeaderMap) -> Response {
    if let Err(r) = precheck(&gw, &headers) {
        return r;
    }
    let live = match session(&gw, &b, &headers).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    gw.sessions.end(&live).await;
    StatusCode::OK.into_response()
}

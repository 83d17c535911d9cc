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
use serde_json::{Value, json};

use super::Gateway;
use crate::auth::AuthError;
use crate::mcp::access::{self, Caller};
use crate::mcp::binding::{Binding, Reply};
use crate::mcp::forward::{self, ForwardError, Origin};
use crate::mcp::headers as mcp_headers;
use crate::mcp::jsonrpc::{self, Kind, Message, Parsed, code};
use crate::mcp::observe::Observed;
use crate::mcp::session::SessionError;
use crate::mcp::session::{Busy, Live, Resolved};
use crate::mcp::upstream::http::{CLIENT_HEADERS, SESSION_HEADER, VERSION_HEADER};
use crate::mcp::{meta, version};
use axum::http::Method;

type S = State<(Arc<Gateway>, Arc<Binding>)>;

/// The routes of one binding at its path, and its protected-resource metadata document when
/// it has `auth`.
pub fn routes(gw: Arc<Gateway>, b: Arc<Binding>) -> Router {
    let path = b.path.clone();
    let mr: MethodRouter<(Arc<Gateway>, Arc<Binding>)> =
        axum::routing::post(post).get(get).delete(delete);
    let mut r = Router::new().route(&path, mr.with_state((gw.clone(), b.clone())));
    if let Some(auth) = &b.access.auth {
        let suffix = match &auth.config.resource {
            Some(res) => url::Url::parse(res)
                .map(|u| u.path().trim_end_matches('/').to_owned())
                .unwrap_or_else(|_| path.clone()),
            None => path.clone(),
        };
        r = r.route(
            &format!("{METADATA_PREFIX}{suffix}"),
            axum::routing::get(metadata).with_state((gw, b)),
        );
    }
    r
}

/// Where protected-resource metadata is published (RFC 9728 §3.1): inserted between the
/// resource's host and path.
const METADATA_PREFIX: &str = "/.well-known/oauth-protected-resource";

/// The binding's resource identifier: configured, or derived from how the client reached us.
fn resource(gw: &Gateway, b: &Binding, headers: &HeaderMap) -> String {
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
    let res = resource(gw, b, headers);
    match url::Url::parse(&res) {
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

/// `GET /.well-known/oauth-protected-resource<path>`: the binding's protected-resource
/// metadata (RFC 9728), public by design.
async fn metadata(State((gw, b)): S, headers: HeaderMap) -> Response {
    let Some(auth) = &b.access.auth else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let doc = auth.metadata(&resource(&gw, &b, &headers));
    (
        StatusCode::OK,
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        doc.to_string(),
    )
        .into_response()
}

/// Who sent a request, on a binding with `auth`; otherwise `None`. A request without a valid
/// token is refused with `401` (`403` for a missing scope) and a challenge naming the
/// binding's protected-resource metadata.
async fn caller(gw: &Gateway, b: &Binding, headers: &HeaderMap) -> Result<Caller, Response> {
    let Some(auth) = &b.access.auth else {
        return Ok(None);
    };
    match auth
        .authenticate(header(headers, axum::http::header::AUTHORIZATION.as_str()))
        .await
    {
        Ok(id) => Ok(Some(Arc::new(id))),
        Err(e) => {
            tracing::info!(binding = %b.name, reason = e.reason(), "request refused: {e}");
            crate::telemetry::metrics::metrics().auth_failure(&b.name, e.reason());
            let status = if e == AuthError::InsufficientScope {
                StatusCode::FORBIDDEN
            } else {
                StatusCode::UNAUTHORIZED
            };
            let mut r = http_error(
                status,
                Value::Null,
                code::INVALID_REQUEST,
                format!(
                    "{}: {e}",
                    if status == StatusCode::FORBIDDEN {
                        "Forbidden"
                    } else {
                        "Unauthorized"
                    }
                ),
            );
            if let Ok(v) = HeaderValue::from_str(&auth.challenge(&e, &metadata_url(gw, b, headers)))
            {
                r.headers_mut()
                    .insert(axum::http::header::WWW_AUTHENTICATE, v);
            }
            Err(r)
        }
    }
}

/// The caller's identity key, what sessions are bound to.
fn key(who: &Caller) -> Option<&str> {
    who.as_deref().map(|i| i.key.as_str())
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

/// Common checks: who sent the request (a client, or another replica presenting the
/// inter-replica secret), then for clients the DNS-rebinding guard.
fn precheck(gw: &Gateway, headers: &HeaderMap) -> Result<Origin, Response> {
    match gw.forwarder.origin(headers) {
        Origin::Replica => return Ok(Origin::Replica),
        Origin::Forged => {
            return Err(http_error(
                StatusCode::FORBIDDEN,
                Value::Null,
                code::INVALID_REQUEST,
                "Forbidden",
            ));
        }
        Origin::Client => {}
    }
    if let Err(why) = gw.guard.check(headers) {
        return Err(http_error(
            StatusCode::FORBIDDEN,
            Value::Null,
            code::INVALID_REQUEST,
            why,
        ));
    }
    Ok(Origin::Client)
}

/// The legacy protocol version header, when present, must name a revision mcpg speaks.
fn legacy_version(headers: &HeaderMap, id: &Value) -> Result<(), Response> {
    if let Some(v) = header(headers, VERSION_HEADER)
        && !version::is_legacy(v)
    {
        return Err(http_error(
            StatusCode::BAD_REQUEST,
            id.clone(),
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
    let origin = match precheck(&gw, &headers) {
        Ok(o) => o,
        Err(r) => return r,
    };
    let who = match caller(&gw, &b, &headers).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    if b.passes_headers() {
        // Upstreams configured to see some of the client's headers read them from here.
        let snapshot = Arc::new(headers.clone());
        return CLIENT_HEADERS
            .scope(snapshot, post_as(gw, b, headers, body, origin, who))
            .await;
    }
    post_as(gw, b, headers, body, origin, who).await
}

async fn post_as(
    gw: Arc<Gateway>,
    b: Arc<Binding>,
    headers: HeaderMap,
    body: Body,
    origin: Origin,
    who: Caller,
) -> Response {
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
    let modern = header(&headers, VERSION_HEADER).is_some_and(version::is_modern)
        || meta::protocol_version(&msg).is_some()
        || jsonrpc::method(&msg) == Some("server/discover");
    if modern {
        // A retry for an exchange parked on another replica is answered there.
        if origin == Origin::Client
            && let Some(node) = b.parked_elsewhere(&msg).await
        {
            return forward_parked(&gw, &b, &node, &headers, bytes, id).await;
        }
        return modern_post(&gw, &b, &headers, kind, id, msg, &who).await;
    }
    if let Err(r) = legacy_version(&headers, &id) {
        return r;
    }
    if kind == Kind::Request && jsonrpc::method(&msg) == Some("initialize") {
        if origin == Origin::Client && gw.ownership.draining() {
            // A draining replica starts no session: another replica does.
            return match gw.ownership.other_peer().await {
                Some((_, url)) => match gw
                    .forwarder
                    .send(&url, &b.path, Method::POST, &headers, bytes)
                    .await
                {
                    Ok(r) => r,
                    Err(e) => draining_refusal(id, &e.to_string()),
                },
                None => draining_refusal(id, "no other replica is live"),
            };
        }
        return initialize(&gw, &b, &headers, id, &msg, &who).await;
    }
    // A request's span starts before its session is found, so that a request forwarded to the
    // session's owner is traced through both replicas; it is recorded (audit, metrics) only
    // where it is served.
    let obs = (kind == Kind::Request).then(|| {
        let sid = header(&headers, SESSION_HEADER);
        Observed::begin(&gw.auditor, &b, &headers, &msg, "legacy", sid, &who)
    });
    let resolving = session(&gw, &b, Method::POST, &headers, &bytes, &id, origin, &who);
    let resolved = match &obs {
        Some(o) => o.within(resolving).await,
        None => resolving.await,
    };
    let (live, busy) = match resolved {
        Ok(l) => l,
        Err(r) => {
            if let Some(o) = obs {
                o.not_here();
            }
            return r;
        }
    };
    match kind {
        Kind::Request => {
            let obs = obs.expect("made for requests");
            if let Some((kind, _, refusal)) = b.access.refuse(&who, &msg) {
                obs.denied(kind);
                return json_response(&refusal);
            }
            if let Some(refusal) = access::task_refused(&b, &who, &msg).await {
                obs.finish(Some(&refusal));
                return json_response(&refusal);
            }
            let method = jsonrpc::method(&msg).unwrap_or_default().to_owned();
            let r = obs.within(b.request(&live, msg)).await;
            let r = access::own_tasks(&b, &who, &method, r).await;
            let (r, obs) = obs.reply(b.access.filter(&who, &method, r));
            // A request may change state the record keeps (log level, subscriptions).
            gw.sessions.persist_if_dirty(&live).await;
            reply_busy(r, Some(busy), obs)
        }
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

/// A 2026-07-28 POST: the request metadata headers are checked against the body (the body
/// is the source of truth), then the request is served statelessly.
async fn modern_post(
    gw: &Gateway,
    b: &Arc<Binding>,
    headers: &HeaderMap,
    kind: Kind,
    id: Value,
    msg: Message,
    who: &Caller,
) -> Response {
    let bad =
        |code: i64, message: String| http_error(StatusCode::BAD_REQUEST, id.clone(), code, message);
    match kind {
        Kind::Request => {}
        // notifications/cancelled is for stdio; over HTTP a client closes its stream.
        Kind::Notification => return StatusCode::ACCEPTED.into_response(),
        _ => {
            return bad(
                code::INVALID_REQUEST,
                "clients send no responses in MCP 2026-07-28".into(),
            );
        }
    }
    let method = jsonrpc::method(&msg).unwrap_or_default();
    let body_version = meta::protocol_version(&msg);
    let Some(header_version) = header(headers, VERSION_HEADER) else {
        return bad(
            code::HEADER_MISMATCH,
            "Header mismatch: the MCP-Protocol-Version header is required".into(),
        );
    };
    let Some(body_version) = body_version else {
        return bad(
            code::INVALID_PARAMS,
            format!("params._meta[\"{}\"] is required", meta::PROTOCOL_VERSION),
        );
    };
    if header_version != body_version {
        return bad(
            code::HEADER_MISMATCH,
            format!(
                "Header mismatch: MCP-Protocol-Version header value '{header_version}' does not match body value '{body_version}'"
            ),
        );
    }
    if !version::is_modern(body_version) {
        return http_error_data(
            StatusCode::BAD_REQUEST,
            id,
            code::UNSUPPORTED_VERSION,
            "Unsupported protocol version",
            json!({"supported": version::all(), "requested": body_version}),
        );
    }
    if meta::of(&msg)
        .and_then(|m| m.get(meta::CLIENT_CAPABILITIES))
        .is_none()
    {
        return bad(
            code::INVALID_PARAMS,
            format!(
                "params._meta[\"{}\"] is required",
                meta::CLIENT_CAPABILITIES
            ),
        );
    }
    match header(headers, mcp_headers::METHOD) {
        Some(h) if h == method => {}
        Some(h) => {
            return bad(
                code::HEADER_MISMATCH,
                format!(
                    "Header mismatch: Mcp-Method header value '{h}' does not match body value '{method}'"
                ),
            );
        }
        None => {
            return bad(
                code::HEADER_MISMATCH,
                "Header mismatch: the Mcp-Method header is required".into(),
            );
        }
    }
    if let Some(field) = mcp_headers::name_field(method) {
        let body_name = mcp_headers::name_value(&msg);
        let header_name = header(headers, mcp_headers::NAME).map(mcp_headers::decode);
        match (header_name, body_name) {
            (None, _) => {
                return bad(
                    code::HEADER_MISMATCH,
                    format!("Header mismatch: the Mcp-Name header is required for {method}"),
                );
            }
            (Some(None), _) => {
                return bad(
                    code::HEADER_MISMATCH,
                    "Header mismatch: the Mcp-Name header is not valid base64".into(),
                );
            }
            (Some(Some(h)), body) if body.as_deref() != Some(h.as_str()) => {
                return bad(
                    code::HEADER_MISMATCH,
                    format!(
                        "Header mismatch: Mcp-Name header value '{h}' does not match body value '{}' (params.{field})",
                        body.unwrap_or_default()
                    ),
                );
            }
            _ => {}
        }
    }
    // Mcp-Param-* headers mirror tool arguments the upstream annotated; the upstream that
    // defined them validates them, mcpg forwards them.
    let extra: Vec<(String, String)> = headers
        .iter()
        .filter(|(k, _)| k.as_str().starts_with(mcp_headers::PARAM_PREFIX))
        .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
        .collect();
    let obs = Observed::begin(&gw.auditor, b, headers, &msg, "modern", None, who);
    if let Some((kind, _, refusal)) = b.access.refuse(who, &msg) {
        obs.denied(kind);
        return json_response(&refusal);
    }
    if let Some(refusal) = access::task_refused(b, who, &msg).await {
        obs.finish(Some(&refusal));
        return json_response(&refusal);
    }
    let method = method.to_owned();
    let r = obs.within(b.modern_request(msg, extra)).await;
    let r = access::own_tasks(b, who, &method, r).await;
    let (r, obs) = obs.reply(b.access.filter(who, &method, r));
    modern_reply(r, obs)
}

/// A modern reply: errors the specification gives a status get it (method not found 404,
/// header and capability errors 400).
fn modern_reply(r: Reply, obs: Option<Observed>) -> Response {
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
            let mut resp = json_response(m);
            *resp.status_mut() = status;
            return resp;
        }
    }
    reply_busy(r, None, obs)
}

fn http_error_data(
    status: StatusCode,
    id: Value,
    code: i64,
    message: &str,
    data: Value,
) -> Response {
    let body = jsonrpc::to_bytes(&jsonrpc::error(id, code, message, Some(data)));
    (
        status,
        [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body,
    )
        .into_response()
}

/// GET and DELETE belong to the legacy era; a 2026-07-28 client gets 405.
fn modern_get_or_delete(headers: &HeaderMap) -> Option<Response> {
    header(headers, VERSION_HEADER)
        .is_some_and(version::is_modern)
        .then(|| {
            (
                StatusCode::METHOD_NOT_ALLOWED,
                [(axum::http::header::ALLOW, HeaderValue::from_static("POST"))],
            )
                .into_response()
        })
}

async fn initialize(
    gw: &Arc<Gateway>,
    b: &Arc<Binding>,
    headers: &HeaderMap,
    id: Value,
    msg: &Message,
    who: &Caller,
) -> Response {
    let mut obs = Observed::begin(&gw.auditor, b, headers, msg, "legacy", None, who);
    let params = msg.get("params").cloned().unwrap_or(Value::Null);
    match obs.within(gw.sessions.create(b, &params, key(who))).await {
        Ok((live, result)) => {
            let answer = jsonrpc::result(id, result);
            obs.set_session(&live.id);
            obs.finish(Some(&answer));
            let mut r = json_response(&answer);
            r.headers_mut().insert(
                SESSION_HEADER,
                HeaderValue::from_str(&live.id).expect("hex session ids are valid headers"),
            );
            r
        }
        Err(e) => {
            let answer = e.to_message(id);
            obs.finish(Some(&answer));
            let mut r = json_response(&answer);
            if e.data
                .as_ref()
                .is_some_and(|d| d["reason"] == "session_limit")
            {
                *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            }
            r
        }
    }
}

/// 503 from a draining replica that has nowhere to send a new session.
fn draining_refusal(id: Value, why: &str) -> Response {
    let mut r = http_error(
        StatusCode::SERVICE_UNAVAILABLE,
        id,
        code::CONNECTION_CLOSED,
        format!("this replica is shutting down and starts no new session ({why}); try again"),
    );
    r.headers_mut().insert(
        axum::http::header::RETRY_AFTER,
        HeaderValue::from_static("1"),
    );
    r
}

/// Forwards a modern retry to the replica its exchange is parked on.
async fn forward_parked(
    gw: &Gateway,
    b: &Binding,
    node: &str,
    headers: &HeaderMap,
    bytes: Bytes,
    id: Value,
) -> Response {
    let gone = |why: String| {
        json_response(&jsonrpc::error(
            id.clone(),
            code::INVALID_PARAMS,
            format!(
                "requestState refers to an exchange held by replica {node}, which {why}; send the request again without it"
            ),
            None,
        ))
    };
    let Some(url) = gw.ownership.peer_url(node, false).await else {
        return gone("is gone".into());
    };
    match gw
        .forwarder
        .send(&url, &b.path, Method::POST, headers, bytes)
        .await
    {
        Ok(r) => r,
        Err(e) => gone(format!("cannot be reached ({e})")),
    }
}

#[allow(clippy::too_many_arguments)]
/// The session a request names, served here (with the request counted as running on it),
/// or the response: a refusal, or the answer of the replica that owns the session.
async fn session(
    gw: &Gateway,
    b: &Arc<Binding>,
    method: Method,
    headers: &HeaderMap,
    body: &Bytes,
    id: &Value,
    origin: Origin,
    who: &Caller,
) -> Result<(Arc<Live>, Busy), Response> {
    let Some(sid) = header(headers, SESSION_HEADER) else {
        return Err(http_error(
            StatusCode::BAD_REQUEST,
            id.clone(),
            code::INVALID_REQUEST,
            "Bad Request: Mcp-Session-Id header is required (send initialize first)",
        ));
    };
    let forwarded = origin == Origin::Replica;
    let mut unreachable: Option<String> = None;
    for _ in 0..8 {
        match gw
            .sessions
            .resolve(b, sid, forwarded, unreachable.as_deref(), key(who))
            .await
        {
            Ok(Resolved::Local(live)) => {
                if let Some(busy) = live.begin() {
                    return Ok((live, busy));
                }
                // Let go between resolving and starting (handed over, ended): look again.
            }
            Ok(Resolved::Remote { owner, url }) => {
                let sent = gw
                    .forwarder
                    .send(&url, &b.path, method.clone(), headers, body.clone())
                    .await;
                let m = crate::telemetry::metrics::metrics();
                match sent {
                    Ok(r) => {
                        m.forwarded(&b.name, "ok");
                        return Err(r);
                    }
                    Err(ForwardError::Misdirected) => {
                        m.forwarded(&b.name, "misdirected");
                        gw.sessions.forget_remote(sid);
                    }
                    Err(e @ ForwardError::Unreachable { .. }) => {
                        m.forwarded(&b.name, "unreachable");
                        gw.sessions.forget_remote(sid);
                        tracing::warn!(session = %sid, owner = %owner, error = %e, "cannot reach the session's owner; waiting for its ownership lease");
                        unreachable = Some(owner);
                    }
                }
            }
            Err(e) => return Err(session_error(e, id)),
        }
    }
    Err(http_error(
        StatusCode::SERVICE_UNAVAILABLE,
        id.clone(),
        code::INTERNAL_ERROR,
        "the session's owner could not be settled; try again",
    ))
}

fn session_error(e: SessionError, id: &Value) -> Response {
    match e {
        SessionError::NotFound | SessionError::WrongBinding => http_error(
            StatusCode::NOT_FOUND,
            id.clone(),
            code::INVALID_REQUEST,
            "Session not found: it expired or was ended; initialize a new one",
        ),
        SessionError::Misdirected => forward::misdirected(),
        SessionError::Rpc(e) => http_error(
            StatusCode::SERVICE_UNAVAILABLE,
            id.clone(),
            e.code,
            e.message,
        ),
    }
}

/// A reply; `busy` (the request counted as running on its session) lasts until the reply,
/// streamed or not, has been sent.
/// `obs` observes a streamed reply's messages as they go out.
fn reply_busy(r: Reply, busy: Option<Busy>, mut obs: Option<Observed>) -> Response {
    match r {
        Reply::Json(m) => json_response(&m),
        Reply::Accepted => StatusCode::ACCEPTED.into_response(),
        Reply::Stream(rx) => {
            let events = tokio_stream::wrappers::ReceiverStream::new(rx).map(move |m| {
                let _held = &busy;
                crate::mcp::observe::saw(&mut obs, &m);
                Ok::<_, Infallible>(event(&m))
            });
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
    let who = match caller(&gw, &b, &headers).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    if let Some(r) = modern_get_or_delete(&headers) {
        return r;
    }
    if let Err(r) = legacy_version(&headers, &Value::Null) {
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
    let Some(sid) = header(&headers, SESSION_HEADER).map(str::to_owned) else {
        return http_error(
            StatusCode::BAD_REQUEST,
            Value::Null,
            code::INVALID_REQUEST,
            "Bad Request: Mcp-Session-Id header is required (send initialize first)",
        );
    };
    // Any replica serves the stream, from the `delivery` capability: the owner publishes
    // there wherever the stream is held.
    if let Err(e) = gw.sessions.exists(&b, &sid, key(&who)).await {
        return session_error(e, &Value::Null);
    }
    // Resumption: the client names the last event it saw.
    let last = header(&headers, "last-event-id").and_then(|v| v.trim().parse::<u64>().ok());
    let stream = match b.delivery_stream(&sid, last).await {
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
    // While the stream is open, someone must own the session (its upstream conversations
    // feed the stream): if its owner dies, this replica takes it over.
    let keeper = tokio::spawn(keep_owned(
        gw.clone(),
        b.clone(),
        sid,
        key(&who).map(str::to_owned),
    ));
    let keeper = AbortOnDrop(keeper);
    let closing = gw.streams_closing();
    // A reconnect hint first: when the replica holding this stream goes away, the client
    // comes back quickly (to any replica) and resumes from its Last-Event-ID.
    let hint = futures::stream::once(async {
        Ok::<_, Infallible>(Event::default().retry(Duration::from_millis(500)))
    });
    let events = stream
        .map(move |(n, m)| {
            let _held = &keeper;
            Ok::<_, Infallible>(event(&m).id(n.to_string()))
        })
        .take_until(closing)
        // Ended by a drain: the client reconnects (to another replica) and resumes.
        .chain(futures::stream::once(async {
            Ok(Event::default()
                .retry(Duration::from_millis(500))
                .comment("replica shutting down; reconnect with Last-Event-ID"))
        }));
    Sse::new(hint.chain(events))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// Aborts a task when dropped (with the stream that owns it).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Resolves a session's owner now and then while its GET stream is open here, which takes the
/// session over once its owner is gone (its ownership lease expired or was handed back).
async fn keep_owned(gw: Arc<Gateway>, b: Arc<Binding>, sid: String, identity: Option<String>) {
    let every = gw.ownership.owner_ttl() / 3;
    loop {
        tokio::time::sleep(every).await;
        if gw.ownership.draining() {
            return;
        }
        match gw
            .sessions
            .resolve(&b, &sid, false, None, identity.as_deref())
            .await
        {
            Ok(_) => {}
            Err(SessionError::NotFound | SessionError::WrongBinding) => return,
            Err(e) => {
                tracing::debug!(session = %sid, error = %e, "cannot settle the owner of a streamed session")
            }
        }
    }
}

/// DELETE ends the session and its upstream sessions (on the replica that owns it).
async fn delete(State((gw, b)): S, headers: HeaderMap) -> Response {
    let origin = match precheck(&gw, &headers) {
        Ok(o) => o,
        Err(r) => return r,
    };
    if let Some(r) = modern_get_or_delete(&headers) {
        return r;
    }
    let who = match caller(&gw, &b, &headers).await {
        Ok(w) => w,
        Err(r) => return r,
    };
    let (live, busy) = match session(
        &gw,
        &b,
        Method::DELETE,
        &headers,
        &Bytes::new(),
        &Value::Null,
        origin,
        &who,
    )
    .await
    {
        Ok(l) => l,
        Err(r) => return r,
    };
    drop(busy);
    gw.sessions.end(&live).await;
    StatusCode::OK.into_response()
}

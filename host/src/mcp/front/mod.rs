//! The downstream Streamable HTTP endpoint of each binding, as thin axum handlers: each
//! admits its request ([`admit`]), hands it to the session machinery and the pipeline
//! ([`crate::mcp::serve`]), and answers through [`respond`], the one place where an error
//! becomes a status. With `upstream/http.rs` and `cluster/forward.rs`, the only part of the
//! data plane that knows HTTP.

pub mod admit;
pub mod guard;
pub mod pools;
pub mod respond;
pub mod sse;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use axum::{Extension, Router};
use serde_json::Value;

use super::Gateway;
use crate::mcp::access::{Caller, identity_key};
use crate::mcp::binding::Binding;
use crate::mcp::cluster::forward::{self, Origin};
use crate::mcp::observe::Observed;
use crate::mcp::route::dispatch::Client;
use crate::mcp::serve;
use crate::mcp::session::placement::Placed;
use crate::mcp::session::{Busy, Live};
use crate::mcp::upstream::http::CLIENT_HEADERS;
use crate::mcp::wire::headers::SESSION_HEADER;
use crate::mcp::wire::jsonrpc::{self, Kind, Message};
use crate::mcp::wire::version::Era;
use admit::header;
use respond::McpError;

type S = State<(Arc<Gateway>, Arc<Binding>)>;

/// The routes of every binding, for the main listener.
pub fn router(gw: &Arc<Gateway>) -> Router {
    gw.bindings()
        .iter()
        .fold(Router::new(), |r, b| r.merge(routes(gw.clone(), b.clone())))
}

/// Admin routes of the data plane: `GET /api/cluster/sessions/{id}` and the upstream pools'
/// routes (`pools.rs`).
pub fn admin_router(gw: &Arc<Gateway>) -> Router {
    Router::new()
        .route(
            "/api/cluster/sessions/{id}",
            axum::routing::get(session_status),
        )
        .route("/api/cluster/servers", axum::routing::get(pools::servers))
        .route(
            "/api/cluster/servers/{upstream}/replicas",
            axum::routing::get(pools::replicas),
        )
        .route(
            "/api/cluster/servers/{upstream}/replicas/{endpoint}/{action}",
            axum::routing::post(pools::set_admin),
        )
        .with_state(gw.clone())
}

/// `GET /api/cluster/sessions/{id}`: a legacy session's record (owner, binding, revision,
/// which upstreams hold a session of their own) and whether this replica serves it now.
async fn session_status(
    State(gw): State<Arc<Gateway>>,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    match gw.sessions.describe(&id).await {
        Some(v) => axum::Json(v).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({"error": "no such session"})),
        )
            .into_response(),
    }
}

/// The routes of one binding at its path, and its protected-resource metadata document when
/// it has `auth`.
fn routes(gw: Arc<Gateway>, b: Arc<Binding>) -> Router {
    let path = b.path.clone();
    let mr: MethodRouter<(Arc<Gateway>, Arc<Binding>)> =
        axum::routing::post(post).get(get).delete(delete);
    let mut r = Router::new().route(&path, mr.with_state((gw.clone(), b.clone())));
    if b.access.auth.is_some() {
        let suffix = match &b.access.resource {
            Some(res) => res.path().trim_end_matches('/').to_owned(),
            None => path.clone(),
        };
        r = r.route(
            &format!("{}{suffix}", admit::METADATA_PREFIX),
            axum::routing::get(metadata).with_state((gw, b)),
        );
    }
    r
}

/// `GET /.well-known/oauth-protected-resource<path>`: the binding's protected-resource
/// metadata (RFC 9728), public by design. A binding with static tokens only has no
/// authorization server to name and answers 404, which MCP clients read as "no OAuth here"
/// (an empty `authorization_servers` sent them to register with the MCP endpoint itself).
async fn metadata(State((gw, b)): S, headers: HeaderMap) -> Response {
    let doc = b
        .access
        .auth
        .as_ref()
        .and_then(|auth| auth.metadata(&admit::resource(&gw, &b, &headers)));
    match doc {
        Some(doc) => (
            StatusCode::OK,
            [(CONTENT_TYPE, HeaderValue::from_static("application/json"))],
            doc.to_string(),
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(serde_json::json!({
                "error": "this binding has no OAuth authorization server: it takes static \
                          bearer tokens, sent as `Authorization: Bearer <token>`"
            })),
        )
            .into_response(),
    }
}

/// Who sent a request and who the caller is; refusals before anything else is looked at.
async fn sender(
    gw: &Gateway,
    b: &Binding,
    headers: &HeaderMap,
) -> Result<(Origin, Caller), McpError> {
    let origin = admit::origin(gw, headers)?;
    let who = admit::caller(gw, b, headers).await?;
    Ok((origin, who))
}

async fn post(
    State((gw, b)): S,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let addr = peer.map(|Extension(ConnectInfo(a))| a.ip());
    let (origin, who) = match sender(&gw, &b, &headers).await {
        Ok(s) => s,
        Err(e) => return e.respond(Value::Null),
    };
    if b.passes_headers() {
        // Upstreams configured to see some of the client's headers read them from here.
        let snapshot = Arc::new(headers.clone());
        return CLIENT_HEADERS
            .scope(snapshot, post_as(gw, b, headers, body, origin, (who, addr)))
            .await;
    }
    post_as(gw, b, headers, body, origin, (who, addr)).await
}

/// The caller's trace context (W3C `traceparent` header, or in `_meta`): the parent of the
/// request's span.
fn trace_parent(headers: &HeaderMap, msg: &Message) -> opentelemetry::Context {
    let meta = jsonrpc::params(msg).and_then(|p| jsonrpc::member(p, "_meta"));
    crate::telemetry::extract_parent(headers, meta)
}

/// One admitted POST: who sent it, and the message it carries.
struct Post {
    gw: Arc<Gateway>,
    b: Arc<Binding>,
    headers: HeaderMap,
    bytes: Bytes,
    msg: Message,
    id: Value,
    origin: Origin,
    who: Caller,
    /// The client's address (the TCP peer's), when the listener tells it.
    addr: Option<IpAddr>,
}

async fn post_as(
    gw: Arc<Gateway>,
    b: Arc<Binding>,
    headers: HeaderMap,
    body: Body,
    origin: Origin,
    (who, addr): (Caller, Option<IpAddr>),
) -> Response {
    if let Err(e) = admit::post_headers(&headers) {
        return e.respond(Value::Null);
    }
    let (bytes, msg) = match admit::message(body, gw.max_body).await {
        Ok(m) => m,
        Err((id, e)) => return e.respond(id),
    };
    let id = jsonrpc::member(&msg, "id").cloned().unwrap_or(Value::Null);
    let era = admit::era(&headers, &msg);
    let p = Post {
        gw,
        b,
        headers,
        bytes,
        msg,
        id,
        origin,
        who,
        addr,
    };
    match era {
        Era::Modern => modern_post(p).await,
        Era::Legacy => legacy_post(p).await,
    }
}

/// A 2026-07-28 POST: served statelessly, after its headers were checked against its body.
async fn modern_post(p: Post) -> Response {
    // A retry for an exchange parked on another replica is answered there.
    if p.origin == Origin::Client
        && let Some(node) = p.gw.bridge.parked_elsewhere(&p.msg).await
    {
        return forward_parked(&p, &node).await;
    }
    match jsonrpc::kind(&p.msg) {
        Kind::Request => {}
        // notifications/cancelled is for stdio; over HTTP a client closes its stream.
        Kind::Notification => return respond::accepted(),
        _ => return McpError::ModernResponse.respond(p.id),
    }
    let extra = match admit::modern_headers(&p.headers, &p.msg) {
        Ok(x) => x,
        Err(e) => return e.respond(p.id),
    };
    let obs = Observed::begin(
        &p.gw.auditor,
        &p.b,
        trace_parent(&p.headers, &p.msg),
        &p.msg,
        Era::Modern,
        None,
        &p.who,
    );
    let served = serve::serve(
        &p.b,
        &p.who,
        obs,
        p.msg,
        Client::Stateless {
            bridge: &p.gw.bridge,
            extra,
        },
    )
    .await;
    match served {
        Ok((r, obs)) => respond::modern_reply(r, obs),
        Err((refusal, obs)) => respond::limited(refusal, obs, p.id),
    }
}

/// A legacy POST: `initialize` starts a session; anything else belongs to the session its
/// `Mcp-Session-Id` names, served here or by the replica that owns it.
async fn legacy_post(p: Post) -> Response {
    if let Err(e) = admit::legacy_version(&p.headers) {
        return e.respond(p.id);
    }
    let kind = jsonrpc::kind(&p.msg);
    if kind == Kind::Request && jsonrpc::method(&p.msg) == Some("initialize") {
        return initialize(&p).await;
    }
    // A request's span starts before its session is found, so that a request forwarded to the
    // session's owner is traced through both replicas; it is recorded (audit, metrics) only
    // where it is served.
    let obs = (kind == Kind::Request).then(|| {
        let sid = header(&p.headers, SESSION_HEADER);
        Observed::begin(
            &p.gw.auditor,
            &p.b,
            trace_parent(&p.headers, &p.msg),
            &p.msg,
            Era::Legacy,
            sid,
            &p.who,
        )
    });
    let forwarded = p.origin == Origin::Replica;
    let placing = place(
        &p.gw,
        &p.b,
        Method::POST,
        &p.headers,
        &p.bytes,
        p.origin,
        &p.who,
    );
    let placed = match &obs {
        Some(o) => o.within(placing).await,
        None => placing.await,
    };
    let (live, busy) = match placed {
        // A forward whose deadline passed while its session was being placed: the replica
        // that sent it has given up, so it does not run.
        Ok(Placed::Here(live, busy)) if !(forwarded && forward::expired(&p.headers)) => {
            (live, busy)
        }
        other => {
            if let Some(o) = obs {
                o.not_here();
            }
            return match other {
                Ok(Placed::Answered(r)) => r,
                Err(e) => e.respond(p.id),
                Ok(Placed::Here(..)) => McpError::ForwardExpired.respond(p.id),
            };
        }
    };
    match kind {
        Kind::Request => {
            live.mark_used();
            let obs = obs.expect("made for requests");
            let served = serve::serve(&p.b, &p.who, obs, p.msg, Client::Session(&live)).await;
            let (r, obs) = match served {
                Ok(s) => s,
                Err((refusal, obs)) => return respond::limited(refusal, obs, p.id),
            };
            // A request may change state the record keeps (log level, subscriptions).
            p.gw.sessions.persist_if_dirty(&live).await;
            respond::reply(r, Some(busy), obs)
        }
        Kind::Notification => {
            live.client_notification(p.msg).await;
            respond::accepted()
        }
        Kind::Response => {
            live.services.server_requests.answered(&live, p.msg).await;
            respond::accepted()
        }
        Kind::Invalid => unreachable!("refused by admit::message"),
    }
}

/// `initialize`: a new session, owned here; on a draining replica, sent to another one.
async fn initialize(p: &Post) -> Response {
    if p.origin == Origin::Client && p.gw.ownership.draining() {
        // A draining replica starts no session: another replica does.
        let why = match p.gw.ownership.other_peer().await {
            Some((_, url)) => match p
                .gw
                .forwarder
                .send(
                    &url,
                    &p.b.path,
                    Method::POST,
                    &p.headers,
                    p.bytes.clone(),
                    p.b.longest_timeout(),
                )
                .await
            {
                Ok(r) => return r,
                Err(e) => e.to_string(),
            },
            None => "no other replica is live".to_owned(),
        };
        return McpError::Draining(why).respond(p.id.clone());
    }
    let mut obs = Observed::begin(
        &p.gw.auditor,
        &p.b,
        trace_parent(&p.headers, &p.msg),
        &p.msg,
        Era::Legacy,
        None,
        &p.who,
    );
    let params = p.msg.get("params").cloned().unwrap_or(Value::Null);
    let created = obs
        .within(
            p.gw.sessions
                .create(&p.b, &params, identity_key(&p.who), p.addr),
        )
        .await;
    match created {
        Ok((live, result)) => {
            let answer = jsonrpc::result(p.id.clone(), result);
            obs.set_session(&live.id);
            obs.finish(Some(&answer));
            let mut r = respond::message(&answer, StatusCode::OK);
            r.headers_mut().insert(
                SESSION_HEADER,
                HeaderValue::from_str(&live.id).expect("hex session ids are valid headers"),
            );
            r
        }
        Err(e) => {
            let e = McpError::not_started(e);
            obs.finish(Some(&e.to_message(p.id.clone())));
            e.respond(p.id.clone())
        }
    }
}

/// Forwards a modern retry to the replica its exchange is parked on.
async fn forward_parked(p: &Post, node: &str) -> Response {
    let gone = |why: String| {
        McpError::ParkedGone {
            node: node.to_owned(),
            why,
        }
        .respond(p.id.clone())
    };
    let Some(url) = p.gw.ownership.peer_url(node, false).await else {
        return gone("is gone".into());
    };
    match p
        .gw
        .forwarder
        .send(
            &url,
            &p.b.path,
            Method::POST,
            &p.headers,
            p.bytes.clone(),
            p.b.longest_timeout(),
        )
        .await
    {
        Ok(r) => r,
        Err(e) => gone(format!("cannot be reached ({e})")),
    }
}

/// The session a request names, served here (with the request counted as running on it), or
/// the answer of the replica that owns it.
async fn place(
    gw: &Gateway,
    b: &Arc<Binding>,
    method: Method,
    headers: &HeaderMap,
    body: &Bytes,
    origin: Origin,
    who: &Caller,
) -> Result<Placed<Response>, McpError> {
    let sid = header(headers, SESSION_HEADER).ok_or(McpError::NoSessionId)?;
    let forward = move |url: String| {
        let (method, body) = (method.clone(), body.clone());
        async move {
            gw.forwarder
                .send(&url, &b.path, method, headers, body, b.longest_timeout())
                .await
        }
    };
    Ok(gw
        .sessions
        .place(
            b,
            sid,
            origin == Origin::Replica,
            identity_key(who),
            forward,
        )
        .await?)
}

/// The GET stream: what upstreams send outside any request, for one session. Any replica
/// serves it, from the `delivery` capability; while it is open, this replica makes sure
/// someone owns the session (see [`crate::mcp::session::placement`]).
async fn get(State((gw, b)): S, headers: HeaderMap) -> Response {
    match open_stream(&gw, &b, &headers).await {
        Ok(r) => r,
        Err(e) => e.respond(Value::Null),
    }
}

async fn open_stream(
    gw: &Arc<Gateway>,
    b: &Arc<Binding>,
    headers: &HeaderMap,
) -> Result<Response, McpError> {
    admit::origin(gw, headers)?;
    let who = admit::caller(gw, b, headers).await?;
    admit::not_modern(headers)?;
    admit::legacy_version(headers)?;
    admit::stream_headers(headers)?;
    let sid = header(headers, SESSION_HEADER)
        .ok_or(McpError::NoSessionId)?
        .to_owned();
    gw.sessions.exists(b, &sid, identity_key(&who)).await?;
    // Resumption: the client names the last event it saw.
    let last = header(headers, "last-event-id").and_then(|v| v.trim().parse::<u64>().ok());
    let (position, stream) = gw
        .sessions
        .services()
        .delivery
        .stream(&sid, last)
        .await
        .map_err(McpError::StreamUnavailable)?;
    let keeper = gw
        .sessions
        .keep_owned(b.clone(), sid, identity_key(&who).map(str::to_owned));
    let (closing, retiring) = (gw.streams_closing(), b.retiring());
    let ends = async move {
        tokio::select! {
            _ = closing => {}
            _ = retiring => {}
        }
    };
    Ok(sse::get_stream(position, stream, keeper, ends))
}

/// DELETE ends the session and its upstream sessions (on the replica that owns it).
async fn delete(State((gw, b)): S, headers: HeaderMap) -> Response {
    let placed = async {
        let origin = admit::origin(&gw, &headers)?;
        admit::not_modern(&headers)?;
        let who = admit::caller(&gw, &b, &headers).await?;
        place(
            &gw,
            &b,
            Method::DELETE,
            &headers,
            &Bytes::new(),
            origin,
            &who,
        )
        .await
    };
    let (live, busy): (Arc<Live>, Busy) = match placed.await {
        Ok(Placed::Here(live, busy)) => (live, busy),
        Ok(Placed::Answered(r)) => return r,
        Err(e) => return e.respond(Value::Null),
    };
    drop(busy);
    gw.sessions.end(&live).await;
    StatusCode::OK.into_response()
}

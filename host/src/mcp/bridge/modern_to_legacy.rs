//! 2026-07-28 ("modern") requests at a binding: `server/discover` merged across upstreams,
//! requests forwarded to upstreams that speak the revision natively, and the bridge to
//! legacy upstreams: a server-to-client request from a legacy upstream becomes an
//! input-required result whose signed `requestState` leads the client's retry back to the
//! upstream exchange that asked, and the retry's `inputResponses` become JSON-RPC responses
//! to that upstream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::StreamExt;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::Sha256;
use tokio::sync::mpsc;

use crate::mcp::binding::{Binding, Context, Via, closed_error, merge_capabilities, timeout_error};
use crate::mcp::relay::Reply;
use crate::mcp::route::names::{self, Route};
use crate::mcp::upstream::Exchange;
use crate::mcp::wire::jsonrpc::{self, Kind, Message, RpcError, code};
use crate::mcp::wire::{meta, version};

/// Methods 2026-07-28 removed; a modern client calling them gets "method not found".
const REMOVED: &[&str] = &[
    "initialize",
    "ping",
    "logging/setLevel",
    "resources/subscribe",
    "resources/unsubscribe",
    "tasks/result",
    "tasks/list",
];

/// How long a parked upstream exchange waits for the client's retry.
const PARK_TTL: Duration = Duration::from_secs(600);

/// The most exchanges parked at once on this replica; beyond it a bridged input request is
/// refused rather than letting abandoned rounds grow without bound.
const MAX_PARKED: usize = 10_000;

/// The key signing `requestState`: shared by every replica through the `pipelines` store
/// (created once), so a retry verifies wherever it lands.
#[derive(Default)]
pub struct StateKey(tokio::sync::OnceCell<Vec<u8>>);

impl StateKey {
    async fn get(&self, ctx: &Context) -> Result<&[u8], RpcError> {
        self.0
            .get_or_try_init(|| async {
                let store = &ctx.caps.pipelines.store;
                let fresh: Vec<u8> = (0..4)
                    .flat_map(|_| *uuid::Uuid::new_v4().as_bytes())
                    .collect();
                let err = |e: mcpg_plugin_api::coordinator::CoordError| {
                    RpcError::new(
                        code::INTERNAL_ERROR,
                        format!("cannot read the state key: {e}"),
                    )
                };
                if store
                    .create("state-key", fresh.clone(), None)
                    .await
                    .map_err(err)?
                    .is_some()
                {
                    return Ok(fresh);
                }
                Ok(store
                    .get("state-key")
                    .await
                    .map_err(err)?
                    .map(|e| e.value)
                    .unwrap_or(fresh))
            })
            .await
            .map(Vec::as_slice)
    }
}

/// What mcpg's own `requestState` carries.
#[derive(Debug, Serialize, Deserialize)]
struct State {
    /// Format version.
    v: u32,
    /// The upstream (by name) the exchange belongs to.
    u: String,
    /// The upstream's own `requestState`, for upstreams that speak 2026-07-28.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    s: Option<String>,
    /// The parked upstream exchange, for bridged legacy upstreams.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    p: Option<String>,
    /// The replica the exchange is parked on (a retry reaching another replica is forwarded
    /// there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    n: Option<String>,
}

const STATE_PREFIX: &str = "mcpg1.";

async fn seal(ctx: &Context, st: &State) -> Result<String, RpcError> {
    let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(st).expect("serialisable"));
    let mut mac =
        Hmac::<Sha256>::new_from_slice(ctx.state_key.get(ctx).await?).expect("any key length");
    mac.update(body.as_bytes());
    let tag = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    Ok(format!("{STATE_PREFIX}{body}.{tag}"))
}

async fn open(ctx: &Context, s: &str) -> Result<State, RpcError> {
    let bad =
        || RpcError::invalid_params("requestState was not issued by this gateway or was altered");
    let rest = s.strip_prefix(STATE_PREFIX).ok_or_else(bad)?;
    let (body, tag) = rest.split_once('.').ok_or_else(bad)?;
    let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| bad())?;
    let mut mac =
        Hmac::<Sha256>::new_from_slice(ctx.state_key.get(ctx).await?).expect("any key length");
    mac.update(body.as_bytes());
    mac.verify_slice(&tag).map_err(|_| bad())?;
    let bytes = URL_SAFE_NO_PAD.decode(body).map_err(|_| bad())?;
    serde_json::from_slice(&bytes).map_err(|_| bad())
}

/// An upstream exchange waiting for the client's answers to the requests it made.
struct ParkedExchange {
    ex: Exchange,
    up: usize,
    method: String,
    /// Input key → the upstream's request awaiting the client's answer.
    pending: HashMap<String, Message>,
    /// The log level the original request asked for.
    log_level: Option<String>,
    /// The client capabilities the original request declared.
    caps: Option<Value>,
    since: tokio::time::Instant,
}

/// Upstream exchanges parked between input-required rounds (live work on this replica; the
/// signed `requestState` carries the routing).
#[derive(Default)]
pub struct Parked(Mutex<HashMap<String, ParkedExchange>>);

/// Drops parked exchanges nobody came back for (cancelling them upstream).
pub fn spawn_parked_reaper(ctx: Arc<Context>) {
    let weak = Arc::downgrade(&ctx);
    drop(ctx);
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(30)).await;
            let Some(ctx) = weak.upgrade() else { return };
            ctx.parked
                .0
                .lock()
                .expect("lock")
                .retain(|_, p| p.since.elapsed() < PARK_TTL);
        }
    });
}

const LOG_LEVELS: &[&str] = &[
    "debug",
    "info",
    "notice",
    "warning",
    "error",
    "critical",
    "alert",
    "emergency",
];

/// Whether a message from a bridged legacy upstream may reach a modern client whose request
/// asked for log messages at `level` (none when absent): everything but log messages, and log
/// messages at or above that level.
fn log_allowed(m: &Message, level: Option<&str>) -> bool {
    if jsonrpc::method(m) != Some("notifications/message") {
        return true;
    }
    let rank = |l: &str| LOG_LEVELS.iter().position(|x| *x == l);
    let Some(wanted) = level.and_then(rank) else {
        return false;
    };
    let got = m["params"]["level"]
        .as_str()
        .and_then(rank)
        .unwrap_or(LOG_LEVELS.len());
    got >= wanted
}

/// The client capability a server-to-client request needs.
fn needed_capability(method: &str) -> Option<&'static str> {
    match method {
        "sampling/createMessage" => Some("sampling"),
        "elicitation/create" => Some("elicitation"),
        "roots/list" => Some("roots"),
        _ => None,
    }
}

/// A bridged legacy upstream asked the client for something the client did not declare it
/// can do (say `roots/list` from a client without `roots`): answered on the client's behalf
/// with "method not found", as such a client would, instead of turning it into an
/// input-required round the client cannot complete. True when declined.
async fn decline(ex: &Exchange, caps: Option<&Value>, m: &Message) -> bool {
    if jsonrpc::kind(m) != Kind::Request {
        return false;
    }
    let (Some(caps), Some(method)) = (caps, jsonrpc::method(m)) else {
        return false;
    };
    let Some(cap) = needed_capability(method) else {
        return false;
    };
    if caps.get(cap).is_some() {
        return false;
    }
    let answer = jsonrpc::error(
        m.get("id").cloned().unwrap_or(Value::Null),
        code::METHOD_NOT_FOUND,
        format!("the client did not declare the `{cap}` capability"),
        None,
    );
    let _ = ex.connection().send(answer).await;
    true
}

fn removed_error(id: Value, method: &str) -> Message {
    jsonrpc::error(
        id,
        code::METHOD_NOT_FOUND,
        format!("Method not found: `{method}` is not part of MCP 2026-07-28"),
        None,
    )
}

impl Binding {
    /// The replica holding the exchange a retry's `requestState` names, when that is another
    /// replica (so the retry is forwarded there).
    pub async fn parked_elsewhere(&self, msg: &Message) -> Option<String> {
        let s = jsonrpc::params(msg)?.get("requestState")?.as_str()?;
        let st = open(&self.ctx, s).await.ok()?;
        let key = st.p?;
        let node = st.n?;
        (node != self.ctx.node_id && !self.ctx.parked.0.lock().expect("lock").contains_key(&key))
            .then_some(node)
    }

    /// Answers one 2026-07-28 request (already validated against its headers). `extra` holds
    /// the client's `Mcp-Param-*` headers, forwarded to upstreams that speak the revision.
    pub async fn modern_request(
        self: &Arc<Self>,
        mut msg: Message,
        extra: Vec<(String, String)>,
    ) -> Reply {
        let id = msg.get("id").cloned().unwrap_or(Value::Null);
        let method = jsonrpc::method(&msg).unwrap_or_default().to_owned();
        if REMOVED.contains(&method.as_str()) {
            return Reply::Json(removed_error(id, &method));
        }
        if method == "server/discover" {
            return Reply::Json(jsonrpc::result(id, self.discover().await));
        }
        if method == "subscriptions/listen" {
            return self.listen(id, msg).await;
        }
        // A retry answering an input-required result carries mcpg's requestState.
        let state = match jsonrpc::params(&msg)
            .and_then(|p| p.get("requestState"))
            .and_then(Value::as_str)
        {
            Some(s) => match open(&self.ctx, s).await {
                Ok(st) => Some(st),
                Err(e) => return Reply::Json(e.to_message(id)),
            },
            None => None,
        };
        let route = match self.naming.route(&mut msg) {
            Ok(r) => r,
            Err(e) => return Reply::Json(e.to_message(id)),
        };
        let up = match route {
            Route::Local => return Reply::Json(removed_error(id, &method)),
            Route::All if names::list_key(&method).is_some() => {
                return Reply::Json(match self.merged_list(Via::Modern, &method, &msg).await {
                    Ok(mut r) => {
                        meta::complete(&mut r);
                        meta::cache_hints(&mut r);
                        jsonrpc::result(id, r)
                    }
                    Err(e) => e.to_message(id),
                });
            }
            Route::All => return Reply::Json(removed_error(id, &method)),
            Route::One(up) => up,
            Route::Search { list, name } => match self.search(Via::Modern, list, &name).await {
                Some(up) => up,
                None => {
                    return Reply::Json(
                        RpcError::invalid_params(format!("no upstream offers `{name}`"))
                            .to_message(id),
                    );
                }
            },
        };
        if self.fail_closed()
            && let Err(e) = self.all_up(Via::Modern).await
        {
            return Reply::Json(e.to_message(id));
        }
        if let Some(st) = state {
            if st.u != self.upstreams[up].name {
                return Reply::Json(
                    RpcError::invalid_params("requestState belongs to another upstream")
                        .to_message(id),
                );
            }
            if let Some(key) = st.p {
                let responses = jsonrpc::params(&msg)
                    .and_then(|p| p.get("inputResponses"))
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default();
                return self.resume(id, key, responses).await;
            }
            let p = jsonrpc::params_mut(&mut msg);
            match st.s {
                Some(inner) => p.insert("requestState".into(), json!(inner)),
                None => p.remove("requestState"),
            };
        }
        let handle = match self.upstreams[up].modern().await {
            Ok(h) => h,
            Err(e) => return Reply::Json(e.to_message(id)),
        };
        // A legacy upstream logs whatever its session level allows; the client asked for
        // log messages of this request at this level or above, or for none.
        // What the client declared it can answer (a bridged upstream's server request it
        // cannot answer is declined on its behalf).
        let caps = meta::of(&msg)
            .and_then(|m| m.get(meta::CLIENT_CAPABILITIES))
            .cloned();
        let log_level = meta::of(&msg)
            .and_then(|m| m.get(meta::LOG_LEVEL))
            .and_then(Value::as_str)
            .map(str::to_owned);
        if !handle.native {
            // The bridging session speaks a legacy revision; the per-request fields of
            // 2026-07-28 would contradict its MCP-Protocol-Version (a dual-era upstream rejects
            // that with -32020). The session's own `initialize` stands for them.
            meta::strip_request_fields(&mut msg);
        }
        let deadline = tokio::time::Instant::now() + self.upstreams[up].timeout;
        let sent = tokio::time::timeout_at(deadline, handle.conn.request_with(msg, &extra)).await;
        let mut ex = match sent {
            Ok(Ok(ex)) => ex,
            Ok(Err(e)) => return Reply::Json(e.to_rpc().to_message(id)),
            Err(_) => return Reply::Json(timeout_error(id, &self.upstreams[up].name)),
        };
        // Closing the client's stream cancels: an upstream on stdio or a bridged legacy
        // session is told; an HTTP upstream sees its own stream closed.
        if !handle.native || handle.conn.cancels_by_notification() {
            ex.cancel_on_drop();
        }
        self.relay_modern(ex, up, id, method, handle.native, log_level, caps)
            .await
    }

    /// Relays an exchange to a modern client: notifications on the response stream, the
    /// response last. From a bridged legacy upstream, a server request ends the response
    /// with an input-required result and parks the exchange for the retry.
    #[allow(clippy::too_many_arguments)]
    async fn relay_modern(
        self: &Arc<Self>,
        mut ex: Exchange,
        up: usize,
        id: Value,
        method: String,
        native: bool,
        log_level: Option<String>,
        caps: Option<Value>,
    ) -> Reply {
        let deadline = tokio::time::Instant::now() + self.upstreams[up].timeout;
        let level = log_level.clone();
        let shown = move |m: &Message| native || log_allowed(m, level.as_deref());
        let first = loop {
            let m = tokio::select! {
                m = ex.next() => m,
                _ = tokio::time::sleep_until(deadline) => None,
            };
            match m {
                Some(m) if !shown(&m) => continue,
                Some(m) if !native && decline(&ex, caps.as_ref(), &m).await => continue,
                other => break other,
            }
        };
        let Some(first) = first else {
            // Timed out or closed; dropping the exchange cancels it upstream.
            return Reply::Json(if tokio::time::Instant::now() >= deadline {
                timeout_error(id, &self.upstreams[up].name)
            } else {
                closed_error(id, &self.upstreams[up].name)
            });
        };
        if jsonrpc::kind(&first) != Kind::Notification {
            return Reply::Json(
                self.modern_out(ex, up, id, &method, native, log_level, caps, first)
                    .await,
            );
        }
        let (tx, rx) = mpsc::channel(64);
        let me = self.clone();
        tokio::spawn(async move {
            let mut next = Some(first);
            loop {
                let m = match next.take() {
                    Some(m) => m,
                    None => tokio::select! {
                        m = ex.next() => match m {
                            Some(m) => m,
                            None => break,
                        },
                        _ = tokio::time::sleep_until(deadline) => break,
                        // The client closed its stream: dropping the exchange cancels it.
                        _ = tx.closed() => return,
                    },
                };
                if !native && decline(&ex, caps.as_ref(), &m).await {
                    continue;
                }
                if jsonrpc::kind(&m) == Kind::Notification {
                    if !shown(&m) {
                        continue;
                    }
                    let mut m = m;
                    me.naming.notification_out(up, &mut m);
                    if tx.send(m).await.is_err() {
                        return;
                    }
                    continue;
                }
                let out = me
                    .modern_out(ex, up, id, &method, native, log_level, caps, m)
                    .await;
                let _ = tx.send(out).await;
                return;
            }
            let out = if tokio::time::Instant::now() >= deadline {
                timeout_error(id, &me.upstreams[up].name)
            } else {
                closed_error(id, &me.upstreams[up].name)
            };
            let _ = tx.send(out).await;
        });
        Reply::Stream(rx)
    }

    /// The message that ends a modern response: the upstream's response in 2026-07-28
    /// shape, or (bridged) an input-required result for the server request that arrived.
    #[allow(clippy::too_many_arguments)]
    async fn modern_out(
        &self,
        ex: Exchange,
        up: usize,
        id: Value,
        method: &str,
        native: bool,
        log_level: Option<String>,
        caps: Option<Value>,
        m: Message,
    ) -> Message {
        match jsonrpc::kind(&m) {
            Kind::Request if !native => {
                match self.park(ex, up, method, log_level, caps, vec![m]).await {
                    Ok(r) => jsonrpc::result(id, r),
                    Err(e) => e.to_message(id),
                }
            }
            Kind::Request => {
                // A modern upstream must not send requests; there is nobody to answer it.
                jsonrpc::error(
                    id,
                    code::INTERNAL_ERROR,
                    format!(
                        "upstream `{}` sent a request on a 2026-07-28 stream",
                        self.upstreams[up].name
                    ),
                    None,
                )
            }
            _ => {
                let mut out = self.response_out(method, up, id.clone(), m);
                if !native
                    && let Some(e) = out.get_mut("error")
                    && e["code"] == code::RESOURCE_NOT_FOUND
                {
                    // 2026-07-28 retired -32002 for a missing resource in favour of -32602.
                    e["code"] = json!(code::INVALID_PARAMS);
                }
                if let Some(r) = out.get_mut("result") {
                    if !native {
                        meta::complete(r);
                        if meta::cacheable(method) {
                            meta::cache_hints(r);
                        }
                    }
                    if r["resultType"] == "input_required" {
                        let inner = r["requestState"].as_str().map(str::to_owned);
                        let st = State {
                            v: 1,
                            u: self.upstreams[up].name.clone(),
                            s: inner,
                            p: None,
                            n: None,
                        };
                        match seal(&self.ctx, &st).await {
                            Ok(sealed) => r["requestState"] = json!(sealed),
                            Err(e) => return e.to_message(id),
                        }
                    }
                    if r["resultType"] == "task"
                        && self.naming.prefix
                        && let Some(t) = r["taskId"].as_str()
                    {
                        r["taskId"] =
                            json!(format!("{}{}{t}", self.upstreams[up].name, self.naming.sep));
                    }
                }
                out
            }
        }
    }

    /// Parks a bridged exchange whose legacy upstream asked the client something, and
    /// returns the input-required result that asks the modern client instead.
    async fn park(
        &self,
        ex: Exchange,
        up: usize,
        method: &str,
        log_level: Option<String>,
        caps: Option<Value>,
        requests: Vec<Message>,
    ) -> Result<Value, RpcError> {
        if self.ctx.parked.0.lock().expect("lock").len() >= MAX_PARKED {
            return Err(RpcError::new(
                code::INTERNAL_ERROR,
                "too many input-required exchanges are waiting for their clients; try again later",
            ));
        }
        ex.set_unattributable();
        let key = uuid::Uuid::new_v4().simple().to_string();
        let mut inputs = Map::new();
        let mut pending = HashMap::new();
        for (i, request) in requests.into_iter().enumerate() {
            let input_key = format!("mcpg-{i}");
            let mut embedded = Map::new();
            embedded.insert(
                "method".into(),
                request.get("method").cloned().unwrap_or(Value::Null),
            );
            if let Some(p) = request.get("params") {
                embedded.insert("params".into(), p.clone());
            }
            inputs.insert(input_key.clone(), Value::Object(embedded));
            pending.insert(input_key, request);
        }
        let state = seal(
            &self.ctx,
            &State {
                v: 1,
                u: self.upstreams[up].name.clone(),
                s: None,
                p: Some(key.clone()),
                n: Some(self.ctx.node_id.clone()),
            },
        )
        .await?;
        self.ctx.parked.0.lock().expect("lock").insert(
            key,
            ParkedExchange {
                ex,
                up,
                method: method.to_owned(),
                pending,
                log_level,
                caps,
                since: tokio::time::Instant::now(),
            },
        );
        Ok(json!({
            "resultType": "input_required",
            "inputRequests": inputs,
            "requestState": state,
        }))
    }

    /// A retry answering a bridged input-required result: the answers go to the upstream as
    /// responses to its requests, and the exchange carries on under the retry's id.
    async fn resume(
        self: &Arc<Self>,
        id: Value,
        key: String,
        responses: Map<String, Value>,
    ) -> Reply {
        let parked = self.ctx.parked.0.lock().expect("lock").remove(&key);
        let Some(mut p) = parked else {
            return Reply::Json(
                RpcError::invalid_params(
                    "requestState refers to an exchange that ended or expired; send the request again without it",
                )
                .to_message(id),
            );
        };
        for (k, v) in responses {
            if let Some(request) = p.pending.remove(&k) {
                let answer = jsonrpc::result(request.get("id").cloned().unwrap_or(Value::Null), v);
                if let Err(e) = p.ex.connection().send(answer).await {
                    return Reply::Json(e.to_rpc().to_message(id));
                }
            }
        }
        if !p.pending.is_empty() {
            // Not every question was answered: ask again for the rest.
            let ParkedExchange {
                ex,
                up,
                method,
                pending,
                log_level,
                caps,
                ..
            } = p;
            let requests = pending.into_values().collect();
            return Reply::Json(
                match self.park(ex, up, &method, log_level, caps, requests).await {
                    Ok(r) => jsonrpc::result(id, r),
                    Err(e) => e.to_message(id),
                },
            );
        }
        self.relay_modern(p.ex, p.up, id, p.method, false, p.log_level, p.caps)
            .await
    }

    /// `server/discover` for the binding: the upstreams' capabilities (their own discovery
    /// result, or the `initialize` result of the session bridging a legacy upstream).
    pub async fn discover(&self) -> Value {
        let mut answers = Vec::new();
        for (i, u) in self.upstreams.iter().enumerate() {
            match u.modern().await {
                Ok(h) => answers.push((i, (*h.info).clone())),
                Err(e) => {
                    tracing::warn!(binding = %self.name, upstream = %u.name, error = %e, "server/discover: upstream left out");
                }
            }
        }
        let mut caps = Map::new();
        let mut instructions = Vec::new();
        let mut server_info = json!({"name": self.name, "version": env!("CARGO_PKG_VERSION")});
        for (i, a) in &answers {
            if let Some(c) = a["capabilities"].as_object() {
                let mut c = c.clone();
                // The legacy tasks capability has no place in 2026-07-28.
                c.remove("tasks");
                merge_capabilities(&mut caps, &c);
            }
            if let Some(s) = a["instructions"].as_str() {
                instructions.push(if self.single_passthrough() {
                    s.to_owned()
                } else {
                    format!("{}: {s}", self.upstreams[*i].name)
                });
            }
            if self.single_passthrough() {
                let info = a["_meta"][meta::SERVER_INFO].clone();
                let info = if info.is_null() {
                    a["serverInfo"].clone()
                } else {
                    info
                };
                if !info.is_null() {
                    server_info = info;
                }
            }
        }
        let mut r = json!({
            "resultType": "complete",
            "supportedVersions": version::all(),
            "capabilities": caps,
            "_meta": {meta::SERVER_INFO: server_info},
            "ttlMs": 0,
            "cacheScope": "private",
        });
        if !instructions.is_empty() {
            r["instructions"] = json!(instructions.join("\n\n"));
        }
        r
    }
}

/// The notification a `subscriptions/listen` filter field asks for, for the boolean fields.
const LIST_FILTERS: &[(&str, &str, &str)] = &[
    (
        "toolsListChanged",
        "notifications/tools/list_changed",
        "tools",
    ),
    (
        "promptsListChanged",
        "notifications/prompts/list_changed",
        "prompts",
    ),
    (
        "resourcesListChanged",
        "notifications/resources/list_changed",
        "resources",
    ),
];

impl Binding {
    /// `subscriptions/listen`: one client subscription fanned out to every upstream it
    /// concerns (a listen of their own on upstreams that speak 2026-07-28; the bridging
    /// session's notifications, with `resources/subscribe` for the URIs, on legacy ones),
    /// acknowledged with what the upstreams together honor, and merged into one stream whose
    /// notifications carry the client's subscription id.
    pub(crate) async fn listen(self: &Arc<Self>, id: Value, msg: Message) -> Reply {
        let Some(filter) = jsonrpc::params(&msg)
            .and_then(|p| p.get("notifications"))
            .and_then(Value::as_object)
            .cloned()
        else {
            return Reply::Json(
                RpcError::invalid_params("`params.notifications` (a filter object) is required")
                    .to_message(id),
            );
        };
        let client_meta = jsonrpc::params(&msg).and_then(|p| p.get("_meta")).cloned();
        let mut honored = Map::new();
        let mut sources: Vec<futures::stream::BoxStream<'static, Message>> = Vec::new();
        for up in 0..self.upstreams.len() {
            let sub = self.sub_filter(&filter, up);
            if sub.is_empty() {
                continue;
            }
            let handle = match self.upstreams[up].modern().await {
                Ok(h) => h,
                Err(e) if !self.fail_closed() => {
                    tracing::warn!(binding = %self.name, upstream = %self.upstreams[up].name, error = %e, "subscriptions/listen: upstream left out");
                    continue;
                }
                Err(e) => return Reply::Json(e.to_message(id)),
            };
            if handle.native {
                let mut params = json!({"notifications": sub});
                if let Some(m) = &client_meta {
                    params["_meta"] = m.clone();
                }
                let req = jsonrpc::request(json!(0), "subscriptions/listen", Some(params));
                let mut ex = match handle.conn.request(req).await {
                    Ok(ex) => ex,
                    Err(e) => return Reply::Json(e.to_rpc().to_message(id)),
                };
                ex.cancel_on_drop();
                ex.set_unattributable();
                // The first message is the upstream's acknowledgement.
                match tokio::time::timeout(Duration::from_secs(10), ex.next()).await {
                    Ok(Some(ack))
                        if jsonrpc::method(&ack)
                            == Some("notifications/subscriptions/acknowledged") =>
                    {
                        if let Some(h) = ack["params"]["notifications"].as_object() {
                            self.merge_honored(&mut honored, up, h);
                        }
                    }
                    other => {
                        let shown = format!("{other:?}");
                        tracing::warn!(binding = %self.name, upstream = %self.upstreams[up].name, answer = %shown, "subscriptions/listen: no acknowledgement; upstream left out");
                        continue;
                    }
                }
                let (tx, rx) = mpsc::unbounded_channel::<Message>();
                tokio::spawn(async move {
                    loop {
                        let m = tokio::select! {
                            m = ex.next() => m,
                            // The merged stream is gone (the client left): dropping the
                            // exchange ends the upstream listen.
                            _ = tx.closed() => break,
                        };
                        match m {
                            Some(m) if jsonrpc::kind(&m) == Kind::Notification => {
                                if tx.send(m).is_err() {
                                    break;
                                }
                            }
                            _ => break,
                        }
                    }
                });
                sources.push(tokio_stream::wrappers::UnboundedReceiverStream::new(rx).boxed());
            } else {
                let caps = &handle.info["capabilities"];
                let mut h = Map::new();
                for (field, _, cap) in LIST_FILTERS {
                    if sub.get(*field) == Some(&json!(true)) && caps[*cap]["listChanged"] == true {
                        h.insert((*field).into(), json!(true));
                    }
                }
                let mut uris = Vec::new();
                if caps["resources"]["subscribe"] == true
                    && let Some(list) = sub.get("resourceSubscriptions").and_then(Value::as_array)
                {
                    for uri in list.iter().filter_map(Value::as_str) {
                        // The bridging session is shared by every modern client, so it stays
                        // subscribed; mcpg filters what each client asked for.
                        let call = handle
                            .conn
                            .call("resources/subscribe", Some(json!({"uri": uri})));
                        if tokio::time::timeout(self.upstreams[up].timeout, call)
                            .await
                            .is_ok_and(|r| r.is_ok())
                        {
                            uris.push(uri.to_owned());
                        }
                    }
                    h.insert("resourceSubscriptions".into(), json!(uris));
                }
                self.merge_honored(&mut honored, up, &h);
                let wanted: Vec<&str> = LIST_FILTERS
                    .iter()
                    .filter(|(f, _, _)| h.get(*f) == Some(&json!(true)))
                    .map(|(_, method, _)| *method)
                    .collect::<Vec<_>>();
                let wanted: Vec<String> = wanted.into_iter().map(str::to_owned).collect();
                let rx = handle.conn.unsolicited();
                let stream =
                    tokio_stream::wrappers::BroadcastStream::new(rx).filter_map(move |m| {
                        let keep = match &m {
                            Ok(m) => match jsonrpc::method(m) {
                                Some("notifications/resources/updated") => {
                                    m["params"]["uri"].as_str().is_some_and(|u| {
                                        uris.iter().any(|s| u.starts_with(s.as_str()))
                                    })
                                }
                                Some(x) => wanted.iter().any(|w| w == x),
                                None => false,
                            },
                            Err(_) => false,
                        };
                        futures::future::ready(if keep { m.ok() } else { None })
                    });
                sources.push(stream.boxed());
            }
            // Which upstream each source belongs to, for prefixing.
            let n = sources.len() - 1;
            let me = self.clone();
            let s = std::mem::replace(&mut sources[n], futures::stream::empty().boxed());
            sources[n] = s
                .map(move |mut m| {
                    me.naming.notification_out(up, &mut m);
                    m
                })
                .boxed();
        }
        let ack = jsonrpc::notification(
            "notifications/subscriptions/acknowledged",
            Some(json!({"_meta": {meta::SUBSCRIPTION_ID: id}, "notifications": honored})),
        );
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(async move {
            if tx.send(ack).await.is_err() {
                return;
            }
            let mut all = futures::stream::select_all(sources);
            loop {
                let m = tokio::select! {
                    m = all.next() => m,
                    // The client closed its stream: dropping the sources ends the upstream
                    // listens.
                    _ = tx.closed() => return,
                };
                let Some(mut m) = m else { return };
                let params = jsonrpc::params_mut(&mut m);
                let meta = params
                    .entry("_meta")
                    .or_insert_with(|| Value::Object(Map::new()));
                if let Some(meta) = meta.as_object_mut() {
                    meta.insert(meta::SUBSCRIPTION_ID.into(), id.clone());
                }
                if tx.send(m).await.is_err() {
                    return;
                }
            }
        });
        Reply::Stream(rx)
    }

    /// The part of a client's filter that concerns upstream `up` (names unprefixed).
    fn sub_filter(&self, filter: &Map<String, Value>, up: usize) -> Map<String, Value> {
        let mut sub = Map::new();
        for (field, _, _) in LIST_FILTERS {
            if filter.get(*field) == Some(&json!(true)) {
                sub.insert((*field).into(), json!(true));
            }
        }
        let pick = |key: &str, by_uri: bool| -> Vec<Value> {
            filter
                .get(key)
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .filter_map(|v| {
                    if !self.naming.prefix {
                        return Some(v.to_owned());
                    }
                    let r = if by_uri {
                        self.naming.uri_in(v)
                    } else {
                        self.naming.name_in(v)
                    };
                    r.filter(|(u, _)| *u == up).map(|(_, rest)| rest)
                })
                .map(Value::String)
                .collect()
        };
        let uris = pick("resourceSubscriptions", true);
        if !uris.is_empty() {
            sub.insert("resourceSubscriptions".into(), Value::Array(uris));
        }
        let tasks = pick("taskIds", false);
        if !tasks.is_empty() {
            sub.insert("taskIds".into(), Value::Array(tasks));
        }
        sub
    }

    /// Adds what one upstream honored to the acknowledgement (names prefixed back).
    fn merge_honored(&self, into: &mut Map<String, Value>, up: usize, h: &Map<String, Value>) {
        for (k, v) in h {
            match v {
                Value::Bool(true) => {
                    into.insert(k.clone(), json!(true));
                }
                Value::Array(items) => {
                    let list = into
                        .entry(k.clone())
                        .or_insert_with(|| Value::Array(Vec::new()));
                    if let Some(list) = list.as_array_mut() {
                        for i in items.iter().filter_map(Value::as_str) {
                            let name = match (self.naming.prefix, k.as_str()) {
                                (false, _) => i.to_owned(),
                                (true, "resourceSubscriptions") => {
                                    format!("{}+{i}", self.upstreams[up].name)
                                }
                                (true, _) => {
                                    format!("{}{}{i}", self.upstreams[up].name, self.naming.sep)
                                }
                            };
                            list.push(json!(name));
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

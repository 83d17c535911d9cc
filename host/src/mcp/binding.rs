//! One binding: several upstreams served as one MCP server. Routes each client request to
//! its upstream (or to all of them, merging list results page by page), relays what the
//! upstream sends back for it (progress, log messages, server requests, the response), and
//! relays server-to-client requests through the `pipelines` capability so the client's answer
//! finds the upstream that asked.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::sync::{mpsc, oneshot};

use crate::capabilities::Capabilities;
use crate::config::model::{BindingConfig, FailurePolicy, PrefixMode};
use crate::mcp::relay::{Inflight, Reply};
use crate::mcp::route::names::{self, MergedCursor, Naming, Route};
use crate::mcp::session::Live;
use crate::mcp::upstream::{Exchange, Upstream};
use crate::mcp::wire::jsonrpc::{self, Kind, Message, RpcError, code};
use crate::mcp::wire::version;

/// How long a relayed server-to-client request waits for the client's answer.
const CLIENT_ANSWER_TTL: Duration = Duration::from_secs(600);

/// Where a request's upstream conversations come from: the client's legacy session, or the
/// shared conversations that serve modern-era clients.
#[derive(Clone, Copy)]
pub enum Via<'a> {
    Session(&'a Arc<Live>),
    Modern,
}

impl Via<'_> {
    /// Makes params mcpg sends on its own (list pages, searches, broadcasts) fit the
    /// conversation: stamped with `_meta` where the conversation speaks 2026-07-28.
    pub async fn prepare(&self, b: &Binding, up: usize, params: &mut Map<String, Value>) {
        match self {
            Via::Session(live) if live.is_modern(up).await => {
                crate::mcp::bridge::legacy_to_modern::stamp_params(params, live);
            }
            Via::Modern => match b.upstreams[up].modern().await {
                Ok(h) if h.native => crate::mcp::bridge::legacy_to_modern::stamp_gateway(params),
                // A bridging legacy session: see `meta::strip_request_fields`.
                Ok(_) => crate::mcp::wire::meta::strip_params_fields(params),
                Err(_) => {}
            },
            _ => {}
        }
    }

    pub async fn conn(
        &self,
        b: &Binding,
        up: usize,
    ) -> Result<crate::mcp::upstream::Connection, RpcError> {
        match self {
            Via::Session(live) => live.conn(up).await,
            Via::Modern => Ok(b.upstreams[up].modern().await?.conn),
        }
    }
}

/// Everything bindings share on this replica.
pub struct Context {
    /// This replica's node id (named in the `requestState` of exchanges parked here).
    pub node_id: String,
    pub caps: Capabilities,
    pub inflight: Inflight,
    /// Upstream exchanges waiting for a modern client's input-required retry.
    pub parked: crate::mcp::bridge::modern_to_legacy::Parked,
    /// The key that signs the `requestState` mcpg hands to modern clients.
    pub state_key: crate::mcp::bridge::modern_to_legacy::StateKey,
    /// Bounds of each session's GET-stream event log.
    pub log_max_events: u64,
    pub log_max_age: Duration,
}

/// A server-to-client request awaiting the client's answer, kept in the `pipelines` store.
#[derive(Debug, Serialize, Deserialize)]
struct PendingClientRequest {
    format: u32,
    /// The upstream by name (indices differ between configurations).
    upstream: String,
    upstream_id: Value,
}

pub struct Binding {
    pub name: String,
    pub path: String,
    pub naming: Naming,
    pub upstreams: Vec<Arc<Upstream>>,
    policy: FailurePolicy,
    pub(crate) ctx: Arc<Context>,
    /// Who may call this binding and what each caller may use.
    pub access: crate::mcp::access::Access,
}

impl Binding {
    pub fn new(
        cfg: &BindingConfig,
        base_dir: &std::path::Path,
        default_timeout: Duration,
        ctx: Arc<Context>,
    ) -> anyhow::Result<Arc<Self>> {
        let prefix = match cfg.prefix {
            PrefixMode::Auto => cfg.upstreams.len() > 1,
            PrefixMode::Always => true,
            PrefixMode::Never => false,
        };
        Ok(Arc::new(Self {
            access: crate::mcp::access::Access::new(cfg)?,
            name: cfg.name.clone(),
            path: cfg.path.clone(),
            naming: Naming {
                prefix,
                sep: cfg.separator.clone(),
                upstreams: cfg.upstreams.iter().map(|u| u.name.clone()).collect(),
            },
            upstreams: cfg
                .upstreams
                .iter()
                .map(|u| Upstream::new(&cfg.name, u, base_dir, default_timeout))
                .collect(),
            policy: cfg.on_upstream_failure,
            ctx,
        }))
    }

    /// Whether an upstream of this binding sees some of the client's headers.
    pub fn passes_headers(&self) -> bool {
        self.upstreams.iter().any(|u| u.passes_headers())
    }

    pub fn fail_closed(&self) -> bool {
        self.policy == FailurePolicy::FailClosed
    }

    pub(crate) fn single_passthrough(&self) -> bool {
        self.upstreams.len() == 1 && !self.naming.prefix
    }

    /// The `initialize` result the client sees: the upstream's own when it is the only one
    /// and unprefixed; otherwise the union of the upstreams' capabilities under the
    /// binding's name. The protocol version is the oldest any side agreed to.
    pub fn merge_initialize(&self, negotiated: &str, answers: &[(usize, Value)]) -> Value {
        let mut agreed = negotiated.to_owned();
        for (_, a) in answers {
            if let Some(v) = a["protocolVersion"].as_str()
                && version::is_legacy(v)
            {
                agreed = version::older(&agreed, v).to_owned();
            }
        }
        let mut result = if self.single_passthrough() && answers.len() == 1 {
            answers[0].1.clone()
        } else {
            let mut caps = Map::new();
            let mut instructions = Vec::new();
            for (i, a) in answers {
                if let Some(c) = a["capabilities"].as_object() {
                    merge_capabilities(&mut caps, c);
                }
                if let Some(s) = a["instructions"].as_str() {
                    instructions.push(format!("{}: {s}", self.upstreams[*i].name));
                }
            }
            let mut r = json!({
                "capabilities": caps,
                "serverInfo": {"name": self.name, "version": env!("CARGO_PKG_VERSION")},
            });
            if !instructions.is_empty() {
                r["instructions"] = json!(instructions.join("\n\n"));
            }
            r
        };
        result["protocolVersion"] = json!(agreed);
        result
    }

    /// Answers one client request within a session.
    pub async fn request(self: &Arc<Self>, live: &Arc<Live>, mut msg: Message) -> Reply {
        let id = msg.get("id").cloned().unwrap_or(Value::Null);
        let method = jsonrpc::method(&msg).unwrap_or_default().to_owned();
        let route = match self.naming.route(&mut msg) {
            Ok(r) => r,
            Err(e) => return Reply::Json(e.to_message(id)),
        };
        let up = match route {
            Route::Local => return Reply::Json(jsonrpc::result(id, json!({}))),
            Route::All if names::list_key(&method).is_some() => {
                return Reply::Json(
                    match self.merged_list(Via::Session(live), &method, &msg).await {
                        Ok(r) => jsonrpc::result(id, r),
                        Err(e) => e.to_message(id),
                    },
                );
            }
            Route::All => return Reply::Json(self.broadcast(live, id, msg).await),
            Route::One(up) => up,
            Route::Search { list, name } => {
                match self.search(Via::Session(live), list, &name).await {
                    Some(up) => up,
                    None => {
                        return Reply::Json(
                            RpcError::invalid_params(format!("no upstream offers `{name}`"))
                                .to_message(id),
                        );
                    }
                }
            }
        };
        self.forward(live, up, id, method, msg).await
    }

    /// Sends a request to one upstream and relays what comes back.
    async fn forward(
        self: &Arc<Self>,
        live: &Arc<Live>,
        up: usize,
        id: Value,
        method: String,
        msg: Message,
    ) -> Reply {
        if self.fail_closed()
            && let Err(e) = self.all_up(Via::Session(live)).await
        {
            return Reply::Json(e.to_message(id));
        }
        let (conn, modern) = match live.conn_and_era(up).await {
            Ok(c) => c,
            Err(e) => return Reply::Json(e.to_message(id)),
        };
        if modern {
            return self.forward_stamped(live, up, conn, id, method, msg).await;
        }
        // The deadline covers sending too: a JSON answer arrives while the request is sent.
        let deadline = tokio::time::Instant::now() + self.upstreams[up].timeout;
        let mut ex = match tokio::time::timeout_at(deadline, conn.request(msg)).await {
            Ok(Ok(ex)) => ex,
            Ok(Err(e)) => return Reply::Json(e.to_rpc().to_message(id)),
            Err(_) => return Reply::Json(timeout_error(id, &self.upstreams[up].name)),
        };
        let (guard, mut cancelled) = Inflight::register(&self.ctx, &live.id, &id);
        // Answer with plain JSON when the response is the first thing back; switch to a
        // stream as soon as anything else arrives first.
        let first = tokio::select! {
            m = ex.next() => m,
            _ = tokio::time::sleep_until(deadline) => {
                ex.cancel("request timed out at the gateway").await;
                return Reply::Json(timeout_error(id, &self.upstreams[up].name));
            }
            r = &mut cancelled => {
                ex.cancel(r.as_deref().unwrap_or("cancelled by the client")).await;
                // A cancelled request gets no response: an SSE stream that ends at once.
                return Reply::Stream(mpsc::channel(1).1);
            }
        };
        let Some(first) = first else {
            return Reply::Json(closed_error(id, &self.upstreams[up].name));
        };
        if jsonrpc::kind(&first) == Kind::Response {
            return Reply::Json(self.response_out(&method, up, id, first));
        }
        let (tx, rx) = mpsc::channel(64);
        let me = self.clone();
        let live = live.clone();
        tokio::spawn(async move {
            let _guard = guard;
            me.pump(live, up, id, method, ex, first, deadline, cancelled, tx)
                .await;
        });
        Reply::Stream(rx)
    }

    /// Relays an exchange to the client's response stream until its response. If the client
    /// goes away, what remains is delivered to its GET stream instead (a dropped legacy
    /// stream is not a cancellation).
    #[allow(clippy::too_many_arguments)]
    async fn pump(
        self: Arc<Self>,
        live: Arc<Live>,
        up: usize,
        id: Value,
        method: String,
        mut ex: Exchange,
        first: Message,
        deadline: tokio::time::Instant,
        mut cancelled: oneshot::Receiver<String>,
        tx: mpsc::Sender<Message>,
    ) {
        let mut next = Some(first);
        loop {
            let m = match next.take() {
                Some(m) => m,
                None => tokio::select! {
                    m = ex.next() => match m {
                        Some(m) => m,
                        None => closed_error(id.clone(), &self.upstreams[up].name),
                    },
                    _ = tokio::time::sleep_until(deadline) => {
                        ex.cancel("request timed out at the gateway").await;
                        timeout_error(id.clone(), &self.upstreams[up].name)
                    }
                    r = &mut cancelled => {
                        ex.cancel(r.as_deref().unwrap_or("cancelled by the client")).await;
                        return;
                    }
                },
            };
            let (out, done) = match jsonrpc::kind(&m) {
                Kind::Response => (self.response_out(&method, up, id.clone(), m), true),
                Kind::Notification => {
                    let mut m = m;
                    self.naming.notification_out(up, &mut m);
                    (m, false)
                }
                Kind::Request => match self.to_client_request(&live.id, up, m).await {
                    Ok(m) => (m, false),
                    Err(e) => {
                        tracing::warn!(session = %live.id, error = %e, "cannot relay a server request");
                        continue;
                    }
                },
                Kind::Invalid => continue,
            };
            if let Err(unsent) = tx.send(out).await {
                self.deliver(&live.id, &live.events, &unsent.0).await;
            }
            if done {
                return;
            }
        }
    }

    pub(crate) fn response_out(
        &self,
        method: &str,
        up: usize,
        id: Value,
        mut m: Message,
    ) -> Message {
        m.insert("id".into(), id);
        if let Some(r) = m.get_mut("result") {
            self.naming.result_out(method, up, r);
        }
        m
    }

    /// Every upstream is reachable (for `fail_closed`).
    pub(crate) async fn all_up(&self, via: Via<'_>) -> Result<(), RpcError> {
        for i in 0..self.upstreams.len() {
            via.conn(self, i).await?;
        }
        Ok(())
    }

    /// One page of a list merged across upstreams: the page continues an upstream that has
    /// more, else moves on to the next upstream, so every item is seen exactly once.
    pub(crate) async fn merged_list(
        &self,
        via: Via<'_>,
        method: &str,
        msg: &Message,
    ) -> Result<Value, RpcError> {
        let key = names::list_key(method).expect("a list method");
        let params = jsonrpc::params(msg).cloned().unwrap_or_default();
        let mut pos = match params.get("cursor").and_then(Value::as_str) {
            Some(c) => MergedCursor::decode(c)?,
            None => MergedCursor {
                upstream: 0,
                cursor: None,
            },
        };
        let mut items = Vec::new();
        let mut extra = Map::new();
        while pos.upstream < self.upstreams.len() {
            let up = pos.upstream;
            let mut p = params.clone();
            match &pos.cursor {
                Some(c) => p.insert("cursor".into(), json!(c)),
                None => p.remove("cursor"),
            };
            via.prepare(self, up, &mut p).await;
            let page = match via.conn(self, up).await {
                Ok(conn) => tokio::time::timeout(
                    self.upstreams[up].timeout,
                    conn.call(method, Some(Value::Object(p))),
                )
                .await
                .unwrap_or_else(|_| Err(RpcError::new(code::REQUEST_TIMEOUT, "list timed out"))),
                Err(e) => Err(e),
            };
            let mut page = match page {
                Ok(p) => p,
                // An upstream without this capability simply has nothing to list.
                Err(e) if e.code == code::METHOD_NOT_FOUND => Value::Null,
                Err(e) if !self.fail_closed() => {
                    tracing::warn!(binding = %self.name, upstream = %self.upstreams[up].name, error = %e, "{method}: upstream left out");
                    Value::Null
                }
                Err(e) => {
                    return Err(RpcError::new(
                        e.code,
                        format!("upstream `{}`: {}", self.upstreams[up].name, e.message),
                    ));
                }
            };
            self.naming.result_out(method, up, &mut page);
            if let Some(obj) = page.as_object_mut() {
                if let Some(Value::Array(a)) = obj.remove(key) {
                    items.extend(a);
                }
                let next = obj.remove("nextCursor");
                merge_page_fields(&mut extra, std::mem::take(obj));
                if let Some(Value::String(c)) = next {
                    let cur = MergedCursor {
                        upstream: up,
                        cursor: Some(c),
                    };
                    return Ok(list_result(key, items, extra, Some(cur.encode())));
                }
            }
            pos = MergedCursor {
                upstream: up + 1,
                cursor: None,
            };
        }
        Ok(list_result(key, items, extra, None))
    }

    /// The first upstream whose list has `name` (for unprefixed bindings of several).
    pub(crate) async fn search(&self, via: Via<'_>, list: &str, name: &str) -> Option<usize> {
        let key = names::list_key(list)?;
        let field = if key == "resources" { "uri" } else { "name" };
        for up in 0..self.upstreams.len() {
            let Ok(conn) = via.conn(self, up).await else {
                continue;
            };
            let mut cursor: Option<String> = None;
            loop {
                let mut params = Map::new();
                if let Some(c) = &cursor {
                    params.insert("cursor".into(), json!(c));
                }
                via.prepare(self, up, &mut params).await;
                let call = conn.call(list, Some(Value::Object(params)));
                let Ok(Ok(page)) = tokio::time::timeout(self.upstreams[up].timeout, call).await
                else {
                    break;
                };
                if page[key]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|i| i[field] == name))
                {
                    return Some(up);
                }
                match page["nextCursor"].as_str() {
                    Some(c) => cursor = Some(c.to_owned()),
                    None => break,
                }
            }
        }
        None
    }

    /// A request every upstream gets (`logging/setLevel`); answered once all have.
    async fn broadcast(&self, live: &Live, id: Value, msg: Message) -> Message {
        let method = jsonrpc::method(&msg).unwrap_or_default().to_owned();
        let params = msg.get("params").cloned();
        for up in 0..self.upstreams.len() {
            if method == "logging/setLevel" && live.is_modern(up).await {
                // 2026-07-28 has no setLevel: the level is stamped on the session's requests.
                *live.log_level.lock().expect("lock") =
                    params.as_ref().and_then(|p| p.get("level")).cloned();
                live.mark_dirty();
                continue;
            }
            let r = match live.conn(up).await {
                Ok(conn) => tokio::time::timeout(
                    self.upstreams[up].timeout,
                    conn.call(&method, params.clone()),
                )
                .await
                .unwrap_or_else(|_| Err(RpcError::new(code::REQUEST_TIMEOUT, "timed out"))),
                Err(e) => Err(e),
            };
            if let Err(e) = r
                && (self.fail_closed() || self.upstreams.len() == 1)
            {
                return e.to_message(id);
            }
        }
        jsonrpc::result(id, json!({}))
    }

    /// Turns an upstream's request into one for the client: a fresh id, remembered in the
    /// `pipelines` store with the upstream and its own id.
    pub async fn to_client_request(
        &self,
        sid: &str,
        up: usize,
        mut m: Message,
    ) -> Result<Message, RpcError> {
        let upstream_id = m.get("id").cloned().unwrap_or(Value::Null);
        let gid = format!("mcpg-{}", uuid::Uuid::new_v4().simple());
        let rec = PendingClientRequest {
            format: 1,
            upstream: self.upstreams[up].name.clone(),
            upstream_id,
        };
        self.ctx
            .caps
            .pipelines
            .store
            .put(
                &format!("req/{sid}/{gid}"),
                serde_json::to_vec(&rec).expect("serialisable"),
                Some(CLIENT_ANSWER_TTL),
            )
            .await
            .map_err(|e| RpcError::new(code::INTERNAL_ERROR, e.to_string()))?;
        m.insert("id".into(), json!(gid));
        Ok(m)
    }

    /// The client answered a server-to-client request: hand the answer to the upstream that
    /// asked, under its own id.
    pub async fn client_response(&self, live: &Arc<Live>, mut m: Message) {
        let Some(gid) = m.get("id").and_then(Value::as_str).map(str::to_owned) else {
            return;
        };
        let waiter = live.waiters.lock().expect("lock").remove(&gid);
        if let Some(w) = waiter {
            let _ = w.send(m);
            return;
        }
        let key = format!("req/{}/{gid}", live.id);
        let store = &self.ctx.caps.pipelines.store;
        let Ok(Some(entry)) = store.get(&key).await else {
            tracing::debug!(session = %live.id, id = %gid, "answer to an unknown server request; dropped");
            return;
        };
        let _ = store.delete(&key, None).await;
        let Ok(rec) = serde_json::from_slice::<PendingClientRequest>(&entry.value) else {
            return;
        };
        m.insert("id".into(), rec.upstream_id);
        let Some(up) = self.upstreams.iter().position(|u| u.name == rec.upstream) else {
            return;
        };
        if let Ok(conn) = live.conn(up).await
            && let Err(e) = conn.send(m).await
        {
            tracing::warn!(session = %live.id, error = %e, "cannot hand the client's answer to the upstream");
        }
    }

    /// A client notification: cancellations go through the `cancellation` bus to wherever
    /// the request runs; the rest reach every upstream of the session.
    pub async fn client_notification(&self, live: &Arc<Live>, m: Message) {
        match jsonrpc::method(&m) {
            Some("notifications/initialized") => {}
            Some("notifications/cancelled") => {
                let params = m.get("params").cloned().unwrap_or(Value::Null);
                let payload = json!({"requestId": params["requestId"], "reason": params["reason"]});
                if let Err(e) = self
                    .ctx
                    .caps
                    .cancellation
                    .bus
                    .publish(&format!("s.{}", live.id), payload.to_string().into_bytes())
                    .await
                {
                    tracing::warn!(session = %live.id, error = %e, "cannot publish a cancellation");
                }
            }
            _ => live.notify_all(&m).await,
        }
    }

    /// Sends a message to the client's GET stream, wherever it is held: numbered with the
    /// session's next event id, kept in the session's event log (bounded by count and age) for
    /// `Last-Event-ID` resumption, and published on the `delivery` bus.
    pub async fn deliver(&self, sid: &str, seq: &AtomicU64, m: &Message) {
        let n = seq.fetch_add(1, Ordering::Relaxed) + 1;
        let payload = serde_json::to_vec(&json!({"seq": n, "message": m})).expect("serialisable");
        let delivery = &self.ctx.caps.delivery;
        let logged = delivery
            .store
            .put(
                &log_key(sid, n),
                payload.clone(),
                Some(self.ctx.log_max_age),
            )
            .await;
        if let Err(e) = logged {
            tracing::warn!(session = %sid, error = %e, "cannot keep a message for resumption");
        }
        if n > self.ctx.log_max_events {
            let _ = delivery
                .store
                .delete(&log_key(sid, n - self.ctx.log_max_events), None)
                .await;
        }
        if let Err(e) = delivery.bus.publish(&format!("s.{sid}"), payload).await {
            tracing::warn!(session = %sid, error = %e, "cannot deliver a message to the client");
        }
    }

    /// The messages for one session's GET stream, with their event ids: those after
    /// `last_event_id` still in the log first (a resumption), then new ones as they come.
    pub async fn delivery_stream(
        &self,
        sid: &str,
        last_event_id: Option<u64>,
    ) -> Result<futures::stream::BoxStream<'static, (u64, Message)>, RpcError> {
        let delivery = &self.ctx.caps.delivery;
        let err = |e: mcpg_plugin_api::coordinator::CoordError| {
            RpcError::new(code::INTERNAL_ERROR, e.to_string())
        };
        // Subscribe before reading the log, so nothing falls between the two.
        let live = delivery
            .bus
            .subscribe(&format!("s.{sid}"))
            .await
            .map_err(err)?;
        let mut replay: Vec<(u64, Message)> = Vec::new();
        if let Some(last) = last_event_id {
            for e in delivery
                .store
                .list(&format!("log/{sid}/"))
                .await
                .map_err(err)?
            {
                if let Some(ev) = parse_event(&e.value)
                    && ev.0 > last
                {
                    replay.push(ev);
                }
            }
            replay.sort_by_key(|(n, _)| *n);
        }
        let floor = replay
            .last()
            .map(|(n, _)| *n)
            .or(last_event_id)
            .unwrap_or(0);
        let live =
            live.filter_map(
                move |m| async move { parse_event(&m.payload).filter(|(n, _)| *n > floor) },
            );
        Ok(futures::stream::iter(replay).chain(live).boxed())
    }
}

fn log_key(sid: &str, n: u64) -> String {
    format!("log/{sid}/{n:016x}")
}

fn parse_event(bytes: &[u8]) -> Option<(u64, Message)> {
    let v: Value = serde_json::from_slice(bytes).ok()?;
    let n = v.get("seq")?.as_u64()?;
    match v.get("message")? {
        Value::Object(m) => Some((n, m.clone())),
        _ => None,
    }
}

/// Runs cancellations arriving on the `cancellation` bus against requests running here.
pub fn spawn_cancellation_listener(ctx: Arc<Context>) {
    tokio::spawn(async move {
        let mut s = match ctx.caps.cancellation.bus.subscribe("s.*").await {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot subscribe to cancellations; notifications/cancelled will not stop requests");
                return;
            }
        };
        while let Some(m) = s.next().await {
            let sid = m.subject.trim_start_matches("s.");
            let Ok(v) = serde_json::from_slice::<Value>(&m.payload) else {
                continue;
            };
            let reason = v["reason"].as_str().unwrap_or("cancelled by the client");
            if ctx.inflight.cancel(sid, &v["requestId"], reason) {
                tracing::debug!(session = %sid, request = %v["requestId"], "request cancelled");
            }
        }
    });
}

/// Keeps the first page's unknown fields; of the 2026-07-28 caching hints keeps the most
/// cautious (the shortest `ttlMs`, `private` over `public`).
fn merge_page_fields(into: &mut Map<String, Value>, from: Map<String, Value>) {
    for (k, v) in from {
        match (k.as_str(), into.get(&k)) {
            ("ttlMs", Some(old)) => {
                if v.as_f64() < old.as_f64() {
                    into.insert(k, v);
                }
            }
            ("cacheScope", Some(_)) => {
                if v == "private" {
                    into.insert(k, v);
                }
            }
            _ => {
                into.entry(k).or_insert(v);
            }
        }
    }
}

fn list_result(
    key: &str,
    items: Vec<Value>,
    extra: Map<String, Value>,
    next: Option<String>,
) -> Value {
    let mut r = extra;
    r.insert(key.into(), Value::Array(items));
    if let Some(n) = next {
        r.insert("nextCursor".into(), json!(n));
    }
    Value::Object(r)
}

/// Union of two capability objects: present in either, nested flags true in either.
pub(crate) fn merge_capabilities(into: &mut Map<String, Value>, from: &Map<String, Value>) {
    for (k, v) in from {
        match (into.get_mut(k), v) {
            (Some(Value::Object(a)), Value::Object(b)) => merge_capabilities(a, b),
            (Some(Value::Bool(a)), Value::Bool(b)) => *a = *a || *b,
            (None, v) => {
                into.insert(k.clone(), v.clone());
            }
            _ => {}
        }
    }
}

pub(crate) fn timeout_error(id: Value, upstream: &str) -> Message {
    jsonrpc::error(
        id,
        code::REQUEST_TIMEOUT,
        format!("upstream `{upstream}` did not answer in time"),
        None,
    )
}

pub(crate) fn closed_error(id: Value, upstream: &str) -> Message {
    jsonrpc::error(
        id,
        code::CONNECTION_CLOSED,
        format!("upstream `{upstream}` closed the connection before answering"),
        None,
    )
}

//! 2026-07-28 clients, served statelessly, in front of upstreams of either era: the request
//! is sent on the upstream's shared conversation and relayed (notifications on the response
//! stream, the response last, in 2026-07-28 shape). In front of a legacy upstream this is the
//! bridge: a server-to-client request becomes an input-required result whose signed
//! `requestState` leads the client's retry back to the exchange parked here, and the retry's
//! `inputResponses` become JSON-RPC responses to that upstream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Map, Value, json};

use super::request_state::{State, StateKey};
use crate::capabilities::Capability;
use crate::mcp::binding::Binding;
use crate::mcp::relay::Reply;
use crate::mcp::relay::exchange::{self, Relay, Shape, Step, response_out};
use crate::mcp::route::names::UpstreamIdx;
use crate::mcp::route::path::Path;
use crate::mcp::upstream::pool::{Attempt, InFlight};
use crate::mcp::upstream::{Exchange, ModernHandle};
use crate::mcp::wire::jsonrpc::{self, Kind, Message, RpcError, code};
use crate::mcp::wire::meta;

/// Methods 2026-07-28 removed; a modern client calling them gets "method not found".
pub const REMOVED: &[&str] = &[
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

/// What the bridge keeps on this replica: upstream exchanges parked between input-required
/// rounds (live work; the signed `requestState` carries the routing) and the key that signs
/// `requestState`.
pub struct Bridge {
    /// This replica's node id, named in the `requestState` of exchanges parked here.
    node_id: String,
    key: StateKey,
    parked: Mutex<HashMap<String, Parked>>,
}

impl Bridge {
    /// The bridge of this replica; drops parked exchanges nobody came back for (cancelling
    /// them upstream) while it lives.
    pub fn new(node_id: String, pipelines: Capability) -> Arc<Self> {
        let me = Arc::new(Self {
            node_id,
            key: StateKey::new(pipelines),
            parked: Mutex::new(HashMap::new()),
        });
        let weak = Arc::downgrade(&me);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(30)).await;
                let Some(me) = weak.upgrade() else { return };
                me.parked
                    .lock()
                    .expect("lock")
                    .retain(|_, p| p.since.elapsed() < PARK_TTL);
            }
        });
        me
    }

    /// The replica holding the exchange a retry's `requestState` names, when that is another
    /// replica (so the retry is forwarded there).
    pub async fn parked_elsewhere(&self, msg: &Message) -> Option<String> {
        let s = jsonrpc::params(msg)?.get("requestState")?.as_str()?;
        let st = self.key.open(s).await.ok()?;
        let key = st.p?;
        let node = st.n?;
        (node != self.node_id && !self.parked.lock().expect("lock").contains_key(&key))
            .then_some(node)
    }
}

/// An upstream exchange waiting for the client's answers to the requests it made.
struct Parked {
    ex: Exchange,
    up: UpstreamIdx,
    method: String,
    /// Input key → the upstream's request awaiting the client's answer.
    pending: HashMap<String, Message>,
    /// The log level the original request asked for.
    log_level: Option<String>,
    /// The client capabilities the original request declared.
    caps: Option<Value>,
    since: tokio::time::Instant,
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

pub fn removed_error(id: Value, method: &str) -> Message {
    jsonrpc::error(
        id,
        code::METHOD_NOT_FOUND,
        format!("Method not found: `{method}` is not part of MCP 2026-07-28"),
        None,
    )
}

/// The state a retry's `requestState` carries (a retry answering an input-required result).
pub async fn state_of(bridge: &Bridge, msg: &Message) -> Result<Option<State>, RpcError> {
    match jsonrpc::params(msg)
        .and_then(|p| p.get("requestState"))
        .and_then(Value::as_str)
    {
        Some(s) => bridge.key.open(s).await.map(Some),
        None => Ok(None),
    }
}

/// A 2026-07-28 request routed to one upstream.
pub struct Ask {
    pub up: UpstreamIdx,
    pub id: Value,
    pub method: String,
    /// The `requestState` of a retry.
    pub state: Option<State>,
    /// The client's `Mcp-Param-*` headers, forwarded to upstreams that speak the revision.
    pub extra: Vec<(String, String)>,
}

/// Sends a 2026-07-28 request to its upstream (or, for a retry of a parked exchange, the
/// client's answers to it) and relays what comes back.
pub async fn request(b: &Arc<Binding>, bridge: &Arc<Bridge>, ask: Ask, mut msg: Message) -> Reply {
    let Ask {
        up,
        id,
        method,
        state,
        extra,
    } = ask;
    if let Some(st) = state {
        if st.u != b.upstreams[up].name {
            return Reply::Json(
                RpcError::invalid_params("requestState belongs to another upstream").to_message(id),
            );
        }
        if let Some(key) = st.p {
            let responses = jsonrpc::params(&msg)
                .and_then(|p| p.get("inputResponses"))
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            return resume(b, bridge, id, key, responses).await;
        }
        let p = jsonrpc::params_mut(&mut msg);
        match st.s {
            Some(inner) => p.insert("requestState".into(), json!(inner)),
            None => p.remove("requestState"),
        };
    }
    // What the client declared it can answer (a bridged upstream's server request it cannot
    // answer is declined on its behalf), and the level it asked log messages of this request
    // at (a legacy upstream logs whatever its session level allows), read before the message
    // goes upstream.
    let caps = meta::of(&msg)
        .and_then(|m| jsonrpc::member(m, meta::CLIENT_CAPABILITIES))
        .cloned();
    let log_level = meta::of(&msg)
        .and_then(|m| jsonrpc::member(m, meta::LOG_LEVEL))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let (handle, relay, in_flight) = match send(b, up, msg, &extra).await {
        Ok(s) => s,
        Err(Err(e)) => return Reply::Json(e.to_message(id)),
        Err(Ok(sent)) => return sent.reply(id, &b.upstreams[up].name),
    };
    let path = if handle.native {
        Path::Native
    } else {
        Path::Park
    };
    let leg = Leg {
        _in_flight: Some(in_flight),
        b: b.clone(),
        bridge: bridge.clone(),
        up,
        method,
        path,
        caps,
        log_level,
    };
    let mut relay = relay;
    // Closing the client's stream cancels: an upstream on stdio or a bridged legacy
    // session is told; an HTTP upstream sees its own stream closed.
    if path == Path::Park || handle.conn.cancels_by_notification() {
        relay.cancel_on_drop();
    }
    exchange::reply(relay, leg, id).await
}

/// Sends a 2026-07-28 request on an endpoint of upstream `up`'s pool. A request that never
/// left mcpg (the endpoint refused the connection, or its conversation was already closed)
/// is sent on another endpoint, within the pool's retry budget; one that may have reached
/// an endpoint is never sent again. Both outcomes feed the pool's outlier detection.
async fn send(
    b: &Binding,
    up: UpstreamIdx,
    msg: Message,
    extra: &[(String, String)],
) -> Result<(ModernHandle, Relay, InFlight), Result<exchange::Sent, RpcError>> {
    let pool = &b.upstreams[up];
    let mut tried = Vec::new();
    let mut msg = Some(msg);
    loop {
        let (i, handle) = pool.modern_on(&mut tried).await.map_err(Err)?;
        let in_flight = pool.start(i);
        // A copy only while another endpoint may still be tried after this one (each attempt
        // is on an endpoint not tried before, so the last one takes the message itself).
        let next = if tried.len() + 1 < pool.members.len() {
            msg.clone()
        } else {
            msg.take()
        };
        let Some(mut msg) = next else {
            return Err(Err(pool.unavailable()));
        };
        if !handle.native {
            // The bridging session speaks a legacy revision; the per-request fields of
            // 2026-07-28 would contradict its MCP-Protocol-Version (a dual-era upstream
            // rejects that with -32020). The session's own `initialize` stands for them.
            meta::strip_request_fields(&mut msg);
        }
        let deadline = tokio::time::Instant::now() + pool.timeout;
        match Relay::start(&handle.conn, msg, extra, deadline, None).await {
            Ok(relay) => {
                pool.attempt(i, Attempt::Sent);
                return Ok((handle, relay, in_flight));
            }
            Err(exchange::Sent::NotReached(e)) => {
                pool.attempt(i, Attempt::NotReached);
                tried.push(i);
                if tried.len() == pool.members.len() || !pool.may_retry() {
                    return Err(Ok(exchange::Sent::NotReached(e)));
                }
                tracing::info!(upstream = %pool.name, endpoint = %pool.members[i].name, error = %e.message, "request not sent; sending it to another endpoint");
            }
            Err(exchange::Sent::TimedOut) => {
                pool.attempt(i, Attempt::TimedOut);
                return Err(Ok(exchange::Sent::TimedOut));
            }
            Err(exchange::Sent::Failed(e)) => {
                pool.attempt(i, Attempt::Failed);
                return Err(Ok(exchange::Sent::Failed(e)));
            }
            Err(other) => return Err(Ok(other)),
        }
    }
}

/// One exchange of a 2026-07-28 client with an upstream, and what shapes the messages
/// relayed from it.
struct Leg {
    /// Counts the request in flight on its endpoint while the exchange lasts.
    _in_flight: Option<InFlight>,
    b: Arc<Binding>,
    bridge: Arc<Bridge>,
    up: UpstreamIdx,
    method: String,
    /// [`Path::Native`] for an upstream that speaks 2026-07-28, [`Path::Park`] for a bridged
    /// legacy one.
    path: Path,
    log_level: Option<String>,
    caps: Option<Value>,
}

impl Leg {
    fn bridged(&self) -> bool {
        self.path == Path::Park
    }

    /// Whether a message reaches the client (log messages of a bridged upstream only at the
    /// level the client asked for).
    fn shown(&self, m: &Message) -> bool {
        !self.bridged() || log_allowed(m, self.log_level.as_deref())
    }

    /// A server request of a bridged upstream that the client cannot answer, answered on its
    /// behalf: true when declined.
    async fn declined(&self, ex: &Exchange, m: &Message) -> bool {
        self.bridged() && decline(ex, self.caps.as_ref(), m).await
    }

    /// The message that ends a modern response: the upstream's response in 2026-07-28
    /// shape, or (bridged) an input-required result for the server request that arrived.
    async fn out(&self, ex: Exchange, id: Value, m: Message) -> Message {
        let name = &self.b.upstreams[self.up].name;
        match jsonrpc::kind(&m) {
            Kind::Request if self.bridged() => match self.park(ex, vec![m]).await {
                Ok(r) => jsonrpc::result(id, r),
                Err(e) => e.to_message(id),
            },
            // A modern upstream must not send requests; there is nobody to answer it.
            Kind::Request => jsonrpc::error(
                id,
                code::INTERNAL_ERROR,
                format!("upstream `{name}` sent a request on a 2026-07-28 stream"),
                None,
            ),
            _ => {
                let mut out = response_out(&self.b, &self.method, self.up, id.clone(), m);
                if self.bridged()
                    && let Some(e) = out.get_mut("error")
                    && e["code"] == code::RESOURCE_NOT_FOUND
                {
                    // 2026-07-28 retired -32002 for a missing resource in favour of -32602.
                    e["code"] = json!(code::INVALID_PARAMS);
                }
                if let Some(r) = out.get_mut("result")
                    && let Err(e) = self.shape_result(r).await
                {
                    return e.to_message(id);
                }
                out
            }
        }
    }

    /// A result in 2026-07-28 shape: complete with caching hints (bridged), an upstream's own
    /// `requestState` wrapped in mcpg's, a task id prefixed.
    async fn shape_result(&self, r: &mut Value) -> Result<(), RpcError> {
        let (b, up) = (&self.b, self.up);
        if self.bridged() {
            meta::complete(r);
            if meta::cacheable(&self.method) {
                meta::cache_hints(r);
            }
        }
        if r["resultType"] == "input_required" {
            let st = State {
                v: 1,
                u: b.upstreams[up].name.clone(),
                s: r["requestState"].as_str().map(str::to_owned),
                p: None,
                n: None,
            };
            r["requestState"] = json!(self.bridge.key.seal(&st).await?);
        }
        if r["resultType"] == "task"
            && b.naming.prefix
            && let Some(t) = r["taskId"].as_str()
        {
            r["taskId"] = json!(format!("{}{}{t}", b.upstreams[up].name, b.naming.sep));
        }
        Ok(())
    }

    /// Parks a bridged exchange whose legacy upstream asked the client something, and
    /// returns the input-required result that asks the modern client instead.
    async fn park(&self, ex: Exchange, requests: Vec<Message>) -> Result<Value, RpcError> {
        let bridge = &self.bridge;
        if bridge.parked.lock().expect("lock").len() >= MAX_PARKED {
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
        let state = bridge
            .key
            .seal(&State {
                v: 1,
                u: self.b.upstreams[self.up].name.clone(),
                s: None,
                p: Some(key.clone()),
                n: Some(bridge.node_id.clone()),
            })
            .await?;
        bridge.parked.lock().expect("lock").insert(
            key,
            Parked {
                ex,
                up: self.up,
                method: self.method.clone(),
                pending,
                log_level: self.log_level.clone(),
                caps: self.caps.clone(),
                since: tokio::time::Instant::now(),
            },
        );
        Ok(json!({
            "resultType": "input_required",
            "inputRequests": inputs,
            "requestState": state,
        }))
    }
}

/// The 2026-07-28 paths' shape: notifications relayed (log messages of a bridged upstream
/// only at the level the client asked for), server requests a client cannot answer declined
/// on its behalf, anything else ends the response ([`Leg::out`]).
impl Shape for Leg {
    fn upstream(&self) -> &str {
        &self.b.upstreams[self.up].name
    }

    async fn step(&self, ex: &Exchange, mut m: Message) -> Step {
        if self.declined(ex, &m).await {
            return Step::Skip;
        }
        if jsonrpc::kind(&m) != Kind::Notification {
            return Step::Final(m);
        }
        if !self.shown(&m) {
            return Step::Skip;
        }
        self.b.naming.notification_out(self.up, &mut m);
        Step::Relay(m)
    }

    async fn finish(&self, ex: Exchange, id: Value, m: Message) -> Message {
        self.out(ex, id, m).await
    }
}

/// A retry answering a bridged input-required result: the answers go to the upstream as
/// responses to its requests, and the exchange carries on under the retry's id.
async fn resume(
    b: &Arc<Binding>,
    bridge: &Arc<Bridge>,
    id: Value,
    key: String,
    responses: Map<String, Value>,
) -> Reply {
    let parked = bridge.parked.lock().expect("lock").remove(&key);
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
    let leg = Leg {
        _in_flight: None,
        b: b.clone(),
        bridge: bridge.clone(),
        up: p.up,
        method: p.method,
        path: Path::Park,
        log_level: p.log_level,
        caps: p.caps,
    };
    if !p.pending.is_empty() {
        // Not every question was answered: ask again for the rest.
        let requests = p.pending.into_values().collect();
        return Reply::Json(match leg.park(p.ex, requests).await {
            Ok(r) => jsonrpc::result(id, r),
            Err(e) => e.to_message(id),
        });
    }
    let deadline = tokio::time::Instant::now() + b.upstreams[leg.up].timeout;
    exchange::reply(Relay::new(p.ex, deadline), leg, id).await
}

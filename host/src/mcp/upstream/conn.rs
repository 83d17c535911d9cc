//! One live conversation with an upstream server (a stdio child, or one HTTP upstream
//! session) over a [`Transport`]: allocates the upstream request ids, rewrites progress
//! tokens so requests from many clients never collide, and routes every incoming message to
//! the exchange it belongs to or to the connection's unsolicited stream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};

use super::unsolicited::{self, Unsolicited};

use crate::mcp::wire::jsonrpc::{self, Kind, Message, RpcError, code};

/// Why talking to an upstream failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream `{0}` is not connected")]
    Closed(String),
    #[error("upstream `{upstream}`: {message}")]
    Transport { upstream: String, message: String },
    #[error("upstream `{upstream}` answered with HTTP {status}: {body}")]
    Status {
        upstream: String,
        status: u16,
        body: String,
    },
    /// The upstream's HTTP session is gone (404 on a request carrying its session id).
    #[error("upstream `{0}` no longer knows its session")]
    SessionExpired(String),
    /// The conversation ended after the request was written and before its answer: the
    /// upstream may have run it (the outcome is unknown, as for a forward lost after it was
    /// delivered), so it is never said not to have run.
    #[error(
        "upstream `{0}` closed the connection after the request was sent; it may or may not have run"
    )]
    Lost(String),
}

impl UpstreamError {
    /// The request never reached the upstream (the connection was refused or already
    /// closed): sending it elsewhere cannot run it twice.
    pub fn not_reached(&self) -> bool {
        match self {
            UpstreamError::Closed(_) => true,
            UpstreamError::Transport { message, .. } => message.starts_with(NOT_REACHED),
            _ => false,
        }
    }

    pub fn to_rpc(&self) -> RpcError {
        RpcError::new(code::CONNECTION_CLOSED, self.to_string())
    }
}

/// How a transport's error message starts when the request never left mcpg.
pub const NOT_REACHED: &str = "could not connect";

/// A way of moving JSON-RPC messages to and from an upstream.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// Sends one message. Transports whose answers come back on the same exchange (an HTTP
    /// POST answered with JSON or SSE) return the messages of that exchange; the others
    /// (stdio) return `None` and deliver everything through the connection's incoming channel.
    async fn send(
        &self,
        msg: Message,
        headers: &[(String, String)],
    ) -> Result<Option<BoxStream<'static, Message>>, UpstreamError>;
    /// Ends the conversation (kills the child, deletes the HTTP session).
    async fn close(&self);
    /// Why the conversation ended or is failing, as far as the transport can tell (a child's
    /// exit status and its last lines of stderr); `None` when it cannot say.
    async fn why_closed(&self) -> Option<String> {
        None
    }
    /// Lets go of the conversation so another replica can resume it: what can be resumed
    /// (an HTTP session) is left in place; what cannot (a child process) is ended.
    async fn detach(&self) {
        self.close().await
    }
    /// Whether a request is cancelled by sending `notifications/cancelled` (stdio, legacy
    /// HTTP) rather than by closing its stream (2026-07-28 HTTP).
    fn cancels_by_notification(&self) -> bool {
        true
    }
}

struct Route {
    tx: mpsc::UnboundedSender<Message>,
    /// The client's own progress token, restored on the way back.
    progress: Option<Value>,
    /// Whether messages without an id of ours may be attributed to this exchange when it is
    /// the only one in flight (not for exchanges parked between rounds, or listens).
    attributable: bool,
}

struct Shared {
    name: Arc<str>,
    routes: Mutex<HashMap<u64, Route>>,
    unsolicited: Unsolicited,
    closed: watch::Sender<bool>,
}

/// One live conversation with an upstream.
#[derive(Clone)]
pub struct Connection {
    shared: Arc<Shared>,
    transport: Arc<dyn Transport>,
    next_id: Arc<AtomicU64>,
    /// What the upstream answered to the handshake (legacy `initialize`, modern
    /// `server/discover`), set once by whoever established the connection.
    pub handshake: Arc<std::sync::OnceLock<Arc<Value>>>,
}

impl Connection {
    /// A connection over `transport`; `incoming`, when the transport has one, carries every
    /// message the upstream sends outside an exchange's own stream. The connection counts as
    /// closed when `incoming` ends.
    pub fn new(
        name: &str,
        transport: Arc<dyn Transport>,
        incoming: Option<mpsc::UnboundedReceiver<Message>>,
    ) -> Self {
        let shared = Arc::new(Shared {
            name: name.into(),
            routes: Mutex::new(HashMap::new()),
            unsolicited: Unsolicited::default(),
            closed: watch::channel(false).0,
        });
        if let Some(mut incoming) = incoming {
            let s = shared.clone();
            tokio::spawn(async move {
                while let Some(m) = incoming.recv().await {
                    s.dispatch(m, None);
                }
                s.close();
            });
        }
        Self {
            shared,
            transport,
            next_id: Arc::new(AtomicU64::new(1)),
            handshake: Arc::new(std::sync::OnceLock::new()),
        }
    }

    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn cancels_by_notification(&self) -> bool {
        self.transport.cancels_by_notification()
    }

    /// Why the conversation ended or is failing, as far as its transport can tell.
    pub async fn why_closed(&self) -> Option<String> {
        self.transport.why_closed().await
    }

    pub fn is_closed(&self) -> bool {
        *self.shared.closed.borrow()
    }

    /// Resolves once the connection has closed.
    pub async fn closed(&self) {
        let mut rx = self.shared.closed.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Messages the upstream sends that belong to no exchange: list changes, resource
    /// updates, log messages and server requests it sends outside any request.
    pub fn unsolicited(&self) -> unsolicited::Receiver {
        self.shared.unsolicited.subscribe()
    }

    /// Sends a request (its id and progress token are replaced by the connection's own) and
    /// returns the exchange that yields what the upstream sends for it, ending with its
    /// response.
    pub async fn request(&self, msg: Message) -> Result<Exchange, UpstreamError> {
        self.request_with(msg, &[]).await
    }

    /// [`Connection::request`] with extra transport headers (the client's `Mcp-Param-*`).
    pub async fn request_with(
        &self,
        mut msg: Message,
        headers: &[(String, String)],
    ) -> Result<Exchange, UpstreamError> {
        if self.is_closed() {
            return Err(UpstreamError::Closed(self.name().into()));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        msg.insert("id".into(), json!(id));
        // With traces exported, the upstream learns the request's trace in `_meta`, where the
        // specification reserves `traceparent`; otherwise the message is left as it came.
        let span = tracing::Span::current();
        if crate::telemetry::traces::trace_id(&span).is_some()
            && let Some(Value::Object(p)) = msg.get_mut("params")
            && let Value::Object(meta) = p.entry("_meta").or_insert_with(|| json!({}))
        {
            crate::telemetry::inject_meta(&span, meta);
        }
        let progress = jsonrpc::progress_token(&msg).cloned();
        if progress.is_some() {
            jsonrpc::set_progress_token(&mut msg, json!(id));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        self.shared.routes.lock().expect("routes lock").insert(
            id,
            Route {
                tx,
                progress,
                attributable: true,
            },
        );
        let mut exchange = Exchange {
            id,
            rx,
            conn: self.clone(),
            answered: false,
            cancel_on_drop: false,
            reader: None,
        };
        // A request abandoned while it is being sent (an upstream answering with JSON is
        // still sending when the client cancels) is cancelled upstream as it is dropped,
        // where a notification is how that is said (for a 2026-07-28 HTTP upstream, the
        // request's own connection closing is).
        exchange.cancel_on_drop = self.cancels_by_notification();
        let sent = self.transport.send(msg, headers).await;
        exchange.cancel_on_drop = false;
        match sent {
            Ok(Some(stream)) => exchange.reader = self.route_answer(id, stream),
            Ok(None) => {}
            Err(e) => {
                if matches!(e, UpstreamError::SessionExpired(_)) {
                    // Nothing more can go through this conversation; whoever holds it
                    // reconnects.
                    self.shared.close();
                }
                return Err(e);
            }
        }
        Ok(exchange)
    }

    /// Routes the messages of request `id`'s answer: what is already there (a whole JSON
    /// answer) at once; only a stream still open (SSE) gets a task of its own, whose abort
    /// handle is returned (dropping the exchange closes the upstream's stream: for a
    /// 2026-07-28 upstream, that is the cancellation).
    fn route_answer(
        &self,
        id: u64,
        mut stream: BoxStream<'static, Message>,
    ) -> Option<tokio::task::AbortHandle> {
        loop {
            match stream.next().now_or_never() {
                Some(Some(m)) => self.shared.dispatch(m, Some(id)),
                Some(None) => {
                    self.shared.routes.lock().expect("routes lock").remove(&id);
                    return None;
                }
                None => {
                    let s = self.shared.clone();
                    let reader = tokio::spawn(async move {
                        while let Some(m) = stream.next().await {
                            s.dispatch(m, Some(id));
                        }
                        // The exchange's stream ended; if no answer came, the exchange ends
                        // empty.
                        s.routes.lock().expect("routes lock").remove(&id);
                    });
                    return Some(reader.abort_handle());
                }
            }
        }
    }

    /// A request whose only interesting output is its result (handshakes, list calls).
    pub async fn call(&self, method: &str, params: Option<Value>) -> Result<Value, RpcError> {
        let msg = jsonrpc::request(json!(0), method, params);
        let mut ex = self.request(msg).await.map_err(|e| e.to_rpc())?;
        ex.response().await
    }

    /// Sends a notification or a response to a server request, with nothing to wait for.
    pub async fn send(&self, msg: Message) -> Result<(), UpstreamError> {
        if self.is_closed() {
            return Err(UpstreamError::Closed(self.name().into()));
        }
        if let Some(mut stream) = self.transport.send(msg, &[]).await? {
            // Anything sent back on this exchange (unusual) is routed like the rest.
            let s = self.shared.clone();
            tokio::spawn(async move {
                while let Some(m) = stream.next().await {
                    s.dispatch(m, None);
                }
            });
        }
        Ok(())
    }

    /// Ends the conversation and fails every open exchange.
    pub async fn close(&self) {
        self.shared.close();
        self.transport.close().await;
    }

    /// Lets go of the conversation without ending it upstream (another replica takes the
    /// session over); every open exchange fails.
    pub async fn detach(&self) {
        self.shared.close();
        self.transport.detach().await;
    }

    /// Feeds a message received outside any exchange (e.g. an HTTP upstream's GET stream).
    pub fn deliver(&self, m: Message) {
        self.shared.dispatch(m, None);
    }

    /// Marks the connection closed from the transport's side (e.g. the HTTP upstream lost
    /// its session).
    pub fn mark_closed(&self) {
        self.shared.close();
    }
}

impl Shared {
    fn close(&self) {
        self.routes.lock().expect("routes lock").clear();
        self.closed.send_replace(true);
    }

    /// Routes a response to the exchange it answers. On an exchange's own stream, a response
    /// it cannot be for is the upstream's protocol violation: the exchange ends with an error
    /// that says so.
    fn dispatch_response(&self, routes: &mut HashMap<u64, Route>, m: Message, on: Option<u64>) {
        let id = jsonrpc::member(&m, "id").and_then(Value::as_u64);
        if let Some(r) = id.and_then(|id| routes.remove(&id)) {
            let _ = r.tx.send(m);
            return;
        }
        // An error without an id on a shared channel (stdio: a line mcpg could not read
        // whole) answers the only exchange it can be for.
        let on = on.or_else(|| {
            let null_error = m.get("id").is_some_and(Value::is_null) && m.contains_key("error");
            null_error.then(|| self.owner(routes, None)).flatten()
        });
        let Some(r) = on.and_then(|on| routes.remove(&on)) else {
            tracing::debug!(upstream = %self.name, "response with an id mcpg never sent");
            return;
        };
        let answer = if m.get("id").is_some_and(Value::is_null) && m.contains_key("error") {
            m
        } else {
            let got = m.get("id").cloned().unwrap_or(Value::Null);
            jsonrpc::error(
                Value::Null,
                code::INTERNAL_ERROR,
                format!(
                    "upstream `{}` broke the protocol: it answered with id {got}, which does not match the request",
                    self.name
                ),
                None,
            )
        };
        let _ = r.tx.send(answer);
    }

    /// Routes one incoming message. `on` is the exchange whose own stream carried it, if any.
    fn dispatch(&self, mut m: Message, on: Option<u64>) {
        let mut routes = self.routes.lock().expect("routes lock");
        match jsonrpc::kind(&m) {
            Kind::Response => self.dispatch_response(&mut routes, m, on),
            Kind::Notification => {
                // A 2026-07-28 subscription's notifications name the listen request.
                let subscription = jsonrpc::member(&m, "params")
                    .and_then(|p| jsonrpc::field(p, "_meta"))
                    .and_then(|x| x.get(crate::mcp::wire::meta::SUBSCRIPTION_ID))
                    // Some servers echo a numeric id as a string.
                    .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()));
                if let Some(r) = subscription.and_then(|id| routes.get(&id)) {
                    let _ = r.tx.send(m);
                    return;
                }
                if jsonrpc::method(&m) == Some("notifications/progress") {
                    let token = m
                        .get("params")
                        .and_then(|p| p.get("progressToken"))
                        .and_then(Value::as_u64);
                    if let Some(r) = token.and_then(|t| routes.get(&t)) {
                        if let Some(orig) = &r.progress
                            && let Some(p) = m.get_mut("params").and_then(Value::as_object_mut)
                        {
                            p.insert("progressToken".into(), orig.clone());
                        }
                        let _ = r.tx.send(m);
                        return;
                    }
                }
                let broadcast_only = jsonrpc::method(&m).is_some_and(|x| {
                    x.ends_with("/list_changed") || x == "notifications/resources/updated"
                });
                match self.owner(&routes, on) {
                    Some(id) if !broadcast_only => {
                        let _ = routes[&id].tx.send(m);
                    }
                    _ => {
                        self.unsolicited.send(m);
                    }
                }
            }
            Kind::Request => match self.owner(&routes, on) {
                Some(id) => {
                    let _ = routes[&id].tx.send(m);
                }
                None => {
                    self.unsolicited.send(m);
                }
            },
            Kind::Invalid => {
                m.remove("params");
                let shown = serde_json::Value::Object(m);
                tracing::warn!(upstream = %self.name, message = %shown, "upstream sent an invalid JSON-RPC message; dropped");
            }
        }
    }

    /// The exchange a message without an id of ours belongs to: the exchange whose stream
    /// carried it, or, on a transport with one shared channel (stdio), the only exchange in
    /// flight. With several in flight there is no telling, and it is unsolicited.
    fn owner(&self, routes: &HashMap<u64, Route>, on: Option<u64>) -> Option<u64> {
        match on {
            Some(id) if routes.contains_key(&id) => Some(id),
            Some(_) => None,
            None => {
                let mut candidates = routes.iter().filter(|(_, r)| r.attributable);
                match (candidates.next(), candidates.next()) {
                    (Some((id, _)), None) => Some(*id),
                    _ => None,
                }
            }
        }
    }
}

/// What the upstream sends for one request: notifications and server requests related to it,
/// then its response (with the connection's id; the caller restores its own).
pub struct Exchange {
    id: u64,
    rx: mpsc::UnboundedReceiver<Message>,
    conn: Connection,
    answered: bool,
    cancel_on_drop: bool,
    /// The task reading this exchange's own stream, if it has one.
    reader: Option<tokio::task::AbortHandle>,
}

impl Exchange {
    /// The upstream's id for this request.
    pub fn upstream_id(&self) -> u64 {
        self.id
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// The next message, or `None` when the connection closed (or the exchange's stream
    /// ended) without a response.
    pub async fn next(&mut self) -> Option<Message> {
        let m = self.rx.recv().await;
        if m.as_ref()
            .is_some_and(|m| jsonrpc::kind(m) == Kind::Response)
        {
            self.answered = true;
        }
        m
    }

    /// Stops attributing messages without an id to this exchange (it is parked between
    /// rounds, or a long-lived listen), so other requests in flight can be attributed.
    pub fn set_unattributable(&self) {
        if let Some(r) = self
            .conn
            .shared
            .routes
            .lock()
            .expect("routes lock")
            .get_mut(&self.id)
        {
            r.attributable = false;
        }
    }

    /// Tells the upstream to stop (`notifications/cancelled`) if this exchange is dropped
    /// before its response: a modern client cancels by closing its stream.
    pub fn cancel_on_drop(&mut self) {
        self.cancel_on_drop = true;
    }

    /// Waits for the response and returns its result, dropping anything else.
    pub async fn response(&mut self) -> Result<Value, RpcError> {
        while let Some(m) = self.next().await {
            if jsonrpc::kind(&m) != Kind::Response {
                continue;
            }
            return response_result(m);
        }
        Err(UpstreamError::Lost(self.conn.name().into()).to_rpc())
    }

    /// Tells the upstream to stop working on this request.
    pub async fn cancel(&self, reason: &str) {
        let n = jsonrpc::notification(
            "notifications/cancelled",
            Some(json!({"requestId": self.id, "reason": reason})),
        );
        let _ = self.conn.send(n).await;
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if let Some(r) = self.reader.take() {
            r.abort();
        }
        if self.cancel_on_drop && !self.answered && !self.conn.is_closed() {
            let conn = self.conn.clone();
            let n = jsonrpc::notification(
                "notifications/cancelled",
                Some(json!({"requestId": self.id, "reason": "the client abandoned the request"})),
            );
            tokio::spawn(async move {
                let _ = conn.send(n).await;
            });
        }
        self.conn
            .shared
            .routes
            .lock()
            .expect("routes lock")
            .remove(&self.id);
    }
}

/// A response's result, or its error as an [`RpcError`].
pub fn response_result(mut m: Message) -> Result<Value, RpcError> {
    if let Some(r) = m.remove("result") {
        return Ok(r);
    }
    let e = m.remove("error").unwrap_or(Value::Null);
    Err(RpcError {
        code: e
            .get("code")
            .and_then(Value::as_i64)
            .unwrap_or(code::INTERNAL_ERROR),
        message: e
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or("error without a message")
            .to_owned(),
        data: e.get("data").cloned(),
    })
}

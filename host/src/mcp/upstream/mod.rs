//! Upstream MCP servers: how a configured upstream becomes live [`Connection`]s, with the
//! handshake its era needs, restarts with backoff, and the per-session / shared choice of
//! stdio upstreams.

pub mod balance;
pub mod budget;
pub mod callers;
pub mod conn;
pub mod health;
pub mod http;
#[cfg(test)]
mod limit_tests;
pub mod outlier;
pub mod pool;
#[cfg(test)]
mod pool_tests;
pub mod probe;
pub mod stdio;
#[cfg(test)]
pub(crate) mod test_server;
#[cfg(test)]
mod timeout_tests;
pub mod tool_lists;
pub mod unsolicited;
#[cfg(test)]
mod violation_tests;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

pub use conn::{Connection, Exchange, UpstreamError};
pub use health::Health;

use crate::config::model::{FencingToken, StdioMode, StdioTransport, TransportRef, UpstreamConfig};
use crate::config::parsed::HttpUpstream;
use crate::mcp::route::names::UpstreamIdx;
use crate::mcp::wire::jsonrpc::{self, RpcError};
use crate::mcp::wire::{meta, version};

/// Where a request's upstream conversations come from: a legacy client's session (its own
/// conversations), or the shared conversations that serve 2026-07-28 clients. What mcpg sends
/// on its own (list pages, searches) goes through this.
#[async_trait::async_trait]
pub trait Conversations: Send + Sync {
    /// The conversation with upstream `up`.
    async fn conn(&self, up: UpstreamIdx) -> Result<Connection, RpcError>;
    /// Makes params mcpg sends on its own fit the conversation with upstream `up` (stamped
    /// with `_meta` where it speaks 2026-07-28).
    async fn prepare(&self, up: UpstreamIdx, params: &mut serde_json::Map<String, Value>);
}

/// The client's side of a legacy handshake, replayed to each upstream the gateway connects
/// for that client. A session holds it for as long as it lives and reads it only to connect
/// an upstream, so what the client declared is kept as compact JSON text ([`Compact`]), not
/// as a tree: a few dozen bytes instead of about a kilobyte per session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Hello {
    #[serde(rename = "protocolVersion")]
    pub protocol_version: String,
    #[serde(default = "empty_object")]
    pub capabilities: Compact,
    #[serde(rename = "clientInfo", default = "empty_object")]
    pub client_info: Compact,
    /// Who the client is for `max_children_per_caller` (`id:<identity>` or `addr:<ip>`);
    /// kept in the session record so a reconnect or a takeover counts for the same caller.
    /// Never sent upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
}

impl Hello {
    /// The gateway's own hello, for connections shared by many clients: it offers what a
    /// client may offer, and the gateway answers for clients that lack it.
    pub fn gateway() -> Self {
        Self {
            protocol_version: version::LATEST_LEGACY.into(),
            capabilities: compact(
                &json!({"roots": {"listChanged": true}, "sampling": {}, "elicitation": {"form": {}, "url": {}}}),
            ),
            client_info: compact(&json!({"name": "mcpg", "version": env!("CARGO_PKG_VERSION")})),
            caller: None,
        }
    }
}

/// A JSON value kept as its compact text (see [`Hello`]); it serialises as the value itself.
pub type Compact = Box<serde_json::value::RawValue>;

/// `v` as compact JSON text.
pub fn compact(v: &Value) -> Compact {
    serde_json::value::to_raw_value(v).expect("a JSON value serialises")
}

/// The value a [`Compact`] holds.
pub fn expand(c: &serde_json::value::RawValue) -> Value {
    serde_json::from_str(c.get()).expect("compact JSON text parses")
}

fn empty_object() -> Compact {
    compact(&json!({}))
}

/// How an upstream serves 2026-07-28 traffic: one stateless conversation shared by every
/// modern client, either spoken natively or bridged over a legacy session the gateway holds.
#[derive(Clone)]
pub struct ModernHandle {
    pub conn: Connection,
    /// The upstream speaks 2026-07-28; otherwise mcpg bridges over a legacy session.
    pub native: bool,
    /// The upstream's `server/discover` result (native) or `initialize` result (bridged),
    /// shared: handles are cloned on every request.
    pub info: Arc<Value>,
}

/// The capabilities the gateway declares when it speaks for clients it does not know yet.
fn gateway_capabilities() -> Value {
    json!({"sampling": {}, "elicitation": {"form": {}, "url": {}}, "roots": {}})
}

/// How an upstream's conversations are established.
enum Kind {
    Stdio {
        cfg: StdioTransport,
        base_dir: PathBuf,
        /// `max_response_bytes`: the longest line read from a child.
        max_line: usize,
    },
    Http(Arc<http::Endpoint>),
}

/// One configured upstream of a binding.
pub struct Upstream {
    pub name: String,
    kind: Kind,
    pub timeout: Duration,
    /// How this upstream is told the session owner's fencing token (`header` only for HTTP).
    pub fencing: FencingToken,
    /// Caps the children of a `per_session` stdio upstream.
    children: Option<Arc<Semaphore>>,
    /// Caps the children one caller holds (`max_children_per_caller`).
    per_caller: Option<callers::PerCaller>,
    /// The one conversation of a `shared` stdio upstream, kept alive by its supervisor.
    shared: Option<tokio::sync::watch::Receiver<Option<Connection>>>,
    /// The conversation for modern-era clients, established on first use.
    modern: tokio::sync::Mutex<Option<ModernHandle>>,
    /// When establishing it last failed, to pace retries.
    modern_failed: std::sync::Mutex<Option<tokio::time::Instant>>,
    /// Whether the upstream speaks 2026-07-28, once known (configured or probed).
    speaks_modern: std::sync::Mutex<Option<bool>>,
    /// `protocol: modern`: legacy sessions, too, go through the modern conversation.
    modern_only: bool,
    /// What the last attempt to reach it found.
    health: health::HealthCell,
}

/// A `per_session` child's share of its upstream's capacity: a place under `max_children`
/// and, with `max_children_per_caller`, one of its caller's places.
pub struct ChildPermit {
    _children: OwnedSemaphorePermit,
    _caller: Option<callers::CallerSlot>,
}

/// A session's link to one upstream: a live conversation, holding its share of the
/// upstream's capacity. (Not a coordinator lease: those are `capabilities::cluster`'s.)
pub struct Link {
    pub conn: Connection,
    _permit: Option<ChildPermit>,
    /// Whether the conversation belongs to this session alone (closed with it).
    pub owned: bool,
    /// The upstream's HTTP session id, kept in the session record.
    pub upstream_session: Option<String>,
    /// The conversation is the upstream's shared 2026-07-28 one (the upstream speaks only
    /// that era): the session's requests are stamped with per-request `_meta`.
    pub modern: bool,
    /// The handshake answer the client's `initialize` result is built from (shared with the
    /// connection's own copy: one per conversation, not two).
    pub answer: Arc<Value>,
    /// The endpoint of the upstream's pool the conversation is with (set by the pool).
    pub endpoint: Option<String>,
}

impl Upstream {
    /// The upstream's first (for a single-transport upstream, its only) endpoint.
    pub fn new(
        binding: &str,
        cfg: &UpstreamConfig,
        parsed_http: Option<&HttpUpstream>,
        base_dir: &std::path::Path,
        default_timeout: Duration,
    ) -> anyhow::Result<Arc<Self>> {
        let first = cfg
            .pool()
            .into_iter()
            .next()
            .ok_or_else(|| anyhow::anyhow!("the config loader requires a transport"))?;
        Self::build(
            binding,
            &cfg.name,
            cfg,
            first.transport,
            parsed_http,
            base_dir,
            default_timeout,
        )
    }

    /// One endpoint of upstream `cfg`, reached through `transport`, named `name` in errors,
    /// logs and its health.
    pub fn build(
        binding: &str,
        name: &str,
        cfg: &UpstreamConfig,
        transport: TransportRef<'_>,
        parsed_http: Option<&HttpUpstream>,
        base_dir: &std::path::Path,
        default_timeout: Duration,
    ) -> anyhow::Result<Arc<Self>> {
        let timeout = cfg
            .request_timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(default_timeout);
        let max_line = usize::try_from(cfg.max_response_bytes).unwrap_or(usize::MAX);
        let (stdio, http) = match transport {
            TransportRef::Stdio(s) => (Some(s), None),
            TransportRef::Http(h) => (None, Some(h)),
        };
        let (kind, children) = Self::kind_of(stdio, http, parsed_http, base_dir, max_line)?;
        let configured = http.and_then(|h| match h.protocol {
            crate::config::model::UpstreamProtocol::Auto => None,
            crate::config::model::UpstreamProtocol::Legacy => Some(false),
            crate::config::model::UpstreamProtocol::Modern => Some(true),
        });
        let fencing = match (cfg.fencing_token, &kind) {
            (FencingToken::Header, Kind::Stdio { .. }) => FencingToken::Meta,
            (f, _) => f,
        };
        let mut up = Self {
            name: name.to_owned(),
            kind,
            timeout,
            fencing,
            children,
            per_caller: stdio
                .filter(|s| s.mode == StdioMode::PerSession)
                .and_then(|s| s.max_children_per_caller)
                .map(callers::PerCaller::new),
            shared: None,
            modern: tokio::sync::Mutex::new(None),
            modern_failed: std::sync::Mutex::new(None),
            speaks_modern: std::sync::Mutex::new(configured),
            modern_only: configured == Some(true),
            health: health::HealthCell::new(binding, name),
        };
        if let Some(s) = stdio
            && s.mode == StdioMode::Shared
        {
            up.shared = Some(Self::supervise_shared(
                up.health.clone(),
                s.clone(),
                (base_dir.to_owned(), max_line),
                Duration::from_millis(s.restart_backoff_ms),
                Duration::from_millis(s.restart_max_backoff_ms),
                timeout,
            ));
        }
        Ok(Arc::new(up))
    }

    /// What one endpoint's transport is, and the cap on its children (`per_session` stdio).
    fn kind_of(
        stdio: Option<&StdioTransport>,
        http: Option<&crate::config::model::HttpTransport>,
        parsed_http: Option<&HttpUpstream>,
        base_dir: &std::path::Path,
        max_line: usize,
    ) -> anyhow::Result<(Kind, Option<Arc<Semaphore>>)> {
        Ok(match (stdio, http) {
            (Some(s), _) => {
                let kind = Kind::Stdio {
                    cfg: s.clone(),
                    base_dir: base_dir.to_owned(),
                    max_line,
                };
                let children = (s.mode == StdioMode::PerSession)
                    .then(|| Arc::new(Semaphore::new(s.max_children as usize)));
                (kind, children)
            }
            (None, Some(h)) => {
                let parsed =
                    parsed_http.ok_or_else(|| anyhow::anyhow!("the loader did not parse it"))?;
                let endpoint = http::Endpoint::new(h, parsed, max_line);
                (Kind::Http(Arc::new(endpoint)), None)
            }
            (None, None) => unreachable!("a transport is one or the other"),
        })
    }

    /// Whether some of the client's headers are copied to this upstream.
    pub fn passes_headers(&self) -> bool {
        matches!(&self.kind, Kind::Http(e) if e.passes_headers())
    }

    /// Keeps the one child of a shared stdio upstream running: starts it, and when it dies
    /// restarts it after a backoff that doubles up to `max` (reset after a minute of health).
    fn supervise_shared(
        health: health::HealthCell,
        cfg: StdioTransport,
        (base_dir, max_line): (PathBuf, usize),
        initial: Duration,
        max: Duration,
        timeout: Duration,
    ) -> tokio::sync::watch::Receiver<Option<Connection>> {
        let (tx, rx) = tokio::sync::watch::channel(None);
        let metrics = crate::telemetry::metrics::metrics();
        let (binding, name) = (health.binding.clone(), health.upstream.clone());
        tokio::spawn(async move {
            let mut backoff = initial;
            let mut restarts = 0u64;
            loop {
                let started = tokio::time::Instant::now();
                let spawn = Spawn {
                    cfg: &cfg,
                    base_dir: &base_dir,
                    max_line,
                };
                let r = connect_stdio(&name, &spawn, &Hello::gateway(), timeout).await;
                health.record(&r);
                match r {
                    Ok(conn) => {
                        tx.send_replace(Some(conn.clone()));
                        answer_unattributable(&conn);
                        // The upstream is gone (a config reload removed or replaced it):
                        // the child goes with it.
                        tokio::select! {
                            _ = conn.closed() => {}
                            _ = tx.closed() => {
                                conn.close().await;
                                return;
                            }
                        }
                        let why = conn.why_closed().await;
                        health.record::<()>(&Err(RpcError::new(
                            jsonrpc::code::CONNECTION_CLOSED,
                            format!(
                                "upstream `{name}` {}",
                                why.as_deref().unwrap_or("closed its connection")
                            ),
                        )));
                        tx.send_replace(None);
                        if started.elapsed() > Duration::from_secs(60) {
                            backoff = initial;
                        }
                        tracing::warn!(upstream = %name, cause = why.as_deref().unwrap_or_default(), restart_in_ms = backoff.as_millis() as u64, "shared stdio upstream died; restarting");
                    }
                    Err(e) => {
                        tracing::warn!(upstream = %name, error = %e.message, restart_in_ms = backoff.as_millis() as u64, "shared stdio upstream failed to start");
                    }
                }
                if tx.is_closed() {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(max);
                restarts += 1;
                metrics.upstream_restart(&binding, &name);
                tracing::info!(upstream = %name, restarts, "restarting shared stdio upstream");
            }
        });
        rx
    }

    /// Establishes the conversation one legacy session uses with this upstream: its own child
    /// (`per_session`), the shared child, or its own upstream HTTP session (resumed when
    /// `resume` names one).
    /// Establishes the conversation one legacy session uses with this upstream: its own child
    /// (`per_session`), the shared child, or its own upstream HTTP session (resumed when
    /// `resume` names one). An upstream that speaks only 2026-07-28 (configured, or refusing
    /// `initialize` while answering `server/discover`) serves the session through its shared
    /// modern conversation instead, the session's requests stamped with `_meta`.
    pub async fn connect(
        &self,
        hello: &Hello,
        resume: Option<(&str, &str)>,
    ) -> Result<Link, RpcError> {
        let r = self.connect_any(hello, resume).await;
        // A shared child's health is its supervisor's to record.
        if self.shared.is_none() || r.is_ok() {
            self.health.record(&r);
        }
        r
    }

    async fn connect_any(
        &self,
        hello: &Hello,
        resume: Option<(&str, &str)>,
    ) -> Result<Link, RpcError> {
        if self.modern_only {
            return self.modern_link(hello).await;
        }
        match self.connect_legacy(hello, resume).await {
            Ok(mut l) => {
                l.answer = l.conn.handshake.get().cloned().unwrap_or_default();
                Ok(l)
            }
            // Only a refused `initialize` (the upstream's own JSON-RPC error, not mcpg's
            // transport, timeout or capacity errors) suggests an upstream of the other era.
            Err(e)
                if matches!(
                    e.code,
                    jsonrpc::code::CONNECTION_CLOSED | jsonrpc::code::REQUEST_TIMEOUT
                ) || *self.speaks_modern.lock().expect("lock") == Some(false) =>
            {
                Err(e)
            }
            Err(e) => match self.modern_link(hello).await {
                Ok(l) => {
                    tracing::info!(upstream = %self.name, error = %e.message, "upstream refused initialize but speaks 2026-07-28; bridging the legacy session");
                    Ok(l)
                }
                Err(_) => Err(e),
            },
        }
    }

    async fn modern_link(&self, hello: &Hello) -> Result<Link, RpcError> {
        let h = self.modern().await?;
        if !h.native {
            return Err(RpcError::new(
                jsonrpc::code::CONNECTION_CLOSED,
                format!("upstream `{}` does not speak 2026-07-28", self.name),
            ));
        }
        let mut answer = json!({
            "protocolVersion": hello.protocol_version,
            "capabilities": h.info["capabilities"],
            "serverInfo": h.info["_meta"][meta::SERVER_INFO],
        });
        if let Some(i) = h.info.get("instructions") {
            answer["instructions"] = i.clone();
        }
        Ok(Link {
            conn: h.conn,
            _permit: None,
            owned: false,
            upstream_session: None,
            modern: true,
            answer: Arc::new(answer),
            endpoint: None,
        })
    }

    /// A place for one more `per_session` child for the caller `hello` names: refused when the
    /// upstream is at `max_children`, or the caller at `max_children_per_caller`.
    fn child_permit(&self, hello: &Hello) -> Result<Option<ChildPermit>, RpcError> {
        let Some(children) = &self.children else {
            return Ok(None);
        };
        let refused = |what: String| {
            RpcError::new(
                jsonrpc::code::CONNECTION_CLOSED,
                format!("upstream `{}` {what}; try again later", self.name),
            )
        };
        let caller = match (&self.per_caller, hello.caller.as_deref()) {
            (Some(p), Some(c)) => Some(p.take(c).ok_or_else(|| {
                refused(format!(
                    "already runs this caller's max_children_per_caller ({}) children: end one of its sessions (DELETE)",
                    p.max()
                ))
            })?),
            _ => None,
        };
        let permit = children
            .clone()
            .try_acquire_owned()
            .map_err(|_| refused("is at its max_children limit".into()))?;
        Ok(Some(ChildPermit {
            _children: permit,
            _caller: caller,
        }))
    }

    /// `resume` names an upstream HTTP session to carry on and the revision it agreed to.
    async fn connect_legacy(
        &self,
        hello: &Hello,
        resume: Option<(&str, &str)>,
    ) -> Result<Link, RpcError> {
        match &self.kind {
            Kind::Stdio {
                cfg,
                base_dir,
                max_line,
            } => {
                if let Some(shared) = &self.shared {
                    let mut rx = shared.clone();
                    // A restart in progress gets a short grace period.
                    let conn = tokio::time::timeout(Duration::from_secs(5), async {
                        rx.wait_for(|c| c.as_ref().is_some_and(|c| !c.is_closed()))
                            .await
                            .ok()
                            .and_then(|c| c.clone())
                    })
                    .await
                    .ok()
                    .flatten()
                    .ok_or_else(|| UpstreamError::Closed(self.name.clone()).to_rpc())?;
                    return Ok(Link {
                        conn,
                        _permit: None,
                        owned: false,
                        upstream_session: None,
                        modern: false,
                        answer: Arc::default(),
                        endpoint: None,
                    });
                }
                let permit = self.child_permit(hello)?;
                let spawn = Spawn {
                    cfg,
                    base_dir,
                    max_line: *max_line,
                };
                let conn = connect_stdio(&self.name, &spawn, hello, self.timeout).await?;
                Ok(Link {
                    conn,
                    _permit: permit,
                    owned: true,
                    upstream_session: None,
                    modern: false,
                    answer: Arc::default(),
                    endpoint: None,
                })
            }
            Kind::Http(endpoint) => {
                let t = Arc::new(http::HttpTransport::new(&self.name, endpoint));
                let conn = Connection::new(&self.name, t.clone(), None);
                if let Some((id, version)) = resume {
                    t.set_session(Some(id.to_owned()));
                    t.set_version(Some(version.to_owned()));
                    let _ = conn
                        .handshake
                        .set(Arc::new(json!({"protocolVersion": version})));
                } else {
                    let result = handshake(&conn, hello, self.deadline()).await?;
                    t.set_version(result["protocolVersion"].as_str().map(str::to_owned));
                    conn.send(jsonrpc::notification("notifications/initialized", None))
                        .await
                        .map_err(|e| e.to_rpc())?;
                }
                t.spawn_listener(conn.clone());
                Ok(Link {
                    conn,
                    _permit: None,
                    owned: true,
                    upstream_session: t.session_id(),
                    modern: false,
                    answer: Arc::default(),
                    endpoint: None,
                })
            }
        }
    }
}

impl Upstream {
    /// When a wait on this upstream that starts now must end: its request timeout (connect,
    /// `initialize` and the era probe obey it as requests do).
    fn deadline(&self) -> Instant {
        Instant::now() + self.timeout
    }

    /// The conversation modern-era clients use, established on first use: the upstream is
    /// probed with `server/discover` (unless its era is configured) and the answer
    /// remembered; a legacy-only upstream gets one legacy session the gateway holds for all
    /// modern clients. Retried at most once a second after a failure.
    pub async fn modern(&self) -> Result<ModernHandle, RpcError> {
        let mut slot = self.modern.lock().await;
        if let Some(h) = slot.as_ref()
            && !h.conn.is_closed()
        {
            return Ok(h.clone());
        }
        if let Some(t) = *self.modern_failed.lock().expect("lock")
            && t.elapsed() < Duration::from_secs(1)
        {
            return Err(UpstreamError::Closed(self.name.clone()).to_rpc());
        }
        let known = *self.speaks_modern.lock().expect("lock");
        match self.establish_modern(known).await {
            Ok(h) => {
                *self.speaks_modern.lock().expect("lock") = Some(h.native);
                tracing::info!(upstream = %self.name, native = h.native, "modern-era conversation established");
                *slot = Some(h.clone());
                *self.modern_failed.lock().expect("lock") = None;
                Ok(h)
            }
            Err(e) => {
                *self.modern_failed.lock().expect("lock") = Some(tokio::time::Instant::now());
                Err(e)
            }
        }
    }

    /// Establishing it obeys the upstream's request timeout as a whole: the era probe and a
    /// legacy handshake after it share one deadline.
    async fn establish_modern(&self, known: Option<bool>) -> Result<ModernHandle, RpcError> {
        let deadline = self.deadline();
        match &self.kind {
            Kind::Stdio {
                cfg,
                base_dir,
                max_line,
            } => {
                let (t, incoming) =
                    stdio::spawn(&self.name, cfg, base_dir, *max_line).map_err(|e| e.to_rpc())?;
                let conn = Connection::new(&self.name, t, Some(incoming));
                if known != Some(false)
                    && let Some(info) = discover(&conn, deadline).await
                {
                    return Ok(ModernHandle {
                        conn,
                        native: true,
                        info: Arc::new(info),
                    });
                }
                // A legacy server ignores or refuses the probe and is still uninitialised.
                match handshake(&conn, &Hello::gateway(), deadline).await {
                    Ok(info) => {
                        conn.send(jsonrpc::notification("notifications/initialized", None))
                            .await
                            .map_err(|e| e.to_rpc())?;
                        answer_unattributable(&conn);
                        Ok(ModernHandle {
                            conn,
                            native: false,
                            info,
                        })
                    }
                    Err(e) => {
                        conn.close().await;
                        Err(e)
                    }
                }
            }
            Kind::Http(endpoint) => {
                if known != Some(false) {
                    let t = Arc::new(http::HttpTransport::new(&self.name, endpoint).into_modern());
                    let conn = Connection::new(&self.name, t, None);
                    if let Some(info) = discover(&conn, deadline).await {
                        return Ok(ModernHandle {
                            conn,
                            native: true,
                            info: Arc::new(info),
                        });
                    }
                    if known == Some(true) {
                        return Err(RpcError::new(
                            jsonrpc::code::CONNECTION_CLOSED,
                            format!("upstream `{}` did not answer server/discover", self.name),
                        ));
                    }
                }
                let link = self.connect_legacy(&Hello::gateway(), None).await?;
                let info = link.conn.handshake.get().cloned().unwrap_or_default();
                answer_unattributable(&link.conn);
                Ok(ModernHandle {
                    conn: link.conn,
                    native: false,
                    info,
                })
            }
        }
    }
}

/// Probes for 2026-07-28 with `server/discover`; the result when the upstream speaks it.
async fn discover(conn: &Connection, deadline: Instant) -> Option<Value> {
    let params = json!({"_meta": {
        meta::PROTOCOL_VERSION: version::LATEST_MODERN,
        meta::CLIENT_CAPABILITIES: gateway_capabilities(),
        meta::CLIENT_INFO: {"name": "mcpg", "version": env!("CARGO_PKG_VERSION")},
    }});
    let r = tokio::time::timeout_at(deadline, conn.call("server/discover", Some(params)))
        .await
        .ok()?
        .ok()?;
    let speaks = r["supportedVersions"]
        .as_array()
        .is_some_and(|v| v.iter().any(|v| v.as_str().is_some_and(version::is_modern)));
    speaks.then_some(r)
}

/// A shared child's requests that arrive outside any request cannot be attributed to one
/// client; they are answered with an error so the child is not left waiting.
fn answer_unattributable(conn: &Connection) {
    let mut rx = conn.unsolicited();
    let conn = conn.clone();
    tokio::spawn(async move {
        loop {
            let m = tokio::select! {
                m = rx.recv() => m,
                _ = conn.closed() => return,
            };
            let m = match m {
                Ok(m) => m,
                Err(unsolicited::RecvError::Lagged(_)) => continue,
                Err(_) => return,
            };
            if jsonrpc::kind(&m) == jsonrpc::Kind::Request {
                let id = m.get("id").cloned().unwrap_or(Value::Null);
                tracing::warn!(upstream = %conn.name(), method = jsonrpc::method(&m).unwrap_or_default(), "a shared child asked something outside any request; answering with an error");
                let _ = conn
                    .send(jsonrpc::error(
                        id,
                        jsonrpc::code::INVALID_REQUEST,
                        "mcpg cannot tell which client this request is for (shared stdio upstream with several requests in flight)",
                        None,
                    ))
                    .await;
            }
        }
    });
}

/// What starting one child takes: its transport, where relative paths resolve, and the
/// longest line read from it.
struct Spawn<'a> {
    cfg: &'a StdioTransport,
    base_dir: &'a std::path::Path,
    max_line: usize,
}

async fn connect_stdio(
    name: &str,
    spawn: &Spawn<'_>,
    hello: &Hello,
    timeout: Duration,
) -> Result<Connection, RpcError> {
    let (t, incoming) =
        stdio::spawn(name, spawn.cfg, spawn.base_dir, spawn.max_line).map_err(|e| e.to_rpc())?;
    let conn = Connection::new(name, t, Some(incoming));
    let r = handshake(&conn, hello, Instant::now() + timeout).await;
    match r {
        Ok(_) => {
            conn.send(jsonrpc::notification("notifications/initialized", None))
                .await
                .map_err(|e| e.to_rpc())?;
            Ok(conn)
        }
        Err(e) => {
            // A child that died (or printed its trouble) before answering says why.
            let e = match conn.why_closed().await {
                Some(why) => RpcError::new(e.code, format!("{} ({why})", e.message)),
                None => e,
            };
            conn.close().await;
            Err(e)
        }
    }
}

/// The legacy handshake: `initialize` with the client's hello, answered by `deadline` (the
/// upstream's request timeout); the result is kept on the connection.
async fn handshake(
    conn: &Connection,
    hello: &Hello,
    deadline: Instant,
) -> Result<Arc<Value>, RpcError> {
    let params = json!({
        "protocolVersion": hello.protocol_version,
        "capabilities": expand(&hello.capabilities),
        "clientInfo": expand(&hello.client_info),
    });
    let result = tokio::time::timeout_at(deadline, conn.call("initialize", Some(params)))
        .await
        .map_err(|_| {
            RpcError::new(
                jsonrpc::code::REQUEST_TIMEOUT,
                format!(
                    "upstream `{}` did not answer initialize in time",
                    conn.name()
                ),
            )
        })??;
    let v = result["protocolVersion"].as_str().unwrap_or_default();
    if !version::is_legacy(v) {
        return Err(RpcError::new(
            jsonrpc::code::CONNECTION_CLOSED,
            format!(
                "upstream `{}` answered initialize with protocol version `{v}`, which mcpg does not speak",
                conn.name()
            ),
        ));
    }
    let result = Arc::new(result);
    let _ = conn.handshake.set(result.clone());
    Ok(result)
}

#[cfg(test)]
mod hello_tests {
    use serde_json::json;

    use super::{Hello, compact, expand};

    /// A hello kept as compact text reads and writes the same JSON as the tree it replaced:
    /// records written by earlier releases (which omit what the client did not send) read,
    /// and what is written back is what was read.
    #[test]
    fn a_compact_hello_reads_and_writes_the_json_of_earlier_releases() {
        let earlier = r#"{"protocolVersion":"2025-06-18","capabilities":{"roots":{"listChanged":true},"sampling":{}},"clientInfo":{"name":"c","version":"1 ✓"},"caller":"addr:10.0.0.1"}"#;
        let hello: Hello = serde_json::from_str(earlier).unwrap();
        assert_eq!(
            expand(&hello.capabilities),
            json!({"roots": {"listChanged": true}, "sampling": {}})
        );
        assert_eq!(expand(&hello.client_info)["version"], "1 ✓");
        assert_eq!(serde_json::to_string(&hello).unwrap(), earlier);
        // Through a `Value` as well (the session view, the handshake's params).
        assert_eq!(
            serde_json::to_value(&hello).unwrap(),
            serde_json::from_str::<serde_json::Value>(earlier).unwrap()
        );

        let bare: Hello = serde_json::from_str(r#"{"protocolVersion":"2025-03-26"}"#).unwrap();
        assert_eq!(expand(&bare.capabilities), json!({}));
        assert_eq!(expand(&bare.client_info), json!({}));
        assert_eq!(compact(&json!({"a": [1, "b"]})).get(), r#"{"a":[1,"b"]}"#);
    }
}

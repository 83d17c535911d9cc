//! Legacy-era sessions: the record of each session (kept in the `sessions` capability, so it
//! survives this process and, with a cluster coordinator, is visible to every replica) and
//! the live side a replica holds for a session it serves (its upstream conversations).

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Mutex as AsyncMutex;
use tokio::time::Instant;

use crate::capabilities::Capability;
use crate::mcp::binding::Binding;
use crate::mcp::jsonrpc::{self, Kind, Message, RpcError};
use crate::mcp::upstream::{Connection, Hello, Lease};

/// The format version of [`SessionRecord`]; readers refuse records of a newer format.
pub const RECORD_FORMAT: u32 = 1;

/// What the cluster knows about one session.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionRecord {
    pub format: u32,
    pub id: String,
    pub binding: String,
    /// The revision agreed with the client.
    pub protocol_version: String,
    /// The client's `initialize`, replayed to upstreams that must be reconnected.
    pub hello: Hello,
    /// Per upstream name: its HTTP session id, when it has one.
    #[serde(default)]
    pub upstream_sessions: HashMap<String, String>,
    /// Per upstream name: the revision that upstream agreed to (sent again on resumption).
    #[serde(default)]
    pub upstream_versions: HashMap<String, String>,
    /// The replica serving the session.
    pub owner: String,
    pub created_ms: u64,
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// A new session id: 128 random bits, hex (visible ASCII, as the transport requires).
pub fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

fn record_key(id: &str) -> String {
    format!("s/{id}")
}

/// The resource URIs a session subscribed to on one upstream that speaks only 2026-07-28, and
/// the listen watching them.
pub type Listen = (Vec<String>, Option<tokio::task::JoinHandle<()>>);

/// One upstream's place in a live session.
pub struct Slot {
    lease: AsyncMutex<Option<Lease>>,
    /// When the last reconnect attempt failed, to pace retries.
    failed_at: Mutex<Option<Instant>>,
}

/// A session this replica serves right now.
pub struct Live {
    pub id: String,
    pub binding: Arc<Binding>,
    pub record: Mutex<SessionRecord>,
    pub slots: Vec<Slot>,
    touched: Mutex<(Instant, Instant)>,
    pumps: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// The last event id given to a GET-stream message of this session.
    pub events: Arc<AtomicU64>,
    /// Set once the session has ended here: no new upstream conversations are started for it
    /// (a request already in flight when it ended must not leave children behind).
    closed: std::sync::atomic::AtomicBool,
    /// Answers this replica awaits from the client itself (input requests of an upstream
    /// that speaks only 2026-07-28, asked as server requests), by request id.
    pub waiters: Mutex<HashMap<String, tokio::sync::oneshot::Sender<Message>>>,
    /// The level from the client's `logging/setLevel`, stamped on requests to upstreams that
    /// speak only 2026-07-28.
    pub log_level: Mutex<Option<Value>>,
    /// Per such upstream: the URIs the client subscribed to and the listen that watches them.
    pub listens: Mutex<HashMap<usize, Listen>>,
}

impl Live {
    /// The live conversation with upstream `up`, reconnecting (with the client's recorded
    /// hello) when it has died, at most once per second.
    pub async fn conn(&self, up: usize) -> Result<Connection, RpcError> {
        self.conn_and_era(up).await.map(|(c, _)| c)
    }

    /// [`Live::conn`], and whether the conversation is the upstream's 2026-07-28 one (so the
    /// session's requests must be stamped), under one lock.
    pub async fn conn_and_era(&self, up: usize) -> Result<(Connection, bool), RpcError> {
        let slot = &self.slots[up];
        let mut lease = slot.lease.lock().await;
        if let Some(l) = lease.as_ref()
            && !l.conn.is_closed()
        {
            return Ok((l.conn.clone(), l.modern));
        }
        let upstream = &self.binding.upstreams[up];
        if self.closed.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(RpcError::new(
                jsonrpc::code::CONNECTION_CLOSED,
                "the session has ended",
            ));
        }
        if let Some(t) = *slot.failed_at.lock().expect("lock")
            && t.elapsed() < Duration::from_secs(1)
        {
            return Err(RpcError::new(
                jsonrpc::code::CONNECTION_CLOSED,
                format!("upstream `{}` is unavailable", upstream.name),
            ));
        }
        let hello = self.record.lock().expect("lock").hello.clone();
        match upstream.connect(&hello, None).await {
            Ok(l) => {
                tracing::info!(session = %self.id, upstream = %upstream.name, "reconnected upstream");
                let conn = (l.conn.clone(), l.modern);
                if let Some(s) = &l.upstream_session {
                    self.record
                        .lock()
                        .expect("lock")
                        .upstream_sessions
                        .insert(upstream.name.clone(), s.clone());
                }
                self.start_pump(up, &l);
                *lease = Some(l);
                *slot.failed_at.lock().expect("lock") = None;
                Ok(conn)
            }
            Err(e) => {
                *slot.failed_at.lock().expect("lock") = Some(Instant::now());
                Err(e)
            }
        }
    }

    /// Whether upstream `up` serves this session through its 2026-07-28 conversation.
    pub async fn is_modern(&self, up: usize) -> bool {
        self.slots[up]
            .lease
            .lock()
            .await
            .as_ref()
            .is_some_and(|l| l.modern)
    }

    /// Forwards what an upstream sends outside any request to the client's GET stream.
    fn start_pump(&self, up: usize, lease: &Lease) {
        if lease.modern {
            // A 2026-07-28 conversation sends nothing outside requests and listens.
            return;
        }
        let mut rx = lease.conn.unsolicited();
        let owned = lease.owned;
        let binding = self.binding.clone();
        let sid = self.id.clone();
        let conn = lease.conn.clone();
        let events = self.events.clone();
        let h = tokio::spawn(async move {
            loop {
                let m = tokio::select! {
                    m = rx.recv() => m,
                    _ = conn.closed() => return,
                };
                let mut m = match m {
                    Ok(m) => m,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(session = %sid, skipped = n, "client too slow; upstream messages dropped");
                        continue;
                    }
                    Err(_) => return,
                };
                match jsonrpc::kind(&m) {
                    Kind::Notification => {
                        binding.naming.notification_out(up, &mut m);
                        binding.deliver(&sid, &events, &m).await;
                    }
                    // A shared child's requests cannot be attributed to one client; its
                    // supervisor answers them.
                    Kind::Request if owned => match binding.to_client_request(&sid, up, m).await {
                        Ok(m) => binding.deliver(&sid, &events, &m).await,
                        Err(e) => {
                            tracing::warn!(session = %sid, error = %e, "cannot relay a server request")
                        }
                    },
                    _ => {}
                }
            }
        });
        let mut pumps = self.pumps.lock().expect("lock");
        pumps.retain(|p| !p.is_finished());
        pumps.push(h);
    }

    /// Notes activity; returns true when the record's TTL should be refreshed.
    fn touch(&self, ttl: Duration) -> bool {
        let mut t = self.touched.lock().expect("lock");
        t.0 = Instant::now();
        if t.1.elapsed() > ttl / 10 {
            t.1 = Instant::now();
            true
        } else {
            false
        }
    }

    fn idle_for(&self) -> Duration {
        self.touched.lock().expect("lock").0.elapsed()
    }

    async fn close(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        for h in self.pumps.lock().expect("lock").drain(..) {
            h.abort();
        }
        for (_, (_, h)) in self.listens.lock().expect("lock").drain() {
            if let Some(h) = h {
                h.abort();
            }
        }
        for slot in &self.slots {
            if let Some(l) = slot.lease.lock().await.take()
                && l.owned
            {
                l.conn.close().await;
            }
        }
    }

    /// Sends a client notification to every upstream this session is connected to.
    pub async fn notify_all(&self, m: &Message) {
        for slot in &self.slots {
            let conn = slot
                .lease
                .lock()
                .await
                .as_ref()
                .filter(|l| !l.modern)
                .map(|l| l.conn.clone());
            if let Some(c) = conn {
                let _ = c.send(m.clone()).await;
            }
        }
    }
}

/// Why a session could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("unknown or expired session")]
    NotFound,
    #[error("the session belongs to another endpoint")]
    WrongBinding,
    #[error(transparent)]
    Rpc(#[from] RpcError),
}

/// The sessions of this replica: records in the `sessions` capability, live state here.
pub struct Sessions {
    cap: Capability,
    node_id: String,
    idle_ttl: Duration,
    live: Mutex<HashMap<String, Arc<Live>>>,
    /// The most sessions served here at once (`mcp.sessions.max_sessions`).
    max_sessions: usize,
    /// Serialises reviving one session from its record (one lock per session id, so
    /// sessions revive in parallel).
    reviving: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
}

impl Sessions {
    pub fn new(
        cap: Capability,
        node_id: String,
        idle_ttl: Duration,
        max_sessions: usize,
    ) -> Arc<Self> {
        let s = Arc::new(Self {
            cap,
            node_id,
            max_sessions,
            idle_ttl,
            live: Mutex::new(HashMap::new()),
            reviving: Mutex::new(HashMap::new()),
        });
        let weak = Arc::downgrade(&s);
        let every = (idle_ttl / 4).clamp(Duration::from_millis(250), Duration::from_secs(30));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(s) = weak.upgrade() else { return };
                s.reap().await;
            }
        });
        s
    }

    /// Ends sessions idle for longer than the TTL.
    async fn reap(&self) {
        let idle: Vec<Arc<Live>> = self
            .live
            .lock()
            .expect("lock")
            .values()
            .filter(|l| l.idle_for() > self.idle_ttl)
            .cloned()
            .collect();
        for l in idle {
            let owner = match self.cap.store.get(&record_key(&l.id)).await {
                Ok(Some(e)) => serde_json::from_slice::<SessionRecord>(&e.value)
                    .ok()
                    .map(|r| r.owner),
                _ => None,
            };
            if owner.as_ref().is_some_and(|o| *o != self.node_id) {
                // Another replica serves it now: only this replica's copy goes.
                tracing::info!(session = %l.id, owner = ?owner, "idle local copy of a session served elsewhere; dropping it");
                self.live.lock().expect("lock").remove(&l.id);
                l.close().await;
                continue;
            }
            tracing::info!(session = %l.id, binding = %l.binding.name, "session idle past its TTL; closing");
            self.end(&l).await;
        }
    }

    /// Starts a session for a client's `initialize`: connects every upstream with the
    /// client's hello and records the session. Returns the live session and the result to
    /// answer with.
    pub async fn create(
        &self,
        binding: &Arc<Binding>,
        params: &Value,
    ) -> Result<(Arc<Live>, Value), RpcError> {
        if self.live.lock().expect("lock").len() >= self.max_sessions {
            return Err(RpcError::new(
                jsonrpc::code::CONNECTION_CLOSED,
                format!(
                    "this replica serves its maximum of {} sessions; try again later",
                    self.max_sessions
                ),
            )
            .with_data(json!({"reason": "session_limit"})));
        }
        let requested = params
            .get("protocolVersion")
            .and_then(Value::as_str)
            .ok_or_else(|| RpcError::invalid_params("`params.protocolVersion` is required"))?;
        let hello = Hello {
            protocol_version: crate::mcp::version::negotiate_legacy(requested).to_owned(),
            capabilities: params.get("capabilities").cloned().unwrap_or(json!({})),
            client_info: params.get("clientInfo").cloned().unwrap_or(json!({})),
        };
        let connects = binding.upstreams.iter().map(|u| u.connect(&hello, None));
        let results = futures::future::join_all(connects).await;
        let mut leases = Vec::new();
        let mut answers = Vec::new();
        for (i, r) in results.into_iter().enumerate() {
            match r {
                Ok(l) => {
                    answers.push((i, l.answer.clone()));
                    leases.push(Some(l));
                }
                Err(e) => {
                    tracing::warn!(binding = %binding.name, upstream = %binding.upstreams[i].name, error = %e, "upstream unavailable for a new session");
                    if binding.fail_closed() || binding.upstreams.len() == 1 {
                        for l in leases.into_iter().flatten() {
                            if l.owned {
                                l.conn.close().await;
                            }
                        }
                        return Err(e);
                    }
                    leases.push(None);
                }
            }
        }
        let result = binding.merge_initialize(&hello.protocol_version, &answers);
        let mut record = SessionRecord {
            format: RECORD_FORMAT,
            id: new_id(),
            binding: binding.name.clone(),
            protocol_version: result["protocolVersion"]
                .as_str()
                .unwrap_or(&hello.protocol_version)
                .to_owned(),
            hello,
            upstream_sessions: HashMap::new(),
            upstream_versions: HashMap::new(),
            owner: self.node_id.clone(),
            created_ms: now_ms(),
        };
        for (i, l) in leases.iter().enumerate() {
            let name = &binding.upstreams[i].name;
            if let Some(s) = l.as_ref().and_then(|l| l.upstream_session.clone()) {
                record.upstream_sessions.insert(name.clone(), s);
            }
            if let Some(v) = l
                .as_ref()
                .and_then(|l| l.answer["protocolVersion"].as_str())
            {
                record.upstream_versions.insert(name.clone(), v.to_owned());
            }
        }
        self.write_record(&record).await.map_err(|e| {
            RpcError::new(
                jsonrpc::code::INTERNAL_ERROR,
                format!("cannot record the session: {e}"),
            )
        })?;
        let live = self.register(binding, record, leases);
        tracing::info!(session = %live.id, binding = %binding.name, "session started");
        Ok((live, result))
    }

    fn register(
        &self,
        binding: &Arc<Binding>,
        record: SessionRecord,
        leases: Vec<Option<Lease>>,
    ) -> Arc<Live> {
        let now = Instant::now();
        let live = Arc::new(Live {
            id: record.id.clone(),
            binding: binding.clone(),
            record: Mutex::new(record),
            slots: leases
                .iter()
                .map(|_| Slot {
                    lease: AsyncMutex::new(None),
                    failed_at: Mutex::new(None),
                })
                .collect(),
            touched: Mutex::new((now, now)),
            pumps: Mutex::new(Vec::new()),
            // Event ids start from the clock (microseconds), so a session revived from its
            // record (after a restart, or on another replica) keeps numbering upwards and a
            // client's Last-Event-ID stays meaningful.
            events: Arc::new(AtomicU64::new(now_ms() * 1000)),
            closed: std::sync::atomic::AtomicBool::new(false),
            waiters: Mutex::new(HashMap::new()),
            log_level: Mutex::new(None),
            listens: Mutex::new(HashMap::new()),
        });
        for (i, l) in leases.into_iter().enumerate() {
            if let Some(l) = l {
                live.start_pump(i, &l);
                *live.slots[i].lease.try_lock().expect("new session") = Some(l);
            }
        }
        self.live
            .lock()
            .expect("lock")
            .insert(live.id.clone(), live.clone());
        live
    }

    /// The live session for a client's `Mcp-Session-Id`: served here already, or revived from
    /// its record (after a restart with a durable store): upstream HTTP sessions are resumed,
    /// stdio children started anew with the client's hello.
    pub async fn get(&self, binding: &Arc<Binding>, id: &str) -> Result<Arc<Live>, SessionError> {
        let found = self.live.lock().expect("lock").get(id).cloned();
        let live = match found {
            Some(l) => l,
            None => self.revive(binding, id).await?,
        };
        if live.binding.name != binding.name {
            return Err(SessionError::WrongBinding);
        }
        if live.touch(self.idle_ttl) {
            self.refresh(&live).await;
        }
        Ok(live)
    }

    async fn revive(&self, binding: &Arc<Binding>, id: &str) -> Result<Arc<Live>, SessionError> {
        let lock = self
            .reviving
            .lock()
            .expect("lock")
            .entry(id.to_owned())
            .or_default()
            .clone();
        let guard = lock.lock().await;
        let r = self.revive_once(binding, id).await;
        drop(guard);
        self.reviving.lock().expect("lock").remove(id);
        r
    }

    async fn revive_once(
        &self,
        binding: &Arc<Binding>,
        id: &str,
    ) -> Result<Arc<Live>, SessionError> {
        if let Some(l) = self.live.lock().expect("lock").get(id).cloned() {
            return Ok(l);
        }
        let entry = self
            .cap
            .store
            .get(&record_key(id))
            .await
            .map_err(|e| RpcError::new(jsonrpc::code::INTERNAL_ERROR, e.to_string()))?
            .ok_or(SessionError::NotFound)?;
        let record: SessionRecord =
            serde_json::from_slice(&entry.value).map_err(|_| SessionError::NotFound)?;
        if record.format > RECORD_FORMAT {
            return Err(RpcError::new(
                jsonrpc::code::INTERNAL_ERROR,
                format!(
                    "the session was recorded in format {} by a newer mcpg; this replica reads up to {RECORD_FORMAT}",
                    record.format
                ),
            )
            .into());
        }
        if record.binding != binding.name {
            return Err(SessionError::WrongBinding);
        }
        let connects = binding.upstreams.iter().map(|u| {
            let resume = record.upstream_sessions.get(&u.name).map(|s| {
                let version = record
                    .upstream_versions
                    .get(&u.name)
                    .unwrap_or(&record.protocol_version);
                (s.as_str(), version.as_str())
            });
            u.connect(&record.hello, resume)
        });
        let leases: Vec<Option<Lease>> = futures::future::join_all(connects)
            .await
            .into_iter()
            .map(Result::ok)
            .collect();
        let mut record = record;
        record.owner = self.node_id.clone();
        tracing::info!(session = %id, binding = %binding.name, "session revived from its record");
        let live = self.register(binding, record, leases);
        self.refresh(&live).await;
        Ok(live)
    }

    /// Writes a session's record with the idle TTL (created, revived or refreshed).
    async fn write_record(
        &self,
        record: &SessionRecord,
    ) -> mcpg_plugin_api::coordinator::CoordResult<u64> {
        self.cap
            .store
            .put(
                &record_key(&record.id),
                serde_json::to_vec(record).expect("serialisable"),
                Some(self.idle_ttl),
            )
            .await
    }

    async fn refresh(&self, live: &Live) {
        if live.closed.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let record = live.record.lock().expect("lock").clone();
        if let Err(e) = self.write_record(&record).await {
            tracing::warn!(session = %live.id, error = %e, "cannot refresh the session record");
        }
    }

    /// Ends a session: closes its upstream conversations and deletes its record.
    pub async fn end(&self, live: &Arc<Live>) {
        // Closed first (no refresh writes the record back, no new upstream conversation is
        // started), then the record goes, so a request racing the end cannot revive the
        // session from it.
        live.closed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = self.cap.store.delete(&record_key(&live.id), None).await {
            tracing::warn!(session = %live.id, error = %e, "cannot delete the session record");
        }
        self.live.lock().expect("lock").remove(&live.id);
        live.close().await;
        tracing::info!(session = %live.id, "session ended");
    }

    /// Ends every live session (shutdown).
    pub async fn close_all(&self) {
        let all: Vec<_> = self
            .live
            .lock()
            .expect("lock")
            .drain()
            .map(|(_, l)| l)
            .collect();
        for l in all {
            l.close().await;
        }
    }

    /// What the admin API shows of a session: its record, without the client's `initialize`
    /// or the upstream session ids (credentials in all but name), and whether it is live here.
    pub async fn describe(&self, id: &str) -> Option<Value> {
        let entry = self.cap.store.get(&record_key(id)).await.ok()??;
        let record: SessionRecord = serde_json::from_slice(&entry.value).ok()?;
        let live_here = self.live.lock().expect("lock").contains_key(id);
        let mut upstreams: Vec<&String> = record.upstream_sessions.keys().collect();
        upstreams.sort();
        Some(json!({
            "id": record.id,
            "format": record.format,
            "binding": record.binding,
            "protocol_version": record.protocol_version,
            "owner": record.owner,
            "created_ms": record.created_ms,
            "state": if live_here { "live" } else { "recorded" },
            "served_here": live_here,
            "client": record.hello.client_info,
            "upstream_sessions": upstreams,
        }))
    }
}

//! Legacy-era sessions: the record of each session (kept in the `sessions` capability, so it
//! survives this process and, with a cluster coordinator, is visible to every replica) and
//! the live side a replica holds for a session it serves (its upstream conversations).

pub mod placement;

use std::collections::HashMap;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::Mutex as AsyncMutex;
use tokio::time::Instant;

use crate::capabilities::Capability;
use crate::mcp::binding::Binding;
use crate::mcp::cluster::ownership::Ownership;
use crate::mcp::upstream::{Connection, Hello, Lease};
use crate::mcp::wire::jsonrpc::{self, Kind, Message, RpcError};
use mcpg_plugin_api::coordinator::{CasOutcome, Entry};

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
    /// The replica that owns the session (serves it and holds its upstream conversations);
    /// empty once its owner handed it over on shutdown, so any replica may claim it at once.
    pub owner: String,
    /// The fencing token of the owner's ownership lease when it claimed the session. A write
    /// is accepted only from the replica and lease the record names.
    #[serde(default)]
    pub owner_token: u64,
    pub created_ms: u64,
    /// When the owner last saw a request of the session (updated with each refresh of the
    /// record, at most every tenth of the idle TTL). How the cluster finds sessions that were
    /// left idle by a replica that is gone.
    #[serde(default)]
    pub active_ms: u64,
    /// The client's `logging/setLevel` level, for upstreams that speak only 2026-07-28
    /// (stamped on the session's requests there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_level: Option<Value>,
    /// Per upstream name, for upstreams that speak only 2026-07-28: the resource URIs the
    /// client subscribed to (watched by a listen, started again by a replica taking over).
    #[serde(default, skip_serializing_if = "HashMap::is_empty")]
    pub listened: HashMap<String, Vec<String>>,
    /// Who created the session (`token:<name>`, `jwt:<subject>`), on a binding with `auth`.
    /// Only that identity may use it: anyone else presenting the id is told it does not exist.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
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

pub(super) fn record_key(id: &str) -> String {
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
    /// Requests of this session running here now (a session is handed over only when idle).
    busy: AtomicUsize,
    /// Set when state kept in the record (log level, subscriptions) changed here and has not
    /// been written yet.
    dirty: std::sync::atomic::AtomicBool,
}

/// A request of a session running on this replica; see [`Live::begin`].
pub struct Busy(Arc<Live>);

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, SeqCst);
    }
}

impl Live {
    /// Marks a request of this session as running here, unless the session has been let go
    /// (handed over, ended, or its ownership lost): then `None`, and the caller resolves the
    /// session again. Paired with [`Live::let_go_if_idle`] so that a session is never let go
    /// under a running request.
    pub fn begin(self: &Arc<Self>) -> Option<Busy> {
        self.busy.fetch_add(1, SeqCst);
        let b = Busy(self.clone());
        (!self.closed.load(SeqCst)).then_some(b)
    }

    /// Closes the session to new requests if none is running; false if one is.
    fn let_go_if_idle(&self) -> bool {
        if self.busy.load(SeqCst) != 0 {
            return false;
        }
        self.closed.store(true, SeqCst);
        if self.busy.load(SeqCst) != 0 {
            self.closed.store(false, SeqCst);
            return false;
        }
        true
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(SeqCst)
    }

    /// Notes that the record must be written again (see [`Sessions::persist_if_dirty`]).
    pub fn mark_dirty(&self) {
        self.dirty.store(true, SeqCst);
    }

    /// The record as this replica knows it now, live state included.
    fn current_record(&self) -> SessionRecord {
        let mut r = self.record.lock().expect("lock").clone();
        r.log_level = self.log_level.lock().expect("lock").clone();
        r.listened = self
            .listens
            .lock()
            .expect("lock")
            .iter()
            .filter(|(_, (uris, _))| !uris.is_empty())
            .map(|(up, (uris, _))| (self.binding.upstreams[*up].name.clone(), uris.clone()))
            .collect();
        r
    }

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
        self.shut(false).await
    }

    /// Closes the session here; `detach` leaves what another replica can resume (upstream
    /// HTTP sessions) in place.
    async fn shut(&self, detach: bool) {
        self.closed.store(true, SeqCst);
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
                if detach {
                    l.conn.detach().await;
                } else {
                    l.conn.close().await;
                }
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
    /// A forwarded request reached a replica that does not own the session (ownership moved
    /// while it travelled); the forwarding replica looks again.
    #[error("this replica does not own the session")]
    Misdirected,
    /// This replica serves its maximum of sessions (`mcp.sessions.max_sessions`).
    #[error("this replica serves its maximum of {max} sessions; try again later")]
    Limit { max: usize },
    /// The session's owner could not be settled after several attempts.
    #[error("the session's owner could not be settled; try again")]
    Unsettled,
    #[error(transparent)]
    Rpc(#[from] RpcError),
}

pub(super) fn unavailable(message: impl Into<String>) -> SessionError {
    SessionError::Rpc(RpcError::new(jsonrpc::code::INTERNAL_ERROR, message.into()))
}

/// The sessions of this replica: records in the `sessions` capability, live state here.
pub struct Sessions {
    cap: Capability,
    ownership: Arc<Ownership>,
    idle_ttl: Duration,
    live: Mutex<HashMap<String, Arc<Live>>>,
    /// The most sessions served here at once (`mcp.sessions.max_sessions`).
    max_sessions: usize,
    /// Claims in progress and where sessions owned elsewhere were last found.
    placement: placement::Placement,
}

impl Sessions {
    pub fn new(
        cap: Capability,
        ownership: Arc<Ownership>,
        idle_ttl: Duration,
        max_sessions: usize,
    ) -> Arc<Self> {
        let s = Arc::new(Self {
            cap,
            ownership,
            max_sessions,
            idle_ttl,
            live: Mutex::new(HashMap::new()),
            placement: placement::Placement::default(),
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
        // Losing the ownership lease means every session served under it may be claimed by
        // another replica: let them all go (their records are no longer ours to write).
        // The open-sessions gauge, counted here every 2 s rather than at each of the places a
        // session starts, is claimed, ends or is let go.
        let weak = Arc::downgrade(&s);
        tokio::spawn(async move {
            let mut seen: HashMap<String, i64> = HashMap::new();
            loop {
                tokio::time::sleep(Duration::from_secs(2)).await;
                let Some(s) = weak.upgrade() else { return };
                let mut now: HashMap<String, i64> = seen.keys().map(|k| (k.clone(), 0)).collect();
                for l in s.live.lock().expect("lock").values() {
                    *now.entry(l.binding.name.clone()).or_default() += 1;
                }
                drop(s);
                let m = crate::telemetry::metrics::metrics();
                for (b, n) in &now {
                    let before = seen.get(b).copied().unwrap_or(0);
                    if *n != before {
                        m.sessions_open_add(b, n - before);
                    }
                }
                seen = now;
            }
        });
        let weak = Arc::downgrade(&s);
        let mut generations = s.ownership.generations();
        tokio::spawn(async move {
            while generations.changed().await.is_ok() {
                let Some(s) = weak.upgrade() else { return };
                let all: Vec<_> = s.live.lock().expect("lock").drain().collect();
                for (_, l) in all {
                    l.shut(true).await;
                }
            }
        });
        s
    }

    fn node_id(&self) -> &str {
        self.ownership.node_id()
    }

    /// How long a record outlives the last refresh: twice the idle TTL, so that a session
    /// left behind by a replica that died is still there for the sweep to end properly
    /// (its upstream sessions deleted); the store drops it in any case.
    fn record_ttl(&self) -> Duration {
        self.idle_ttl * 2
    }

    /// Ends sessions idle for longer than the TTL whose owner is gone (or which no replica
    /// owns after a hand-over): each is claimed (so no replica serves it meanwhile), its
    /// upstream HTTP sessions are deleted, and its record removed. Run under the cluster-wide
    /// sweeper lease, so by one replica at a time; sessions with a live owner are that
    /// owner's to reap.
    pub async fn sweep(&self, bindings: &[Arc<Binding>]) {
        let entries = match self.cap.store.list("s/").await {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(error = %e, "session sweep: cannot list the session records");
                return;
            }
        };
        let now = now_ms();
        let idle = self.idle_ttl.as_millis() as u64;
        let peers = self.ownership.peers(true).await;
        for e in entries {
            let Ok(rec) = serde_json::from_slice::<SessionRecord>(&e.value) else {
                continue;
            };
            if rec.format > RECORD_FORMAT
                || now.saturating_sub(rec.active_ms.max(rec.created_ms)) <= idle
                || self.live.lock().expect("lock").contains_key(&rec.id)
            {
                continue;
            }
            let orphaned = if rec.owner.is_empty() {
                true
            } else if rec.owner == self.node_id() {
                self.ownership.held()
            } else if peers.contains_key(&rec.owner) {
                false
            } else {
                self.ownership
                    .owner_gone(&rec.owner, Duration::ZERO)
                    .await
                    .unwrap_or(false)
            };
            if !orphaned {
                continue;
            }
            let mut claimed = rec.clone();
            claimed.owner = self.node_id().to_owned();
            claimed.owner_token = self.ownership.token();
            let key = record_key(&rec.id);
            let revision = match self
                .cap
                .store
                .compare_and_swap(
                    &key,
                    e.revision,
                    serde_json::to_vec(&claimed).expect("serialisable"),
                    Some(self.record_ttl()),
                )
                .await
            {
                Ok(CasOutcome::Swapped(r)) => r,
                _ => continue,
            };
            let mut closed = 0;
            if let Some(b) = bindings.iter().find(|b| b.name == rec.binding) {
                for u in &b.upstreams {
                    let Some(sid) = rec.upstream_sessions.get(&u.name) else {
                        continue;
                    };
                    let version = rec
                        .upstream_versions
                        .get(&u.name)
                        .unwrap_or(&rec.protocol_version);
                    if let Ok(l) = u.connect(&rec.hello, Some((sid, version))).await {
                        l.conn.close().await;
                        closed += 1;
                    }
                }
            }
            let _ = self.cap.store.delete(&key, Some(revision)).await;
            tracing::info!(
                session = %rec.id,
                previous_owner = %rec.owner,
                upstream_sessions_closed = closed,
                "idle session of a departed replica cleaned up"
            );
        }
    }

    /// Ends sessions idle for longer than the TTL. Only the owner does this (a session's
    /// requests all reach its owner), so it happens once in the cluster.
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
            tracing::info!(session = %l.id, binding = %l.binding.name, "session idle past its TTL; closing");
            self.end(&l).await;
        }
    }

    /// Starts a session for a client's `initialize`: connects every upstream with the
    /// client's hello and records the session, owned here. Returns the live session and the
    /// result to answer with.
    pub async fn create(
        &self,
        binding: &Arc<Binding>,
        params: &Value,
        identity: Option<&str>,
    ) -> Result<(Arc<Live>, Value), SessionError> {
        if self.live.lock().expect("lock").len() >= self.max_sessions {
            return Err(SessionError::Limit {
                max: self.max_sessions,
            });
        }
        let requested = params
            .get("protocolVersion")
            .and_then(Value::as_str)
            .ok_or_else(|| RpcError::invalid_params("`params.protocolVersion` is required"))?;
        let hello = Hello {
            protocol_version: crate::mcp::wire::version::negotiate_legacy(requested).to_owned(),
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
                        return Err(e.into());
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
            owner: self.node_id().to_owned(),
            owner_token: self.ownership.token(),
            created_ms: now_ms(),
            active_ms: now_ms(),
            log_level: None,
            listened: HashMap::new(),
            identity: identity.map(str::to_owned),
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
        let created = self
            .cap
            .store
            .create(
                &record_key(&record.id),
                serde_json::to_vec(&record).expect("serialisable"),
                Some(self.record_ttl()),
            )
            .await;
        if !matches!(created, Ok(Some(_))) {
            for l in leases.into_iter().flatten() {
                if l.owned {
                    l.conn.close().await;
                }
            }
            let why = match created {
                Err(e) => e.to_string(),
                _ => "a session with this id exists".into(),
            };
            return Err(unavailable(format!("cannot record the session: {why}")));
        }
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
            slots: leases
                .iter()
                .map(|_| Slot {
                    lease: AsyncMutex::new(None),
                    failed_at: Mutex::new(None),
                })
                .collect(),
            touched: Mutex::new((now, now)),
            pumps: Mutex::new(Vec::new()),
            // Event ids start from the clock (microseconds), so a session taken over (after a
            // restart, or by another replica) keeps numbering upwards and a client's
            // Last-Event-ID stays meaningful.
            events: Arc::new(AtomicU64::new(now_ms() * 1000)),
            closed: std::sync::atomic::AtomicBool::new(false),
            waiters: Mutex::new(HashMap::new()),
            log_level: Mutex::new(record.log_level.clone()),
            listens: Mutex::new(HashMap::new()),
            busy: AtomicUsize::new(0),
            dirty: std::sync::atomic::AtomicBool::new(false),
            record: Mutex::new(record),
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

    /// The session's record, checked for format and binding.
    async fn read(
        &self,
        binding: &Arc<Binding>,
        id: &str,
    ) -> Result<(Entry, SessionRecord), SessionError> {
        let entry = self
            .cap
            .store
            .get(&record_key(id))
            .await
            .map_err(|e| unavailable(format!("the sessions store: {e}")))?
            .ok_or(SessionError::NotFound)?;
        let record: SessionRecord =
            serde_json::from_slice(&entry.value).map_err(|_| SessionError::NotFound)?;
        if record.format > RECORD_FORMAT {
            return Err(unavailable(format!(
                "the session was recorded in format {} by a newer mcpg; this replica reads up to {RECORD_FORMAT}",
                record.format
            )));
        }
        if record.binding != binding.name {
            return Err(SessionError::WrongBinding);
        }
        Ok((entry, record))
    }

    /// Whether a session exists for this binding (the GET stream is served by any replica
    /// from the `delivery` capability, without owning the session).
    pub async fn exists(
        &self,
        binding: &Arc<Binding>,
        id: &str,
        identity: Option<&str>,
    ) -> Result<(), SessionError> {
        let (_, record) = self.read(binding, id).await?;
        if record.identity.as_deref() != identity {
            return Err(SessionError::NotFound);
        }
        Ok(())
    }

    /// Writes a live session's record again (TTL refresh, new upstream session ids), fenced:
    /// only while the record still names this replica and its lease's token. A refused write
    /// means the session was claimed elsewhere: this replica lets it go.
    async fn refresh(&self, live: &Arc<Live>) {
        if live.is_closed() {
            return;
        }
        live.dirty.store(false, SeqCst);
        live.record.lock().expect("lock").active_ms = now_ms();
        let record = live.current_record();
        match self
            .fenced(&record, |e| {
                let r = record.clone();
                async move {
                    self.cap
                        .store
                        .compare_and_swap(
                            &record_key(&r.id),
                            e.revision,
                            serde_json::to_vec(&r).expect("serialisable"),
                            Some(self.record_ttl()),
                        )
                        .await
                        .map(|o| matches!(o, CasOutcome::Swapped(_)))
                }
            })
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(session = %live.id, "the session is owned elsewhere now; letting go of it here");
                self.let_go(live).await;
            }
            Err(e) => {
                tracing::warn!(session = %live.id, error = %e, "cannot refresh the session record")
            }
        }
    }

    /// Writes the record now if state kept in it changed (after a `logging/setLevel` or a
    /// subscription), so that a replica taking the session over has it.
    pub async fn persist_if_dirty(&self, live: &Arc<Live>) {
        if live.dirty.load(SeqCst) {
            self.refresh(live).await;
        }
    }

    /// Runs `write` on the stored record only if it still names this replica and `record`'s
    /// token; false when fenced off (or the record is gone).
    async fn fenced<F, Fut>(
        &self,
        record: &SessionRecord,
        write: F,
    ) -> mcpg_plugin_api::coordinator::CoordResult<bool>
    where
        F: FnOnce(Entry) -> Fut,
        Fut: std::future::Future<Output = mcpg_plugin_api::coordinator::CoordResult<bool>>,
    {
        let Some(entry) = self.cap.store.get(&record_key(&record.id)).await? else {
            return Ok(false);
        };
        let Ok(stored) = serde_json::from_slice::<SessionRecord>(&entry.value) else {
            return Ok(false);
        };
        if stored.owner != self.node_id() || stored.owner_token != record.owner_token {
            return Ok(false);
        }
        write(entry).await
    }

    /// Drops this replica's copy of a session another replica now owns.
    async fn let_go(&self, live: &Arc<Live>) {
        self.live.lock().expect("lock").remove(&live.id);
        live.shut(true).await;
    }

    /// Ends a session: closes its upstream conversations and deletes its record (fenced: a
    /// replica that no longer owns the session only drops its copy).
    pub async fn end(&self, live: &Arc<Live>) {
        // Closed first (no refresh writes the record back, no new upstream conversation is
        // started), then the record goes, so a request racing the end cannot revive the
        // session from it.
        live.closed.store(true, SeqCst);
        let record = live.record.lock().expect("lock").clone();
        let key = record_key(&record.id);
        let deleted = self
            .fenced(&record, |e| async move {
                self.cap.store.delete(&key, Some(e.revision)).await
            })
            .await;
        self.live.lock().expect("lock").remove(&live.id);
        match deleted {
            Ok(true) => {
                live.close().await;
                tracing::info!(session = %live.id, "session ended");
            }
            Ok(false) => {
                live.shut(true).await;
                tracing::info!(session = %live.id, "session owned elsewhere; dropped the copy here");
            }
            Err(e) => {
                live.close().await;
                tracing::warn!(session = %live.id, error = %e, "cannot delete the session record");
            }
        }
    }

    /// Shutdown: hands every session served here back to the cluster (its record says it has
    /// no owner, so the next request for it is served by another replica at once), each as
    /// soon as no request of it is running here, and all of them by `deadline`.
    pub async fn hand_over_all(&self, deadline: Instant) {
        loop {
            let all: Vec<Arc<Live>> = self.live.lock().expect("lock").values().cloned().collect();
            if all.is_empty() {
                return;
            }
            let late = Instant::now() >= deadline;
            for l in all {
                if late {
                    l.closed.store(true, SeqCst);
                } else if !l.let_go_if_idle() {
                    continue;
                }
                self.hand_over(&l).await;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn hand_over(&self, live: &Arc<Live>) {
        let mut record = live.current_record();
        let token = record.owner_token;
        record.owner = String::new();
        record.owner_token = 0;
        let id = record.id.clone();
        let fence = SessionRecord {
            owner: self.node_id().to_owned(),
            owner_token: token,
            ..record.clone()
        };
        let r = self
            .fenced(&fence, |e| async move {
                self.cap
                    .store
                    .compare_and_swap(
                        &record_key(&id),
                        e.revision,
                        serde_json::to_vec(&record).expect("serialisable"),
                        Some(self.record_ttl()),
                    )
                    .await
                    .map(|o| matches!(o, CasOutcome::Swapped(_)))
            })
            .await;
        if let Err(e) = r {
            tracing::warn!(session = %live.id, error = %e, "cannot hand the session over; it is taken over once the ownership lease expires");
        }
        self.let_go(live).await;
        tracing::info!(session = %live.id, "session handed over");
    }

    /// Lets go of every live session without touching records (shutdown after the hand-over;
    /// nothing should be left).
    pub async fn close_all(&self) {
        let all: Vec<_> = self
            .live
            .lock()
            .expect("lock")
            .drain()
            .map(|(_, l)| l)
            .collect();
        for l in all {
            l.shut(true).await;
        }
    }

    /// How many sessions this replica serves now.
    pub fn live_count(&self) -> usize {
        self.live.lock().expect("lock").len()
    }

    /// What the admin API shows of a session: its record, without the client's `initialize`
    /// or the upstream session ids (credentials in all but name), and whether it is live here.
    pub async fn describe(&self, id: &str) -> Option<Value> {
        let entry = self.cap.store.get(&record_key(id)).await.ok()??;
        let record: SessionRecord = serde_json::from_slice(&entry.value).ok()?;
        let live_here = self.live.lock().expect("lock").contains_key(id);
        let mut upstreams: Vec<&String> = record.upstream_sessions.keys().collect();
        upstreams.sort();
        let state = if live_here {
            "live"
        } else if record.owner.is_empty() {
            "handed_over"
        } else {
            "recorded"
        };
        Some(json!({
            "id": record.id,
            "format": record.format,
            "binding": record.binding,
            "protocol_version": record.protocol_version,
            "owner": if record.owner.is_empty() { Value::Null } else { json!(record.owner) },
            "owner_token": record.owner_token,
            "created_ms": record.created_ms,
            "state": state,
            "served_here": live_here,
            "client": record.hello.client_info,
            "upstream_sessions": upstreams,
            "log_level": record.log_level,
            "subscriptions": record.listened,
        }))
    }
}

//! A session this replica serves right now: its upstream conversations (reconnected with the
//! client's recorded hello when one dies), the pumps that carry what upstreams send outside
//! requests to the client's GET stream, and the count of requests running on it.

use std::collections::HashMap;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::sync::Mutex as AsyncMutex;
use tokio::time::Instant;

use super::Services;
use super::record::{SessionRecord, now_ms};
use crate::mcp::binding::Binding;
use crate::mcp::route::names::UpstreamIdx;
use crate::mcp::upstream::{Connection, Conversations, Link, expand};
use crate::mcp::wire::jsonrpc::{self, Kind, Message, RpcError};
use crate::mcp::wire::version::Era;

/// The resource URIs a session subscribed to on one upstream that speaks only 2026-07-28, and
/// the listen watching them.
pub type Listen = (Vec<String>, Option<tokio::task::JoinHandle<()>>);

/// One upstream's place in a live session.
pub struct Slot {
    pub(super) link: AsyncMutex<Option<Link>>,
    /// When the last reconnect attempt failed, to pace retries.
    pub(super) failed_at: Mutex<Option<Instant>>,
}

/// A session this replica serves right now.
pub struct Live {
    pub id: String,
    pub binding: Arc<Binding>,
    /// Delivery, server requests and cancellation on this replica.
    pub services: Arc<Services>,
    pub record: Mutex<SessionRecord>,
    pub slots: Vec<Slot>,
    pub(super) touched: Mutex<(Instant, Instant)>,
    /// When it started being served here.
    pub(super) started: Instant,
    /// Whether the client has sent a request since `initialize` (a session taken over from
    /// another replica counts as used).
    pub(super) used: std::sync::atomic::AtomicBool,
    pub(super) pumps: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// The last event id given to a GET-stream message of this session.
    pub events: Arc<AtomicU64>,
    /// Set once the session has ended here: no new upstream conversations are started for it
    /// (a request already in flight when it ended must not leave children behind).
    pub(super) closed: std::sync::atomic::AtomicBool,
    /// Answers this replica awaits from the client itself (input requests of an upstream
    /// that speaks only 2026-07-28, asked as server requests), by request id.
    pub waiters: Mutex<HashMap<String, tokio::sync::oneshot::Sender<Message>>>,
    /// The level from the client's `logging/setLevel`, stamped on requests to upstreams that
    /// speak only 2026-07-28.
    pub log_level: Mutex<Option<Value>>,
    /// Per such upstream: the URIs the client subscribed to and the listen that watches them.
    pub listens: Mutex<HashMap<UpstreamIdx, Listen>>,
    /// Requests of this session running here now (a session is handed over only when idle).
    pub(super) busy: AtomicUsize,
    /// Set when state kept in the record (log level, subscriptions) changed here and has not
    /// been written yet.
    pub(super) dirty: std::sync::atomic::AtomicBool,
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
    pub(super) fn let_go_if_idle(&self) -> bool {
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
    pub(super) fn current_record(&self) -> SessionRecord {
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

    /// The fencing check made just before a request of this session is handed to an
    /// upstream: this replica proves its ownership lease now and serves the session under
    /// that lease's token. The fencing token for upstreams that take one
    /// (`upstreams[].fencing_token`): the session's ownership epoch, which grows with every
    /// claim of the session (the lease token does not: each replica's lease counts its own).
    pub fn fence(&self) -> Result<u64, RpcError> {
        let o = &self.services.ownership;
        let (token, epoch) = {
            let r = self.record.lock().expect("lock");
            (r.owner_token, r.epoch)
        };
        if self.is_closed() || !o.provable() || token != o.token() {
            return Err(RpcError::new(
                jsonrpc::code::INTERNAL_ERROR,
                "this replica cannot prove now that it still owns the session; the request was not run; try again",
            ));
        }
        Ok(epoch)
    }

    /// The live conversation with upstream `up`, reconnecting (with the client's recorded
    /// hello) when it has died, at most once per second.
    pub async fn conn(&self, up: UpstreamIdx) -> Result<Connection, RpcError> {
        self.conn_and_era(up).await.map(|(c, _)| c)
    }

    /// [`Live::conn`], and the era the conversation speaks (2026-07-28 when the upstream
    /// speaks only that, so the session's requests must be stamped), under one lock.
    pub async fn conn_and_era(&self, up: UpstreamIdx) -> Result<(Connection, Era), RpcError> {
        let slot = &self.slots[up];
        let mut link = slot.link.lock().await;
        if let Some(l) = link.as_ref()
            && !l.conn.is_closed()
        {
            return Ok((l.conn.clone(), era_of(l)));
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
            return Err(upstream.unavailable());
        }
        let (hello, pin) = {
            let r = self.record.lock().expect("lock");
            (
                r.hello.clone(),
                r.upstream_endpoints.get(&upstream.name).cloned(),
            )
        };
        match upstream.connect_pinned(&hello, None, pin.as_deref()).await {
            Ok(l) => {
                tracing::info!(session = %self.id, upstream = %upstream.name, endpoint = l.endpoint.as_deref().unwrap_or_default(), "reconnected upstream");
                let conn = (l.conn.clone(), era_of(&l));
                let mut r = self.record.lock().expect("lock");
                if let Some(s) = &l.upstream_session {
                    r.upstream_sessions.insert(upstream.name.clone(), s.clone());
                }
                if let Some(e) = upstream.pin_of(&l) {
                    r.upstream_endpoints.insert(upstream.name.clone(), e);
                }
                drop(r);
                // A takeover must resume this conversation (its endpoint, its upstream
                // session), not the dead one: the record is written after this request.
                self.mark_dirty();
                self.start_pump(up, &l);
                *link = Some(l);
                *slot.failed_at.lock().expect("lock") = None;
                Ok(conn)
            }
            Err(e) => {
                *slot.failed_at.lock().expect("lock") = Some(Instant::now());
                Err(e)
            }
        }
    }

    /// The position in upstream `up`'s pool of the endpoint this session is pinned to (the
    /// only one of a single-endpoint upstream).
    pub fn endpoint_index(&self, up: UpstreamIdx) -> usize {
        let pool = &self.binding.upstreams[up];
        let r = self.record.lock().expect("lock");
        r.upstream_endpoints
            .get(&pool.name)
            .and_then(|e| pool.endpoint(e))
            .unwrap_or(0)
    }

    /// Whether upstream `up` serves this session through its 2026-07-28 conversation.
    pub async fn is_modern(&self, up: UpstreamIdx) -> bool {
        self.slots[up]
            .link
            .lock()
            .await
            .as_ref()
            .is_some_and(|l| l.modern)
    }

    /// Forwards what an upstream sends outside any request to the client's GET stream.
    pub(super) fn start_pump(&self, up: UpstreamIdx, link: &Link) {
        if link.modern {
            // A 2026-07-28 conversation sends nothing outside requests and listens.
            return;
        }
        let mut rx = link.conn.unsolicited();
        let owned = link.owned;
        let binding = self.binding.clone();
        let services = self.services.clone();
        let sid = self.id.clone();
        let conn = link.conn.clone();
        let events = self.events.clone();
        let h = tokio::spawn(async move {
            loop {
                let m = tokio::select! {
                    m = rx.recv() => m,
                    _ = conn.closed() => return,
                };
                let mut m = match m {
                    Ok(m) => m,
                    Err(crate::mcp::upstream::unsolicited::RecvError::Lagged(n)) => {
                        tracing::warn!(session = %sid, skipped = n, "client too slow; upstream messages dropped");
                        continue;
                    }
                    Err(_) => return,
                };
                // Handling a message is boxed: the pump then holds only its wait while idle,
                // and there is one pump per upstream of every session (per-session memory).
                match jsonrpc::kind(&m) {
                    Kind::Notification => {
                        binding.naming.notification_out(up, &mut m);
                        Box::pin(services.delivery.deliver(&sid, &events, &m)).await;
                    }
                    // A shared child's requests cannot be attributed to one client; its
                    // supervisor answers them.
                    Kind::Request if owned => {
                        let name = &binding.upstreams[up].name;
                        let relayed = Box::pin(async {
                            let m = services
                                .server_requests
                                .to_client_request(&sid, name, m)
                                .await?;
                            services.delivery.deliver(&sid, &events, &m).await;
                            anyhow::Ok(())
                        });
                        if let Err(e) = relayed.await {
                            tracing::warn!(session = %sid, error = %e, "cannot relay a server request")
                        }
                    }
                    _ => {}
                }
            }
        });
        let mut pumps = self.pumps.lock().expect("lock");
        pumps.retain(|p| !p.is_finished());
        pumps.push(h);
    }

    /// Notes activity; returns true when the record's TTL should be refreshed.
    pub(super) fn touch(&self, ttl: Duration) -> bool {
        let mut t = self.touched.lock().expect("lock");
        t.0 = Instant::now();
        if t.1.elapsed() > ttl / 10 {
            t.1 = Instant::now();
            true
        } else {
            false
        }
    }

    /// Notes that the client sent a request on this session.
    pub fn mark_used(&self) {
        self.used.store(true, SeqCst);
    }

    /// Whether it is past its TTL: `unused_ttl` after it started while it has sent no
    /// request, else `idle_ttl` after its last activity.
    pub(super) fn expired(&self, idle_ttl: Duration, unused_ttl: Duration) -> bool {
        if !self.used.load(SeqCst) && self.started.elapsed() > unused_ttl {
            return true;
        }
        self.idle_for() > idle_ttl
    }

    pub(super) fn idle_for(&self) -> Duration {
        self.touched.lock().expect("lock").0.elapsed()
    }

    pub(super) async fn close(&self) {
        self.shut(false).await
    }

    /// Closes the session here; `detach` leaves what another replica can resume (upstream
    /// HTTP sessions) in place.
    pub(super) async fn shut(&self, detach: bool) {
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
            if let Some(l) = slot.link.lock().await.take()
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

    /// Adds the session's per-request `_meta` (what its client's `initialize` declared, and
    /// its log level) to request params for an upstream that speaks only 2026-07-28.
    pub fn stamp(&self, params: &mut serde_json::Map<String, Value>) {
        let (caps, info) = {
            let record = self.record.lock().expect("lock");
            (
                expand(&record.hello.capabilities),
                expand(&record.hello.client_info),
            )
        };
        let level = self.log_level.lock().expect("lock").clone();
        let caps = if caps.is_object() {
            caps
        } else {
            serde_json::json!({})
        };
        crate::mcp::wire::meta::stamp(params, caps, info, level);
    }

    /// A client notification: cancellations go through the `cancellation` bus to wherever
    /// the request runs; the rest reach every upstream of the session.
    pub async fn client_notification(&self, m: Message) {
        match jsonrpc::method(&m) {
            Some("notifications/initialized") => {}
            Some("notifications/cancelled") => {
                let params = m.get("params").cloned().unwrap_or(Value::Null);
                let payload = serde_json::json!({"requestId": params["requestId"], "reason": params["reason"]});
                if let Err(e) = self
                    .services
                    .cancellation
                    .bus
                    .publish(&format!("s.{}", self.id), payload.to_string().into_bytes())
                    .await
                {
                    tracing::warn!(session = %self.id, error = %e, "cannot publish a cancellation");
                }
            }
            _ => self.notify_all(&m).await,
        }
    }

    /// Sends a client notification to every upstream this session is connected to.
    pub async fn notify_all(&self, m: &Message) {
        for slot in &self.slots {
            let conn = slot
                .link
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

impl Live {
    /// A session served here from now on, with the upstream conversations it has.
    pub(super) fn new(
        binding: &Arc<Binding>,
        services: Arc<Services>,
        record: SessionRecord,
        links: Vec<Option<Link>>,
    ) -> Arc<Self> {
        let now = Instant::now();
        let live = Arc::new(Live {
            id: record.id.clone(),
            binding: binding.clone(),
            services,
            slots: links
                .iter()
                .map(|_| Slot {
                    link: AsyncMutex::new(None),
                    failed_at: Mutex::new(None),
                })
                .collect(),
            touched: Mutex::new((now, now)),
            started: now,
            used: std::sync::atomic::AtomicBool::new(true),
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
        for (i, l) in links.into_iter().enumerate() {
            if let Some(l) = l {
                live.start_pump(UpstreamIdx(i), &l);
                *live.slots[i].link.try_lock().expect("new session") = Some(l);
            }
        }
        live
    }
}

fn era_of(l: &Link) -> Era {
    if l.modern { Era::Modern } else { Era::Legacy }
}

#[async_trait::async_trait]
impl Conversations for Live {
    async fn conn(&self, up: UpstreamIdx) -> Result<Connection, RpcError> {
        Live::conn(self, up).await
    }

    async fn prepare(&self, up: UpstreamIdx, params: &mut serde_json::Map<String, Value>) {
        if self.is_modern(up).await {
            self.stamp(params);
        }
    }
}

impl Live {
    /// Watches `uris` on upstream `up` (which speaks only 2026-07-28) for this session: one
    /// `subscriptions/listen` whose notifications go to the session's GET stream. Also how a
    /// session taken over by another replica gets its subscriptions back.
    pub async fn watch(
        self: &Arc<Self>,
        up: UpstreamIdx,
        conn: &Connection,
        uris: Vec<String>,
    ) -> Result<Value, RpcError> {
        let mut req = jsonrpc::request(
            serde_json::json!(0),
            "subscriptions/listen",
            Some(serde_json::json!({"notifications": {"resourceSubscriptions": uris}})),
        );
        self.stamp(jsonrpc::params_mut(&mut req));
        let mut ex = conn.request(req).await.map_err(|e| e.to_rpc())?;
        ex.cancel_on_drop();
        ex.set_unattributable();
        let session = self.clone();
        let h = tokio::spawn(async move {
            let b = &session.binding;
            while let Some(mut m) = ex.next().await {
                if jsonrpc::kind(&m) != Kind::Notification
                    || jsonrpc::method(&m) == Some("notifications/subscriptions/acknowledged")
                {
                    continue;
                }
                b.naming.notification_out(up, &mut m);
                session
                    .services
                    .delivery
                    .deliver(&session.id, &session.events, &m)
                    .await;
            }
        });
        let mut listens = self.listens.lock().expect("lock");
        let entry = listens.entry(up).or_insert_with(|| (uris, None));
        if let Some(old) = entry.1.replace(h) {
            // A concurrent subscribe started one too; only the latest set is watched.
            old.abort();
        }
        Ok(serde_json::json!({}))
    }
}

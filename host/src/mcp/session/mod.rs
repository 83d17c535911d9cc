//! Legacy-era sessions: records in the `sessions` capability ([`record`]), so a session
//! survives this process and every replica sees it; the live side a replica holds for each
//! session it serves ([`live`]); where a request's session is served and every failover
//! decision ([`placement`]); idle reaping and the cluster-wide sweep ([`sweep`]). This file is
//! the registry: starting, refreshing (fenced), ending and handing over sessions.

pub mod delivery;
pub mod live;
pub mod placement;
pub mod record;
pub mod server_requests;
pub mod sweep;

use std::collections::HashMap;
use std::sync::atomic::Ordering::SeqCst;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use crate::capabilities::Capability;
use crate::mcp::binding::Binding;
use crate::mcp::cluster::ownership::Ownership;
use crate::mcp::route::fanout;
use crate::mcp::route::names::UpstreamIdx;
use crate::mcp::upstream::{Hello, Link, compact, expand};
use crate::mcp::wire::jsonrpc::{self, RpcError};
use mcpg_plugin_api::coordinator::{CasOutcome, Entry};

pub use live::{Busy, Live};

use crate::mcp::relay::cancel::Inflight;
use delivery::Delivery;
use server_requests::ServerRequests;

/// What live sessions use on this replica besides their records.
pub struct Services {
    /// Messages for legacy sessions' GET streams.
    pub delivery: Delivery,
    /// Server-to-client requests awaiting the client's answer.
    pub server_requests: ServerRequests,
    /// Requests running here, for cancellation.
    pub inflight: Arc<Inflight>,
    /// The `cancellation` capability: a client's cancellation reaches wherever its request runs.
    pub cancellation: Capability,
    /// This replica's ownership lease: a session's request reaches an upstream only while it
    /// is provably held ([`Live::fence`]).
    pub ownership: Arc<Ownership>,
}
use record::record_key;
pub use record::{RECORD_FORMAT, SessionRecord, new_id, now_ms};

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
    /// This replica owns the session but cannot prove now that it still holds its ownership
    /// lease (the backend stalls, or this process was paused): the request is not run.
    #[error(
        "this replica cannot prove now that it still owns the session (its cluster backend has not answered it recently, or it was paused); the request was not run; try again"
    )]
    Fenced,
    #[error(transparent)]
    Rpc(#[from] RpcError),
}

pub(super) fn unavailable(message: impl Into<String>) -> SessionError {
    SessionError::Rpc(RpcError::new(jsonrpc::code::INTERNAL_ERROR, message.into()))
}

/// The sessions of this replica: records in the `sessions` capability, live state here.
pub struct Sessions {
    cap: Capability,
    services: Arc<Services>,
    ownership: Arc<Ownership>,
    idle_ttl: Duration,
    /// How long a session that has sent no request since `initialize` lives
    /// (`mcp.sessions.unused_ttl_ms`, at most `idle_ttl`).
    unused_ttl: Duration,
    live: Mutex<HashMap<String, Arc<Live>>>,
    /// The most sessions served here at once (`mcp.sessions.max_sessions`).
    max_sessions: usize,
    /// Claims in progress and where sessions owned elsewhere were last found.
    placement: placement::Placement,
}

impl Sessions {
    pub fn new(
        cap: Capability,
        services: Arc<Services>,
        ownership: Arc<Ownership>,
        (idle_ttl, unused_ttl): (Duration, Duration),
        max_sessions: usize,
    ) -> Arc<Self> {
        let unused_ttl = unused_ttl.min(idle_ttl);
        let s = Arc::new(Self {
            cap,
            services,
            ownership,
            max_sessions,
            idle_ttl,
            unused_ttl,
            live: Mutex::new(HashMap::new()),
            placement: placement::Placement::default(),
        });
        let weak = Arc::downgrade(&s);
        let every = (unused_ttl / 4).clamp(Duration::from_millis(250), Duration::from_secs(30));
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
        // Losing the ownership lease stops every request here (`Ownership::provable`) but
        // keeps the sessions and their upstream conversations: once the lease is taken again,
        // each session whose record still names the old token is claimed back under the new
        // one, and only those another replica took over meanwhile are let go.
        let weak = Arc::downgrade(&s);
        let mut retaken = s.ownership.retaken();
        tokio::spawn(async move {
            while retaken.changed().await.is_ok() {
                let Some(s) = weak.upgrade() else { return };
                let all: Vec<_> = s.live.lock().expect("lock").values().cloned().collect();
                for l in all {
                    s.reclaim(&l).await;
                }
            }
        });
        s
    }

    pub fn node_id(&self) -> &str {
        self.ownership.node_id()
    }

    /// How long a record outlives the last refresh: twice the idle TTL, so that a session
    /// left behind by a replica that died is still there for the sweep to end properly
    /// (its upstream sessions deleted); the store drops it in any case.
    fn record_ttl(&self) -> Duration {
        self.idle_ttl * 2
    }

    /// Starts a session for a client's `initialize`: connects every upstream with the
    /// client's hello and records the session, owned here. Returns the live session and the
    /// result to answer with. The caller (for `max_children_per_caller`) is `identity` when
    /// there is one, else the client's address `addr`.
    pub async fn create(
        &self,
        binding: &Arc<Binding>,
        params: &Value,
        identity: Option<&str>,
        addr: Option<std::net::IpAddr>,
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
            capabilities: compact(params.get("capabilities").unwrap_or(&json!({}))),
            client_info: compact(params.get("clientInfo").unwrap_or(&json!({}))),
            caller: identity
                .map(|i| format!("id:{i}"))
                .or_else(|| addr.map(|a| format!("addr:{a}"))),
        };
        let links = connect_all(binding, &hello).await?;
        let answers: Vec<(UpstreamIdx, Value)> = links
            .iter()
            .enumerate()
            .filter_map(|(i, l)| Some((UpstreamIdx(i), Value::clone(&l.as_ref()?.answer))))
            .collect();
        let result = fanout::merge_initialize(binding, &hello.protocol_version, &answers);
        let record = self.new_record(binding, &result, hello, &links, identity);
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
            close_all(links).await;
            let why = match created {
                Err(e) => e.to_string(),
                _ => "a session with this id exists".into(),
            };
            return Err(unavailable(format!("cannot record the session: {why}")));
        }
        let live = self.register(binding, record, links);
        // Unused until its first request: until then `unused_ttl` applies.
        live.used.store(false, SeqCst);
        tracing::info!(session = %live.id, binding = %binding.name, "session started");
        Ok((live, result))
    }

    /// The record of a session starting here, owned by this replica under its lease.
    fn new_record(
        &self,
        binding: &Binding,
        result: &Value,
        hello: Hello,
        links: &[Option<Link>],
        identity: Option<&str>,
    ) -> SessionRecord {
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
            upstream_endpoints: HashMap::new(),
            owner: self.node_id().to_owned(),
            owner_token: self.ownership.token(),
            epoch: 1,
            created_ms: now_ms(),
            active_ms: now_ms(),
            log_level: None,
            listened: HashMap::new(),
            identity: identity.map(str::to_owned),
        };
        for (i, l) in links.iter().enumerate() {
            let Some(l) = l else { continue };
            let name = &binding.upstreams[i].name;
            if let Some(s) = &l.upstream_session {
                record.upstream_sessions.insert(name.clone(), s.clone());
            }
            if let Some(v) = l.answer["protocolVersion"].as_str() {
                record.upstream_versions.insert(name.clone(), v.to_owned());
            }
            if let Some(e) = binding.upstreams[i].pin_of(l) {
                record.upstream_endpoints.insert(name.clone(), e);
            }
        }
        record
    }

    fn register(
        &self,
        binding: &Arc<Binding>,
        record: SessionRecord,
        links: Vec<Option<Link>>,
    ) -> Arc<Live> {
        let live = Live::new(binding, self.services.clone(), record, links);
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
        if !self.ownership.provable() {
            // Nothing is written without a proven lease; a session another replica took over
            // meanwhile (or whose record is gone) is let go all the same.
            let record = live.current_record();
            if let Ok(false) = self.fenced(&record, |_| async { Ok(true) }).await {
                self.lose(live).await;
            }
            return;
        }
        live.dirty.store(false, SeqCst);
        live.record.lock().expect("lock").active_ms = now_ms();
        let record = live.current_record();
        match self
            .fenced(&record, |e| self.swap_record(e.revision, &record))
            .await
        {
            Ok(true) => {}
            Ok(false) => self.lose(live).await,
            Err(e) => {
                tracing::warn!(session = %live.id, error = %e, "cannot refresh the session record")
            }
        }
    }

    /// A session whose record no longer names this replica and its token: let go when another
    /// replica owns it now (its upstream HTTP sessions are left to that replica); closed, with
    /// its upstream sessions, when the record is gone (the backend lost it: nobody can resume
    /// them, and the client's next request gets 404 and initialises again).
    async fn lose(&self, live: &Arc<Live>) {
        match self.cap.store.get(&record_key(&live.id)).await {
            Ok(None) => {
                tracing::warn!(session = %live.id, "the session's record is gone from the cluster backend; ending the session here");
                self.live.lock().expect("lock").remove(&live.id);
                live.close().await;
            }
            _ => {
                tracing::warn!(session = %live.id, "the session is owned elsewhere now; letting go of it here");
                self.let_go(live).await;
            }
        }
    }

    /// After this replica's ownership lease was lost and taken again: claims `live` back by
    /// compare-and-swap if its record still names this replica and the token it was served
    /// under (nobody took it over), keeping its upstream conversations; otherwise lets it go.
    /// True when the session is served here under the current token.
    pub(super) async fn reclaim(&self, live: &Arc<Live>) -> bool {
        let token = self.ownership.token();
        if live.record.lock().expect("lock").owner_token == token {
            return !live.is_closed();
        }
        if live.is_closed() {
            return false;
        }
        let mut record = live.current_record();
        let old = record.owner_token;
        record.owner_token = token;
        record.epoch += 1;
        record.active_ms = now_ms();
        let fence = SessionRecord {
            owner_token: old,
            ..record.clone()
        };
        let won = self
            .fenced(&fence, |e| self.swap_record(e.revision, &record))
            .await;
        match won {
            Ok(true) => {
                {
                    let mut r = live.record.lock().expect("lock");
                    r.owner_token = token;
                    r.epoch = record.epoch;
                }
                tracing::info!(session = %live.id, old_token = old, token, "session claimed back under the new ownership lease; its upstream conversations are kept");
                true
            }
            Ok(false) => {
                self.lose(live).await;
                false
            }
            Err(e) => {
                tracing::warn!(session = %live.id, error = %e, "cannot claim the session back yet");
                false
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

    /// Writes `record` over the stored one if that is still at `revision` (compare-and-swap,
    /// with the record's TTL): true when the write went through.
    pub(super) async fn swap_record(
        &self,
        revision: u64,
        record: &SessionRecord,
    ) -> mcpg_plugin_api::coordinator::CoordResult<bool> {
        self.cap
            .store
            .compare_and_swap(
                &record_key(&record.id),
                revision,
                serde_json::to_vec(record).expect("serialisable"),
                Some(self.record_ttl()),
            )
            .await
            .map(|o| matches!(o, CasOutcome::Swapped(_)))
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

    /// Every session served here that `pick` picks.
    fn picked(&self, pick: &(dyn Fn(&Live) -> bool + Sync)) -> Vec<Arc<Live>> {
        self.live
            .lock()
            .expect("lock")
            .values()
            .filter(|l| pick(l))
            .cloned()
            .collect()
    }

    /// Ends every session of the binding `name` served here (a config reload removed it);
    /// how many.
    pub async fn end_binding(&self, name: &str) -> usize {
        self.end_where(&|l| l.binding.name == name).await
    }

    /// Ends every session served here that `pick` picks; how many.
    pub async fn end_where(&self, pick: &(dyn Fn(&Live) -> bool + Sync)) -> usize {
        let ending = self.picked(pick);
        for live in &ending {
            self.end(live).await;
        }
        ending.len()
    }

    /// A config reload changed the upstreams of the binding `name`: each of its sessions
    /// served here is handed over as at shutdown (once idle, all by `deadline`), its record
    /// forgetting its conversations with the upstreams in `forget` (replaced or removed), so
    /// that the next request claims it on the new binding: kept upstreams resumed, new ones
    /// initialised with the client's recorded hello. How many moved.
    pub async fn move_binding(&self, name: &str, forget: &[String], deadline: Instant) -> usize {
        self.move_where(&|l| l.binding.name == name, forget, deadline)
            .await
    }

    /// [`Sessions::move_binding`] for the sessions `pick` picks.
    pub async fn move_where(
        &self,
        pick: &(dyn Fn(&Live) -> bool + Sync),
        forget: &[String],
        deadline: Instant,
    ) -> usize {
        self.hand_over_where(pick, forget, deadline, true).await
    }

    /// Hands over each session `pick` picks once no request of it runs (all by `deadline`),
    /// its record forgetting the upstreams in `forget`; with `moved`, its client is told that
    /// the lists it holds may be stale. How many.
    async fn hand_over_where(
        &self,
        pick: &(dyn Fn(&Live) -> bool + Sync),
        forget: &[String],
        deadline: Instant,
        moved: bool,
    ) -> usize {
        let mut done = 0;
        loop {
            let all = self.picked(pick);
            if all.is_empty() {
                return done;
            }
            let late = Instant::now() >= deadline;
            for l in all {
                if late {
                    l.closed.store(true, SeqCst);
                } else if !l.let_go_if_idle() {
                    continue;
                }
                self.hand_over_forgetting(&l, forget).await;
                if moved {
                    tell_lists_changed(&l).await;
                }
                done += 1;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// [`Sessions::move_binding`] for one session, found by a request that arrived on the new
    /// binding before the reload moved it.
    pub(super) async fn move_session(
        &self,
        live: &Arc<Live>,
        forget: &[String],
        deadline: Instant,
    ) {
        while !live.let_go_if_idle() {
            if Instant::now() >= deadline {
                live.closed.store(true, SeqCst);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.hand_over_forgetting(live, forget).await;
        tell_lists_changed(live).await;
    }

    /// Shutdown: hands every session served here back to the cluster (its record says it has
    /// no owner, so the next request for it is served by another replica at once), each as
    /// soon as no request of it is running here, and all of them by `deadline`.
    pub async fn hand_over_all(&self, deadline: Instant) {
        self.hand_over_where(&|_| true, &[], deadline, false).await;
    }

    /// Hands one session over as at shutdown (the tests' way to stage a hand-over).
    #[cfg(test)]
    async fn hand_over(&self, live: &Arc<Live>) {
        self.hand_over_forgetting(live, &[]).await;
    }

    /// Hands a session over, its record forgetting the upstreams in `forget`.
    async fn hand_over_forgetting(&self, live: &Arc<Live>, forget: &[String]) {
        let mut record = live.current_record();
        for name in forget {
            record.upstream_sessions.remove(name);
            record.upstream_versions.remove(name);
            record.upstream_endpoints.remove(name);
        }
        let token = record.owner_token;
        record.owner = String::new();
        record.owner_token = 0;
        let fence = SessionRecord {
            owner: self.node_id().to_owned(),
            owner_token: token,
            ..record.clone()
        };
        let r = self
            .fenced(&fence, |e| self.swap_record(e.revision, &record))
            .await;
        if let Err(e) = r {
            tracing::warn!(session = %live.id, error = %e, "cannot hand the session over; it is taken over once the ownership link expires");
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

    /// What live sessions use on this replica besides their records.
    pub fn services(&self) -> &Services {
        &self.services
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
            "epoch": record.epoch,
            "created_ms": record.created_ms,
            "state": state,
            "served_here": live_here,
            "client": expand(&record.hello.client_info),
            "upstream_sessions": upstreams,
            "upstream_endpoints": record.upstream_endpoints,
            "log_level": record.log_level,
            "subscriptions": record.listened,
        }))
    }
}

/// Connects every upstream of a binding for a new session with the client's hello. An
/// upstream that fails is left out, unless the binding fails closed or has no other: then
/// the session does not start (and what was connected is closed).
async fn connect_all(binding: &Binding, hello: &Hello) -> Result<Vec<Option<Link>>, RpcError> {
    let connects = binding.upstreams.iter().map(|u| u.connect(hello, None));
    let results = futures::future::join_all(connects).await;
    let mut links = Vec::new();
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(l) => links.push(Some(l)),
            Err(e) => {
                tracing::warn!(binding = %binding.name, upstream = %binding.upstreams[i].name, error = %e, "upstream unavailable for a new session");
                if binding.fail_closed() || binding.upstreams.len() == 1 {
                    close_all(links).await;
                    return Err(e);
                }
                links.push(None);
            }
        }
    }
    Ok(links)
}

/// Closes the upstream conversations a session that did not start had opened.
async fn close_all(links: Vec<Option<Link>>) {
    for l in links.into_iter().flatten() {
        if l.owned {
            l.conn.close().await;
        }
    }
}

/// The notifications a session moved by a config reload gets on its GET stream: its binding's
/// upstreams changed, so the tools, prompts and resources it listed may have too (the next
/// `*/list` is answered by the new binding).
const LISTS_CHANGED: [&str; 3] = [
    "notifications/tools/list_changed",
    "notifications/prompts/list_changed",
    "notifications/resources/list_changed",
];

/// Tells a moved session's client that its lists may have changed (see [`LISTS_CHANGED`]).
async fn tell_lists_changed(live: &Live) {
    for method in LISTS_CHANGED {
        let mut m = jsonrpc::Message::new();
        m.insert("jsonrpc".into(), json!("2.0"));
        m.insert("method".into(), json!(method));
        live.services
            .delivery
            .deliver(&live.id, &live.events, &m)
            .await;
    }
}

#[cfg(test)]
mod tests;

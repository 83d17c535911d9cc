//! Where a legacy session is served, and every failover decision: a request's session is
//! found here, forwarded to the live replica that owns it, or claimed (by compare-and-swap on
//! its record) once its owner is gone — proven by the owner's ownership lease, never by a
//! failed forward alone. A GET stream held here keeps its session owned by someone.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mcpg_plugin_api::coordinator::CasOutcome;
use tokio::sync::Mutex as AsyncMutex;
use tokio::time::Instant;

use super::{Busy, Live, SessionError, Sessions, now_ms, record_key, unavailable};
use crate::mcp::binding::Binding;
use crate::mcp::cluster::forward::ForwardError;
use crate::mcp::upstream::Link;

/// The most entries the remote-owner cache holds before it starts over.
const REMOTE_CACHE_MAX: usize = 100_000;

/// How many times a request looks for its session's owner before giving up.
const PLACE_ATTEMPTS: usize = 8;

/// Where a session is served.
pub enum Resolved {
    /// Here.
    Local(Arc<Live>),
    /// By another live replica, reachable at `url`.
    Remote { owner: String, url: String },
}

/// Why a claim did not happen.
enum Claim {
    /// The record changed under the claim (another replica claimed it first, or its owner
    /// wrote): look again.
    Raced,
    Failed(SessionError),
}

/// How a request looks for its session's owner.
struct Look<'a> {
    forwarded: bool,
    unreachable: Option<&'a str>,
    /// Read the peer directory afresh (after a first look).
    fresh: bool,
    /// When a live-but-unreachable owner stops being waited for.
    deadline: Instant,
}

/// What a record's owner means for a request.
enum Owner {
    /// A live replica, reachable at `url`.
    Elsewhere { owner: String, url: String },
    /// Gone (lease expired or released, or no owner after a hand-over): the session may be
    /// claimed.
    Gone,
    /// Still holds its ownership lease.
    Live,
}

/// Where a request of a session is served.
pub enum Placed<A> {
    /// Here, with the request counted as running on the session.
    Here(Arc<Live>, Busy),
    /// By the replica that owns the session: its answer.
    Answered(A),
}

/// Claims in progress (one lock per session id, so sessions are claimed in parallel) and
/// where sessions owned elsewhere were last found, so that forwarding a request costs no read
/// of the record. Safe to be stale: the replica forwarded to refuses a session it does not
/// own, and a failed forward forgets the entry.
#[derive(Default)]
pub struct Placement {
    reviving: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
    remote: Mutex<HashMap<String, (String, String, Instant)>>,
}

/// Aborts the task that keeps a streamed session owned, with the stream.
pub struct Keeper(tokio::task::JoinHandle<()>);

impl Drop for Keeper {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Why a forward produced no answer.
pub(crate) enum Miss {
    /// The replica reached does not own the session: look again.
    Misdirected,
    /// Not delivered (no connection): the owner's lease decides, then look again.
    Unreachable,
    /// Delivered, never answered: the owner may have run it (`gone`: its lease is gone).
    Lost { why: String, gone: bool },
}

impl Sessions {
    /// Places a request of session `sid`: here, or (through `forward`, given the owner's URL)
    /// on the replica that owns it. A forward that finds the owner unreachable is retried once
    /// the owner's ownership lease decides; one that reaches a replica which no longer owns
    /// the session looks again. `forwarded`: the request came from another replica and must
    /// not be forwarded again.
    pub async fn place<A, F, Fut>(
        &self,
        b: &Arc<Binding>,
        sid: &str,
        forwarded: bool,
        identity: Option<&str>,
        forward: F,
    ) -> Result<Placed<A>, SessionError>
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = Result<A, ForwardError>>,
    {
        let mut unreachable: Option<String> = None;
        for _ in 0..PLACE_ATTEMPTS {
            match self
                .resolve(b, sid, forwarded, unreachable.as_deref(), identity)
                .await?
            {
                Resolved::Local(live) => {
                    // Judged now, when the request is read (after a pause, after the pause):
                    // a replica that cannot prove its ownership lease runs nothing.
                    if !self.ownership.provable() {
                        return Err(SessionError::Fenced);
                    }
                    if !self.reclaim(&live).await {
                        continue;
                    }
                    if let Some(busy) = live.begin() {
                        return Ok(Placed::Here(live, busy));
                    }
                    // Let go between resolving and starting (handed over, ended): look again.
                }
                Resolved::Remote { owner, url } => {
                    match self.forward_to(b, sid, &owner, url, &forward).await {
                        Ok(answer) => return Ok(Placed::Answered(answer)),
                        Err(Miss::Lost { why, gone }) => {
                            // Taken by the owner but never answered: the owner may have run
                            // it, so it is not run again (at most once). Once the owner's
                            // lease is gone the session is taken over here for the next one.
                            if gone {
                                let _ = self.resolve(b, sid, false, Some(&owner), identity).await;
                            }
                            return Err(unavailable(format!(
                                "{why}; the request may or may not have run, and was not run again"
                            )));
                        }
                        Err(Miss::Misdirected) => {}
                        Err(Miss::Unreachable) => unreachable = Some(owner),
                    }
                }
            }
        }
        Err(SessionError::Unsettled)
    }

    /// One forward to `owner` at `url`: its answer, or why there is none.
    async fn forward_to<A, F, Fut>(
        &self,
        b: &Arc<Binding>,
        sid: &str,
        owner: &str,
        url: String,
        forward: &F,
    ) -> Result<A, Miss>
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = Result<A, ForwardError>>,
    {
        let m = crate::telemetry::metrics::metrics();
        // A hung owner (it accepts connections and never answers, as a paused process does)
        // is given up on once its ownership lease is gone; the session is then taken over
        // (its forward is refused there, late: fenced, or past its deadline).
        let answer = tokio::select! {
            a = forward(url.clone()) => a,
            () = self.lease_gone(owner) => {
                m.forwarded(&b.name, "lost");
                self.forget_remote(sid);
                let why = format!("the replica at {url} took the request and its ownership lease expired without an answer");
                tracing::warn!(session = %sid, owner = %owner, "{why}");
                return Err(Miss::Lost { why, gone: true });
            }
        };
        match answer {
            Ok(answer) => {
                m.forwarded(&b.name, "ok");
                Ok(answer)
            }
            Err(ForwardError::Misdirected) => {
                m.forwarded(&b.name, "misdirected");
                self.forget_remote(sid);
                Err(Miss::Misdirected)
            }
            Err(e @ ForwardError::Unreachable { .. }) => {
                m.forwarded(&b.name, "unreachable");
                self.forget_remote(sid);
                tracing::warn!(session = %sid, owner = %owner, error = %e, "cannot reach the session's owner; waiting for its ownership lease");
                Err(Miss::Unreachable)
            }
            Err(e @ ForwardError::Lost { .. }) => {
                m.forwarded(&b.name, "lost");
                self.forget_remote(sid);
                tracing::warn!(session = %sid, owner = %owner, error = %e, "the session's owner took the request and gave no answer; it is not run again");
                Err(Miss::Lost {
                    why: e.to_string(),
                    gone: false,
                })
            }
        }
    }

    /// Resolves once `owner`'s ownership lease is gone (probed every third of a TTL); never
    /// while it is held.
    async fn lease_gone(&self, owner: &str) {
        let every = self.ownership.owner_ttl() / 3;
        loop {
            tokio::time::sleep(every).await;
            if let Ok(true) = self.ownership.owner_gone(owner, Duration::ZERO).await {
                return;
            }
        }
    }

    /// Keeps a session owned while its GET stream is open here: resolves its owner now and
    /// then, which takes the session over once its owner is gone (its ownership lease expired
    /// or was handed back). Stops when the returned keeper is dropped.
    pub fn keep_owned(
        self: &Arc<Self>,
        b: Arc<Binding>,
        sid: String,
        identity: Option<String>,
    ) -> Keeper {
        let me = self.clone();
        Keeper(tokio::spawn(async move {
            let every = me.ownership.owner_ttl() / 3;
            loop {
                tokio::time::sleep(every).await;
                if me.ownership.draining() {
                    return;
                }
                match me.resolve(&b, &sid, false, None, identity.as_deref()).await {
                    Ok(_) => {}
                    Err(SessionError::NotFound | SessionError::WrongBinding) => return,
                    Err(e) => {
                        tracing::debug!(session = %sid, error = %e, "cannot settle the owner of a streamed session")
                    }
                }
            }
        }))
    }

    /// Where the session a client names is served: here (already, or claimed now because its
    /// owner is gone, handed it over, or was an earlier instance of this replica), or by the
    /// live replica that owns it. `forwarded`: the request was forwarded here by another
    /// replica and must not be forwarded again. `unreachable`: a replica a forward just failed
    /// to reach; it counts as live until its ownership lease is gone, never merely because
    /// the forward failed.
    pub async fn resolve(
        &self,
        binding: &Arc<Binding>,
        id: &str,
        forwarded: bool,
        unreachable: Option<&str>,
        identity: Option<&str>,
    ) -> Result<Resolved, SessionError> {
        if let Some(live) = self.served_here(binding, id, identity).await? {
            return Ok(Resolved::Local(live));
        }
        let ttl = self.ownership.owner_ttl();
        if !forwarded
            && unreachable.is_none()
            && let Some(remote) = self.cached_owner(id, ttl)
        {
            return Ok(remote);
        }
        let mut look = Look {
            forwarded,
            unreachable,
            fresh: false,
            deadline: Instant::now() + ttl + ttl / 2 + Duration::from_secs(2),
        };
        loop {
            let (_, record) = self.read(binding, id).await?;
            // Checked before forwarding or claiming: another identity learns nothing, not
            // even which replica serves the session (the owner checks again).
            if record.identity.as_deref() != identity {
                return Err(SessionError::NotFound);
            }
            match self.owner_of(id, &record.owner, &look).await? {
                Owner::Elsewhere { owner, url } => return Ok(Resolved::Remote { owner, url }),
                Owner::Gone => {
                    if let Some(r) = self
                        .take_over(binding, id, &record.owner, forwarded)
                        .await?
                    {
                        return Ok(r);
                    }
                }
                Owner::Live if Instant::now() >= look.deadline => {
                    return Err(unavailable(
                        "the session's owner did not hand it over in time; try again",
                    ));
                }
                Owner::Live => tokio::time::sleep(Duration::from_millis(100)).await,
            }
            look.fresh = true;
        }
    }

    /// The session, when this replica serves it now (its activity noted).
    async fn served_here(
        &self,
        binding: &Arc<Binding>,
        id: &str,
        identity: Option<&str>,
    ) -> Result<Option<Arc<Live>>, SessionError> {
        let found = self.live.lock().expect("lock").get(id).cloned();
        let Some(live) = found.filter(|l| !l.is_closed()) else {
            return Ok(None);
        };
        if live.binding.name != binding.name {
            return Err(SessionError::WrongBinding);
        }
        // A config reload changed the upstreams under this session: it moves to the new
        // binding (handed over, then claimed like any session without an owner).
        if !binding.serves_sessions_of(&live.binding) {
            let forget = binding.replaced_upstreams_of(&live.binding);
            let deadline = Instant::now() + live.binding.longest_timeout();
            self.move_session(&live, &forget, deadline).await;
            return Ok(None);
        }
        if live.record.lock().expect("lock").identity.as_deref() != identity {
            return Err(SessionError::NotFound);
        }
        if live.touch(self.idle_ttl) {
            self.refresh(&live).await;
        }
        Ok(Some(live))
    }

    /// Where the session was found elsewhere lately (within an ownership TTL).
    fn cached_owner(&self, id: &str, ttl: Duration) -> Option<Resolved> {
        let cached = self.placement.remote.lock().expect("lock").get(id).cloned();
        let (owner, url, at) = cached?;
        (at.elapsed() < ttl).then_some(Resolved::Remote { owner, url })
    }

    /// What the record's `owner` means for this request: a live replica to forward to, gone
    /// (claimable), or still holding its ownership lease while it cannot be reached.
    async fn owner_of(
        &self,
        id: &str,
        owner: &str,
        look: &Look<'_>,
    ) -> Result<Owner, SessionError> {
        if owner.is_empty() {
            return Ok(Owner::Gone);
        }
        if owner == self.node_id() {
            // Recorded as ours but not live here: an earlier instance of this replica, or a
            // lease since lost. Holding the lease now proves that holder is gone.
            return Ok(if self.ownership.held() {
                Owner::Gone
            } else {
                Owner::Live
            });
        }
        if Some(owner) != look.unreachable
            && let Some(url) = self.ownership.peer_url(owner, look.fresh).await
        {
            if look.forwarded {
                return Err(SessionError::Misdirected);
            }
            let mut cache = self.placement.remote.lock().expect("lock");
            if cache.len() >= REMOTE_CACHE_MAX {
                cache.clear();
            }
            cache.insert(
                id.to_owned(),
                (owner.to_owned(), url.clone(), Instant::now()),
            );
            return Ok(Owner::Elsewhere {
                owner: owner.to_owned(),
                url,
            });
        }
        // Its presence is gone (or it cannot be reached): its lease decides.
        let left = look.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(unavailable(format!(
                "the replica that owns this session ({owner}) cannot be reached and still holds its ownership lease; try again"
            )));
        }
        let gone = self
            .ownership
            .owner_gone(owner, left.min(Duration::from_millis(500)))
            .await
            .map_err(|e| unavailable(format!("the coordinator: {e}")))?;
        Ok(if gone { Owner::Gone } else { Owner::Live })
    }

    /// Takes over a session whose owner is gone: claimed here, or (draining) left to a peer;
    /// `None` when another replica's write raced the claim (look again).
    async fn take_over(
        &self,
        binding: &Arc<Binding>,
        id: &str,
        seen_owner: &str,
        forwarded: bool,
    ) -> Result<Option<Resolved>, SessionError> {
        if self.ownership.draining()
            && !forwarded
            && let Some((owner, url)) = self.ownership.other_peer().await
        {
            // A draining replica takes nothing over: the session goes to a peer.
            return Ok(Some(Resolved::Remote { owner, url }));
        }
        match self.claim(binding, id, seen_owner).await {
            Ok(live) => {
                live.touch(self.idle_ttl);
                Ok(Some(Resolved::Local(live)))
            }
            Err(Claim::Raced) => Ok(None),
            Err(Claim::Failed(e)) => Err(e),
        }
    }

    /// Forgets where a session was found elsewhere (a forward there failed or was refused).
    pub fn forget_remote(&self, id: &str) {
        self.placement.remote.lock().expect("lock").remove(id);
    }

    /// Claims a session whose owner was `seen_owner`: the record is rewritten with this
    /// replica and its lease's token (compare-and-swap: one claimant wins), then its upstream
    /// conversations are resumed (HTTP sessions by id) or started anew (children, with the
    /// client's recorded hello).
    async fn claim(
        &self,
        binding: &Arc<Binding>,
        id: &str,
        seen_owner: &str,
    ) -> Result<Arc<Live>, Claim> {
        let lock = self
            .placement
            .reviving
            .lock()
            .expect("lock")
            .entry(id.to_owned())
            .or_default()
            .clone();
        let guard = lock.lock().await;
        let r = self.claim_locked(binding, id, seen_owner).await;
        drop(guard);
        self.placement.reviving.lock().expect("lock").remove(id);
        r
    }

    async fn claim_locked(
        &self,
        binding: &Arc<Binding>,
        id: &str,
        seen_owner: &str,
    ) -> Result<Arc<Live>, Claim> {
        if let Some(l) = self.live.lock().expect("lock").get(id).cloned()
            && !l.is_closed()
        {
            return Ok(l);
        }
        let (entry, mut record) = self.read(binding, id).await.map_err(Claim::Failed)?;
        if record.owner != seen_owner {
            return Err(Claim::Raced);
        }
        let previous = record.owner.clone();
        record = record.claimed(self.node_id(), self.ownership.token());
        record.active_ms = now_ms();
        match self
            .cap
            .store
            .compare_and_swap(
                &record_key(id),
                entry.revision,
                serde_json::to_vec(&record).expect("serialisable"),
                Some(self.record_ttl()),
            )
            .await
        {
            Ok(CasOutcome::Swapped(_)) => {}
            Ok(CasOutcome::Mismatch(_)) => return Err(Claim::Raced),
            Err(e) => {
                return Err(Claim::Failed(unavailable(format!(
                    "the sessions store: {e}"
                ))));
            }
        }
        let connects = binding.upstreams.iter().map(|u| {
            let resume = record.upstream_sessions.get(&u.name).map(|s| {
                let version = record
                    .upstream_versions
                    .get(&u.name)
                    .unwrap_or(&record.protocol_version);
                (s.as_str(), version.as_str())
            });
            u.connect_pinned(
                &record.hello,
                resume,
                record.upstream_endpoints.get(&u.name).map(String::as_str),
            )
        });
        let links: Vec<Option<Link>> = futures::future::join_all(connects)
            .await
            .into_iter()
            .map(Result::ok)
            .collect();
        tracing::info!(
            session = %id,
            binding = %binding.name,
            previous_owner = %previous,
            token = record.owner_token,
            "session taken over"
        );
        crate::telemetry::metrics::metrics().takeover(&binding.name);
        let listened = record.listened.clone();
        let live = self.register(binding, record, links);
        // Subscriptions on upstreams that speak only 2026-07-28 were watched by the previous
        // owner's listens: watch them from here.
        rewatch(binding, &live, listened);
        Ok(live)
    }
}

/// Watches again, from the replica that took a session over, the subscriptions its previous
/// owner watched on upstreams that speak only 2026-07-28.
fn rewatch(binding: &Binding, live: &Arc<Live>, listened: HashMap<String, Vec<String>>) {
    for (name, uris) in listened {
        let Some(up) = binding
            .indices()
            .find(|&u| binding.upstreams[u].name == name)
        else {
            continue;
        };
        let l = live.clone();
        tokio::spawn(async move {
            let started = match l.conn(up).await {
                Ok(conn) => l.watch(up, &conn, uris).await.map(|_| ()),
                Err(e) => Err(e),
            };
            if let Err(e) = started {
                tracing::warn!(session = %l.id, upstream = %name, error = %e, "cannot watch the session's subscriptions again");
            }
        });
    }
}

//! Session ownership across replicas: this replica's ownership lease (whose fencing token is
//! written into every session record it owns), the directory of live peers and the URLs they
//! advertise, the secret replicas present to each other when forwarding, and the probe that
//! tells whether another replica's ownership lease is gone — the only ground for taking its
//! sessions over.
//!
//! One lease per replica rather than one per session: a replica with 10,000 sessions renews one
//! lease, not 10,000. A session is owned by `(owner, owner_token)` in its record; a claim is a
//! compare-and-swap on that record, so two replicas can never both win it, and a replica whose
//! lease was lost finds its writes refused because the record no longer names its token.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mcpg_plugin_api::coordinator::{CoordError, Lease};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::capabilities::cluster::Coordination;
use crate::control::PeerMeta;

/// How long the peer directory is trusted before it is read again.
const PEERS_FRESH: Duration = Duration::from_secs(1);

/// A round trip to the backend that began at `t` (with the lease not reported lost after
/// it) proves the ownership lease until `t + TTL / PROOF_DIVISOR`: with renewals sent when
/// 80 % of the TTL has elapsed (the contract's default), the backend keeps the lease for at
/// least a fifth of the TTL after any instant its renewals work, so a tenth leaves the other
/// tenth as the safety margin.
const PROOF_DIVISOR: u32 = 10;
/// How many proving round trips the lease witness makes per TTL (two per proof window, so a
/// single slow one does not let the proof lapse).
const WITNESS_PER_TTL: u32 = 20;

/// Why this replica cannot take part in ownership.
#[derive(Debug, thiserror::Error)]
pub enum OwnershipError {
    #[error(
        "another live mcpg instance is using node id `{node}` (it kept renewing its ownership lease for {waited_ms} ms); give each replica its own --node-id"
    )]
    DuplicateNode { node: String, waited_ms: u64 },
    #[error("the coordinator: {0}")]
    Coordinator(#[from] CoordError),
}

/// A live peer, as its presence describes it.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub advertise_url: Option<String>,
}

/// This replica's part in session ownership.
pub struct Ownership {
    coordination: Coordination,
    node_id: String,
    ttl: Duration,
    lease: Mutex<Option<Arc<dyn Lease>>>,
    token: AtomicU64,
    /// Bumped each time this replica's lease is lost: every session it served under the old
    /// token must be let go.
    generation: watch::Sender<u64>,
    peers: Mutex<Option<(Instant, HashMap<String, PeerInfo>)>>,
    secret: String,
    draining: AtomicBool,
    /// Until when this replica can prove that it holds its ownership lease (monotonic).
    proven_until: Mutex<Instant>,
    /// The token of each ownership lease taken again after a loss.
    retaken: watch::Sender<u64>,
}

impl Ownership {
    /// Takes this replica's ownership lease, waiting out a previous instance of the same node
    /// id that died without releasing it; refuses when another instance keeps renewing it.
    pub async fn start(
        coordination: Coordination,
        node_id: String,
        ttl: Duration,
        configured_secret: Option<String>,
    ) -> Result<Arc<Self>, OwnershipError> {
        let sent = Instant::now();
        let lease = acquire_own(&coordination, &node_id, ttl).await?;
        let secret = match configured_secret {
            Some(s) => s,
            None => coordination.forwarding_secret().await?,
        };
        let (generation, _) = watch::channel(0);
        let (retaken, _) = watch::channel(lease.token());
        let me = Arc::new(Self {
            proven_until: Mutex::new(sent + ttl / PROOF_DIVISOR),
            retaken,
            token: AtomicU64::new(lease.token()),
            lease: Mutex::new(Some(lease.clone())),
            coordination,
            node_id,
            ttl,
            generation,
            peers: Mutex::new(None),
            secret,
            draining: AtomicBool::new(false),
        });
        tokio::spawn(keep(Arc::downgrade(&me), lease));
        tokio::spawn(witness(Arc::downgrade(&me)));
        Ok(me)
    }

    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The fencing token of this replica's current ownership lease.
    pub fn token(&self) -> u64 {
        self.token.load(Ordering::Acquire)
    }

    /// Whether this replica holds its ownership lease right now.
    pub fn held(&self) -> bool {
        self.lease
            .lock()
            .expect("lock")
            .as_ref()
            .is_some_and(|l| !l.is_lost())
    }

    /// Changes each time this replica's lease is lost.
    pub fn generations(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// The token of the lease taken again after each loss (the first lease's token at first).
    pub fn retaken(&self) -> watch::Receiver<u64> {
        self.retaken.subscribe()
    }

    /// Whether this replica can prove *now* that it holds its ownership lease: the lease is
    /// not reported lost and a round trip to the backend that began less than the proof
    /// window ago (a tenth of the TTL) succeeded. Judged on the monotonic clock when asked,
    /// so a request read after the process was paused is judged after the pause. A replica
    /// that cannot prove it starts no request of a session and hands none to an upstream.
    pub fn provable(&self) -> bool {
        self.held() && Instant::now() < *self.proven_until.lock().expect("lock")
    }

    /// Until when the lease is proven (monotonic); past it, [`Ownership::provable`] is false.
    pub fn proven_until(&self) -> Instant {
        *self.proven_until.lock().expect("lock")
    }

    /// Extends the proof to `until` (never shortens it).
    fn prove(&self, until: Instant) {
        let mut p = self.proven_until.lock().expect("lock");
        if until > *p {
            *p = until;
        }
    }

    pub fn secret(&self) -> &str {
        &self.secret
    }

    pub fn owner_ttl(&self) -> Duration {
        self.ttl
    }

    /// Marks the replica as draining: it takes no session over and starts none.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Gives the ownership lease up (the last step of a shutdown, after every session was
    /// handed over), so that anything left is taken over at once.
    pub async fn release(&self) {
        let lease = self.lease.lock().expect("lock").take();
        if let Some(l) = lease
            && let Err(e) = l.release().await
        {
            tracing::warn!(error = %e, "cannot release the ownership lease; it will expire");
        }
    }

    /// The live peers (this replica included), read again when older than a second or when
    /// `fresh` asks for it.
    pub async fn peers(&self, fresh: bool) -> HashMap<String, PeerInfo> {
        if !fresh
            && let Some((at, p)) = self.peers.lock().expect("lock").as_ref()
            && at.elapsed() < PEERS_FRESH
        {
            return p.clone();
        }
        match self.coordination.peers().await {
            Ok(list) => {
                let map: HashMap<String, PeerInfo> = list
                    .into_iter()
                    .map(|p| {
                        let meta = serde_json::from_str::<PeerMeta>(&p.meta).ok();
                        (
                            p.node_id,
                            PeerInfo {
                                advertise_url: meta.and_then(|m| m.advertise_url),
                            },
                        )
                    })
                    .collect();
                *self.peers.lock().expect("lock") = Some((Instant::now(), map.clone()));
                map
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the peer directory");
                self.peers
                    .lock()
                    .expect("lock")
                    .as_ref()
                    .map(|(_, p)| p.clone())
                    .unwrap_or_default()
            }
        }
    }

    /// Where a live peer can be reached, if it is live and says.
    pub async fn peer_url(&self, node: &str, fresh: bool) -> Option<String> {
        self.peers(fresh).await.remove(node)?.advertise_url
    }

    /// Some other live replica to hand work to (when this one is draining).
    pub async fn other_peer(&self) -> Option<(String, String)> {
        let peers = self.peers(true).await;
        let mut others: Vec<(String, String)> = peers
            .into_iter()
            .filter(|(n, _)| *n != self.node_id)
            .filter_map(|(n, p)| Some((n, p.advertise_url?)))
            .collect();
        if others.is_empty() {
            return None;
        }
        let pick = (uuid::Uuid::new_v4().as_u128() % others.len() as u128) as usize;
        Some(others.swap_remove(pick))
    }

    /// Takes the session sweeper's cluster-wide lease if nobody holds it; `None` when it is
    /// held or the coordinator fails.
    pub async fn sweeper_lease(&self, ttl: Duration) -> Option<Box<dyn Lease>> {
        self.coordination.sweeper_lease(ttl).await
    }

    /// Whether `node`'s ownership lease is gone (expired or released), waiting up to `wait`
    /// for it to go. For this replica's own id the answer is yes: holding the lease now means
    /// any earlier holder of the id has lost it.
    pub async fn owner_gone(&self, node: &str, wait: Duration) -> Result<bool, CoordError> {
        if node == self.node_id {
            return Ok(self.held());
        }
        let probe = self.coordination.owner_lease(node, self.ttl, wait).await?;
        match probe {
            Some(l) => {
                // Held only to learn that it was free; give it back at once so a restarting
                // instance of that node can take it.
                let _ = l.release().await;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

async fn acquire_own(
    coordination: &Coordination,
    node_id: &str,
    ttl: Duration,
) -> Result<Arc<dyn Lease>, OwnershipError> {
    if let Some(l) = coordination
        .owner_lease(node_id, ttl, Duration::ZERO)
        .await?
    {
        return Ok(Arc::from(l));
    }
    // A previous instance of this node that died keeps its lease until the TTL runs out;
    // another live instance keeps renewing it.
    let wait = ttl + ttl / 2 + Duration::from_secs(1);
    tracing::info!(
        node = %node_id,
        wait_ms = wait.as_millis() as u64,
        "this node id's ownership lease is held; waiting to see whether its holder is gone"
    );
    match coordination.owner_lease(node_id, ttl, wait).await? {
        Some(l) => Ok(Arc::from(l)),
        None => Err(OwnershipError::DuplicateNode {
            node: node_id.to_owned(),
            waited_ms: wait.as_millis() as u64,
        }),
    }
}

/// Watches the ownership lease; when it is lost, says so (every session served under it is
/// let go) and takes a new one.
async fn keep(me: std::sync::Weak<Ownership>, mut lease: Arc<dyn Lease>) {
    loop {
        lease.lost().await;
        let Some(o) = me.upgrade() else { return };
        if o.lease.lock().expect("lock").is_none() {
            // Released on shutdown.
            return;
        }
        tracing::error!(
            token = lease.token(),
            "ownership lease lost; letting go of every session served here"
        );
        o.generation.send_modify(|g| *g += 1);
        lease = loop {
            let sent = Instant::now();
            match o
                .coordination
                .owner_lease(&o.node_id, o.ttl, o.ttl + Duration::from_secs(1))
                .await
            {
                Ok(Some(l)) => {
                    o.prove(sent + o.ttl / PROOF_DIVISOR);
                    break Arc::from(l);
                }
                Ok(None) => tracing::error!("ownership lease still held elsewhere; retrying"),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot take the ownership lease again; retrying")
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        o.token.store(lease.token(), Ordering::Release);
        *o.lease.lock().expect("lock") = Some(lease.clone());
        let _ = o.retaken.send(lease.token());
        tracing::info!(token = lease.token(), "ownership lease taken again");
        drop(o);
    }
}

/// The lease witness: proves the ownership lease by a round trip to the backend every
/// `TTL / WITNESS_PER_TTL` (see [`Ownership::provable`]). A wake-up far behind schedule means
/// this process was paused (SIGSTOP, a VM freeze) or starved: the backend may have given the
/// lease away meanwhile, so that round proves nothing and the plugin's own renewal, which
/// runs at once after such a pause, judges the lease first.
async fn witness(me: std::sync::Weak<Ownership>) {
    let Some(o) = me.upgrade() else { return };
    let tick = (o.ttl / WITNESS_PER_TTL).max(Duration::from_millis(5));
    let window = o.ttl / PROOF_DIVISOR;
    drop(o);
    let mut due = Instant::now() + tick;
    loop {
        tokio::time::sleep_until(due).await;
        let woke = Instant::now();
        let late = woke.saturating_duration_since(due);
        due = woke + tick;
        let Some(o) = me.upgrade() else { return };
        if late > tick {
            tracing::warn!(
                late_ms = late.as_millis() as u64,
                "this process was paused or starved; the ownership lease is proven again before any request runs"
            );
            continue;
        }
        let sent = Instant::now();
        let answered = tokio::time::timeout(window, o.coordination.ping())
            .await
            .is_ok_and(|r| r.is_ok());
        if answered && o.held() {
            o.prove(sent + window);
        }
    }
}

//! A complete [`Coordinator`] derived from a small [`Store`]: the layer for backends that offer
//! the usual building blocks (a linearizable compare-and-set on a key with revisions, expiry,
//! and a notification channel), such as PostgreSQL, MySQL, DynamoDB, ZooKeeper, FoundationDB
//! or Cassandra with LWT.
//!
//! A backend implements [`Store`]'s seven small methods; [`Layer::new`] turns it into a
//! coordinator with every primitive of the contract:
//!
//! - **KV**: straight onto the store; `watch_prefix` from change events the layer announces on
//!   the channel [`KV_CHANNEL`] after each write it makes.
//! - **Pub/sub**: every message on the channel [`MESSAGE_CHANNEL`], matched against patterns
//!   (`*`, `>`) in the layer, one backend subscription per channel per [`Layer`].
//! - **Leases** with fencing tokens: a counter advanced by compare-and-set, checked again once
//!   the lease record is created (see `leases.rs` for why that makes tokens strictly increase
//!   across successive holders); renewal by compare-and-set of the record at its revision.
//! - **Presence**: a record with the peer TTL, refreshed by the layer; `watch_peers` diffs the
//!   live set on each announced change and on a short poll (an expiry raises no event).
//!
//! A backend with native leases, watches or routing overrides the matching provided method of
//! [`Store`] (`acquire`, `register`, `peers`, `watch_peers`, `watch_prefix`, `publish`,
//! `subscribe`, `health`); each gets the [`Layer`] to fall back on for the rest.
//!
//! Records of the layer's own (leases, fencing counters, presence) live under
//! [`crate::memory::RESERVED_PREFIX`]; `list` and `watch_prefix` hide them unless the prefix
//! asked for names that space.

mod hub;
mod leases;
mod local;
mod seed;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::{OnceCell, mpsc};

use crate::coordinator::*;
use crate::memory::RESERVED_PREFIX;
use crate::support::{HeldPresence, action, peer_changes, receiver_stream};

pub use local::LocalStore;
pub use seed::SeedKeys;

/// The channel carrying published messages.
pub const MESSAGE_CHANNEL: &str = "m";
/// The channel carrying KV change events (puts and deletes made through the layer).
pub const KV_CHANNEL: &str = "k";
use crate::support::{PEER_PREFIX, peers_from};
const HEALTH_KEY: &str = "\u{1}mcpg/health";

/// The condition of a conditional write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cond {
    /// Unconditional.
    Any,
    /// Only if the key has no live entry (an expired entry counts as absent).
    Absent,
    /// Only if the key's live entry has this revision.
    Revision(u64),
}

impl Cond {
    /// The revision a `Revision` condition names.
    pub fn revision(self) -> Option<u64> {
        match self {
            Cond::Revision(r) => Some(r),
            _ => None,
        }
    }
}

/// What a backend provides for the layer. Every method is one request to the backend; the
/// conditional ones are atomic there.
///
/// Required: revisions that increase on every write across all keys of the backend (a
/// sequence), expiry that hides an entry from `get`, `list` and conditions once its TTL has
/// passed (cleaning expired entries up is the backend's business), and a channel that
/// delivers each published payload, whatever its size, to every subscription made before the
/// publish, in publish order per publisher; payloads may be lost while a subscription is
/// reconnecting, never reordered or corrupted.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The live entry at `key`.
    async fn get(&self, key: &str) -> CoordResult<Option<Entry>>;
    /// Writes if `cond` holds; the new revision, `None` if it did not hold.
    async fn put_if(
        &self,
        key: &str,
        cond: Cond,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> CoordResult<Option<u64>>;
    /// Deletes the live entry if `cond` (`Any` or `Revision`) holds; a revision greater than
    /// every earlier one (the delete's own), `None` if nothing was deleted.
    async fn delete_if(&self, key: &str, cond: Cond) -> CoordResult<Option<u64>>;
    /// Every live entry whose key starts with `prefix` (byte-wise), in byte order of the keys.
    async fn list(&self, prefix: &str) -> CoordResult<Vec<Entry>>;
    /// Sends `payload` to every subscription of `channel` (a short name, letters only).
    async fn send(&self, channel: &str, payload: Vec<u8>) -> CoordResult<()>;
    /// The largest payload `send` accepts (PostgreSQL's `NOTIFY` takes under 8000 bytes).
    /// The layer stores a larger one as an entry with a one-minute TTL and sends a reference
    /// that listeners resolve with `get`. Default: no limit.
    fn max_payload(&self) -> usize {
        usize::MAX
    }
    /// Payloads sent to `channel` from the moment this returns. The stream may end when the
    /// connection behind it is lost: the layer then listens again (every 300 ms until that
    /// works), and payloads sent in between are lost, as the contract allows.
    async fn listen(&self, channel: &str) -> CoordResult<BoxStream<'static, Vec<u8>>>;
    /// Removes expired entries, if the backend does not on its own. The layer calls it about
    /// every second while the coordinator lives; the default does nothing.
    async fn sweep(&self) -> CoordResult<()> {
        Ok(())
    }

    /// The backend's health; the default reads one key and reports whether that worked within
    /// 5 s (the contract's bound: a stopped server must not hold the answer).
    async fn health(&self, _layer: &Layer) -> Health {
        let read = tokio::time::timeout(Duration::from_secs(5), self.get(HEALTH_KEY)).await;
        let read = read.unwrap_or_else(|_| Err(CoordError::unavailable("no answer within 5 s")));
        match read {
            Ok(_) => Health {
                ok: true,
                detail: "reachable".into(),
            },
            Err(e) => Health {
                ok: false,
                detail: e.to_string(),
            },
        }
    }

    // Derived primitives: override one to use the backend's native form.

    async fn publish(&self, layer: &Layer, subject: &str, payload: Vec<u8>) -> CoordResult<()> {
        layer.derived_publish(subject, payload).await
    }
    async fn subscribe(
        &self,
        layer: &Layer,
        pattern: &str,
    ) -> CoordResult<BoxStream<'static, Message>> {
        layer.derived_subscribe(pattern).await
    }
    async fn acquire(
        &self,
        layer: &Layer,
        name: &str,
        ttl: Option<Duration>,
        wait: Duration,
    ) -> CoordResult<Option<Box<dyn Lease>>> {
        layer.derived_acquire(name, ttl, wait).await
    }
    async fn register(&self, layer: &Layer, meta: String) -> CoordResult<Box<dyn Presence>> {
        layer.derived_register(meta).await
    }
    async fn peers(&self, layer: &Layer) -> CoordResult<Vec<Peer>> {
        layer.derived_peers().await
    }
    async fn watch_peers(&self, layer: &Layer) -> CoordResult<BoxStream<'static, PeerEvent>> {
        layer.derived_watch_peers().await
    }
    async fn watch_prefix(
        &self,
        layer: &Layer,
        prefix: &str,
    ) -> CoordResult<BoxStream<'static, KvEvent>> {
        layer.derived_watch_prefix(prefix).await
    }
}

/// The layer's settings: the seed's keys every backend has.
#[derive(Debug, Clone)]
pub struct LayerConfig {
    pub node_id: String,
    /// TTL of a lease when the caller gives none (`lease_ttl_ms`).
    pub lease_ttl: Duration,
    /// TTL of a node's presence (`peer_ttl_ms`).
    pub peer_ttl: Duration,
    /// How often presence is refreshed (`peer_refresh_interval_ms`); less than `peer_ttl`.
    pub peer_refresh: Duration,
    /// Renew a lease when this percent of its TTL has elapsed since the last renewal
    /// (`lease_renew_before_expiry_percent`), clamped to 1..=99.
    pub renew_percent: u8,
    /// Messages buffered per subscriber and per watch (`subscribe_pattern_buffer`); a consumer
    /// that falls further behind loses messages rather than stalling the others.
    pub buffer: usize,
}

impl LayerConfig {
    /// The seed's defaults: lease 30 s, presence 60 s refreshed every 30 s, renewal at 80 %,
    /// 256 buffered messages.
    pub fn new(node_id: impl Into<String>) -> Self {
        Self {
            node_id: node_id.into(),
            lease_ttl: Duration::from_secs(30),
            peer_ttl: Duration::from_secs(60),
            peer_refresh: Duration::from_secs(30),
            renew_percent: 80,
            buffer: 256,
        }
    }
}

struct Inner {
    store: Arc<dyn Store>,
    config: LayerConfig,
    messages: OnceCell<hub::Hub>,
    changes: OnceCell<hub::Hub>,
}

/// The coordinator derived from a [`Store`]. Cheap to clone; every handle, stream and
/// background task it gives out holds what it needs, so they keep working after the
/// coordinator is dropped.
#[derive(Clone)]
pub struct Layer(Arc<Inner>);

impl Layer {
    pub fn new(store: impl Store, config: LayerConfig) -> Self {
        Self::from_arc(Arc::new(store), config)
    }

    /// The coordinator over `store`. Call it on a Tokio runtime (the plugin's, in `boot`): it
    /// starts the sweeper.
    pub fn from_arc(store: Arc<dyn Store>, config: LayerConfig) -> Self {
        let inner = Arc::new(Inner {
            store,
            config,
            messages: OnceCell::new(),
            changes: OnceCell::new(),
        });
        let weak = Arc::downgrade(&inner);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let Some(inner) = weak.upgrade() else { return };
                let _ = inner.store.sweep().await;
            }
        });
        Self(inner)
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.0.store
    }

    pub fn config(&self) -> &LayerConfig {
        &self.0.config
    }

    async fn hub(&self, channel: &'static str) -> CoordResult<&hub::Hub> {
        let cell = match channel {
            MESSAGE_CHANNEL => &self.0.messages,
            _ => &self.0.changes,
        };
        cell.get_or_try_init(|| hub::Hub::start(self.0.store.clone(), channel))
            .await
    }

    /// A write through the layer, announced to watchers when it happened.
    pub async fn write(
        &self,
        key: &str,
        cond: Cond,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> CoordResult<Option<u64>> {
        check_key(key)?;
        let rev = self.0.store.put_if(key, cond, value.clone(), ttl).await?;
        if let Some(revision) = rev {
            let ev = KvEvent::Put(Entry {
                key: key.to_owned(),
                value,
                revision,
            });
            self.announce(&ev).await;
        }
        Ok(rev)
    }

    /// A delete through the layer, announced to watchers when it happened.
    pub async fn remove(&self, key: &str, cond: Cond) -> CoordResult<bool> {
        let Some(revision) = self.0.store.delete_if(key, cond).await? else {
            return Ok(false);
        };
        let ev = KvEvent::Delete {
            key: key.to_owned(),
            revision,
        };
        self.announce(&ev).await;
        Ok(true)
    }

    async fn announce(&self, ev: &KvEvent) {
        // The write happened; a lost announcement costs watchers an event, not the caller
        // its write (the contract makes watch events at-most-once).
        let _ = self.send(KV_CHANNEL, hub::encode_kv(ev)).await;
    }

    pub async fn derived_publish(&self, subject: &str, payload: Vec<u8>) -> CoordResult<()> {
        if subject.is_empty() || subject.contains(['*', '>']) {
            return Err(CoordError::invalid(format!(
                "cannot publish to pattern `{subject}`"
            )));
        }
        let bytes = hub::encode_message(subject, &payload);
        self.send(MESSAGE_CHANNEL, bytes).await
    }

    /// Sends on a channel, inline or (above the store's `max_payload`) by reference.
    async fn send(&self, channel: &str, bytes: Vec<u8>) -> CoordResult<()> {
        let store = &self.0.store;
        if bytes.len() < store.max_payload() {
            return store.send(channel, hub::inline(bytes)).await;
        }
        let key = hub::spill_key(&self.0.config.node_id);
        let ttl = Some(Duration::from_secs(60));
        store.put_if(&key, Cond::Any, bytes, ttl).await?;
        store.send(channel, hub::reference(&key)).await
    }

    pub async fn derived_subscribe(
        &self,
        pattern: &str,
    ) -> CoordResult<BoxStream<'static, Message>> {
        let hub = self.hub(MESSAGE_CHANNEL).await?;
        let pattern = pattern.to_owned();
        Ok(hub.stream(self.0.config.buffer, move |bytes| {
            let (subject, payload) = hub::decode_message(bytes)?;
            subject_matches(&pattern, &subject).then_some(Message { subject, payload })
        }))
    }

    pub async fn derived_watch_prefix(
        &self,
        prefix: &str,
    ) -> CoordResult<BoxStream<'static, KvEvent>> {
        let hub = self.hub(KV_CHANNEL).await?;
        let prefix = prefix.to_owned();
        Ok(hub.stream(self.0.config.buffer, move |bytes| {
            let ev = hub::decode_kv(bytes)?;
            let key = match &ev {
                KvEvent::Put(e) => &e.key,
                KvEvent::Delete { key, .. } => key,
            };
            visible(&prefix, key).then_some(ev)
        }))
    }

    pub async fn derived_register(&self, meta: String) -> CoordResult<Box<dyn Presence>> {
        let key = format!("{PEER_PREFIX}{}", self.0.config.node_id);
        let ttl = self.0.config.peer_ttl;
        self.write(&key, Cond::Any, meta.clone().into_bytes(), Some(ttl))
            .await?;
        let deregister = action((self.clone(), key.clone()), |(me, k)| async move {
            me.remove(&k, Cond::Any).await.map(|_| ())
        });
        let (presence, mut stop) = HeldPresence::new(deregister);
        let (store, every) = (self.0.store.clone(), self.0.config.peer_refresh);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.changed() => return,
                }
                // A refresh is not a change: it is not announced.
                let _ = store
                    .put_if(&key, Cond::Any, meta.clone().into_bytes(), Some(ttl))
                    .await;
            }
        });
        Ok(Box::new(presence))
    }

    pub async fn derived_peers(&self) -> CoordResult<Vec<Peer>> {
        Ok(peers_from(self.0.store.list(PEER_PREFIX).await?))
    }

    /// Joins and leaves from the announced presence writes (so a short-lived peer is seen),
    /// and expiries (which raise no event) from re-reading the live set on a short poll.
    pub async fn derived_watch_peers(&self) -> CoordResult<BoxStream<'static, PeerEvent>> {
        let mut changes = self.derived_watch_prefix(PEER_PREFIX).await?;
        let live = |peers: Vec<Peer>| -> BTreeMap<String, String> {
            peers.into_iter().map(|p| (p.node_id, p.meta)).collect()
        };
        let mut known = live(self.peers().await?);
        let poll = self.0.config.peer_refresh.min(Duration::from_millis(500));
        let (tx, rx) = mpsc::channel(self.0.config.buffer.max(1));
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                let events = tokio::select! {
                    ev = changes.next() => match ev {
                        Some(KvEvent::Put(e)) => {
                            let id = e.key[PEER_PREFIX.len()..].to_owned();
                            let meta = String::from_utf8_lossy(&e.value).into_owned();
                            let mut now = known.clone();
                            now.insert(id, meta);
                            peer_changes(&mut known, now)
                        }
                        Some(KvEvent::Delete { key, .. }) => {
                            let mut now = known.clone();
                            now.remove(&key[PEER_PREFIX.len()..]);
                            peer_changes(&mut known, now)
                        }
                        None => return,
                    },
                    _ = tokio::time::sleep(poll) => match me.peers().await {
                        Ok(now) => peer_changes(&mut known, live(now)),
                        Err(_) => continue,
                    },
                    _ = tx.closed() => return,
                };
                for ev in events {
                    if tx.send(ev).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(receiver_stream(rx))
    }
}

/// Keys are non-empty and free of NUL (the contract's rule, checked where a key is written).
fn check_key(key: &str) -> CoordResult<()> {
    if key.is_empty() || key.contains('\0') {
        return Err(CoordError::invalid(format!(
            "key {key:?} must be non-empty and free of NUL"
        )));
    }
    Ok(())
}

/// Reserved keys are seen only by a prefix that names the reserved space.
fn visible(prefix: &str, key: &str) -> bool {
    key.starts_with(prefix)
        && (prefix.starts_with(RESERVED_PREFIX) || !key.starts_with(RESERVED_PREFIX))
}

#[async_trait]
impl Coordinator for Layer {
    fn node_id(&self) -> String {
        self.0.config.node_id.clone()
    }

    async fn health(&self) -> Health {
        self.0.store.health(self).await
    }

    async fn get(&self, key: &str) -> CoordResult<Option<Entry>> {
        self.0.store.get(key).await
    }

    async fn put(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> CoordResult<u64> {
        self.write(key, Cond::Any, value, ttl)
            .await?
            .ok_or_else(|| CoordError::backend("an unconditional write was refused"))
    }

    async fn create(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> CoordResult<Option<u64>> {
        self.write(key, Cond::Absent, value, ttl).await
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: u64,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> CoordResult<CasOutcome> {
        match self
            .write(key, Cond::Revision(expected), value, ttl)
            .await?
        {
            Some(rev) => Ok(CasOutcome::Swapped(rev)),
            // The entry as read just after the refusal (it may have moved on since).
            None => Ok(CasOutcome::Mismatch(self.0.store.get(key).await?)),
        }
    }

    async fn delete(&self, key: &str, expected: Option<u64>) -> CoordResult<bool> {
        self.remove(key, expected.map_or(Cond::Any, Cond::Revision))
            .await
    }

    async fn list(&self, prefix: &str) -> CoordResult<Vec<Entry>> {
        let mut all = self.0.store.list(prefix).await?;
        all.retain(|e| visible(prefix, &e.key));
        Ok(all)
    }

    async fn publish(&self, subject: &str, payload: Vec<u8>) -> CoordResult<()> {
        self.0.store.publish(self, subject, payload).await
    }

    async fn subscribe(&self, pattern: &str) -> CoordResult<BoxStream<'static, Message>> {
        self.0.store.subscribe(self, pattern).await
    }

    async fn acquire(
        &self,
        name: &str,
        ttl: Option<Duration>,
        wait: Duration,
    ) -> CoordResult<Option<Box<dyn Lease>>> {
        self.0.store.acquire(self, name, ttl, wait).await
    }

    async fn register(&self, meta: String) -> CoordResult<Box<dyn Presence>> {
        self.0.store.register(self, meta).await
    }

    async fn peers(&self) -> CoordResult<Vec<Peer>> {
        self.0.store.peers(self).await
    }

    async fn watch_peers(&self) -> CoordResult<BoxStream<'static, PeerEvent>> {
        self.0.store.watch_peers(self).await
    }

    async fn watch_prefix(&self, prefix: &str) -> CoordResult<BoxStream<'static, KvEvent>> {
        self.0.store.watch_prefix(self, prefix).await
    }
}

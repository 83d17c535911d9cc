//! An in-process coordinator: every primitive over one shared in-memory store.
//!
//! It backs mcpg's built-in `single_node` coordinator and the template plugin. Several handles
//! onto one [`MemoryStore`] behave like several replicas on one backend, which is how the test
//! kit's multi-instance checks run against it.
//!
//! Leases, fencing counters and peer presence are themselves entries of the store under the
//! reserved prefix [`RESERVED_PREFIX`], so they share its revisions, TTLs and watch events. The
//! reserved entries are hidden from `list` and `watch_prefix` unless the prefix asked for names
//! them. Subscribers get every event (unbounded queues): fine in-process, where a stalled
//! consumer is a bug in the caller, not a network condition.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::{Notify, mpsc};
use tokio::time::Instant;

use crate::coordinator::*;
use crate::support::{HeldLease, HeldPresence, Renew, Renewal, keep_renewing};

/// Keys under this prefix hold the store's own records (leases, fencing counters, peers).
pub const RESERVED_PREFIX: &str = "\u{1}mcpg/";
const LEASE_PREFIX: &str = "\u{1}mcpg/lease/";
const FENCE_PREFIX: &str = "\u{1}mcpg/fence/";
use crate::support::{PEER_PREFIX, peers_from};

/// The key that holds lease `name`. Deleting it makes the holder lose the lease, which is how
/// tests simulate a backend losing a lease.
pub fn lease_key(name: &str) -> String {
    format!("{LEASE_PREFIX}{name}")
}

/// The key that holds `node_id`'s presence, in this store and in the layer's. Deleting it is
/// what the backend does once the node stopped refreshing past its TTL, which is how tests
/// check that a presence registers itself again.
pub fn presence_key(node_id: &str) -> String {
    format!("{PEER_PREFIX}{node_id}")
}

/// Timing knobs of the in-memory coordinator.
#[derive(Debug, Clone)]
pub struct MemoryConfig {
    /// TTL of a lease when the caller gives none.
    pub lease_ttl: Duration,
    /// TTL of a node's presence; it is refreshed at half of it.
    pub peer_ttl: Duration,
    /// Renew a lease when this percent of its TTL has elapsed (1..=99).
    pub renew_percent: u8,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        Self {
            lease_ttl: Duration::from_secs(30),
            peer_ttl: Duration::from_secs(15),
            renew_percent: 50,
        }
    }
}

#[derive(Debug, Clone)]
struct Item {
    value: Vec<u8>,
    revision: u64,
    expires: Option<Instant>,
}

#[derive(Debug, Clone)]
enum Event {
    Message(Message),
    Kv(KvEvent),
}

struct Subscriber {
    pattern: Filter,
    tx: mpsc::UnboundedSender<Event>,
}

enum Filter {
    Subject(String),
    Prefix(String),
}

#[derive(Default)]
struct State {
    revision: u64,
    items: BTreeMap<String, Item>,
    subscribers: Vec<Subscriber>,
}

struct Inner {
    state: Mutex<State>,
    /// Woken whenever a lease record is deleted, so waiting contenders retry at once.
    lease_freed: Notify,
    config: MemoryConfig,
}

/// One in-memory backend; [`MemoryStore::handle`] gives a coordinator onto it per node.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

impl MemoryStore {
    /// A new, empty store. Starts a sweeper on the current Tokio runtime that expires TTL'd
    /// entries (and so emits their delete events); it stops when the store is dropped.
    pub fn new(config: MemoryConfig) -> Self {
        let inner = Arc::new(Inner {
            state: Mutex::new(State::default()),
            lease_freed: Notify::new(),
            config,
        });
        let weak = Arc::downgrade(&inner);
        tokio::spawn(sweep(weak));
        Self { inner }
    }

    /// A coordinator onto this store for node `node_id`.
    pub fn handle(&self, node_id: impl Into<String>) -> MemoryCoordinator {
        MemoryCoordinator {
            store: self.inner.clone(),
            node_id: node_id.into(),
        }
    }
}

async fn sweep(weak: Weak<Inner>) {
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    loop {
        tick.tick().await;
        let Some(inner) = weak.upgrade() else { return };
        let mut st = inner.state.lock().unwrap();
        let now = Instant::now();
        let expired: Vec<String> = st
            .items
            .iter()
            .filter(|(_, i)| i.expires.is_some_and(|e| e <= now))
            .map(|(k, _)| k.clone())
            .collect();
        let mut freed = false;
        for key in expired {
            freed |= key.starts_with(LEASE_PREFIX);
            remove(&mut st, &key);
        }
        drop(st);
        if freed {
            inner.lease_freed.notify_waiters();
        }
    }
}

/// Removes a key and tells watchers. Caller holds the lock.
fn remove(st: &mut State, key: &str) -> bool {
    if st.items.remove(key).is_none() {
        return false;
    }
    st.revision += 1;
    let ev = KvEvent::Delete {
        key: key.to_owned(),
        revision: st.revision,
    };
    notify(st, Event::Kv(ev));
    true
}

fn write(st: &mut State, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> u64 {
    st.revision += 1;
    let revision = st.revision;
    st.items.insert(
        key.to_owned(),
        Item {
            value: value.clone(),
            revision,
            expires: ttl.map(|t| Instant::now() + t),
        },
    );
    notify(
        st,
        Event::Kv(KvEvent::Put(Entry {
            key: key.to_owned(),
            value,
            revision,
        })),
    );
    revision
}

fn notify(st: &mut State, ev: Event) {
    st.subscribers.retain(|s| {
        let wanted = match (&s.pattern, &ev) {
            (Filter::Subject(p), Event::Message(m)) => subject_matches(p, &m.subject),
            (Filter::Prefix(p), Event::Kv(KvEvent::Put(e))) => visible(p, &e.key),
            (Filter::Prefix(p), Event::Kv(KvEvent::Delete { key, .. })) => visible(p, key),
            _ => false,
        };
        !wanted || s.tx.send(ev.clone()).is_ok()
    });
}

/// Reserved keys are seen only by a prefix that names the reserved space.
fn visible(prefix: &str, key: &str) -> bool {
    key.starts_with(prefix)
        && (prefix.starts_with(RESERVED_PREFIX) || !key.starts_with(RESERVED_PREFIX))
}

/// The live entry at `key`, expiring it if its TTL has passed.
fn live(st: &mut State, key: &str) -> Option<Item> {
    let item = st.items.get(key)?;
    if item.expires.is_some_and(|e| e <= Instant::now()) {
        remove(st, key);
        return None;
    }
    Some(item.clone())
}

fn entry(key: &str, item: Item) -> Entry {
    Entry {
        key: key.to_owned(),
        value: item.value,
        revision: item.revision,
    }
}

/// A coordinator handle onto a [`MemoryStore`].
#[derive(Clone)]
pub struct MemoryCoordinator {
    store: Arc<Inner>,
    node_id: String,
}

impl MemoryCoordinator {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.store.state.lock().unwrap()
    }

    fn subscribe_filter(&self, pattern: Filter) -> mpsc::UnboundedReceiver<Event> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.lock().subscribers.push(Subscriber { pattern, tx });
        rx
    }

    fn try_acquire(&self, name: &str, ttl: Duration) -> Option<(u64, u64)> {
        let mut st = self.lock();
        let key = lease_key(name);
        if live(&mut st, &key).is_some() {
            return None;
        }
        let fence_key = format!("{FENCE_PREFIX}{name}");
        let token = live(&mut st, &fence_key)
            .and_then(|i| i.value.try_into().ok().map(u64::from_be_bytes))
            .unwrap_or(0)
            + 1;
        write(&mut st, &fence_key, token.to_be_bytes().to_vec(), None);
        let revision = write(&mut st, &key, self.node_id.as_bytes().to_vec(), Some(ttl));
        Some((token, revision))
    }
}

#[async_trait]
impl Coordinator for MemoryCoordinator {
    fn node_id(&self) -> String {
        self.node_id.clone()
    }

    async fn health(&self) -> Health {
        Health {
            ok: true,
            detail: "in-process".into(),
        }
    }

    async fn get(&self, key: &str) -> CoordResult<Option<Entry>> {
        Ok(live(&mut self.lock(), key).map(|i| entry(key, i)))
    }

    async fn put(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> CoordResult<u64> {
        Ok(write(&mut self.lock(), key, value, ttl))
    }

    async fn create(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> CoordResult<Option<u64>> {
        let mut st = self.lock();
        if live(&mut st, key).is_some() {
            return Ok(None);
        }
        Ok(Some(write(&mut st, key, value, ttl)))
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: u64,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> CoordResult<CasOutcome> {
        let mut st = self.lock();
        match live(&mut st, key) {
            Some(i) if i.revision == expected => {
                Ok(CasOutcome::Swapped(write(&mut st, key, value, ttl)))
            }
            current => Ok(CasOutcome::Mismatch(current.map(|i| entry(key, i)))),
        }
    }

    async fn delete(&self, key: &str, expected: Option<u64>) -> CoordResult<bool> {
        let mut st = self.lock();
        let deleted = match (live(&mut st, key), expected) {
            (Some(i), Some(rev)) if i.revision != rev => false,
            (Some(_), _) => remove(&mut st, key),
            (None, _) => false,
        };
        drop(st);
        if deleted && key.starts_with(LEASE_PREFIX) {
            self.store.lease_freed.notify_waiters();
        }
        Ok(deleted)
    }

    async fn list(&self, prefix: &str) -> CoordResult<Vec<Entry>> {
        let mut st = self.lock();
        let keys: Vec<String> = st
            .items
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(k, _)| visible(prefix, k))
            .map(|(k, _)| k.clone())
            .collect();
        Ok(keys
            .into_iter()
            .filter_map(|k| live(&mut st, &k).map(|i| entry(&k, i)))
            .collect())
    }

    async fn publish(&self, subject: &str, payload: Vec<u8>) -> CoordResult<()> {
        if subject.is_empty() || subject.contains(['*', '>']) {
            return Err(CoordError::invalid(format!(
                "cannot publish to pattern `{subject}`"
            )));
        }
        let msg = Message {
            subject: subject.to_owned(),
            payload,
        };
        notify(&mut self.lock(), Event::Message(msg));
        Ok(())
    }

    async fn subscribe(&self, pattern: &str) -> CoordResult<BoxStream<'static, Message>> {
        let rx = self.subscribe_filter(Filter::Subject(pattern.to_owned()));
        Ok(unbounded_stream(rx)
            .filter_map(|e| async move {
                match e {
                    Event::Message(m) => Some(m),
                    Event::Kv(_) => None,
                }
            })
            .boxed())
    }

    async fn acquire(
        &self,
        name: &str,
        ttl: Option<Duration>,
        wait: Duration,
    ) -> CoordResult<Option<Box<dyn Lease>>> {
        let ttl = ttl.unwrap_or(self.store.config.lease_ttl);
        if ttl < Duration::from_millis(10) {
            return Err(CoordError::invalid("lease TTL must be at least 10 ms"));
        }
        let deadline = Instant::now() + wait;
        loop {
            // Register interest before trying, so a release between the try and the wait is
            // not missed.
            let freed = self.store.lease_freed.notified();
            if let Some((token, revision)) = self.try_acquire(name, ttl) {
                return Ok(Some(Box::new(hold_lease(
                    self.clone(),
                    name,
                    token,
                    revision,
                    ttl,
                ))));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            let _ = tokio::time::timeout_at(deadline, freed).await;
        }
    }

    async fn register(&self, meta: String) -> CoordResult<Box<dyn Presence>> {
        let key = format!("{PEER_PREFIX}{}", self.node_id);
        let ttl = self.store.config.peer_ttl;
        self.put(&key, meta.clone().into_bytes(), Some(ttl)).await?;
        let (c, k) = (self.clone(), key.clone());
        let (presence, mut stop_rx) = HeldPresence::new(move || {
            let (c, k) = (c.clone(), k.clone());
            Box::pin(async move { c.delete(&k, None).await.map(|_| ()) })
        });
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(ttl / 2) => {}
                    _ = stop_rx.changed() => return,
                }
                let _ = me.put(&key, meta.clone().into_bytes(), Some(ttl)).await;
            }
        });
        Ok(Box::new(presence))
    }

    async fn peers(&self) -> CoordResult<Vec<Peer>> {
        Ok(peers_from(self.list(PEER_PREFIX).await?))
    }

    async fn watch_peers(&self) -> CoordResult<BoxStream<'static, PeerEvent>> {
        // Refreshes re-put the key; only the first put after absence is a join.
        let known: std::collections::HashSet<String> =
            self.peers().await?.into_iter().map(|p| p.node_id).collect();
        let events = self.watch_prefix(PEER_PREFIX).await?;
        Ok(events
            .scan(known, |known, ev| {
                let out = match ev {
                    KvEvent::Put(e) => {
                        let id = e.key[PEER_PREFIX.len()..].to_owned();
                        known.insert(id.clone()).then(|| {
                            PeerEvent::Up(Peer {
                                node_id: id,
                                meta: String::from_utf8_lossy(&e.value).into_owned(),
                            })
                        })
                    }
                    KvEvent::Delete { key, .. } => {
                        let id = key[PEER_PREFIX.len()..].to_owned();
                        known.remove(&id).then_some(PeerEvent::Down { node_id: id })
                    }
                };
                futures::future::ready(Some(out))
            })
            .filter_map(futures::future::ready)
            .boxed())
    }

    async fn watch_prefix(&self, prefix: &str) -> CoordResult<BoxStream<'static, KvEvent>> {
        let rx = self.subscribe_filter(Filter::Prefix(prefix.to_owned()));
        Ok(unbounded_stream(rx)
            .filter_map(|e| async move {
                match e {
                    Event::Kv(k) => Some(k),
                    Event::Message(_) => None,
                }
            })
            .boxed())
    }
}

fn unbounded_stream<T: Send + 'static>(
    mut rx: mpsc::UnboundedReceiver<T>,
) -> BoxStream<'static, T> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).boxed()
}

/// Renews a lease record by compare-and-swap at its revision.
struct MemoryRenew {
    coordinator: MemoryCoordinator,
    key: String,
    rev: Arc<Mutex<Option<u64>>>,
    ttl: Duration,
}

impl Renew for MemoryRenew {
    async fn renew(&mut self) -> Renewal {
        let Some(current) = *self.rev.lock().unwrap() else {
            return Renewal::Lost;
        };
        let value = self.coordinator.node_id.as_bytes().to_vec();
        match self
            .coordinator
            .compare_and_swap(&self.key, current, value, Some(self.ttl))
            .await
        {
            Ok(CasOutcome::Swapped(r)) => {
                *self.rev.lock().unwrap() = Some(r);
                Renewal::Renewed
            }
            _ => Renewal::Lost,
        }
    }

    fn lost(&mut self) {
        *self.rev.lock().unwrap() = None;
    }
}

/// A held lease: renewed by compare-and-swap of its record at the configured percent of the TTL;
/// lost when the renewal finds the record gone or changed.
fn hold_lease(
    coordinator: MemoryCoordinator,
    name: &str,
    token: u64,
    revision: u64,
    ttl: Duration,
) -> HeldLease {
    let rev = Arc::new(Mutex::new(Some(revision)));
    let (c, n, r) = (coordinator.clone(), name.to_owned(), rev.clone());
    let (lease, signals) = HeldLease::new(name, token, ttl, move || {
        let (c, n, r) = (c.clone(), n.clone(), r.clone());
        Box::pin(async move {
            let current = r.lock().unwrap().take();
            if let Some(current) = current {
                c.delete(&lease_key(&n), Some(current)).await?;
            }
            Ok(())
        })
    });
    let percent = u32::from(coordinator.store.config.renew_percent.clamp(1, 99));
    let renew = MemoryRenew {
        key: lease_key(name),
        coordinator,
        rev,
        ttl,
    };
    keep_renewing(Instant::now(), ttl, ttl * percent / 100, signals, renew);
    lease
}

//! The four primitives over etcd.
//!
//! Under `key_prefix` (P):
//! - `P kv/<key>`: values; a key's revision is its `mod_revision`. Create and compare-and-swap
//!   are transactions on `create_revision` / `mod_revision`; a TTL is an etcd lease.
//! - `P lease/<name>`: a lease's key, attached to an etcd lease kept alive by the holder. The
//!   fencing token is the key's `create_revision`: etcd's revision is cluster-wide and durable,
//!   so tokens are the strongest of mcpg's backends.
//! - `P peers/<node>`: presence, on an etcd lease; expiry deletes the key, and watchers see the
//!   DELETE.
//! - `P ev/<subject>␟<unique>`: pub/sub, emulated: a publish writes a key on a shared lease that
//!   expires after `event_ttl_ms` (seconds); a subscription watches `P ev/`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions,
};
use futures::stream::BoxStream;
use mcpg_plugin_api::prelude::*;
use mcpg_plugin_api::support::{
    HeldLease, HeldPresence, Renew, Renewal, keep_renewing, receiver_stream,
};
use tokio::sync::{Mutex, mpsc};
use tokio::time::Instant;

use crate::config::{Config, DEFAULT_LEASE_TTL, PEER_TTL};

/// An etcd lease's keep-alive sender and the stream of its answers.
type Keeper = (etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream);

/// Separates a subject from the unique suffix of an event key.
const EVENT_SEP: char = '\u{1f}';

pub(crate) struct Inner {
    client: Client,
    config: Config,
    node_id: String,
    where_: String,
    /// The lease pub/sub events are written on, and when it was granted.
    event_lease: Mutex<Option<(i64, Instant)>>,
    seq: AtomicU64,
}

#[derive(Clone)]
pub struct EtcdCoordinator(Arc<Inner>);

fn ttl_secs(d: Duration) -> i64 {
    d.as_millis().div_ceil(1000).max(1) as i64
}

impl EtcdCoordinator {
    pub(crate) async fn connect(config: Config, node_id: String) -> Result<Self, String> {
        let where_ = config.endpoints.join(",");
        for e in &config.endpoints {
            crate::config::endpoint_uri(e).map_err(|m| format!("invalid endpoint {e}: {m}"))?;
        }
        let mut opts = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(10));
        if let Some(a) = &config.auth {
            opts = opts.with_user(a.username.clone(), a.password.clone());
        }
        let connect = Client::connect(config.endpoints.clone(), Some(opts));
        let mut client = tokio::time::timeout(Duration::from_secs(15), connect)
            .await
            .map_err(|_| format!("cannot reach etcd at {where_}: timed out"))?
            .map_err(|e| format!("cannot reach etcd at {where_}: {e}"))?;
        // A round trip, so a wrong endpoint or credentials fail boot rather than the first call.
        client
            .get(format!("{}health-probe", config.key_prefix), None)
            .await
            .map_err(|e| format!("cannot reach etcd at {where_}: {e}"))?;
        Ok(Self(Arc::new(Inner {
            client,
            config,
            node_id,
            where_,
            event_lease: Mutex::new(None),
            seq: AtomicU64::new(0),
        })))
    }

    fn c(&self) -> Client {
        self.0.client.clone()
    }

    fn p(&self, what: &str) -> String {
        format!("{}{what}", self.0.config.key_prefix)
    }

    fn kv(&self, key: &str) -> String {
        self.p(&format!("kv/{key}"))
    }

    fn err(&self, what: &str, e: etcd_client::Error) -> CoordError {
        let msg = format!("etcd {}: {what}: {e}", self.0.where_);
        let s = e.to_string();
        if s.contains("DeadlineExceeded") || s.contains("deadline") || s.contains("timed out") {
            CoordError::new(ErrorKind::Timeout, msg)
        } else if matches!(
            e,
            etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_)
        ) || s.contains("Unavailable")
            || s.contains("transport")
        {
            CoordError::unavailable(msg)
        } else {
            CoordError::backend(msg)
        }
    }

    async fn grant(&self, ttl: Duration) -> CoordResult<i64> {
        Ok(self
            .c()
            .lease_grant(ttl_secs(ttl), None)
            .await
            .map_err(|e| self.err("lease grant", e))?
            .id())
    }

    /// Puts this node's presence key on a fresh etcd lease of `PEER_TTL`; the lease's id.
    async fn put_presence(&self, meta: &str) -> CoordResult<i64> {
        let lease = self.grant(PEER_TTL).await?;
        let key = self.p(&format!("peers/{}", self.0.node_id));
        self.c()
            .put(key, meta, Some(PutOptions::new().with_lease(lease)))
            .await
            .map_err(|e| self.err("register", e))?;
        Ok(lease)
    }

    /// One refresh of this node's presence: whether its key is still there and its lease was
    /// extended (`false`: etcd dropped them, so the node must register again).
    async fn keep_presence(&self, lease: i64, keeper: &mut Option<Keeper>) -> CoordResult<bool> {
        let key = self.p(&format!("peers/{}", self.0.node_id));
        let r = self.c().get(key, None).await;
        if r.map_err(|e| self.err("presence", e))?
            .kvs()
            .first()
            .is_none_or(|kv| kv.lease() != lease)
        {
            return Ok(false);
        }
        if keeper.is_none() {
            let pair = self.c().lease_keep_alive(lease).await;
            *keeper = Some(pair.map_err(|e| self.err("presence keep-alive", e))?);
        }
        let (k, stream) = keeper.as_mut().expect("just opened");
        k.keep_alive()
            .await
            .map_err(|e| self.err("presence keep-alive", e))?;
        match stream.message().await {
            // etcd answers a keep-alive of a lease it no longer has with TTL 0.
            Ok(Some(r)) => Ok(r.ttl() > 0),
            Ok(None) => Err(CoordError::unavailable("presence keep-alive stream ended")),
            Err(e) => Err(self.err("presence keep-alive", e)),
        }
    }

    fn entry(&self, kv: &etcd_client::KeyValue, strip: usize) -> Option<Entry> {
        Some(Entry {
            key: kv.key_str().ok()?.get(strip..)?.to_owned(),
            value: kv.value().to_vec(),
            revision: kv.mod_revision() as u64,
        })
    }

    /// Opens a watch and waits until etcd confirms it, so nothing after this returns is missed.
    async fn watch(
        &self,
        key: String,
        opts: WatchOptions,
    ) -> CoordResult<etcd_client::WatchStream> {
        let mut stream = self
            .c()
            .watch(key, Some(opts))
            .await
            .map_err(|e| self.err("watch", e))?;
        match stream.message().await.map_err(|e| self.err("watch", e))? {
            Some(r) if r.created() => Ok(stream),
            _ => Err(CoordError::unavailable(format!(
                "etcd {}: watch was not created",
                self.0.where_
            ))),
        }
    }

    async fn current_revision(&self) -> CoordResult<i64> {
        let r = self
            .c()
            .get(self.p("revision-probe"), None)
            .await
            .map_err(|e| self.err("get", e))?;
        Ok(r.header().map(|h| h.revision()).unwrap_or(0))
    }

    /// The lease pub/sub events go on; a new one when the current one is half used.
    async fn event_lease(&self) -> CoordResult<i64> {
        let ttl = self.0.config.event_ttl();
        let mut slot = self.0.event_lease.lock().await;
        if let Some((id, granted)) = *slot
            && granted.elapsed() < ttl / 2
        {
            return Ok(id);
        }
        let id = self.grant(ttl).await?;
        *slot = Some((id, Instant::now()));
        Ok(id)
    }

    async fn try_acquire(&self, name: &str, ttl: Duration) -> CoordResult<Result<(i64, u64), i64>> {
        let key = self.p(&format!("lease/{name}"));
        let lease = self.grant(ttl).await?;
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.as_str(),
                self.0.node_id.as_bytes(),
                Some(PutOptions::new().with_lease(lease)),
            )])
            .or_else([TxnOp::get(key.as_str(), None)]);
        let r = self
            .c()
            .txn(txn)
            .await
            .map_err(|e| self.err("acquire", e))?;
        if r.succeeded() {
            // The put's revision is the key's create_revision: the fencing token.
            let token = r.header().map(|h| h.revision()).unwrap_or(0) as u64;
            return Ok(Ok((lease, token)));
        }
        let _ = self.c().lease_revoke(lease).await;
        Ok(Err(r.header().map(|h| h.revision()).unwrap_or(0)))
    }
}

#[async_trait]
impl Coordinator for EtcdCoordinator {
    fn node_id(&self) -> String {
        self.0.node_id.clone()
    }

    async fn health(&self) -> Health {
        let start = Instant::now();
        // A stopped server must not hold the answer past 5 s (the contract's bound).
        let asked = tokio::time::timeout(Duration::from_secs(5), self.current_revision()).await;
        match asked.unwrap_or_else(|_| Err(CoordError::unavailable("no answer within 5 s"))) {
            Ok(rev) => Health {
                ok: true,
                detail: format!(
                    "etcd {} at revision {rev}, round trip {} µs",
                    self.0.where_,
                    start.elapsed().as_micros()
                ),
            },
            Err(e) => Health {
                ok: false,
                detail: e.to_string(),
            },
        }
    }

    async fn get(&self, key: &str) -> CoordResult<Option<Entry>> {
        let r = self
            .c()
            .get(self.kv(key), None)
            .await
            .map_err(|e| self.err("get", e))?;
        Ok(r.kvs()
            .first()
            .and_then(|kv| self.entry(kv, self.kv("").len())))
    }

    async fn put(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> CoordResult<u64> {
        let opts = match ttl {
            Some(t) => Some(PutOptions::new().with_lease(self.grant(t).await?)),
            None => None,
        };
        let r = self
            .c()
            .put(self.kv(key), value, opts)
            .await
            .map_err(|e| self.err("put", e))?;
        Ok(r.header().map(|h| h.revision()).unwrap_or(0) as u64)
    }

    async fn create(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> CoordResult<Option<u64>> {
        let k = self.kv(key);
        let opts = match ttl {
            Some(t) => Some(PutOptions::new().with_lease(self.grant(t).await?)),
            None => None,
        };
        let txn = Txn::new()
            .when([Compare::create_revision(k.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(k.as_str(), value, opts)]);
        let r = self.c().txn(txn).await.map_err(|e| self.err("create", e))?;
        Ok(r.succeeded()
            .then(|| r.header().map(|h| h.revision()).unwrap_or(0) as u64))
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: u64,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> CoordResult<CasOutcome> {
        let k = self.kv(key);
        let opts = match ttl {
            Some(t) => Some(PutOptions::new().with_lease(self.grant(t).await?)),
            None => None,
        };
        let txn = Txn::new()
            .when([
                Compare::create_revision(k.as_str(), CompareOp::Greater, 0),
                Compare::mod_revision(k.as_str(), CompareOp::Equal, expected as i64),
            ])
            .and_then([TxnOp::put(k.as_str(), value, opts)])
            .or_else([TxnOp::get(k.as_str(), None)]);
        let r = self
            .c()
            .txn(txn)
            .await
            .map_err(|e| self.err("compare_and_swap", e))?;
        if r.succeeded() {
            return Ok(CasOutcome::Swapped(
                r.header().map(|h| h.revision()).unwrap_or(0) as u64,
            ));
        }
        let strip = self.kv("").len();
        let current = r.op_responses().into_iter().find_map(|op| match op {
            TxnOpResponse::Get(g) => g.kvs().first().and_then(|kv| self.entry(kv, strip)),
            _ => None,
        });
        Ok(CasOutcome::Mismatch(current))
    }

    async fn delete(&self, key: &str, expected: Option<u64>) -> CoordResult<bool> {
        let k = self.kv(key);
        let mut compares = vec![Compare::create_revision(k.as_str(), CompareOp::Greater, 0)];
        if let Some(rev) = expected {
            compares.push(Compare::mod_revision(
                k.as_str(),
                CompareOp::Equal,
                rev as i64,
            ));
        }
        let txn = Txn::new()
            .when(compares)
            .and_then([TxnOp::delete(k.as_str(), None)]);
        let r = self.c().txn(txn).await.map_err(|e| self.err("delete", e))?;
        Ok(r.succeeded())
    }

    async fn list(&self, prefix: &str) -> CoordResult<Vec<Entry>> {
        let r = self
            .c()
            .get(self.kv(prefix), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| self.err("list", e))?;
        let strip = self.kv("").len();
        let mut out: Vec<Entry> = r
            .kvs()
            .iter()
            .filter_map(|kv| self.entry(kv, strip))
            .collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn publish(&self, subject: &str, payload: Vec<u8>) -> CoordResult<()> {
        if subject.is_empty() || subject.contains(['*', '>', EVENT_SEP]) {
            return Err(CoordError::invalid(format!(
                "cannot publish to pattern `{subject}`"
            )));
        }
        let lease = self.event_lease().await?;
        let n = self.0.seq.fetch_add(1, Ordering::Relaxed);
        let key = self.p(&format!("ev/{subject}{EVENT_SEP}{}-{n}", self.0.node_id));
        self.c()
            .put(key, payload, Some(PutOptions::new().with_lease(lease)))
            .await
            .map_err(|e| self.err("publish", e))?;
        Ok(())
    }

    async fn subscribe(&self, pattern: &str) -> CoordResult<BoxStream<'static, Message>> {
        let base = self.p("ev/");
        let mut stream = self
            .watch(base.clone(), WatchOptions::new().with_prefix())
            .await?;
        let (tx, rx) = mpsc::channel(256);
        let pattern = pattern.to_owned();
        tokio::spawn(async move {
            while let Ok(Some(resp)) = stream.message().await {
                for ev in resp.events() {
                    if ev.event_type() != EventType::Put {
                        continue;
                    }
                    let Some(kv) = ev.kv() else { continue };
                    let Some(subject) = kv
                        .key_str()
                        .ok()
                        .and_then(|k| k.strip_prefix(base.as_str()))
                        .and_then(|k| k.rsplit_once(EVENT_SEP))
                        .map(|(s, _)| s.to_owned())
                    else {
                        continue;
                    };
                    if subject_matches(&pattern, &subject)
                        && tx
                            .send(Message {
                                subject,
                                payload: kv.value().to_vec(),
                            })
                            .await
                            .is_err()
                    {
                        return;
                    }
                }
            }
        });
        Ok(receiver_stream(rx))
    }

    async fn acquire(
        &self,
        name: &str,
        ttl: Option<Duration>,
        wait: Duration,
    ) -> CoordResult<Option<Box<dyn Lease>>> {
        let ttl = ttl.unwrap_or(DEFAULT_LEASE_TTL);
        let deadline = Instant::now() + wait;
        let key = self.p(&format!("lease/{name}"));
        loop {
            let sent = Instant::now();
            let seen = match self.try_acquire(name, ttl).await? {
                Ok((lease, token)) => {
                    return Ok(Some(Box::new(hold_lease(
                        self.clone(),
                        name,
                        lease,
                        token,
                        ttl,
                        sent,
                    ))));
                }
                Err(revision) => revision,
            };
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            // Wait for the holder's key to go (release or expiry), from where we looked.
            let mut w = self
                .watch(
                    key.clone(),
                    WatchOptions::new().with_start_revision(seen + 1),
                )
                .await?;
            let gone = async {
                while let Ok(Some(r)) = w.message().await {
                    if r.events()
                        .iter()
                        .any(|e| e.event_type() == EventType::Delete)
                    {
                        return;
                    }
                }
            };
            let _ = tokio::time::timeout_at(deadline, gone).await;
        }
    }

    async fn register(&self, meta: String) -> CoordResult<Box<dyn Presence>> {
        let lease = Arc::new(AtomicI64::new(self.put_presence(&meta).await?));
        let (dc, current) = (self.clone(), lease.clone());
        let (presence, mut stopped) = HeldPresence::new(move || {
            let (c, id) = (dc.clone(), current.load(Ordering::SeqCst));
            // Revoking the lease deletes the key, which watchers see.
            Box::pin(async move {
                c.c()
                    .lease_revoke(id)
                    .await
                    .map_err(|e| c.err("deregister", e))?;
                Ok(())
            })
        });
        let c = self.clone();
        let every = PEER_TTL * self.0.config.renew_percent() / 100;
        tokio::spawn(async move {
            let mut keeper = None;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stopped.changed() => return,
                }
                let id = lease.load(Ordering::SeqCst);
                let kept = tokio::time::timeout(PEER_TTL / 2, c.keep_presence(id, &mut keeper));
                match kept.await {
                    Ok(Ok(true)) => continue,
                    // Gone (expired while this process was paused or etcd stalled, or
                    // deleted): register again, on a fresh lease.
                    Ok(Ok(false)) => match c.put_presence(&meta).await {
                        Ok(new) => {
                            tracing::warn!("presence had expired in etcd; registered again");
                            lease.store(new, Ordering::SeqCst);
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "presence re-registration failed; retrying")
                        }
                    },
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "presence keep-alive failed; retrying")
                    }
                    Err(_) => tracing::warn!("presence keep-alive timed out; retrying"),
                }
                keeper = None;
            }
        });
        Ok(Box::new(presence))
    }

    async fn peers(&self) -> CoordResult<Vec<Peer>> {
        let base = self.p("peers/");
        let r = self
            .c()
            .get(base.as_str(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| self.err("peers", e))?;
        let mut out: Vec<Peer> = r
            .kvs()
            .iter()
            .filter_map(|kv| {
                Some(Peer {
                    node_id: kv.key_str().ok()?.strip_prefix(base.as_str())?.to_owned(),
                    meta: kv.value_str().ok()?.to_owned(),
                })
            })
            .collect();
        out.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Ok(out)
    }

    async fn watch_peers(&self) -> CoordResult<BoxStream<'static, PeerEvent>> {
        let base = self.p("peers/");
        let mut stream = self
            .watch(base.clone(), WatchOptions::new().with_prefix())
            .await?;
        let mut known: BTreeSet<String> =
            self.peers().await?.into_iter().map(|p| p.node_id).collect();
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            while let Ok(Some(resp)) = stream.message().await {
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    let Some(id) = kv
                        .key_str()
                        .ok()
                        .and_then(|k| k.strip_prefix(base.as_str()))
                        .map(str::to_owned)
                    else {
                        continue;
                    };
                    let out = match ev.event_type() {
                        EventType::Put if known.insert(id.clone()) => Some(PeerEvent::Up(Peer {
                            node_id: id,
                            meta: String::from_utf8_lossy(kv.value()).into_owned(),
                        })),
                        EventType::Delete if known.remove(&id) => {
                            Some(PeerEvent::Down { node_id: id })
                        }
                        _ => None,
                    };
                    if let Some(ev) = out
                        && tx.send(ev).await.is_err()
                    {
                        return;
                    }
                }
            }
        });
        Ok(receiver_stream(rx))
    }

    async fn watch_prefix(&self, prefix: &str) -> CoordResult<BoxStream<'static, KvEvent>> {
        let key = self.kv(prefix);
        let strip = self.kv("").len();
        let mut from = self.current_revision().await? + 1;
        let mut stream = self
            .watch(
                key.clone(),
                WatchOptions::new().with_prefix().with_start_revision(from),
            )
            .await?;
        let (tx, rx) = mpsc::channel(256);
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                if let Ok(Some(resp)) = stream.message().await {
                    if resp.compact_revision() > 0 {
                        // History we needed was compacted: report what is there now, then
                        // go on from the present.
                        let Ok(now) = me.list(&key[strip..]).await else {
                            continue;
                        };
                        for e in now {
                            if tx.send(KvEvent::Put(e)).await.is_err() {
                                return;
                            }
                        }
                        from = me.current_revision().await.unwrap_or(from) + 1;
                    }
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        from = from.max(kv.mod_revision() + 1);
                        let Some(k) = kv
                            .key_str()
                            .ok()
                            .and_then(|k| k.get(strip..))
                            .map(str::to_owned)
                        else {
                            continue;
                        };
                        let out = match ev.event_type() {
                            EventType::Put => KvEvent::Put(Entry {
                                key: k,
                                value: kv.value().to_vec(),
                                revision: kv.mod_revision() as u64,
                            }),
                            EventType::Delete => KvEvent::Delete {
                                key: k,
                                revision: kv.mod_revision() as u64,
                            },
                        };
                        if tx.send(out).await.is_err() {
                            return;
                        }
                    }
                    if resp.compact_revision() == 0 && !resp.canceled() {
                        continue;
                    }
                }
                if tx.is_closed() {
                    return;
                }
                // The watch ended (disconnect, cancel): resume from the last revision seen.
                tokio::time::sleep(Duration::from_millis(200)).await;
                match me
                    .watch(
                        key.clone(),
                        WatchOptions::new().with_prefix().with_start_revision(from),
                    )
                    .await
                {
                    Ok(s) => stream = s,
                    Err(e) => tracing::warn!(error = %e, "watch resume failed; retrying"),
                }
            }
        });
        Ok(receiver_stream(rx))
    }
}

/// Checks that the lease key is still ours and keeps the etcd lease alive.
struct EtcdRenew {
    c: EtcdCoordinator,
    key: String,
    lease: i64,
    token: u64,
    keeper: Option<(etcd_client::LeaseKeeper, etcd_client::LeaseKeepAliveStream)>,
}

impl Renew for EtcdRenew {
    async fn renew(&mut self) -> Renewal {
        // Still ours? A key deleted (or recreated by another holder) behind our back means the
        // lease is gone even if the etcd lease lives on.
        if let Ok(r) = self.c.c().get(self.key.as_str(), None).await
            && r.kvs()
                .first()
                .is_none_or(|kv| kv.create_revision() as u64 != self.token)
        {
            return Renewal::Lost;
        }
        if self.keeper.is_none() {
            self.keeper = self.c.c().lease_keep_alive(self.lease).await.ok();
        }
        let answer = match self.keeper.as_mut() {
            Some((k, s)) => match k.keep_alive().await {
                Ok(()) => s.message().await.ok().flatten(),
                Err(_) => None,
            },
            None => None,
        };
        match answer {
            Some(r) if r.ttl() > 0 => Renewal::Renewed,
            // etcd says the lease no longer exists.
            Some(_) => Renewal::Lost,
            None => {
                self.keeper = None;
                Renewal::Failed
            }
        }
    }
}

/// A held lease: at the configured percent of the TTL, checks that the key is still ours and
/// keeps the etcd lease alive (see `keep_renewing`). No stream is opened until the first
/// renewal, so a lease released sooner costs no watch or
/// keep-alive stream (opening and cancelling one per lease trips etcd's HTTP/2 reset limit under
/// churn).
fn hold_lease(
    c: EtcdCoordinator,
    name: &str,
    lease: i64,
    token: u64,
    ttl: Duration,
    sent: Instant,
) -> HeldLease {
    let key = c.p(&format!("lease/{name}"));
    let rc = c.clone();
    let (held, signals) = HeldLease::new(name, token, ttl, move || {
        let c = rc.clone();
        // Revoking deletes the key only if it is still ours (it is attached to our lease). A
        // lease that already expired has nothing left to release.
        Box::pin(async move {
            match c.c().lease_revoke(lease).await {
                Ok(_) => Ok(()),
                Err(e) if e.to_string().contains("not found") => Ok(()),
                Err(e) => Err(c.err("release", e)),
            }
        })
    });
    let every = ttl * c.0.config.renew_percent() / 100;
    let renew = EtcdRenew {
        c,
        key,
        lease,
        token,
        keeper: None,
    };
    keep_renewing(sent, ttl, every, signals, renew);
    held
}

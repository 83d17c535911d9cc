//! The four primitives over NATS JetStream.
//!
//! - KV: the state bucket. Revisions are the bucket stream's sequence numbers; compare-and-swap
//!   is a publish with `Nats-Expected-Last-Subject-Sequence`. Per-key TTL is the `Nats-TTL`
//!   header (nats-server 2.11+, whole seconds, rounded up); the bucket is created with
//!   `limit_markers` so an expiry leaves a delete marker that watches see.
//! - Pub/sub: core NATS subjects `<ns>.ps.<subject>`, where `<ns>` is the notifications stream's
//!   name, so two deployments with distinct names never see each other. The stream captures
//!   `<ns>.ps.>` for a minute, for inspection.
//! - Leases: the leases bucket. A holder's entry carries its nonce and an expiry in wall-clock
//!   milliseconds; acquiring is `create`, or `update` at the revision of an expired entry. The
//!   fencing token is the revision of the holder's write to the fencing bucket, made with
//!   compare-and-swap so tokens follow acquisition order.
//! - Presence: entries `peers.<node>` in the leases bucket, refreshed every heartbeat and
//!   considered gone after `peer_expiry_sec`; joins and leaves are also announced on
//!   `<ns>.peers`.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::HeaderMap;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use mcpg_plugin_api::prelude::*;
use mcpg_plugin_api::support::{
    HeldLease, HeldPresence, Renew, Renewal, keep_renewing, polled_peer_events, retry_until,
};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use crate::config::{Config, Storage};

pub(crate) struct Inner {
    client: async_nats::Client,
    js: jetstream::Context,
    /// `$JS.API` or `$JS.<domain>.API`, for publishes the KV API has no call for.
    api_prefix: String,
    state: kv::Store,
    leases: kv::Store,
    fencing: kv::Store,
    /// Namespace of core subjects: the notifications stream's name.
    ns: String,
    config: Config,
    node_id: String,
    where_: String,
}

#[derive(Clone)]
pub struct NatsCoordinator(Arc<Inner>);

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// Maps a coordinator key to a NATS KV key: `[-_/A-Za-z0-9]` stay, every other byte becomes
/// `=XX` (so `.`, which NATS treats as a token separator, never appears unescaped).
pub fn encode_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    out
}

pub fn decode_key(encoded: &str) -> Option<String> {
    let bytes = encoded.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' {
            out.push(u8::from_str_radix(encoded.get(i + 1..i + 3)?, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[derive(Serialize, Deserialize)]
struct LeaseRecord {
    nonce: String,
    expires_ms: u64,
}

#[derive(Serialize, Deserialize)]
struct PeerRecord {
    meta: String,
    seen_ms: u64,
}

impl NatsCoordinator {
    pub(crate) async fn connect(config: Config, node_id: String) -> Result<Self, String> {
        let where_ = config.servers.join(",");
        let mut opts = async_nats::ConnectOptions::new()
            .name(format!("mcpg {node_id}"))
            .connection_timeout(config.connect_timeout())
            .request_timeout(Some(config.operation_timeout()));
        match &config.auth {
            Some(crate::config::Auth::Token { token }) => opts = opts.token(token.clone()),
            Some(crate::config::Auth::UserPassword { username, password }) => {
                opts = opts.user_and_password(username.clone(), password.clone())
            }
            Some(crate::config::Auth::CredentialsFile { path }) => {
                opts = opts
                    .credentials_file(path)
                    .await
                    .map_err(|e| format!("cannot read NATS credentials file {path}: {e}"))?
            }
            None => {}
        }
        if let Some(tls) = &config.tls {
            if let Some(ca) = &tls.ca_cert {
                opts = opts.add_root_certificates(ca.into());
            }
            opts = opts.require_tls(true);
        }
        let addrs: Vec<async_nats::ServerAddr> = config
            .servers
            .iter()
            .map(|s| crate::config::server_addr(s))
            .collect::<Result<_, _>>()
            .map_err(|e| format!("invalid NATS server address: {e}"))?;
        let client = tokio::time::timeout(
            config.connect_timeout() + Duration::from_secs(1),
            opts.connect(addrs),
        )
        .await
        .map_err(|_| format!("cannot reach NATS at {where_}: timed out"))?
        .map_err(|e| format!("cannot reach NATS at {where_}: {e}"))?;
        let (js, api_prefix) = match &config.jetstream.domain {
            Some(d) => (
                jetstream::with_domain(client.clone(), d),
                format!("$JS.{d}.API"),
            ),
            None => (jetstream::new(client.clone()), "$JS.API".to_owned()),
        };
        let j = &config.jetstream;
        let storage = match j.storage {
            Storage::File => jetstream::stream::StorageType::File,
            Storage::Memory => jetstream::stream::StorageType::Memory,
        };
        let bucket = |name: &str, ttl_markers: bool| kv::Config {
            bucket: name.to_owned(),
            history: 1,
            storage,
            num_replicas: j.replicas,
            limit_markers: ttl_markers.then_some(Duration::from_secs(1)),
            ..Default::default()
        };
        let open = |cfg: kv::Config| {
            let js = js.clone();
            let where_ = where_.clone();
            async move {
                if let Ok(store) = js.get_key_value(cfg.bucket.clone()).await {
                    return Ok(store);
                }
                let name = cfg.bucket.clone();
                js.create_key_value(cfg).await.map_err(|e| {
                    format!("NATS {where_}: cannot create JetStream KV bucket `{name}`: {e}")
                })
            }
        };
        let state = open(bucket(&j.state_bucket, true))
            .await
            .map_err(|e| format!("{e} (per-key TTL needs nats-server 2.11 or newer)"))?;
        let leases = open(bucket(&j.leases_bucket, false)).await?;
        let fencing = open(bucket(&j.fencing_bucket, false)).await?;
        let ns = j.notifications_stream.clone();
        js.get_or_create_stream(jetstream::stream::Config {
            name: ns.clone(),
            subjects: vec![format!("{ns}.ps.>")],
            max_age: Duration::from_secs(60),
            storage,
            num_replicas: j.replicas,
            ..Default::default()
        })
        .await
        .map_err(|e| {
            format!("NATS {where_}: cannot create the notifications stream `{ns}`: {e}")
        })?;
        Ok(Self(Arc::new(Inner {
            client,
            js,
            api_prefix,
            state,
            leases,
            fencing,
            ns,
            config,
            node_id,
            where_,
        })))
    }

    fn err(&self, what: &str, e: impl std::fmt::Display) -> CoordError {
        let msg = format!("NATS {}: {what}: {e}", self.0.where_);
        if self.0.client.connection_state() != async_nats::connection::State::Connected {
            CoordError::unavailable(msg)
        } else if msg.contains("timed out") {
            CoordError::new(ErrorKind::Timeout, msg)
        } else {
            CoordError::backend(msg)
        }
    }

    /// Runs one operation under `connection.operation_timeout_ms`.
    async fn op<T>(&self, what: &str, f: impl Future<Output = CoordResult<T>>) -> CoordResult<T> {
        tokio::time::timeout(self.0.config.operation_timeout(), f)
            .await
            .map_err(|_| {
                CoordError::new(
                    ErrorKind::Timeout,
                    format!("NATS {}: {what}: timed out", self.0.where_),
                )
            })?
    }

    fn key(key: &str) -> CoordResult<String> {
        if key.is_empty() {
            return Err(CoordError::invalid("empty key"));
        }
        Ok(encode_key(key))
    }

    /// A KV write the KV API has no call for: with a TTL, optionally at an expected revision
    /// (0: the key must not exist). Returns the new revision, or `None` on a revision mismatch.
    async fn publish_kv(
        &self,
        store: &kv::Store,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
        expected: Option<u64>,
    ) -> CoordResult<Option<u64>> {
        let mut subject = String::new();
        if store.use_jetstream_prefix {
            subject.push_str(&self.0.api_prefix);
            subject.push('.');
        }
        subject.push_str(store.put_prefix.as_ref().unwrap_or(&store.prefix));
        subject.push_str(key);
        let mut headers = HeaderMap::new();
        if let Some(rev) = expected {
            headers.insert(
                "Nats-Expected-Last-Subject-Sequence",
                rev.to_string().as_str(),
            );
        }
        if let Some(ttl) = ttl {
            // NATS message TTLs are whole seconds, at least one.
            let secs = ttl.as_millis().div_ceil(1000).max(1);
            headers.insert("Nats-TTL", format!("{secs}s").as_str());
        }
        let ack = self
            .0
            .js
            .publish_with_headers(subject, headers, Bytes::from(value))
            .await
            .map_err(|e| self.err("publish", e))?;
        match ack.await {
            Ok(a) => Ok(Some(a.sequence)),
            Err(e) if e.kind() == jetstream::context::PublishErrorKind::WrongLastSequence => {
                Ok(None)
            }
            Err(e) => Err(self.err("publish", e)),
        }
    }

    async fn live_entry(&self, store: &kv::Store, key: &str) -> CoordResult<Option<kv::Entry>> {
        let e = store.entry(key).await.map_err(|e| self.err("get", e))?;
        Ok(e.filter(|e| e.operation == kv::Operation::Put))
    }

    async fn raw_subscribe(&self, subject: String) -> CoordResult<async_nats::Subscriber> {
        let sub = self
            .0
            .client
            .subscribe(subject)
            .await
            .map_err(|e| self.err("subscribe", e))?;
        // The server handles a connection's protocol in order: once this round trip returns,
        // the subscription is live.
        self.0
            .client
            .flush()
            .await
            .map_err(|e| self.err("subscribe", e))?;
        Ok(sub)
    }

    async fn try_acquire(
        &self,
        name: &str,
        nonce: &str,
        ttl: Duration,
    ) -> CoordResult<Option<u64>> {
        let key = Self::key(name)?;
        let record = serde_json::to_vec(&LeaseRecord {
            nonce: nonce.to_owned(),
            expires_ms: now_ms() + ttl.as_millis() as u64,
        })
        .expect("record serializes");
        let leases = &self.0.leases;
        let entry = leases
            .entry(key.as_str())
            .await
            .map_err(|e| self.err("acquire", e))?;
        let expected = match entry {
            None => 0,
            Some(e) if e.operation != kv::Operation::Put => e.revision,
            Some(e) => {
                let held = serde_json::from_slice::<LeaseRecord>(&e.value)
                    .is_ok_and(|r| r.expires_ms > now_ms());
                if held {
                    return Ok(None);
                }
                e.revision
            }
        };
        let Some(lease_rev) = self
            .publish_kv(leases, &key, record, None, Some(expected))
            .await?
        else {
            return Ok(None);
        };
        // The fencing token: our write to the fencing bucket, in acquisition order.
        loop {
            let current = self
                .0
                .fencing
                .entry(key.as_str())
                .await
                .map_err(|e| self.err("fence", e))?;
            let (prior, expected) = match &current {
                Some(e) if e.operation == kv::Operation::Put => (
                    std::str::from_utf8(&e.value)
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok())
                        .unwrap_or(0),
                    e.revision,
                ),
                Some(e) => (0, e.revision),
                None => (0, 0),
            };
            if prior >= lease_rev {
                // A later acquisition has already fenced: ours is stale.
                return Ok(None);
            }
            if let Some(token) = self
                .publish_kv(
                    &self.0.fencing,
                    &key,
                    lease_rev.to_string().into_bytes(),
                    None,
                    Some(expected),
                )
                .await?
            {
                return Ok(Some(token));
            }
        }
    }

    fn peer_key(node_id: &str) -> String {
        format!("peers.{}", encode_key(node_id))
    }

    async fn refresh_presence(&self, meta: &str) -> CoordResult<bool> {
        let key = Self::peer_key(&self.0.node_id);
        let fresh = match self.live_entry(&self.0.leases, &key).await? {
            Some(e) => !serde_json::from_slice::<PeerRecord>(&e.value).is_ok_and(|r| {
                r.seen_ms + self.0.config.peer_expiry().as_millis() as u64 > now_ms()
            }),
            None => true,
        };
        let record = serde_json::to_vec(&PeerRecord {
            meta: meta.to_owned(),
            seen_ms: now_ms(),
        })
        .expect("record serializes");
        self.0
            .leases
            .put(key, record.into())
            .await
            .map_err(|e| self.err("presence", e))?;
        Ok(fresh)
    }

    async fn announce_peers(&self) {
        let _ = self
            .0
            .client
            .publish(format!("{}.peers", self.0.ns), Bytes::new())
            .await;
        let _ = self.0.client.flush().await;
    }
}

fn entry_of(key: &str, e: kv::Entry) -> Entry {
    Entry {
        key: key.to_owned(),
        value: e.value.to_vec(),
        revision: e.revision,
    }
}

#[async_trait]
impl Coordinator for NatsCoordinator {
    fn node_id(&self) -> String {
        self.0.node_id.clone()
    }

    /// A request the server itself answers (JetStream's account info), so a stopped or
    /// unreachable server shows: flushing the local buffer proves nothing.
    async fn health(&self) -> Health {
        let start = Instant::now();
        match tokio::time::timeout(Duration::from_secs(5), self.0.js.query_account()).await {
            Ok(Ok(_)) => Health {
                ok: true,
                detail: format!(
                    "NATS {} round trip {} µs",
                    self.0.where_,
                    start.elapsed().as_micros()
                ),
            },
            Ok(Err(e)) => Health {
                ok: false,
                detail: self.err("account info", e).to_string(),
            },
            Err(_) => Health {
                ok: false,
                detail: format!("NATS {}: no answer within 5 s", self.0.where_),
            },
        }
    }

    async fn get(&self, key: &str) -> CoordResult<Option<Entry>> {
        let k = Self::key(key)?;
        self.op("get", async {
            Ok(self
                .live_entry(&self.0.state, &k)
                .await?
                .map(|e| entry_of(key, e)))
        })
        .await
    }

    async fn put(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> CoordResult<u64> {
        let k = Self::key(key)?;
        self.op("put", async {
            match ttl {
                None => self
                    .0
                    .state
                    .put(k, value.into())
                    .await
                    .map_err(|e| self.err("put", e)),
                Some(_) => Ok(self
                    .publish_kv(&self.0.state, &k, value, ttl, None)
                    .await?
                    .expect("an unconditional write has no revision to mismatch")),
            }
        })
        .await
    }

    async fn create(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> CoordResult<Option<u64>> {
        let k = Self::key(key)?;
        self.op("create", async {
            // A deleted key keeps a marker whose revision must be expected instead of 0.
            let expected = match self
                .0
                .state
                .entry(k.as_str())
                .await
                .map_err(|e| self.err("create", e))?
            {
                Some(e) if e.operation == kv::Operation::Put => return Ok(None),
                Some(e) => e.revision,
                None => 0,
            };
            self.publish_kv(&self.0.state, &k, value, ttl, Some(expected))
                .await
        })
        .await
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: u64,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> CoordResult<CasOutcome> {
        let k = Self::key(key)?;
        self.op("compare_and_swap", async {
            let current = self.live_entry(&self.0.state, &k).await?;
            if current.as_ref().map(|e| e.revision) != Some(expected) {
                return Ok(CasOutcome::Mismatch(current.map(|e| entry_of(key, e))));
            }
            match self
                .publish_kv(&self.0.state, &k, value, ttl, Some(expected))
                .await?
            {
                Some(r) => Ok(CasOutcome::Swapped(r)),
                None => Ok(CasOutcome::Mismatch(
                    self.live_entry(&self.0.state, &k)
                        .await?
                        .map(|e| entry_of(key, e)),
                )),
            }
        })
        .await
    }

    async fn delete(&self, key: &str, expected: Option<u64>) -> CoordResult<bool> {
        let k = Self::key(key)?;
        self.op("delete", async {
            let Some(current) = self.live_entry(&self.0.state, &k).await? else {
                return Ok(false);
            };
            if expected.is_some_and(|r| r != current.revision) {
                return Ok(false);
            }
            match self
                .0
                .state
                .delete_expect_revision(k.as_str(), Some(current.revision))
                .await
            {
                Ok(()) => Ok(true),
                // Written in between: the key is no longer at the revision we checked.
                Err(_)
                    if self
                        .live_entry(&self.0.state, &k)
                        .await?
                        .map(|e| e.revision)
                        != Some(current.revision) =>
                {
                    Ok(false)
                }
                Err(e) => Err(self.err("delete", e)),
            }
        })
        .await
    }

    async fn list(&self, prefix: &str) -> CoordResult<Vec<Entry>> {
        self.op("list", async {
            let mut keys = self.0.state.keys().await.map_err(|e| self.err("list", e))?;
            let mut matching = Vec::new();
            while let Some(k) = keys.next().await {
                let k = k.map_err(|e| self.err("list", e))?;
                if let Some(decoded) = decode_key(&k)
                    && decoded.starts_with(prefix)
                {
                    matching.push((k, decoded));
                }
            }
            let mut out: Vec<Entry> = futures::stream::iter(matching)
                .map(|(k, decoded)| async move {
                    self.live_entry(&self.0.state, &k)
                        .await
                        .map(|e| e.map(|e| entry_of(&decoded, e)))
                })
                .buffer_unordered(16)
                .filter_map(|r| async move { r.transpose() })
                .collect::<Vec<CoordResult<Entry>>>()
                .await
                .into_iter()
                .collect::<CoordResult<_>>()?;
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
    }

    async fn publish(&self, subject: &str, payload: Vec<u8>) -> CoordResult<()> {
        if subject.is_empty() || subject.contains(['*', '>']) {
            return Err(CoordError::invalid(format!(
                "cannot publish to pattern `{subject}`"
            )));
        }
        self.op("publish", async {
            self.0
                .client
                .publish(format!("{}.ps.{subject}", self.0.ns), payload.into())
                .await
                .map_err(|e| self.err("publish", e))?;
            self.0
                .client
                .flush()
                .await
                .map_err(|e| self.err("publish", e))
        })
        .await
    }

    async fn subscribe(&self, pattern: &str) -> CoordResult<BoxStream<'static, Message>> {
        let prefix = format!("{}.ps.", self.0.ns);
        let sub = self
            .op(
                "subscribe",
                self.raw_subscribe(format!("{prefix}{pattern}")),
            )
            .await?;
        Ok(sub
            .map(move |m| Message {
                subject: m.subject.as_str()[prefix.len()..].to_owned(),
                payload: m.payload.to_vec(),
            })
            .boxed())
    }

    async fn acquire(
        &self,
        name: &str,
        ttl: Option<Duration>,
        wait: Duration,
    ) -> CoordResult<Option<Box<dyn Lease>>> {
        let ttl = mcpg_plugin_api::support::lease_ttl(ttl, self.0.config.lease_ttl())?;
        let nonce = format!("{}:{:032x}", self.0.node_id, rand::random::<u128>());
        let deadline = Instant::now() + wait;
        let wake = if wait.is_zero() {
            None
        } else {
            let sub = self
                .raw_subscribe(format!("{}.lease.{}", self.0.ns, encode_key(name)))
                .await?;
            Some(sub.map(|_| ()).boxed())
        };
        retry_until(deadline, wake, || async {
            let sent = Instant::now();
            let token = self
                .op("acquire", self.try_acquire(name, &nonce, ttl))
                .await?;
            Ok(token.map(|token| {
                Box::new(hold_lease(
                    self.clone(),
                    name,
                    nonce.clone(),
                    token,
                    ttl,
                    sent,
                )) as Box<dyn Lease>
            }))
        })
        .await
    }

    async fn register(&self, meta: String) -> CoordResult<Box<dyn Presence>> {
        self.op("register", self.refresh_presence(&meta)).await?;
        self.announce_peers().await;
        let c = self.clone();
        let (presence, mut stopped) = HeldPresence::new(move || {
            let c = c.clone();
            Box::pin(async move {
                c.op("deregister", async {
                    c.0.leases
                        .delete(NatsCoordinator::peer_key(&c.0.node_id))
                        .await
                        .map_err(|e| c.err("deregister", e))
                })
                .await?;
                c.announce_peers().await;
                Ok(())
            })
        });
        let me = self.clone();
        let every = self.0.config.heartbeat();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stopped.changed() => return,
                }
                match me.op("heartbeat", me.refresh_presence(&meta)).await {
                    Ok(true) => me.announce_peers().await,
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "heartbeat failed; retrying at the next interval")
                    }
                }
            }
        });
        Ok(Box::new(presence))
    }

    async fn peers(&self) -> CoordResult<Vec<Peer>> {
        self.op("peers", async {
            let mut keys = self
                .0
                .leases
                .keys()
                .await
                .map_err(|e| self.err("peers", e))?;
            let expiry = self.0.config.peer_expiry().as_millis() as u64;
            let mut out = Vec::new();
            while let Some(k) = keys.next().await {
                let k = k.map_err(|e| self.err("peers", e))?;
                let Some(id) = k.strip_prefix("peers.").and_then(decode_key) else {
                    continue;
                };
                let Some(e) = self.live_entry(&self.0.leases, &k).await? else {
                    continue;
                };
                if let Ok(r) = serde_json::from_slice::<PeerRecord>(&e.value)
                    && r.seen_ms + expiry > now_ms()
                {
                    out.push(Peer {
                        node_id: id,
                        meta: r.meta,
                    });
                }
            }
            out.sort_by(|a, b| a.node_id.cmp(&b.node_id));
            Ok(out)
        })
        .await
    }

    async fn watch_peers(&self) -> CoordResult<BoxStream<'static, PeerEvent>> {
        let wake = self
            .raw_subscribe(format!("{}.peers", self.0.ns))
            .await?
            .map(|_| ())
            .boxed();
        let poll = self.0.config.heartbeat().min(Duration::from_millis(500));
        polled_peer_events(self.clone(), wake, poll, 256).await
    }

    async fn watch_prefix(&self, prefix: &str) -> CoordResult<BoxStream<'static, KvEvent>> {
        let status = self
            .op("watch", async {
                self.0
                    .state
                    .status()
                    .await
                    .map_err(|e| self.err("watch", e))
            })
            .await?;
        let from = status.info.state.last_sequence + 1;
        let watch = self
            .op("watch", async {
                self.0
                    .state
                    .watch_all_from_revision(from)
                    .await
                    .map_err(|e| self.err("watch", e))
            })
            .await?;
        let prefix = prefix.to_owned();
        Ok(watch
            .filter_map(move |e| {
                let out = e.ok().and_then(|e| {
                    let key = decode_key(&e.key)?;
                    if !key.starts_with(&prefix) {
                        return None;
                    }
                    Some(match e.operation {
                        kv::Operation::Put => KvEvent::Put(entry_of(&key, e)),
                        _ => KvEvent::Delete {
                            key,
                            revision: e.revision,
                        },
                    })
                });
                futures::future::ready(out)
            })
            .boxed())
    }
}

/// What renewal and release share for one held lease. Each holds the lock for its whole round
/// trip, so a release never deletes at a revision that a renewal in flight is replacing (that
/// race made releases fail with "wrong last sequence", error code 10071), and no renewal is
/// sent once the release began.
#[derive(Default)]
struct Held {
    /// Our entry's revision while held (`None` before the first lookup and once lost).
    revision: Option<u64>,
    released: bool,
}

type SharedHeld = Arc<tokio::sync::Mutex<Held>>;

/// Rewrites a lease entry at its revision with a new expiry; a mismatch means it was lost.
struct NatsRenew {
    c: NatsCoordinator,
    key: String,
    nonce: String,
    ttl: Duration,
    held: SharedHeld,
    looked_up: bool,
}

impl NatsCoordinator {
    /// The live lease entry's revision if it still carries `nonce` (is ours).
    async fn our_revision(&self, key: &str, nonce: &str) -> CoordResult<Option<u64>> {
        Ok(self
            .live_entry(&self.0.leases, key)
            .await?
            .filter(|e| {
                serde_json::from_slice::<LeaseRecord>(&e.value).is_ok_and(|r| r.nonce == nonce)
            })
            .map(|e| e.revision))
    }

    /// Deletes our lease entry. A revision mismatch is re-read: if the entry is still ours (at
    /// another revision) the delete is retried at that one; if it is somebody else's or gone,
    /// there is nothing of ours left to release.
    async fn release_lease(&self, key: &str, nonce: &str, mut rev: u64) -> CoordResult<()> {
        for _ in 0..3 {
            let deleted = self
                .op("release", async {
                    self.0
                        .leases
                        .delete_expect_revision(key, Some(rev))
                        .await
                        .map_err(|e| self.err("release", e))
                })
                .await;
            match deleted {
                Ok(()) => return Ok(()),
                Err(e) => match self.our_revision(key, nonce).await? {
                    Some(r) if r != rev => rev = r,
                    Some(_) => return Err(e),
                    None => return Ok(()),
                },
            }
        }
        Err(self.err("release", "the lease entry kept changing under the release"))
    }
}

impl Renew for NatsRenew {
    async fn renew(&mut self) -> Renewal {
        let mut held = self.held.lock().await;
        if held.released {
            // The release owns the entry now; the renewal loop stops on its signal.
            return Renewal::Failed;
        }
        if !self.looked_up {
            // The acquire's revision, found by our nonce.
            match self.c.our_revision(&self.key, &self.nonce).await {
                Ok(Some(r)) => {
                    held.revision = Some(r);
                    self.looked_up = true;
                }
                Ok(None) => return Renewal::Lost,
                Err(e) => {
                    tracing::warn!(error = %e, "lease lookup failed; retrying until the lease would expire");
                    return Renewal::Failed;
                }
            }
        }
        let Some(current) = held.revision else {
            return Renewal::Lost;
        };
        let record = serde_json::to_vec(&LeaseRecord {
            nonce: self.nonce.clone(),
            expires_ms: now_ms() + self.ttl.as_millis() as u64,
        })
        .expect("record serializes");
        match self
            .c
            .publish_kv(&self.c.0.leases, &self.key, record, None, Some(current))
            .await
        {
            Ok(Some(r)) => {
                held.revision = Some(r);
                Renewal::Renewed
            }
            Ok(None) => Renewal::Lost,
            Err(e) => {
                tracing::warn!(error = %e, "lease renewal failed; retrying until the lease would expire");
                Renewal::Failed
            }
        }
    }

    fn lost(&mut self) {
        if let Ok(mut held) = self.held.try_lock() {
            held.revision = None;
        }
    }
}

/// A held lease, renewed at the configured percent of the TTL (see `keep_renewing`).
fn hold_lease(
    c: NatsCoordinator,
    name: &str,
    nonce: String,
    token: u64,
    ttl: Duration,
    sent: Instant,
) -> HeldLease {
    let held: SharedHeld = Arc::default();
    let key = encode_key(name);
    let (rc, rk, rn, rh) = (c.clone(), key.clone(), nonce.clone(), held.clone());
    let (lease, signals) = HeldLease::new(name, token, ttl, move || {
        let (c, key, nonce, held) = (rc.clone(), rk.clone(), rn.clone(), rh.clone());
        Box::pin(async move {
            // Waits for a renewal in flight; none is sent after this.
            let mut held = held.lock().await;
            held.released = true;
            // The renewal task may not have recorded the revision yet: look it up by nonce.
            let rev = match held.revision {
                Some(r) => Some(r),
                None => c.our_revision(&key, &nonce).await?,
            };
            if let Some(rev) = rev {
                c.release_lease(&key, &nonce, rev).await?;
                held.revision = None;
                let _ =
                    c.0.client
                        .publish(format!("{}.lease.{key}", c.0.ns), Bytes::new())
                        .await;
                let _ = c.0.client.flush().await;
            }
            Ok(())
        })
    });
    let every = ttl * c.0.config.lease.renew_before_expiry_percent / 100;
    let renew = NatsRenew {
        c,
        key,
        nonce,
        ttl,
        held,
        looked_up: false,
    };
    keep_renewing(sent, ttl, every, signals, renew);
    lease
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_are_valid_nats_keys() {
        for k in ["cap/sessions/abc", "a.b", "x y=z", "ünï", "tk1/kv_basics/k"] {
            let e = encode_key(k);
            assert!(
                e.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'/' | b'=')),
                "{e}"
            );
            assert_eq!(decode_key(&e).as_deref(), Some(k));
        }
        assert_eq!(encode_key("a.b"), "a=2Eb");
    }
}

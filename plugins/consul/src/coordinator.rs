//! The four primitives over Consul's HTTP API (no Rust Consul client is maintained well enough
//! to build on; the API is small and stable).
//!
//! Under `kv_prefix` (P):
//! - `P kv/<key>`: values; a key's revision is its `ModifyIndex`. Every write is a `/v1/txn`
//!   transaction that ends with a `get`, so the write and the index it produced are read
//!   atomically; create, compare-and-swap and conditional delete use `check-not-exists`,
//!   `check-index` / `cas` and `delete-cas`. Reads are `?consistent`.
//! - TTL: Consul has no per-key TTL. A TTL'd key is locked by a session with
//!   `Behavior=delete`; sessions have a 10 s minimum TTL and Consul invalidates them between
//!   one and two TTLs after the last renewal.
//! - `P lease/<name>`: locked (`acquire`) by the holder's session (`LockDelay=0s`, so a release
//!   hands over at once); the fencing token is the `ModifyIndex` of the lock write (not
//!   `LockIndex`, which restarts when the key is deleted).
//! - `P peers/<node>`: presence, locked by the replica's session.
//! - `P ev/<subject>/<unique>`: pub/sub over KV plus blocking queries.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use futures::stream::BoxStream;
use mcpg_plugin_api::prelude::*;
use mcpg_plugin_api::support::{
    Deadline, HeldLease, HeldPresence, LeaseSignals, peer_changes, receiver_stream,
};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{Mutex, mpsc, watch};
use tokio::time::Instant;

use crate::config::{Config, DEFAULT_LEASE_TTL, MIN_SESSION_TTL, PEER_TTL};

pub(crate) struct Inner {
    http: reqwest::Client,
    base: String,
    config: Config,
    node_id: String,
    /// Session pub/sub events are locked by, and when it was created.
    event_session: Mutex<Option<(String, Instant)>>,
    seq: AtomicU64,
}

#[derive(Clone)]
pub struct ConsulCoordinator(Arc<Inner>);

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct KvPair {
    key: String,
    #[serde(default)]
    value: Option<String>,
    modify_index: u64,
    #[serde(default)]
    session: Option<String>,
}

impl KvPair {
    fn bytes(&self) -> Vec<u8> {
        self.value
            .as_deref()
            .and_then(|v| B64.decode(v).ok())
            .unwrap_or_default()
    }
}

fn session_ttl(ttl: Duration) -> Duration {
    ttl.max(MIN_SESSION_TTL)
}

/// Consul's blocking-query index rules: an index that goes backwards means the state was
/// reset, so start over from 0; never wait on 0.
fn next_index(previous: u64, returned: u64) -> u64 {
    if returned < previous {
        0
    } else {
        returned.max(1)
    }
}

impl ConsulCoordinator {
    pub(crate) async fn connect(config: Config, node_id: String) -> Result<Self, String> {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(t) = &config.token {
            let mut v = reqwest::header::HeaderValue::from_str(t)
                .map_err(|_| "token is not a valid header value".to_owned())?;
            v.set_sensitive(true);
            headers.insert("X-Consul-Token", v);
        }
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        crate::config::base_url(&config.address).map_err(|e| format!("invalid address: {e}"))?;
        let base = config.address.trim_end_matches('/').to_owned();
        let me = Self(Arc::new(Inner {
            http,
            base,
            config,
            node_id,
            event_session: Mutex::new(None),
            seq: AtomicU64::new(0),
        }));
        let leader: String = me
            .call(
                reqwest::Method::GET,
                "/v1/status/leader",
                &[],
                None,
                Duration::from_secs(10),
            )
            .await
            .map_err(|e| format!("cannot reach Consul at {}: {e}", me.0.base))?
            .json()
            .await
            .map_err(|e| format!("cannot reach Consul at {}: {e}", me.0.base))?;
        if leader.is_empty() {
            return Err(format!("Consul at {} has no leader", me.0.base));
        }
        Ok(me)
    }

    fn p(&self, what: &str) -> String {
        format!("{}{what}", self.0.config.kv_prefix)
    }

    fn err(&self, what: &str, e: impl std::fmt::Display, unavailable: bool) -> CoordError {
        let msg = format!("Consul {}: {what}: {e}", self.0.base);
        if unavailable {
            CoordError::unavailable(msg)
        } else {
            CoordError::backend(msg)
        }
    }

    /// One HTTP call with the datacenter applied. 5xx and transport errors are `Unavailable`.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Value>,
        timeout: Duration,
    ) -> CoordResult<reqwest::Response> {
        let mut req = self
            .0
            .http
            .request(method, format!("{}{path}", self.0.base))
            .timeout(timeout)
            .query(query);
        if let Some(dc) = &self.0.config.datacenter {
            req = req.query(&[("dc", dc)]);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| self.err(path, e, true))?;
        if resp.status().is_server_error() {
            let status = resp.status();
            return Err(self.err(path, status, true));
        }
        Ok(resp)
    }

    /// A `/v1/txn`; `Ok(None)` when a check failed (409).
    async fn txn(&self, ops: Vec<Value>) -> CoordResult<Option<Vec<KvPair>>> {
        let resp = self
            .call(
                reqwest::Method::PUT,
                "/v1/txn",
                &[],
                Some(Value::Array(ops)),
                Duration::from_secs(10),
            )
            .await?;
        match resp.status().as_u16() {
            200 => {
                let v: Value = resp.json().await.map_err(|e| self.err("txn", e, false))?;
                let results = v["Results"].as_array().cloned().unwrap_or_default();
                Ok(Some(
                    results
                        .into_iter()
                        .filter_map(|r| serde_json::from_value::<KvPair>(r["KV"].clone()).ok())
                        .collect(),
                ))
            }
            409 => Ok(None),
            s => {
                let text = resp.text().await.unwrap_or_default();
                Err(self.err("txn", format!("{s}: {text}"), false))
            }
        }
    }

    async fn get_pairs(
        &self,
        key: &str,
        recurse: bool,
        index: Option<(u64, Duration)>,
    ) -> CoordResult<(Vec<KvPair>, u64)> {
        let mut q = vec![];
        if recurse {
            q.push(("recurse", "true".to_owned()));
        }
        let timeout = match index {
            Some((i, wait)) => {
                q.push(("index", i.to_string()));
                // Consul documents waits in whole seconds or minutes ("10s", "5m").
                q.push((
                    "wait",
                    format!("{}s", wait.as_millis().div_ceil(1000).max(1)),
                ));
                wait + wait / 16 + Duration::from_secs(5)
            }
            None => {
                q.push(("consistent", "true".to_owned()));
                Duration::from_secs(10)
            }
        };
        let resp = self
            .call(
                reqwest::Method::GET,
                &format!("/v1/kv/{key}"),
                &q,
                None,
                timeout,
            )
            .await?;
        let idx = resp
            .headers()
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        match resp.status().as_u16() {
            404 => Ok((Vec::new(), idx)),
            200 => Ok((
                resp.json().await.map_err(|e| self.err("get", e, false))?,
                idx,
            )),
            s => Err(self.err("get", s, false)),
        }
    }

    async fn create_session(&self, name: &str, ttl: Duration) -> CoordResult<String> {
        let body = json!({"Name": name, "TTL": format!("{}s", session_ttl(ttl).as_secs()), "Behavior": "delete", "LockDelay": "0s"});
        let resp = self
            .call(
                reqwest::Method::PUT,
                "/v1/session/create",
                &[],
                Some(body),
                Duration::from_secs(10),
            )
            .await?;
        if !resp.status().is_success() {
            return Err(self.err("session create", resp.status(), false));
        }
        let v: Value = resp
            .json()
            .await
            .map_err(|e| self.err("session create", e, false))?;
        v["ID"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| self.err("session create", "no ID", false))
    }

    /// `Ok(false)` when Consul no longer knows the session.
    async fn renew_session(&self, id: &str) -> CoordResult<bool> {
        let resp = self
            .call(
                reqwest::Method::PUT,
                &format!("/v1/session/renew/{id}"),
                &[],
                None,
                Duration::from_secs(10),
            )
            .await?;
        Ok(resp.status().is_success())
    }

    async fn destroy_session(&self, id: &str) -> CoordResult<()> {
        self.call(
            reqwest::Method::PUT,
            &format!("/v1/session/destroy/{id}"),
            &[],
            None,
            Duration::from_secs(10),
        )
        .await?;
        Ok(())
    }

    /// Keeps a session alive at the renewal percent until `stop`; reports loss on `lost`.
    fn keep_session(
        &self,
        id: String,
        ttl: Duration,
        mut stop: watch::Receiver<bool>,
        lost: Option<(watch::Sender<bool>, Deadline)>,
    ) {
        let me = self.clone();
        let every = ttl * self.0.config.renew_percent() / 100;
        let mut deadline = Instant::now() + ttl;
        // The holder's deadline is the session's TTL, which Consul never cuts short (it may
        // keep a session up to twice as long).
        if let Some((_, shared)) = &lost {
            shared.set(Instant::now() + session_ttl(ttl));
        }
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.changed() => return,
                }
                let sent = Instant::now();
                match me.renew_session(&id).await {
                    Ok(true) => {
                        deadline = sent + ttl;
                        if let Some((_, shared)) = &lost
                            && !shared.set(sent + session_ttl(ttl))
                        {
                            break;
                        }
                    }
                    Ok(false) => break,
                    Err(e) => {
                        tracing::warn!(error = %e, "session renewal failed; retrying");
                        if Instant::now() >= deadline {
                            break;
                        }
                    }
                }
            }
            if let Some((l, _)) = lost {
                let _ = l.send(true);
            }
        });
    }

    /// Locks this node's presence key with a new session of `PEER_TTL`; the session's id.
    async fn lock_presence(&self, meta: &str) -> CoordResult<String> {
        let session = self
            .create_session(&format!("mcpg-peer-{}", self.0.node_id), PEER_TTL)
            .await?;
        let k = self.p(&format!("peers/{}", self.0.node_id));
        let ops = vec![
            json!({"KV": {"Verb": "delete", "Key": k}}),
            json!({"KV": {"Verb": "lock", "Key": k, "Value": B64.encode(meta.as_bytes()), "Session": session}}),
        ];
        self.txn(ops)
            .await?
            .ok_or_else(|| self.err("register", "transaction refused", false))?;
        Ok(session)
    }

    fn write_ops(&self, key: &str, value: &[u8], session: Option<&str>) -> Vec<Value> {
        let v = B64.encode(value);
        match session {
            // Replace whatever holds the key, then lock it with the TTL session.
            Some(s) => vec![
                json!({"KV": {"Verb": "delete", "Key": key}}),
                json!({"KV": {"Verb": "lock", "Key": key, "Value": v, "Session": s}}),
            ],
            None => vec![json!({"KV": {"Verb": "set", "Key": key, "Value": v}})],
        }
    }

    async fn ttl_session(&self, ttl: Option<Duration>) -> CoordResult<Option<String>> {
        match ttl {
            Some(t) => Ok(Some(self.create_session("mcpg-ttl", t).await?)),
            None => Ok(None),
        }
    }

    fn entry(&self, strip: usize, p: &KvPair) -> Option<Entry> {
        Some(Entry {
            key: p.key.get(strip..)?.to_owned(),
            value: p.bytes(),
            revision: p.modify_index,
        })
    }

    async fn event_session(&self) -> CoordResult<String> {
        let ttl = MIN_SESSION_TTL;
        let mut slot = self.0.event_session.lock().await;
        if let Some((id, at)) = &*slot
            && at.elapsed() < ttl / 2
        {
            return Ok(id.clone());
        }
        // Not renewed: its events are deleted once Consul invalidates it (one to two TTLs).
        let id = self.create_session("mcpg-events", ttl).await?;
        *slot = Some((id.clone(), Instant::now()));
        Ok(id)
    }

    /// Polls `key` (recursively) with blocking queries, sending each new result set.
    fn blocking_watch(&self, key: String, start: u64) -> mpsc::Receiver<(Vec<KvPair>, u64)> {
        let (tx, rx) = mpsc::channel(64);
        let me = self.clone();
        let wait = self.0.config.wait();
        tokio::spawn(async move {
            let mut index = start;
            loop {
                if tx.is_closed() {
                    return;
                }
                match me.get_pairs(&key, true, Some((index, wait))).await {
                    Ok((pairs, returned)) => {
                        let next = next_index(index, returned);
                        if next != index && tx.send((pairs, returned)).await.is_err() {
                            return;
                        }
                        index = next;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "blocking query failed; retrying");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
        rx
    }
}

#[async_trait]
impl Coordinator for ConsulCoordinator {
    fn node_id(&self) -> String {
        self.0.node_id.clone()
    }

    async fn health(&self) -> Health {
        match self
            .call(
                reqwest::Method::GET,
                "/v1/status/leader",
                &[],
                None,
                Duration::from_secs(5),
            )
            .await
        {
            Ok(r) => match r.json::<String>().await {
                Ok(l) if !l.is_empty() => Health {
                    ok: true,
                    detail: format!("Consul {} leader {l}", self.0.base),
                },
                _ => Health {
                    ok: false,
                    detail: format!("Consul {} has no leader", self.0.base),
                },
            },
            Err(e) => Health {
                ok: false,
                detail: e.to_string(),
            },
        }
    }

    async fn get(&self, key: &str) -> CoordResult<Option<Entry>> {
        let k = self.p(&format!("kv/{key}"));
        let (pairs, _) = self.get_pairs(&k, false, None).await?;
        Ok(pairs
            .first()
            .and_then(|p| self.entry(self.p("kv/").len(), p)))
    }

    async fn put(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> CoordResult<u64> {
        let k = self.p(&format!("kv/{key}"));
        let session = self.ttl_session(ttl).await?;
        let mut ops = self.write_ops(&k, &value, session.as_deref());
        ops.push(json!({"KV": {"Verb": "get", "Key": k}}));
        let results = self
            .txn(ops)
            .await?
            .ok_or_else(|| self.err("put", "transaction refused", false))?;
        results
            .last()
            .map(|p| p.modify_index)
            .ok_or_else(|| self.err("put", "no result", false))
    }

    async fn create(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> CoordResult<Option<u64>> {
        let k = self.p(&format!("kv/{key}"));
        let session = self.ttl_session(ttl).await?;
        let mut ops = vec![json!({"KV": {"Verb": "check-not-exists", "Key": k}})];
        ops.extend(self.write_ops(&k, &value, session.as_deref()));
        ops.push(json!({"KV": {"Verb": "get", "Key": k}}));
        match self.txn(ops).await? {
            Some(r) => Ok(r.last().map(|p| p.modify_index)),
            None => {
                if let Some(s) = session {
                    let _ = self.destroy_session(&s).await;
                }
                Ok(None)
            }
        }
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: u64,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> CoordResult<CasOutcome> {
        let k = self.p(&format!("kv/{key}"));
        let session = self.ttl_session(ttl).await?;
        let mut ops = vec![json!({"KV": {"Verb": "check-index", "Key": k, "Index": expected}})];
        ops.extend(self.write_ops(&k, &value, session.as_deref()));
        ops.push(json!({"KV": {"Verb": "get", "Key": k}}));
        match self.txn(ops).await? {
            Some(r) => Ok(CasOutcome::Swapped(
                r.last().map(|p| p.modify_index).unwrap_or(0),
            )),
            None => {
                if let Some(s) = session {
                    let _ = self.destroy_session(&s).await;
                }
                Ok(CasOutcome::Mismatch(self.get(key).await?))
            }
        }
    }

    async fn delete(&self, key: &str, expected: Option<u64>) -> CoordResult<bool> {
        let k = self.p(&format!("kv/{key}"));
        let Some(current) = self.get(key).await? else {
            return Ok(false);
        };
        let index = expected.unwrap_or(current.revision);
        if index != current.revision {
            return Ok(false);
        }
        Ok(self
            .txn(vec![
                json!({"KV": {"Verb": "delete-cas", "Key": k, "Index": index}}),
            ])
            .await?
            .is_some())
    }

    async fn list(&self, prefix: &str) -> CoordResult<Vec<Entry>> {
        let (pairs, _) = self
            .get_pairs(&self.p(&format!("kv/{prefix}")), true, None)
            .await?;
        let strip = self.p("kv/").len();
        let mut out: Vec<Entry> = pairs.iter().filter_map(|p| self.entry(strip, p)).collect();
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn publish(&self, subject: &str, payload: Vec<u8>) -> CoordResult<()> {
        if subject.is_empty() || subject.contains(['*', '>', '/']) {
            return Err(CoordError::invalid(format!(
                "cannot publish to `{subject}`"
            )));
        }
        let session = self.event_session().await?;
        let n = self.0.seq.fetch_add(1, Ordering::Relaxed);
        let k = self.p(&format!("ev/{subject}/{}-{n}", self.0.node_id));
        let ops = vec![
            json!({"KV": {"Verb": "lock", "Key": k, "Value": B64.encode(&payload), "Session": session}}),
        ];
        self.txn(ops)
            .await?
            .ok_or_else(|| self.err("publish", "transaction refused", false))?;
        Ok(())
    }

    async fn subscribe(&self, pattern: &str) -> CoordResult<BoxStream<'static, Message>> {
        let base = self.p("ev/");
        // Everything at or below the current index is history; deliver only what follows.
        let (_, start) = self.get_pairs(&base, true, None).await?;
        let mut rx = self.blocking_watch(base.clone(), start.max(1));
        let (tx, out) = mpsc::channel(256);
        let pattern = pattern.to_owned();
        tokio::spawn(async move {
            let mut seen = start;
            while let Some((mut pairs, _)) = rx.recv().await {
                pairs.sort_by_key(|p| p.modify_index);
                let mut newest = seen;
                for p in pairs.iter().filter(|p| p.modify_index > seen) {
                    newest = newest.max(p.modify_index);
                    let Some((subject, _)) =
                        p.key.get(base.len()..).and_then(|k| k.rsplit_once('/'))
                    else {
                        continue;
                    };
                    if subject_matches(&pattern, subject)
                        && tx
                            .send(Message {
                                subject: subject.to_owned(),
                                payload: p.bytes(),
                            })
                            .await
                            .is_err()
                    {
                        return;
                    }
                }
                seen = newest;
            }
        });
        Ok(receiver_stream(out))
    }

    async fn acquire(
        &self,
        name: &str,
        ttl: Option<Duration>,
        wait: Duration,
    ) -> CoordResult<Option<Box<dyn Lease>>> {
        let ttl = session_ttl(ttl.unwrap_or(DEFAULT_LEASE_TTL));
        let k = self.p(&format!("lease/{name}"));
        let deadline = Instant::now() + wait;
        loop {
            let session = self
                .create_session(&format!("mcpg-lease-{name}"), ttl)
                .await?;
            let nonce = format!("{}:{:032x}", self.0.node_id, rand::random::<u128>());
            let ops = vec![
                json!({"KV": {"Verb": "lock", "Key": k, "Value": B64.encode(&nonce), "Session": session}}),
                json!({"KV": {"Verb": "get", "Key": k}}),
            ];
            if let Some(r) = self.txn(ops).await? {
                let token = r.last().map(|p| p.modify_index).unwrap_or(0);
                return Ok(Some(Box::new(hold_lease(
                    self.clone(),
                    name,
                    session,
                    token,
                    ttl,
                ))));
            }
            let _ = self.destroy_session(&session).await;
            if Instant::now() >= deadline {
                return Ok(None);
            }
            // Wait for the key to change (release or expiry), then try again.
            let (_, index) = self.get_pairs(&k, false, None).await?;
            let left = deadline
                .saturating_duration_since(Instant::now())
                .min(self.0.config.wait());
            let _ = self.get_pairs(&k, false, Some((index.max(1), left))).await;
        }
    }

    async fn register(&self, meta: String) -> CoordResult<Box<dyn Presence>> {
        let session = Arc::new(std::sync::Mutex::new(self.lock_presence(&meta).await?));
        let (c, current) = (self.clone(), session.clone());
        // Destroying the session deletes the key it locks (Behavior=delete).
        let (presence, mut stopped) = HeldPresence::new(move || {
            let (c, id) = (c.clone(), current.lock().expect("not poisoned").clone());
            Box::pin(async move { c.destroy_session(&id).await })
        });
        let me = self.clone();
        let every = PEER_TTL * self.0.config.renew_percent() / 100;
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stopped.changed() => return,
                }
                let id = session.lock().expect("not poisoned").clone();
                match me.renew_session(&id).await {
                    Ok(true) => {}
                    // The session is gone (this process was paused or Consul stalled past its
                    // TTL, or it was destroyed), and the key with it: register again.
                    Ok(false) => match me.lock_presence(&meta).await {
                        Ok(new) => {
                            tracing::warn!(
                                "presence session had expired in Consul; registered again"
                            );
                            *session.lock().expect("not poisoned") = new;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "presence re-registration failed; retrying")
                        }
                    },
                    Err(e) => {
                        tracing::warn!(error = %e, "presence session renewal failed; retrying")
                    }
                }
            }
        });
        Ok(Box::new(presence))
    }

    async fn peers(&self) -> CoordResult<Vec<Peer>> {
        let base = self.p("peers/");
        let (pairs, _) = self.get_pairs(&base, true, None).await?;
        let mut out: Vec<Peer> = pairs
            .iter()
            .filter(|p| p.session.is_some())
            .filter_map(|p| {
                Some(Peer {
                    node_id: p.key.get(base.len()..)?.to_owned(),
                    meta: String::from_utf8_lossy(&p.bytes()).into_owned(),
                })
            })
            .collect();
        out.sort_by(|a, b| a.node_id.cmp(&b.node_id));
        Ok(out)
    }

    async fn watch_peers(&self) -> CoordResult<BoxStream<'static, PeerEvent>> {
        let base = self.p("peers/");
        let (_, start) = self.get_pairs(&base, true, None).await?;
        let mut known: BTreeMap<String, String> = self
            .peers()
            .await?
            .into_iter()
            .map(|p| (p.node_id, p.meta))
            .collect();
        let mut rx = self.blocking_watch(base.clone(), start.max(1));
        let (tx, out) = mpsc::channel(256);
        tokio::spawn(async move {
            while let Some((pairs, _)) = rx.recv().await {
                let now: BTreeMap<String, String> = pairs
                    .iter()
                    .filter(|p| p.session.is_some())
                    .filter_map(|p| {
                        Some((
                            p.key.get(base.len()..)?.to_owned(),
                            String::from_utf8_lossy(&p.bytes()).into_owned(),
                        ))
                    })
                    .collect();
                for ev in peer_changes(&mut known, now) {
                    if tx.send(ev).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(receiver_stream(out))
    }

    async fn watch_prefix(&self, prefix: &str) -> CoordResult<BoxStream<'static, KvEvent>> {
        let key = self.p(&format!("kv/{prefix}"));
        let strip = self.p("kv/").len();
        let (pairs, start) = self.get_pairs(&key, true, None).await?;
        let mut known: BTreeMap<String, u64> = pairs
            .iter()
            .map(|p| (p.key.clone(), p.modify_index))
            .collect();
        let mut rx = self.blocking_watch(key, start.max(1));
        let (tx, out) = mpsc::channel(256);
        tokio::spawn(async move {
            while let Some((mut pairs, index)) = rx.recv().await {
                pairs.sort_by_key(|p| p.modify_index);
                let mut now = BTreeMap::new();
                for p in &pairs {
                    now.insert(p.key.clone(), p.modify_index);
                    if known.get(&p.key) != Some(&p.modify_index) {
                        let Some(k) = p.key.get(strip..) else {
                            continue;
                        };
                        let ev = KvEvent::Put(Entry {
                            key: k.to_owned(),
                            value: p.bytes(),
                            revision: p.modify_index,
                        });
                        if tx.send(ev).await.is_err() {
                            return;
                        }
                    }
                }
                for gone in known.keys().filter(|k| !now.contains_key(*k)) {
                    let Some(k) = gone.get(strip..) else { continue };
                    if tx
                        .send(KvEvent::Delete {
                            key: k.to_owned(),
                            revision: index,
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                known = now;
            }
        });
        Ok(receiver_stream(out))
    }
}

/// A held lease: the session is renewed at the configured percent, and the key is watched (it
/// can also go behind our back); either failing reports the lease lost.
fn hold_lease(
    c: ConsulCoordinator,
    name: &str,
    session: String,
    token: u64,
    ttl: Duration,
) -> HeldLease {
    let (rc, rs) = (c.clone(), session.clone());
    // Destroying the session deletes the key it holds (Behavior=delete), which wakes contenders
    // blocked on it; LockDelay=0s lets them take it at once.
    let (lease, signals) = HeldLease::new(name, token, ttl, move || {
        let (c, s) = (rc.clone(), rs.clone());
        Box::pin(async move { c.destroy_session(&s).await })
    });
    let LeaseSignals {
        lost,
        mut stop,
        deadline,
    } = signals;
    c.keep_session(
        session.clone(),
        ttl,
        stop.clone(),
        Some((lost.clone(), deadline)),
    );
    let k = c.p(&format!("lease/{name}"));
    tokio::spawn(async move {
        let mut index = token;
        loop {
            let q = c.get_pairs(&k, false, Some((index.max(1), c.0.config.wait())));
            let r = tokio::select! {
                r = q => r,
                _ = stop.changed() => return,
            };
            match r {
                Ok((pairs, returned)) => {
                    if !pairs
                        .iter()
                        .any(|p| p.session.as_deref() == Some(session.as_str()))
                    {
                        let _ = lost.send(true);
                        return;
                    }
                    index = next_index(index, returned);
                }
                Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
    });
    lease
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocking_query_indexes_follow_consuls_rules() {
        assert_eq!(next_index(10, 12), 12);
        assert_eq!(next_index(10, 10), 10);
        assert_eq!(next_index(10, 3), 0, "an index that goes backwards resets");
        assert_eq!(next_index(0, 0), 1, "never wait on 0");
        assert_eq!(session_ttl(Duration::from_secs(1)), MIN_SESSION_TTL);
        assert_eq!(
            session_ttl(Duration::from_secs(30)),
            Duration::from_secs(30)
        );
    }
}

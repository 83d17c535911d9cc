//! The four primitives over Redis.
//!
//! Key layout under `key_prefix` (P):
//! - `P kv:<key>`: a hash `{v: value, r: revision}`; revisions come from the counter `P rev`,
//!   so every write gives a key a revision greater than any before it. Writes and
//!   compare-and-swap are Lua scripts (atomic on any Redis version with scripting).
//! - `P lease:<name>`: the holder's random nonce, set with `SET NX PX`; `P fence:<name>`: the
//!   fencing counter, incremented in the same script.
//! - `P peers`: a sorted set of node ids scored by expiry (server time); `P peer-meta`: a hash
//!   of their metadata.
//! - Channels: `P ps:<subject>` (pub/sub), `P ev:kv` (key changes, published by the write
//!   scripts themselves, so watches work without keyspace notifications), `P ev:peers`, and
//!   `P ev:lease:<name>` (releases, to wake waiting contenders).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use mcpg_plugin_api::prelude::*;
use mcpg_plugin_api::support::{
    HeldLease, HeldPresence, Renew, Renewal, keep_renewing, polled_peer_events, receiver_stream,
    retry_until,
};
use redis::aio::ConnectionManager;
use redis::{RedisError, Script, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::config::Config;
use crate::pubsub::{Dispatcher, glob_escape};

pub const PUT: &str = r#"
if ARGV[5] == '1' and redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local r = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'r', r)
if ARGV[2] ~= '' then redis.call('PEXPIRE', KEYS[1], ARGV[2]) else redis.call('PERSIST', KEYS[1]) end
redis.call('PUBLISH', ARGV[3], 'p' .. r .. ' ' .. #ARGV[4] .. ' ' .. ARGV[4] .. ARGV[1])
return r
"#;

pub const CAS: &str = r#"
local cur = redis.call('HMGET', KEYS[1], 'v', 'r')
if cur[2] == false then return {0} end
if cur[2] ~= ARGV[5] then return {0, cur[1], cur[2]} end
local r = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'r', r)
if ARGV[2] ~= '' then redis.call('PEXPIRE', KEYS[1], ARGV[2]) else redis.call('PERSIST', KEYS[1]) end
redis.call('PUBLISH', ARGV[3], 'p' .. r .. ' ' .. #ARGV[4] .. ' ' .. ARGV[4] .. ARGV[1])
return {1, r}
"#;

pub const DELETE: &str = r#"
local cur = redis.call('HGET', KEYS[1], 'r')
if cur == false then return 0 end
if ARGV[1] ~= '' and cur ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
local r = redis.call('INCR', KEYS[2])
redis.call('PUBLISH', ARGV[2], 'd' .. r .. ' ' .. #ARGV[3] .. ' ' .. ARGV[3])
return 1
"#;

pub const ACQUIRE: &str = r#"
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return redis.call('INCR', KEYS[2])
end
return 0
"#;

pub const RENEW: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"#;

pub const RELEASE: &str = r#"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('PUBLISH', ARGV[2], 'released')
  return 1
end
return 0
"#;

pub const REFRESH_PEER: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local old = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
if old == false or tonumber(old) <= now then redis.call('PUBLISH', ARGV[4], 'up') end
return 1
"#;

pub const DEREGISTER_PEER: &str = r#"
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('PUBLISH', ARGV[2], 'down')
return 1
"#;

pub const PEERS: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)
for _, id in ipairs(expired) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('HDEL', KEYS[2], id)
end
local ids = redis.call('ZRANGE', KEYS[1], 0, -1)
local out = {}
for _, id in ipairs(ids) do
  out[#out + 1] = id
  out[#out + 1] = redis.call('HGET', KEYS[2], id) or ''
end
return out
"#;

struct Scripts {
    put: Script,
    cas: Script,
    delete: Script,
    acquire: Script,
    renew: Script,
    release: Script,
    refresh_peer: Script,
    deregister_peer: Script,
    peers: Script,
}

impl Scripts {
    fn new() -> Self {
        Self {
            put: Script::new(PUT),
            cas: Script::new(CAS),
            delete: Script::new(DELETE),
            acquire: Script::new(ACQUIRE),
            renew: Script::new(RENEW),
            release: Script::new(RELEASE),
            refresh_peer: Script::new(REFRESH_PEER),
            deregister_peer: Script::new(DEREGISTER_PEER),
            peers: Script::new(PEERS),
        }
    }
}

pub(crate) struct Inner {
    pub conn: ConnectionManager,
    pub dispatcher: Dispatcher,
    pub config: Config,
    pub node_id: String,
    /// The server, without credentials, for messages.
    pub where_: Arc<str>,
    scripts: Scripts,
}

/// A Redis coordinator instance.
#[derive(Clone)]
pub struct RedisCoordinator(Arc<Inner>);

fn err(where_: &str, e: RedisError) -> CoordError {
    let msg = format!("redis {where_}: {e}");
    if e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.is_unrecoverable_error()
    {
        CoordError::unavailable(msg)
    } else {
        CoordError::backend(msg)
    }
}

fn ttl_arg(ttl: Option<Duration>) -> String {
    ttl.map(|t| t.as_millis().max(1).to_string())
        .unwrap_or_default()
}

fn bytes(v: &Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b.clone()),
        Value::SimpleString(s) => Some(s.clone().into_bytes()),
        _ => None,
    }
}

fn number(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        other => bytes(other)
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.parse().ok()),
    }
}

/// Decodes a `P ev:kv` payload: `p<rev> <keylen> <key><value>` or `d<rev> <keylen> <key>`.
pub(crate) fn decode_kv_event(payload: &[u8]) -> Option<KvEvent> {
    let (&op, rest) = payload.split_first()?;
    let sp = rest.iter().position(|b| *b == b' ')?;
    let revision: u64 = std::str::from_utf8(&rest[..sp]).ok()?.parse().ok()?;
    let rest = &rest[sp + 1..];
    let sp = rest.iter().position(|b| *b == b' ')?;
    let len: usize = std::str::from_utf8(&rest[..sp]).ok()?.parse().ok()?;
    let rest = &rest[sp + 1..];
    let key = String::from_utf8(rest.get(..len)?.to_vec()).ok()?;
    match op {
        b'p' => Some(KvEvent::Put(Entry {
            key,
            value: rest[len..].to_vec(),
            revision,
        })),
        b'd' => Some(KvEvent::Delete { key, revision }),
        _ => None,
    }
}

impl RedisCoordinator {
    pub(crate) async fn connect(config: Config, node_id: String) -> Result<Self, String> {
        let where_: Arc<str> = crate::config::redacted_url(&config.url).into();
        let client = crate::config::client(&config.url)
            .map_err(|e| format!("redis {where_}: invalid url: {e}"))?;
        let cm_config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let mut conn = ConnectionManager::new_with_config(client.clone(), cm_config)
            .await
            .map_err(|e| format!("cannot reach redis at {where_}: {e}"))?;
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| format!("cannot reach redis at {where_}: {e}"))?;
        let dispatcher = Dispatcher::start(client, config.subscribe_pattern_buffer, where_.clone());
        Ok(Self(Arc::new(Inner {
            conn,
            dispatcher,
            config,
            node_id,
            where_,
            scripts: Scripts::new(),
        })))
    }

    fn p(&self, what: &str) -> String {
        format!("{}{what}", self.0.config.key_prefix)
    }

    fn kv_key(&self, key: &str) -> String {
        self.p(&format!("kv:{key}"))
    }

    fn conn(&self) -> ConnectionManager {
        self.0.conn.clone()
    }

    fn e(&self, e: RedisError) -> CoordError {
        err(&self.0.where_, e)
    }

    async fn write(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
        only_if_absent: bool,
    ) -> CoordResult<u64> {
        let mut c = self.conn();
        let r: u64 = self
            .0
            .scripts
            .put
            .key(self.kv_key(key))
            .key(self.p("rev"))
            .arg(value)
            .arg(ttl_arg(ttl))
            .arg(self.p("ev:kv"))
            .arg(key)
            .arg(if only_if_absent { "1" } else { "0" })
            .invoke_async(&mut c)
            .await
            .map_err(|e| self.e(e))?;
        Ok(r)
    }

    /// Subscribes to one exact channel.
    async fn raw_channel(
        &self,
        channel: String,
    ) -> CoordResult<mpsc::Receiver<crate::pubsub::Raw>> {
        let glob = glob_escape(&channel);
        self.0
            .dispatcher
            .subscribe(glob, Box::new(move |c: &str| c == channel))
            .await
    }

    async fn try_acquire(
        &self,
        name: &str,
        nonce: &str,
        ttl: Duration,
    ) -> CoordResult<Option<u64>> {
        let mut c = self.conn();
        let token: u64 = self
            .0
            .scripts
            .acquire
            .key(self.p(&format!("lease:{name}")))
            .key(self.p(&format!("fence:{name}")))
            .arg(nonce)
            .arg(ttl.as_millis().max(1) as u64)
            .invoke_async(&mut c)
            .await
            .map_err(|e| self.e(e))?;
        Ok((token > 0).then_some(token))
    }

    async fn refresh_presence(&self, meta: &str) -> CoordResult<()> {
        let mut c = self.conn();
        let _: i64 = self
            .0
            .scripts
            .refresh_peer
            .key(self.p("peers"))
            .key(self.p("peer-meta"))
            .arg(&self.0.node_id)
            .arg(self.0.config.peer_ttl_ms)
            .arg(meta)
            .arg(self.p("ev:peers"))
            .invoke_async(&mut c)
            .await
            .map_err(|e| self.e(e))?;
        Ok(())
    }
}

#[async_trait]
impl Coordinator for RedisCoordinator {
    fn node_id(&self) -> String {
        self.0.node_id.clone()
    }

    async fn health(&self) -> Health {
        let mut c = self.conn();
        let start = Instant::now();
        match redis::cmd("PING").query_async::<String>(&mut c).await {
            Ok(_) => Health {
                ok: true,
                detail: format!(
                    "redis {} answered PING in {} µs",
                    self.0.where_,
                    start.elapsed().as_micros()
                ),
            },
            Err(e) => Health {
                ok: false,
                detail: self.e(e).to_string(),
            },
        }
    }

    async fn get(&self, key: &str) -> CoordResult<Option<Entry>> {
        let mut c = self.conn();
        let (v, r): (Option<Vec<u8>>, Option<u64>) = redis::cmd("HMGET")
            .arg(self.kv_key(key))
            .arg("v")
            .arg("r")
            .query_async(&mut c)
            .await
            .map_err(|e| self.e(e))?;
        Ok(match (v, r) {
            (Some(value), Some(revision)) => Some(Entry {
                key: key.to_owned(),
                value,
                revision,
            }),
            _ => None,
        })
    }

    async fn put(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> CoordResult<u64> {
        self.write(key, value, ttl, false).await
    }

    async fn create(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> CoordResult<Option<u64>> {
        let r = self.write(key, value, ttl, true).await?;
        Ok((r > 0).then_some(r))
    }

    async fn compare_and_swap(
        &self,
        key: &str,
        expected: u64,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> CoordResult<CasOutcome> {
        let mut c = self.conn();
        let out: Vec<Value> = self
            .0
            .scripts
            .cas
            .key(self.kv_key(key))
            .key(self.p("rev"))
            .arg(value)
            .arg(ttl_arg(ttl))
            .arg(self.p("ev:kv"))
            .arg(key)
            .arg(expected.to_string())
            .invoke_async(&mut c)
            .await
            .map_err(|e| self.e(e))?;
        let bad = || CoordError::backend("unexpected reply from the CAS script");
        match out.as_slice() {
            [ok, r] if number(ok) == Some(1) => Ok(CasOutcome::Swapped(number(r).ok_or_else(bad)?)),
            [_] => Ok(CasOutcome::Mismatch(None)),
            [_, v, r] => Ok(CasOutcome::Mismatch(Some(Entry {
                key: key.to_owned(),
                value: bytes(v).ok_or_else(bad)?,
                revision: number(r).ok_or_else(bad)?,
            }))),
            _ => Err(bad()),
        }
    }

    async fn delete(&self, key: &str, expected: Option<u64>) -> CoordResult<bool> {
        let mut c = self.conn();
        let n: i64 = self
            .0
            .scripts
            .delete
            .key(self.kv_key(key))
            .key(self.p("rev"))
            .arg(expected.map(|r| r.to_string()).unwrap_or_default())
            .arg(self.p("ev:kv"))
            .arg(key)
            .invoke_async(&mut c)
            .await
            .map_err(|e| self.e(e))?;
        Ok(n == 1)
    }

    async fn list(&self, prefix: &str) -> CoordResult<Vec<Entry>> {
        let mut c = self.conn();
        let base = self.kv_key("");
        let pattern = format!("{}*", glob_escape(&self.kv_key(prefix)));
        // SCAN, never KEYS: it does not block the server on a large keyspace.
        let mut keys = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut c)
                .await
                .map_err(|e| self.e(e))?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort();
        keys.dedup();
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for k in &keys {
            pipe.cmd("HMGET").arg(k).arg("v").arg("r");
        }
        let rows: Vec<(Option<Vec<u8>>, Option<u64>)> =
            pipe.query_async(&mut c).await.map_err(|e| self.e(e))?;
        Ok(keys
            .into_iter()
            .zip(rows)
            .filter_map(|(k, row)| match row {
                (Some(value), Some(revision)) => Some(Entry {
                    key: k[base.len()..].to_owned(),
                    value,
                    revision,
                }),
                // Expired or deleted between SCAN and HMGET.
                _ => None,
            })
            .collect())
    }

    async fn publish(&self, subject: &str, payload: Vec<u8>) -> CoordResult<()> {
        if subject.is_empty() || subject.contains(['*', '>']) {
            return Err(CoordError::invalid(format!(
                "cannot publish to pattern `{subject}`"
            )));
        }
        let mut c = self.conn();
        let _: i64 = redis::cmd("PUBLISH")
            .arg(self.p(&format!("ps:{subject}")))
            .arg(payload)
            .query_async(&mut c)
            .await
            .map_err(|e| self.e(e))?;
        Ok(())
    }

    async fn subscribe(&self, pattern: &str) -> CoordResult<BoxStream<'static, Message>> {
        let channel_prefix = self.p("ps:");
        // Redis globs cannot say "one token", so subscribe to a superset and filter exactly.
        let glob = pattern
            .split('.')
            .map(|t| {
                if t == "*" || t == ">" {
                    "*".to_owned()
                } else {
                    glob_escape(t)
                }
            })
            .collect::<Vec<_>>()
            .join(".");
        let glob = format!("{}{glob}", glob_escape(&channel_prefix));
        let (pat, cp) = (pattern.to_owned(), channel_prefix.clone());
        let rx = self
            .0
            .dispatcher
            .subscribe(
                glob,
                Box::new(move |c: &str| {
                    c.strip_prefix(cp.as_str())
                        .is_some_and(|s| subject_matches(&pat, s))
                }),
            )
            .await?;
        let n = channel_prefix.len();
        Ok(receiver_stream(rx)
            .map(move |(channel, payload)| Message {
                subject: channel[n..].to_owned(),
                payload,
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
            let rx = self
                .raw_channel(self.p(&format!("ev:lease:{name}")))
                .await?;
            Some(receiver_stream(rx).map(|_| ()).boxed())
        };
        retry_until(deadline, wake, || async {
            let sent = Instant::now();
            Ok(self.try_acquire(name, &nonce, ttl).await?.map(|token| {
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
        self.refresh_presence(&meta).await?;
        let c = self.clone();
        let (presence, mut stopped) = HeldPresence::new(move || {
            let c = c.clone();
            Box::pin(async move {
                let mut conn = c.conn();
                let _: i64 =
                    c.0.scripts
                        .deregister_peer
                        .key(c.p("peers"))
                        .key(c.p("peer-meta"))
                        .arg(&c.0.node_id)
                        .arg(c.p("ev:peers"))
                        .invoke_async(&mut conn)
                        .await
                        .map_err(|e| c.e(e))?;
                Ok(())
            })
        });
        let me = self.clone();
        let every = self.0.config.peer_refresh();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stopped.changed() => return,
                }
                if let Err(e) = me.refresh_presence(&meta).await {
                    tracing::warn!(error = %e, "presence refresh failed; retrying at the next interval");
                }
            }
        });
        Ok(Box::new(presence))
    }

    async fn peers(&self) -> CoordResult<Vec<Peer>> {
        let mut c = self.conn();
        let flat: Vec<String> = self
            .0
            .scripts
            .peers
            .key(self.p("peers"))
            .key(self.p("peer-meta"))
            .invoke_async(&mut c)
            .await
            .map_err(|e| self.e(e))?;
        Ok(flat
            .chunks(2)
            .filter_map(|pair| match pair {
                [id, meta] => Some(Peer {
                    node_id: id.clone(),
                    meta: meta.clone(),
                }),
                _ => None,
            })
            .collect())
    }

    async fn watch_peers(&self) -> CoordResult<BoxStream<'static, PeerEvent>> {
        let wake = receiver_stream(self.raw_channel(self.p("ev:peers")).await?)
            .map(|_| ())
            .boxed();
        // Expiry has no event without keyspace notifications, so diff the live set on every
        // change notification and on a short poll.
        let poll = self.0.config.peer_refresh().min(Duration::from_millis(500));
        polled_peer_events(
            self.clone(),
            wake,
            poll,
            self.0.config.subscribe_pattern_buffer,
        )
        .await
    }

    async fn watch_prefix(&self, prefix: &str) -> CoordResult<BoxStream<'static, KvEvent>> {
        let rx = self.raw_channel(self.p("ev:kv")).await?;
        let prefix = prefix.to_owned();
        Ok(receiver_stream(rx)
            .filter_map(move |(_, payload)| {
                let ev = decode_kv_event(&payload).filter(|ev| match ev {
                    KvEvent::Put(e) => e.key.starts_with(&prefix),
                    KvEvent::Delete { key, .. } => key.starts_with(&prefix),
                });
                futures::future::ready(ev)
            })
            .boxed())
    }
}

/// Extends a lease key's expiry, only while it still holds our nonce.
struct RedisRenew {
    c: RedisCoordinator,
    key: String,
    nonce: String,
    ttl: Duration,
}

impl Renew for RedisRenew {
    async fn renew(&mut self) -> Renewal {
        let mut conn = self.c.conn();
        let renewed: Result<i64, _> = self
            .c
            .0
            .scripts
            .renew
            .key(&self.key)
            .arg(&self.nonce)
            .arg(self.ttl.as_millis() as u64)
            .invoke_async(&mut conn)
            .await;
        match renewed {
            Ok(1) => Renewal::Renewed,
            // Someone else holds it, or it expired.
            Ok(_) => Renewal::Lost,
            Err(e) => {
                tracing::warn!(error = %self.c.e(e), "lease renewal failed; retrying until the lease would expire");
                Renewal::Failed
            }
        }
    }
}

/// A held lease, renewed at the configured percent of the TTL (see `keep_renewing`).
fn hold_lease(
    c: RedisCoordinator,
    name: &str,
    nonce: String,
    token: u64,
    ttl: Duration,
    sent: Instant,
) -> HeldLease {
    let key = c.p(&format!("lease:{name}"));
    let channel = c.p(&format!("ev:lease:{name}"));
    let (rc, rk, rn) = (c.clone(), key.clone(), nonce.clone());
    let (lease, signals) = HeldLease::new(name, token, ttl, move || {
        let (c, key, nonce, channel) = (rc.clone(), rk.clone(), rn.clone(), channel.clone());
        Box::pin(async move {
            let mut conn = c.conn();
            let _: i64 =
                c.0.scripts
                    .release
                    .key(key)
                    .arg(nonce)
                    .arg(channel)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(|e| c.e(e))?;
            Ok(())
        })
    });
    let every = ttl * c.0.config.renew_percent() / 100;
    keep_renewing(sent, ttl, every, signals, RedisRenew { c, key, nonce, ttl });
    lease
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_events_round_trip_binary_values_and_spaces_in_keys() {
        let ev = decode_kv_event(b"p42 5 a b/c\x00 \xffvalue").unwrap();
        assert_eq!(
            ev,
            KvEvent::Put(Entry {
                key: "a b/c".into(),
                value: b"\x00 \xffvalue".to_vec(),
                revision: 42
            })
        );
        assert_eq!(
            decode_kv_event(b"d7 1 k").unwrap(),
            KvEvent::Delete {
                key: "k".into(),
                revision: 7
            }
        );
        assert!(decode_kv_event(b"x1 1 k").is_none());
        assert!(decode_kv_event(b"p1 9 k").is_none());
    }
}

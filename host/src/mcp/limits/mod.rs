//! A binding's rate limits, quotas and concurrency limits (`rate_limits`), applied to each
//! request before it reaches an upstream: which limits apply to the caller and count the
//! request, the key of the budget it spends, and the refusal when one is spent. The
//! counting itself is `algo` (pure) and `budget` (state in the `rate_limits` store).

pub mod algo;
pub mod budget;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use globset::GlobMatcher;
use prometheus_client::metrics::counter::Counter;
use sha2::{Digest, Sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::auth::Identity;
use crate::capabilities::Store;
use crate::config::model::{AccessMatch, BindingConfig, LimitCount, LimitScope, RateLimit};
use crate::config::parsed::LimitValues;
use crate::mcp::relay::Reply;
use crate::mcp::wire::jsonrpc::{self, Message};
use algo::Algo;
use budget::{Budgets, Clock, Placement, Verdict};

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Over limit `limit`; a unit is available again after `retry_after`.
    Limited {
        limit: String,
        retry_after: Duration,
    },
    /// Limit `limit` fails closed and the coordinator cannot be used.
    Unavailable { limit: String },
}

impl Refusal {
    pub fn limit(&self) -> &str {
        match self {
            Refusal::Limited { limit, .. } | Refusal::Unavailable { limit } => limit,
        }
    }
}

/// What an admitted request holds until its reply has been sent: its in-flight slots.
#[derive(Default)]
pub struct Admitted(Vec<OwnedSemaphorePermit>);

impl Admitted {
    /// `reply`, holding the slots until it has been sent (for a stream, until it ends).
    pub fn hold(self, reply: Reply) -> Reply {
        match reply {
            Reply::Stream(mut rx) if !self.0.is_empty() => {
                let (tx, out) = mpsc::channel(16);
                tokio::spawn(async move {
                    let _slots = self;
                    while let Some(m) = rx.recv().await {
                        if tx.send(m).await.is_err() {
                            return;
                        }
                    }
                });
                Reply::Stream(out)
            }
            other => other,
        }
    }
}

/// In-flight requests per key, on this replica.
struct InFlight {
    max: u32,
    slots: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl InFlight {
    fn try_enter(&self, key: &str) -> Option<OwnedSemaphorePermit> {
        let sem = {
            let mut map = self.slots.lock().expect("the in-flight map");
            if map.len() >= 10_000 && !map.contains_key(key) {
                // Keys with nothing in flight hold nothing worth keeping.
                let max = self.max as usize;
                map.retain(|_, s| s.available_permits() < max);
            }
            map.entry(key.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(self.max as usize)))
                .clone()
        };
        sem.try_acquire_owned().ok()
    }
}

/// One configured limit.
struct Limit {
    name: String,
    /// `<binding>/<limit>`: where its keys live in the store.
    prefix: String,
    matches: AccessMatch,
    scope: LimitScope,
    count: LimitCount,
    tools: Vec<GlobMatcher>,
    budgets: Option<Budgets>,
    inflight: Option<InFlight>,
    /// `mcpg_rate_limited_total{binding,limit}`, resolved once.
    refused: Counter,
}

/// A binding's limits.
#[derive(Default)]
pub struct Limits {
    limits: Vec<Limit>,
}

/// What [`Limits::admit`] looks at in a request.
pub struct Request<'a> {
    pub who: Option<&'a Identity>,
    pub msg: &'a Message,
    /// The upstream the request goes to, when it goes to one.
    pub upstream: Option<&'a str>,
}

impl Limits {
    /// The limits of `cfg`, with their values as the loader parsed them; budgets in
    /// `cluster` (the `rate_limits` store) or in a store of this replica's own.
    pub fn new(
        cfg: &BindingConfig,
        values: &[LimitValues],
        cluster: &Arc<dyn Store>,
        clock: Clock,
    ) -> Self {
        let local = local_store();
        let limits = cfg
            .rate_limits
            .iter()
            .zip(values)
            .map(|(l, v)| Limit::new(&cfg.name, l, v, cluster, &local, clock))
            .collect();
        Self { limits }
    }

    pub fn is_empty(&self) -> bool {
        self.limits.is_empty()
    }

    /// Admits `req` under every limit that applies to it, or the first refusal: in-flight
    /// slots are taken first, so a request refused for concurrency spends no rate budget.
    pub async fn admit(&self, req: &Request<'_>) -> Result<Admitted, Refusal> {
        let mut keyed = Vec::new();
        for l in &self.limits {
            if let Some(key) = l.key(req) {
                keyed.push((l, key));
            }
        }
        let mut held = Admitted::default();
        for (l, key) in &keyed {
            if let Some(inflight) = &l.inflight {
                match inflight.try_enter(key) {
                    Some(p) => held.0.push(p),
                    None => return Err(l.refuse(Verdict::Limited(Duration::from_secs(1)))),
                }
            }
        }
        for (l, key) in &keyed {
            if let Some(b) = &l.budgets {
                match b.take(key).await {
                    Verdict::Admit => {}
                    v => return Err(l.refuse(v)),
                }
            }
        }
        Ok(held)
    }
}

impl Limit {
    fn new(
        binding: &str,
        l: &RateLimit,
        v: &LimitValues,
        cluster: &Arc<dyn Store>,
        local: &Arc<dyn Store>,
        clock: Clock,
    ) -> Self {
        let algo = match (v.rate, v.quota) {
            (Some((n, ms)), _) => Some(Algo::rate(n, ms, l.burst.unwrap_or(1))),
            (None, Some((n, ms))) => Some(Algo::quota(n, ms)),
            (None, None) => None,
        };
        let placement = || Placement {
            cluster: cluster.clone(),
            local: local.clone(),
            enforce: l.enforce,
            on_error: l.on_coordinator_error,
            clock,
        };
        Self {
            name: l.name.clone(),
            prefix: format!("{binding}/{}", l.name),
            matches: l.matches.clone(),
            scope: l.scope,
            count: l.count,
            tools: v.tools.clone(),
            budgets: algo.map(|a| Budgets::new(&l.name, a, placement())),
            inflight: l.concurrency.map(|max| InFlight {
                max,
                slots: Mutex::default(),
            }),
            refused: crate::telemetry::metrics::metrics().rate_limited(binding, &l.name),
        }
    }

    /// The key of the budget `req` spends under this limit, if the limit counts it.
    fn key(&self, req: &Request<'_>) -> Option<String> {
        if !crate::auth::policy::applies(&self.matches, req.who) {
            return None;
        }
        let method = jsonrpc::method(req.msg)?;
        let tool = (method == "tools/call")
            .then(|| jsonrpc::params(req.msg)?.get("name")?.as_str())
            .flatten();
        if (self.count == LimitCount::ToolCalls || !self.tools.is_empty()) && tool.is_none() {
            return None;
        }
        if !self.tools.is_empty() {
            let name = tool?;
            if !self.tools.iter().any(|g| g.is_match(name)) {
                return None;
            }
        }
        let caller = req.who.map_or("", |i| i.key.as_str());
        let scoped = match self.scope {
            LimitScope::Caller => format!("c\0{caller}"),
            LimitScope::CallerTool => format!("t\0{caller}\0{}", tool?),
            LimitScope::Upstream => format!("u\0{}", req.upstream?),
            LimitScope::Global => "g".to_owned(),
        };
        // Identities and tool names are unbounded and may hold anything: the store's key is
        // a digest of them, under the limit's name.
        let digest = Sha256::digest(scoped.as_bytes());
        let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
        Some(format!("{}/{hex}", self.prefix))
    }

    fn refuse(&self, v: Verdict) -> Refusal {
        self.refused.inc();
        match v {
            Verdict::Limited(retry_after) => Refusal::Limited {
                limit: self.name.clone(),
                retry_after,
            },
            _ => Refusal::Unavailable {
                limit: self.name.clone(),
            },
        }
    }
}

/// The store of this replica's own budgets (`enforce: local`, and the fail-open fallback).
fn local_store() -> Arc<dyn Store> {
    crate::capabilities::memory_store("rate_limits")
}

//! One limit's budgets, one per key (caller, caller and tool, upstream, or the binding): the
//! state of record under the key in the `rate_limits` store, changed only by
//! compare-and-swap, with local batching: a replica takes a share of the budget per write and
//! spends it without another round trip. A coordinator that fails or does not answer in time
//! is handled by the limit's policy: counted locally meanwhile (fail open) or refused.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mcpg_plugin_api::coordinator::{CasOutcome, CoordError, CoordResult, Entry};

use super::algo::Algo;
use crate::capabilities::Store;
use crate::config::model::{CoordinatorFailure, LimitEnforce};

/// How long one coordinator write may take before the limit's failure policy applies.
const OP_TIMEOUT: Duration = Duration::from_secs(1);
/// Lost compare-and-swap races before giving up on a write (replicas contend per key, at
/// most one writer per replica).
const MAX_RACES: usize = 32;
/// Keys whose held share is forgotten once this many are tracked (their unspent units are
/// lost, which can only make the limit stricter).
const MAX_KEYS: usize = 100_000;

/// Wall-clock milliseconds, advancing with Tokio's clock (so paused time in tests moves it).
#[derive(Clone, Copy)]
pub struct Clock {
    base_ms: u64,
    start: tokio::time::Instant,
}

impl Clock {
    /// The system clock: replicas' clocks must agree (NTP) for a cluster-wide limit.
    pub fn system() -> Self {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Self::starting_at(now.as_millis() as u64)
    }

    /// A clock reading `ms` now.
    pub fn starting_at(ms: u64) -> Self {
        Self {
            base_ms: ms,
            start: tokio::time::Instant::now(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.base_ms + self.start.elapsed().as_millis() as u64
    }
}

/// What a budget says to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Admit,
    /// Over the limit: one unit is available again after this long.
    Limited(Duration),
    /// The coordinator failed and the limit fails closed.
    Unavailable,
}

/// What this replica holds of one key's budget.
#[derive(Default)]
struct Held {
    /// Units leased and not yet spent.
    left: u64,
    /// The quota window they belong to.
    window: Option<u64>,
    /// The key's entry as last written or read here: the revision the next write expects.
    cached: Option<Entry>,
}

/// One limit's budgets on this replica.
pub struct Budgets {
    algo: Algo,
    cluster: Arc<dyn Store>,
    /// This replica's own store: `enforce: local`, and the fallback of a failing cluster.
    local: Arc<dyn Store>,
    enforce: LimitEnforce,
    on_error: CoordinatorFailure,
    clock: Clock,
    held: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Held>>>>,
    /// Whether the last cluster write failed (logged once per change).
    degraded: AtomicBool,
    name: String,
}

/// Where a budget keeps its state and how it behaves when the cluster's fails.
pub struct Placement {
    pub cluster: Arc<dyn Store>,
    pub local: Arc<dyn Store>,
    pub enforce: LimitEnforce,
    pub on_error: CoordinatorFailure,
    pub clock: Clock,
}

impl Budgets {
    pub fn new(name: &str, algo: Algo, p: Placement) -> Self {
        Self {
            algo,
            cluster: p.cluster,
            local: p.local,
            enforce: p.enforce,
            on_error: p.on_error,
            clock: p.clock,
            held: Mutex::new(HashMap::new()),
            degraded: AtomicBool::new(false),
            name: name.to_owned(),
        }
    }

    fn slot(&self, key: &str) -> Arc<tokio::sync::Mutex<Held>> {
        let mut map = self.held.lock().expect("the held map");
        if map.len() >= MAX_KEYS && !map.contains_key(key) {
            map.retain(|_, s| Arc::strong_count(s) > 1);
        }
        map.entry(key.to_owned()).or_default().clone()
    }

    /// Takes one unit of `key`'s budget. Requests for one key on this replica queue here, so
    /// one of them refills the share and the others spend it.
    pub async fn take(&self, key: &str) -> Verdict {
        let slot = self.slot(key);
        let mut held = slot.lock().await;
        let now = self.clock.now_ms();
        if held.left > 0 && held.window == self.algo.window_of(now) {
            held.left -= 1;
            return Verdict::Admit;
        }
        held.left = 0;
        let (store, share) = match self.enforce {
            LimitEnforce::Local => (&self.local, 1),
            LimitEnforce::Cluster => (&self.cluster, self.algo.share()),
        };
        let held = &mut *held;
        let wrote =
            tokio::time::timeout(OP_TIMEOUT, self.lease(store, key, share, &mut held.cached));
        let e = match wrote.await {
            Ok(Ok(r)) => {
                self.recovered();
                return match r {
                    Ok((granted, window)) => {
                        held.left = granted - 1;
                        held.window = window;
                        Verdict::Admit
                    }
                    Err(retry) => Verdict::Limited(retry),
                };
            }
            Ok(Err(e)) => e,
            Err(_) => CoordError::new(
                mcpg_plugin_api::coordinator::ErrorKind::Timeout,
                format!("no answer within {OP_TIMEOUT:?}"),
            ),
        };
        held.cached = None;
        self.failed(&e);
        match self.on_error {
            CoordinatorFailure::FailClosed => Verdict::Unavailable,
            CoordinatorFailure::FailOpen => {
                match self.lease(&self.local, key, 1, &mut None).await {
                    Ok(Err(retry)) => Verdict::Limited(retry),
                    _ => Verdict::Admit,
                }
            }
        }
    }

    /// Takes up to `want` units of `key` from `store` by compare-and-swap: the units granted
    /// and their quota window, or how long until one is available.
    async fn lease(
        &self,
        store: &Arc<dyn Store>,
        key: &str,
        want: u64,
        cached: &mut Option<Entry>,
    ) -> CoordResult<Result<(u64, Option<u64>), Duration>> {
        for _ in 0..MAX_RACES {
            let state = cached
                .as_ref()
                .map(|e| String::from_utf8_lossy(&e.value).into_owned());
            let t = self.algo.take(state.as_deref(), self.clock.now_ms(), want);
            // A state read earlier can only be behind the store's (states only advance), so a
            // refusal on it stands without a round trip.
            if t.granted == 0 {
                return Ok(Err(t.retry_after));
            }
            let value = t.state.clone().into_bytes();
            let revision = match cached.as_ref() {
                None => match store.create(key, value.clone(), Some(t.ttl)).await? {
                    Some(rev) => rev,
                    None => {
                        *cached = store.get(key).await?;
                        continue;
                    }
                },
                Some(e) => match store
                    .compare_and_swap(key, e.revision, value.clone(), Some(t.ttl))
                    .await?
                {
                    CasOutcome::Swapped(rev) => rev,
                    CasOutcome::Mismatch(current) => {
                        *cached = current;
                        continue;
                    }
                },
            };
            *cached = Some(Entry::new(key, value, revision));
            return Ok(Ok((t.granted, t.window)));
        }
        Err(CoordError::backend(format!(
            "lost {MAX_RACES} compare-and-swap races in a row"
        )))
    }

    fn failed(&self, e: &CoordError) {
        if !self.degraded.swap(true, Ordering::Relaxed) {
            let policy = match self.on_error {
                CoordinatorFailure::FailOpen => "counting it on this replica meanwhile",
                CoordinatorFailure::FailClosed => "refusing its requests meanwhile",
            };
            tracing::warn!(limit = %self.name, error = %e, "rate limit: the coordinator failed; {policy}");
        }
    }

    fn recovered(&self) {
        if self.degraded.swap(false, Ordering::Relaxed) {
            tracing::info!(limit = %self.name, "rate limit: counted through the coordinator again");
        }
    }
}

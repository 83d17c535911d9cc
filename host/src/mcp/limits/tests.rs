//! The limiter on the in-memory coordinator with paused time: several replicas sharing one
//! store, many tasks each, the worst-case overshoot, quotas resetting, the coordinator failing
//! open and closed, and which requests each scope counts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use mcpg_plugin_api::coordinator::{CasOutcome, CoordError, CoordResult, Coordinator, Entry};
use mcpg_plugin_api::memory::{MemoryConfig, MemoryStore};
use serde_json::json;

use super::algo::Algo;
use super::budget::{Budgets, Clock, Placement, Verdict};
use super::{Limits, Refusal, Request};
use crate::auth::Identity;
use crate::capabilities::{Capabilities, Store};
use crate::config::model::{CoordinatorFailure, LimitEnforce};

/// 2026-01-01T00:00:00Z, so that quota windows are aligned as in production.
const T0: u64 = 1_767_225_600_000;

/// The `rate_limits` store of replica `node` on the shared backend.
fn cluster_store(shared: &MemoryStore, node: &str) -> Arc<dyn Store> {
    let c: Arc<dyn Coordinator> = Arc::new(shared.handle(node));
    Capabilities::build(&Default::default(), &c)
        .expect("in-memory capabilities")
        .rate_limits
        .store
}

fn budgets(store: Arc<dyn Store>, algo: Algo, clock: Clock) -> Arc<Budgets> {
    Arc::new(Budgets::new(
        "test",
        algo,
        Placement {
            cluster: store,
            local: crate::capabilities::memory_store("rate_limits"),
            enforce: LimitEnforce::Cluster,
            on_error: CoordinatorFailure::FailOpen,
            clock,
        },
    ))
}

/// `tasks` tasks on each replica taking from `key` until refused; how many were admitted.
async fn drain(replicas: &[Arc<Budgets>], tasks: usize, key: &str) -> u64 {
    let admitted = Arc::new(AtomicU64::new(0));
    let mut all = Vec::new();
    for r in replicas {
        for _ in 0..tasks {
            let (r, admitted, key) = (r.clone(), admitted.clone(), key.to_owned());
            all.push(tokio::spawn(async move {
                while r.take(&key).await == Verdict::Admit {
                    admitted.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
    }
    for t in all {
        t.await.unwrap();
    }
    admitted.load(Ordering::Relaxed)
}

#[tokio::test(start_paused = true)]
async fn a_burst_is_shared_exactly_by_three_replicas_and_many_tasks() {
    let shared = MemoryStore::new(MemoryConfig::default());
    let clock = Clock::starting_at(T0);
    // 320 at once (a share of 20 per write), then 100/s.
    let algo = Algo::rate(100, 1_000, 320);
    let replicas: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|n| budgets(cluster_store(&shared, n), algo, clock))
        .collect();
    assert_eq!(drain(&replicas, 16, "k").await, 320);
    // Refill over one second of (paused) time: 100 more, shared the same way.
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(drain(&replicas, 16, "k").await, 100);
    // Another key has its own budget.
    assert_eq!(drain(&replicas, 4, "other").await, 320);
}

#[tokio::test(start_paused = true)]
async fn the_overshoot_stays_within_replicas_times_share() {
    // The worst case: each replica leases a share and spends one unit, the rest of the
    // budget is spent, and the replicas spend what they hold in the next period.
    let shared = MemoryStore::new(MemoryConfig::default());
    let clock = Clock::starting_at(T0);
    let algo = Algo::rate(50, 1_000, 64); // burst 64 (a share of 4), then one per 20 ms
    let share = algo.share();
    let replicas: Vec<_> = ["a", "b", "c"]
        .iter()
        .map(|n| budgets(cluster_store(&shared, n), algo, clock))
        .collect();
    let mut times = Vec::new();
    for r in &replicas {
        assert_eq!(r.take("k").await, Verdict::Admit);
        times.push(clock.now_ms());
    }
    // A fourth replica spends everything else.
    let d = budgets(cluster_store(&shared, "d"), algo, clock);
    while d.take("k").await == Verdict::Admit {
        times.push(clock.now_ms());
    }
    assert_eq!(times.len() as u64, 64 - 3 * (share - 1));
    // 999 ms later the others still hold 3 units each: spent at once, beyond what the
    // store's state would allow at that instant.
    tokio::time::advance(Duration::from_millis(999)).await;
    let mut late = 0;
    for r in &replicas {
        while r.take("k").await == Verdict::Admit {
            late += 1;
        }
    }
    // GCRA alone allows the burst plus 49 units (one per 20 ms) within these 999 ms; each
    // replica held share - 1 more.
    let window = times.len() as u64 + late;
    let bound = 64 + 49 + replicas.len() as u64 * (share - 1);
    assert!(
        window <= bound,
        "{window} admitted within one second, bound {bound}"
    );
    assert_eq!(
        late,
        49 + replicas.len() as u64 * (share - 1),
        "the held units were spent on top of the refill"
    );
}

#[tokio::test(start_paused = true)]
async fn a_quota_resets_with_its_window_and_held_units_expire_with_it() {
    let shared = MemoryStore::new(MemoryConfig::default());
    let clock = Clock::starting_at(T0);
    let algo = Algo::quota(64, 10_000); // share 4
    let replicas: Vec<_> = ["a", "b"]
        .iter()
        .map(|n| budgets(cluster_store(&shared, n), algo, clock))
        .collect();
    // Both lease a share, then one spends the rest: exactly 64 in the window.
    assert_eq!(replicas[0].take("k").await, Verdict::Admit);
    assert_eq!(replicas[1].take("k").await, Verdict::Admit);
    assert_eq!(drain(&replicas[1..], 1, "k").await, 64 - 2 - 3);
    match replicas[1].take("k").await {
        Verdict::Limited(retry) => assert_eq!(retry, Duration::from_secs(10)),
        v => panic!("over the quota: {v:?}"),
    }
    // Replica a's three held units end with the window.
    tokio::time::advance(Duration::from_secs(10)).await;
    assert_eq!(drain(&replicas, 8, "k").await, 64);
}

/// A store whose every call fails, as a coordinator that cannot be reached.
struct Down;

#[async_trait]
impl Store for Down {
    async fn get(&self, _: &str) -> CoordResult<Option<Entry>> {
        Err(CoordError::unavailable("down"))
    }
    async fn put(&self, _: &str, _: Vec<u8>, _: Option<Duration>) -> CoordResult<u64> {
        Err(CoordError::unavailable("down"))
    }
    async fn create(&self, _: &str, _: Vec<u8>, _: Option<Duration>) -> CoordResult<Option<u64>> {
        Err(CoordError::unavailable("down"))
    }
    async fn compare_and_swap(
        &self,
        _: &str,
        _: u64,
        _: Vec<u8>,
        _: Option<Duration>,
    ) -> CoordResult<CasOutcome> {
        Err(CoordError::unavailable("down"))
    }
    async fn delete(&self, _: &str, _: Option<u64>) -> CoordResult<bool> {
        Err(CoordError::unavailable("down"))
    }
    async fn list(&self, _: &str) -> CoordResult<Vec<Entry>> {
        Err(CoordError::unavailable("down"))
    }
}

/// A store that never answers, as a stalled coordinator.
struct Stalled;

#[async_trait]
impl Store for Stalled {
    async fn get(&self, _: &str) -> CoordResult<Option<Entry>> {
        std::future::pending().await
    }
    async fn put(&self, _: &str, _: Vec<u8>, _: Option<Duration>) -> CoordResult<u64> {
        std::future::pending().await
    }
    async fn create(&self, _: &str, _: Vec<u8>, _: Option<Duration>) -> CoordResult<Option<u64>> {
        std::future::pending().await
    }
    async fn compare_and_swap(
        &self,
        _: &str,
        _: u64,
        _: Vec<u8>,
        _: Option<Duration>,
    ) -> CoordResult<CasOutcome> {
        std::future::pending().await
    }
    async fn delete(&self, _: &str, _: Option<u64>) -> CoordResult<bool> {
        std::future::pending().await
    }
    async fn list(&self, _: &str) -> CoordResult<Vec<Entry>> {
        std::future::pending().await
    }
}

fn failing(store: Arc<dyn Store>, on_error: CoordinatorFailure) -> Budgets {
    Budgets::new(
        "test",
        Algo::rate(1, 60_000, 5),
        Placement {
            cluster: store,
            local: crate::capabilities::memory_store("rate_limits"),
            enforce: LimitEnforce::Cluster,
            on_error,
            clock: Clock::starting_at(T0),
        },
    )
}

#[tokio::test(start_paused = true)]
async fn a_failing_coordinator_fails_open_to_a_local_limit_or_closed() {
    for store in [Arc::new(Down) as Arc<dyn Store>, Arc::new(Stalled)] {
        let open = failing(store.clone(), CoordinatorFailure::FailOpen);
        let mut admitted = 0;
        while open.take("k").await == Verdict::Admit {
            admitted += 1;
        }
        assert_eq!(admitted, 5, "the limit still holds, on this replica alone");
        let closed = failing(store, CoordinatorFailure::FailClosed);
        assert_eq!(closed.take("k").await, Verdict::Unavailable);
    }
}

fn limits(rate_limits: serde_json::Value, shared: &MemoryStore, node: &str) -> Limits {
    let cfg = crate::mcp::tests::kit::binding_config(json!({
        "auth": {"tokens": [
            {"name": "alice", "token": "a".repeat(32)},
            {"name": "bob", "token": "b".repeat(32)},
        ]},
        "rate_limits": rate_limits,
    }));
    let text = json!({"bindings": [cfg]}).to_string();
    let loaded = crate::config::load_str("unit.yaml", std::path::Path::new("."), &text, &|_| None);
    let valid = loaded
        .config
        .unwrap_or_else(|| panic!("the config loads: {:?}", loaded.diagnostics));
    Limits::new(
        &cfg,
        valid.parsed.limits(&cfg.name),
        &cluster_store(shared, node),
        Clock::starting_at(T0),
    )
}

fn call(tool: &str) -> serde_json::Map<String, serde_json::Value> {
    json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool}})
        .as_object()
        .unwrap()
        .clone()
}

async fn admitted(
    l: &Limits,
    who: Option<&Identity>,
    msg: &serde_json::Map<String, serde_json::Value>,
    n: usize,
) -> usize {
    let mut ok = 0;
    for _ in 0..n {
        let req = Request {
            who,
            msg,
            upstream: Some("one"),
        };
        if l.admit(&req).await.is_ok() {
            ok += 1;
        }
    }
    ok
}

#[tokio::test(start_paused = true)]
async fn scopes_matches_and_tool_patterns_pick_the_budget() {
    let shared = MemoryStore::new(MemoryConfig::default());
    let l = limits(
        json!([
            {"name": "alice-calls", "match": {"tokens": ["alice"]}, "count": "tool_calls",
             "rate": "3/min", "burst": 3},
            {"name": "search", "scope": "caller_tool", "tools": ["one__search*"], "quota": "2/h"},
        ]),
        &shared,
        "a",
    );
    let alice = Identity::token("alice");
    let bob = Identity::token("bob");
    let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        .as_object()
        .unwrap()
        .clone();
    // tools/list is not a tool call: never counted.
    assert_eq!(admitted(&l, Some(&alice), &list, 10).await, 10);
    assert_eq!(admitted(&l, Some(&alice), &call("one__echo"), 5).await, 3);
    // Bob is not matched by the first limit, and has his own search budget.
    assert_eq!(admitted(&l, Some(&bob), &call("one__echo"), 5).await, 5);
    assert_eq!(
        admitted(&l, Some(&bob), &call("one__search_web"), 5).await,
        2
    );
    assert_eq!(
        admitted(&l, Some(&bob), &call("one__search_news"), 5).await,
        2
    );
    let req = Request {
        who: Some(&bob),
        msg: &call("one__search_web"),
        upstream: None,
    };
    match l.admit(&req).await {
        Err(Refusal::Limited { limit, retry_after }) => {
            assert_eq!(limit, "search");
            assert!(retry_after <= Duration::from_secs(3600));
        }
        other => panic!("over the search quota: {:?}", other.err()),
    }
}

#[tokio::test(start_paused = true)]
async fn concurrency_is_counted_until_the_reply_is_sent() {
    let shared = MemoryStore::new(MemoryConfig::default());
    let l = limits(
        json!([{"name": "two-at-once", "concurrency": 2}]),
        &shared,
        "a",
    );
    let alice = Identity::token("alice");
    let msg = call("one__echo");
    let req = Request {
        who: Some(&alice),
        msg: &msg,
        upstream: None,
    };
    let first = l.admit(&req).await.expect("one in flight");
    let second = l.admit(&req).await.expect("two in flight");
    assert!(matches!(l.admit(&req).await, Err(Refusal::Limited { .. })));
    // Another caller has slots of their own.
    let bob = Identity::token("bob");
    let other = Request {
        who: Some(&bob),
        ..req
    };
    let _bobs = l.admit(&other).await.expect("bob's own slots");
    // A streamed reply holds its slot until the stream ends.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let reply = first.hold(crate::mcp::relay::Reply::Stream(rx));
    drop(second);
    let _third = l.admit(&req).await.expect("a slot freed");
    assert!(l.admit(&req).await.is_err(), "the stream still holds one");
    drop(tx);
    let crate::mcp::relay::Reply::Stream(mut out) = reply else {
        panic!("a stream")
    };
    assert!(out.recv().await.is_none());
    tokio::task::yield_now().await;
    assert!(
        l.admit(&req).await.is_ok(),
        "the ended stream let its slot go"
    );
}

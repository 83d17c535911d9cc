//! The rate limiter's accuracy under concurrent callers against real NATS (JetStream KV) and
//! etcd servers, each coordinator loaded from its plugin library as mcpg loads it: three
//! replicas with many tasks each draining one budget must together admit exactly what the
//! budget holds (batched or not), and separate keys stay separate.
//!
//! The plugin libraries are those of this build: `cargo build -p mcpg-cluster-nats -p
//! mcpg-cluster-etcd` (or `cargo build --workspace`) first.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use mcpg::capabilities::{Capabilities, Store};
use mcpg::config::model::{CoordinatorFailure, LimitEnforce};
use mcpg::mcp::limits::algo::Algo;
use mcpg::mcp::limits::budget::{Budgets, Clock, Placement, Verdict};
use mcpg_backends::{EtcdServer, NatsServer};
use mcpg_plugin_api::coordinator::Coordinator;
use mcpg_plugin_testkit::{boot, built_library};

const REPLICAS: usize = 3;
const TASKS: usize = 8;

async fn replicas(file: &str, id: &str, config: serde_json::Value) -> Vec<Arc<dyn Store>> {
    let plugin = built_library(file, id);
    let mut out = Vec::new();
    for i in 0..REPLICAS {
        let c: Arc<dyn Coordinator> = boot(&plugin, config.clone(), &format!("r{i}"))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        out.push(
            Capabilities::build(&Default::default(), &c)
                .expect("capabilities")
                .rate_limits
                .store,
        );
    }
    out
}

/// Every task of every replica takes from `key` until refused; the units admitted.
async fn drain(stores: &[Arc<dyn Store>], algo: Algo, key: &str) -> u64 {
    let clock = Clock::system();
    let admitted = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for s in stores {
        let b = Arc::new(Budgets::new(
            "accuracy",
            algo,
            Placement {
                cluster: s.clone(),
                local: mcpg::capabilities::memory_store("rate_limits"),
                enforce: LimitEnforce::Cluster,
                // A coordinator error must show as a wrong count, not be absorbed.
                on_error: CoordinatorFailure::FailClosed,
                clock,
            },
        ));
        for _ in 0..TASKS {
            let (b, admitted, key) = (b.clone(), admitted.clone(), key.to_owned());
            tasks.push(tokio::spawn(async move {
                loop {
                    match b.take(&key).await {
                        Verdict::Admit => {
                            admitted.fetch_add(1, Ordering::Relaxed);
                        }
                        Verdict::Limited(_) => return,
                        Verdict::Unavailable => panic!("the coordinator failed"),
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    admitted.load(Ordering::Relaxed)
}

async fn accuracy(backend: &str, stores: Vec<Arc<dyn Store>>) {
    // One unit an hour: nothing refills during the test, so the count is exact.
    for (burst, key) in [(20, "small"), (500, "large")] {
        let algo = Algo::rate(1, 3_600_000, burst);
        let started = Instant::now();
        let got = drain(&stores, algo, key).await;
        eprintln!(
            "rate limits on {backend}: {REPLICAS} replicas x {TASKS} tasks admitted {got} of a burst of {burst} (share {}) in {:?}",
            algo.share(),
            started.elapsed()
        );
        assert_eq!(got, burst, "{backend}: burst {burst}");
    }
    // A quota window: exact too, and a second key has its own.
    let quota = Algo::quota(40, 3_600_000);
    assert_eq!(drain(&stores, quota, "q1").await, 40, "{backend}: quota");
    assert_eq!(drain(&stores, quota, "q2").await, 40, "{backend}: quota");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_limits_are_exact_under_concurrency_on_nats() {
    let server = NatsServer::start();
    let stores = replicas(
        "libmcpg_cluster_nats.so",
        "dev.mcpg.cluster.nats",
        serde_json::json!({"servers": [server.url()], "node": {"id": "ignored", "heartbeat_interval_sec": 1, "peer_expiry_sec": 2}}),
    )
    .await;
    accuracy("NATS", stores).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_limits_are_exact_under_concurrency_on_etcd() {
    let server = EtcdServer::start();
    let stores = replicas(
        "libmcpg_cluster_etcd.so",
        "dev.mcpg.cluster.etcd",
        serde_json::json!({"endpoints": [server.url()], "key_prefix": "/rl/"}),
    )
    .await;
    accuracy("etcd", stores).await;
}

//! The Redis plugin against a real `redis-server`: the coordinator test kit with several
//! instances acting as replicas (through the `.so` mcpg loads), and a server crash mid-run.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use mcpg_backends::{RedisOptions, RedisServer};
use mcpg_plugin_api::coordinator::{Coordinator, ErrorKind};
use mcpg_plugin_api::export::HostInfo;
use mcpg_plugin_api::remote::LoadedPlugin;
use mcpg_plugin_testkit::{Harness, built_library, run};

const PREFIX: &str = "tk:";

struct RedisHarness {
    plugin: LoadedPlugin,
    server: RedisServer,
}

impl RedisHarness {
    fn config(&self) -> serde_json::Value {
        serde_json::json!({
            "url": self.server.url(),
            "key_prefix": PREFIX,
            "peer_ttl_ms": 1000,
            "peer_refresh_interval_ms": 300,
            "lease_ttl_ms": 2000,
        })
    }
}

async fn boot(
    plugin: &LoadedPlugin,
    config: serde_json::Value,
    node_id: &str,
) -> Arc<dyn Coordinator> {
    let (p, host) = (
        plugin.clone(),
        HostInfo {
            node_id: Some(node_id.to_owned()),
            host_version: "test".into(),
        },
    );
    tokio::task::spawn_blocking(move || p.boot(&config, &host))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"))
}

#[async_trait::async_trait]
impl Harness for RedisHarness {
    async fn instance(&self, node_id: &str) -> Arc<dyn Coordinator> {
        boot(&self.plugin, self.config(), node_id).await
    }

    async fn break_lease(&self, name: &str) -> bool {
        let key = format!("{PREFIX}lease:{name}");
        self.server
            .command(&["DEL", &key])
            .is_some_and(|r| r.starts_with(":1"))
    }

    fn peer_expiry(&self) -> Duration {
        Duration::from_millis(1000)
    }

    /// What Redis holds once a node's presence lapsed: it is out of the set and its meta gone.
    async fn expire_presence(&self, node_id: &str) -> bool {
        let zrem = self
            .server
            .command(&["ZREM", &format!("{PREFIX}peers"), node_id]);
        let hdel = self
            .server
            .command(&["HDEL", &format!("{PREFIX}peer-meta"), node_id]);
        zrem.is_some_and(|r| r.starts_with(":1")) && hdel.is_some()
    }

    async fn pause_backend(&self) -> bool {
        self.server.pause();
        true
    }

    async fn resume_backend(&self) {
        self.server.resume();
    }
}

fn plugin() -> LoadedPlugin {
    // The `.so` `cargo test` builds beside this test (or the command that builds it).
    built_library("libmcpg_cluster_redis.so", "dev.mcpg.cluster.redis")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_library_passes_the_test_kit_against_real_redis() {
    let harness = RedisHarness {
        plugin: plugin(),
        server: RedisServer::start(),
    };
    run(&harness).await.assert_passed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boot_failure_says_where_it_tried_without_credentials() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (p, host) = (plugin(), HostInfo::default());
    let config = serde_json::json!({"url": format!("redis://user:hunter2@127.0.0.1:{port}")});
    let err = tokio::task::spawn_blocking(move || p.boot(&config, &host))
        .await
        .unwrap()
        .err()
        .expect("boot must fail");
    let text = err.to_string();
    assert!(
        text.contains(&format!("cannot reach redis at redis://127.0.0.1:{port}")),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_crash_gives_clean_errors_and_the_plugin_recovers() {
    let mut server = RedisServer::start();
    let config = serde_json::json!({"url": server.url(), "key_prefix": "fault:"});
    let p = plugin();
    let a = boot(&p, config.clone(), "a").await;
    let b = boot(&p, config, "b").await;
    a.put("k", b"before".to_vec(), None).await.unwrap();
    let mut sub = b.subscribe("events.>").await.unwrap();

    server.kill();
    // Calls fail with a clean error while the server is down; nothing hangs or panics.
    let err = tokio::time::timeout(
        Duration::from_secs(30),
        a.put("k", b"during".to_vec(), None),
    )
    .await
    .expect("a call against a dead server must return")
    .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Unavailable, "{err}");
    assert!(!b.health().await.ok);

    server.restart();
    // Commands recover once the server is back (this server keeps no data across restarts).
    let mut recovered = false;
    for _ in 0..100 {
        if a.put("k", b"after".to_vec(), None).await.is_ok() {
            recovered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        recovered,
        "the plugin never recovered after the server came back"
    );
    assert_eq!(b.get("k").await.unwrap().unwrap().value, b"after");
    assert!(b.health().await.ok);
    // The subscription made before the crash is re-established: publish until it arrives.
    let mut got = None;
    for i in 0..100u8 {
        a.publish("events.x", vec![i]).await.unwrap();
        if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(100), sub.next()).await {
            got = Some(m);
            break;
        }
    }
    let m = got.expect("the subscription was not re-established after the server restarted");
    assert_eq!(m.subject, "events.x");
}

/// Lease safety under contention (issue 19): 3 replicas x 3 contenders, holder intervals on
/// the monotonic clock never overlap and fencing tokens strictly increase. 100 acquisitions in
/// CI; `MCPG_LEASE_SAFETY_N=10000` for the long run (docs/reliability.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_safety_under_contention() {
    let harness = RedisHarness {
        plugin: plugin(),
        server: RedisServer::start(),
    };
    let n = mcpg_plugin_testkit::lease_safety_runs(100);
    let found = mcpg_plugin_testkit::lease_safety(&harness, 3, 3, n).await;
    eprintln!("lease safety: {found:?}");
    found.assert_safe();
}

/// Lease safety across processes (issue 19): 3 contender processes × 3 contenders, a holder
/// SIGSTOPped for twice the TTL every 3 s. No overlapping holders, strictly increasing tokens.
/// No backend restart: a Redis without persistence forgets leases and the token counter (see
/// `a_restart_without_persistence_breaks_lease_safety`). 150 acquisitions in CI; the long run
/// sets `MCPG_LEASE_SAFETY_N=10000` (docs/reliability.md).
#[test]
fn lease_safety_across_processes_with_paused_holders() {
    let server = RedisServer::start();
    let mut plan = mcpg_plugin_testkit::processes::plan_from_env(150, None);
    // Never restarted, whatever MCPG_LEASE_SAFETY_RESTART_SEC says (see above).
    plan.restart_every = None;
    let config = serde_json::json!({
        "url": server.url(),
        "key_prefix": "lsp:",
        "peer_ttl_ms": 1000,
        "peer_refresh_interval_ms": 300,
        "lease_ttl_ms": 2000,
    });
    let found = mcpg_plugin_testkit::processes::lease_safety_processes(
        &mcpg_plugin_testkit::library_path("libmcpg_cluster_redis.so"),
        "dev.mcpg.cluster.redis",
        config,
        &plan,
        || {},
    );
    eprintln!("lease safety across processes: {}", found.summary());
    found.assert_safe();
}

/// Redis's limit, shown (docs/reliability.md): one instance without persistence forgets every
/// lease and the fencing counter when it restarts, so a second holder gets a lease the first
/// still holds, with a token that is not larger. No Redlock, no replication claims: durability
/// and safety across a restart need `appendonly yes` with `appendfsync always`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_without_persistence_breaks_lease_safety() {
    let mut server = RedisServer::start();
    let plugin = built_library("libmcpg_cluster_redis.so", "dev.mcpg.cluster.redis");
    let config =
        serde_json::json!({"url": server.url(), "key_prefix": "lim:", "lease_ttl_ms": 30000});
    let a = boot(&plugin, config.clone(), "a").await;
    let first = a
        .acquire("limit", Some(Duration::from_secs(30)), Duration::ZERO)
        .await
        .unwrap()
        .expect("acquired");
    server.restart();
    let b = boot(&plugin, config, "b").await;
    let second = b
        .acquire(
            "limit",
            Some(Duration::from_secs(30)),
            Duration::from_secs(10),
        )
        .await
        .unwrap()
        .expect("the restarted Redis grants the lease the first holder still holds");
    assert!(
        second.token() <= first.token(),
        "the fencing counter restarted: {} after {}",
        second.token(),
        first.token()
    );
}

/// The other side of that limit: with `appendonly yes` + `appendfsync always` a restart keeps
/// the lease and the fencing counter, so a second contender is refused the lease the first
/// still holds, and once it is released gets a larger token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_persistence_keeps_leases_and_tokens() {
    let mut server = RedisServer::start_with(RedisOptions {
        persistent: true,
        ..RedisOptions::default()
    });
    let plugin = built_library("libmcpg_cluster_redis.so", "dev.mcpg.cluster.redis");
    let config =
        serde_json::json!({"url": server.url(), "key_prefix": "dur:", "lease_ttl_ms": 30000});
    let a = boot(&plugin, config.clone(), "a").await;
    let first = a
        .acquire("durable", Some(Duration::from_secs(30)), Duration::ZERO)
        .await
        .unwrap()
        .expect("acquired");
    server.restart();
    let b = boot(&plugin, config, "b").await;
    let refused = b
        .acquire(
            "durable",
            Some(Duration::from_secs(30)),
            Duration::from_secs(2),
        )
        .await
        .unwrap();
    assert!(
        refused.is_none(),
        "the restarted Redis granted a lease its first holder still holds"
    );
    let mut released = false;
    for _ in 0..100 {
        if first.release().await.is_ok() {
            released = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        released,
        "the first holder could not release after the restart"
    );
    let second = b
        .acquire(
            "durable",
            Some(Duration::from_secs(30)),
            Duration::from_secs(10),
        )
        .await
        .unwrap()
        .expect("acquired once released");
    assert!(
        second.token() > first.token(),
        "the fencing counter went back: {} after {}",
        second.token(),
        first.token()
    );
}

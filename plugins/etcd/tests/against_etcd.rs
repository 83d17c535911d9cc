//! The etcd plugin against a real etcd: the coordinator test kit with several instances acting
//! as replicas (through the `.so` mcpg loads), an authenticated cluster, and a restart of etcd
//! mid-run after which state and leases are intact.

use std::sync::Arc;
use std::time::Duration;

use mcpg_backends::EtcdServer;
use mcpg_plugin_api::coordinator::Coordinator;
use mcpg_plugin_api::remote::LoadedPlugin;
use mcpg_plugin_testkit::{Harness, boot, built_library, run, state_and_leases_survive_restart};

struct EtcdHarness {
    plugin: LoadedPlugin,
    server: EtcdServer,
}

#[async_trait::async_trait]
impl Harness for EtcdHarness {
    async fn instance(&self, node_id: &str) -> Arc<dyn Coordinator> {
        boot(
            &self.plugin,
            serde_json::json!({"endpoints": [self.server.url()], "key_prefix": "/tk/"}),
            node_id,
        )
        .await
        .unwrap_or_else(|e| panic!("{e}"))
    }

    async fn break_lease(&self, name: &str) -> bool {
        let Ok(mut c) = etcd_client::Client::connect([self.server.url()], None).await else {
            return false;
        };
        c.delete(format!("/tk/lease/{name}"), None)
            .await
            .is_ok_and(|r| r.deleted() == 1)
    }

    fn min_ttl(&self) -> Duration {
        // etcd leases are whole seconds.
        Duration::from_secs(1)
    }

    fn peer_expiry(&self) -> Duration {
        mcpg_cluster_etcd::config::PEER_TTL
    }

    /// What etcd does when the node was paused past the presence TTL: the presence key's
    /// lease is gone, and the key with it.
    async fn expire_presence(&self, node_id: &str) -> bool {
        let Ok(mut c) = etcd_client::Client::connect([self.server.url()], None).await else {
            return false;
        };
        let key = format!("/tk/peers/{node_id}");
        let Ok(r) = c.get(key, None).await else {
            return false;
        };
        let Some(lease) = r.kvs().first().map(|kv| kv.lease()) else {
            return false;
        };
        c.lease_revoke(lease).await.is_ok()
    }

    async fn pause_backend(&self) -> bool {
        self.server.pause();
        true
    }

    async fn resume_backend(&self) {
        self.server.resume();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shared_library_passes_the_test_kit_against_real_etcd() {
    let harness = EtcdHarness {
        plugin: built_library("libmcpg_cluster_etcd.so", "dev.mcpg.cluster.etcd"),
        server: EtcdServer::start(),
    };
    run(&harness).await.assert_passed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authenticated_cluster() {
    let server = EtcdServer::start();
    let mut admin = etcd_client::Client::connect([server.url()], None)
        .await
        .unwrap();
    admin.user_add("root", "root-pw", None).await.unwrap();
    admin.user_grant_role("root", "root").await.unwrap();
    admin.auth_enable().await.unwrap();
    let p = built_library("libmcpg_cluster_etcd.so", "dev.mcpg.cluster.etcd");
    let err = boot(&p, serde_json::json!({"endpoints": [server.url()]}), "a")
        .await
        .err()
        .expect("no credentials");
    assert!(err.contains("cannot reach etcd at"), "{err}");
    let bad = boot(&p, serde_json::json!({"endpoints": [server.url()], "auth": {"username": "root", "password": "nope"}}), "a").await;
    assert!(bad.is_err());
    let c = boot(&p, serde_json::json!({"endpoints": [server.url()], "auth": {"username": "root", "password": "root-pw"}}), "a")
        .await
        .unwrap();
    c.put("k", b"v".to_vec(), None).await.unwrap();
    assert_eq!(c.get("k").await.unwrap().unwrap().value, b"v");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_and_leases_survive_an_etcd_restart() {
    let mut server = EtcdServer::start();
    let plugin = built_library("libmcpg_cluster_etcd.so", "dev.mcpg.cluster.etcd");
    let config = serde_json::json!({"endpoints": [server.url()]});
    state_and_leases_survive_restart(&plugin, config, || server.restart()).await;
}

/// Lease safety under contention (issue 19): 3 replicas x 3 contenders, holder intervals on
/// the monotonic clock never overlap and fencing tokens strictly increase. 100 acquisitions in
/// CI; `MCPG_LEASE_SAFETY_N=10000` for the long run (docs/reliability.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_safety_under_contention() {
    let harness = EtcdHarness {
        plugin: built_library("libmcpg_cluster_etcd.so", "dev.mcpg.cluster.etcd"),
        server: EtcdServer::start(),
    };
    let n = mcpg_plugin_testkit::lease_safety_runs(100);
    let found = mcpg_plugin_testkit::lease_safety(&harness, 3, 3, n).await;
    eprintln!("lease safety: {found:?}");
    found.assert_safe();
}

/// Lease safety across processes (issue 19): 3 contender processes × 3 contenders, a holder
/// SIGSTOPped for twice the TTL every 3 s, the server restarted every 10 s. No overlapping
/// holders, strictly increasing tokens. 150 acquisitions in CI; the long run sets
/// `MCPG_LEASE_SAFETY_N=10000` (docs/reliability.md).
#[test]
fn lease_safety_across_processes_with_paused_holders_and_restarts() {
    let mut server = EtcdServer::start();
    let plan = mcpg_plugin_testkit::processes::plan_from_env(150, Some(Duration::from_secs(10)));
    let found = mcpg_plugin_testkit::processes::lease_safety_processes(
        &mcpg_plugin_testkit::library_path("libmcpg_cluster_etcd.so"),
        "dev.mcpg.cluster.etcd",
        serde_json::json!({"endpoints": [server.url()], "key_prefix": "/lsp/"}),
        &plan,
        || server.restart(),
    );
    eprintln!("lease safety across processes: {}", found.summary());
    found.assert_safe();
}

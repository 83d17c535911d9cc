//! The NATS plugin against a real `nats-server -js`: the coordinator test kit with several
//! instances acting as replicas (through the `.so` mcpg loads), authentication, and a server
//! restart with `storage: file` after which leases and state are intact.

use std::sync::Arc;
use std::time::Duration;

use mcpg_backends::NatsServer;
use mcpg_plugin_api::coordinator::Coordinator;
use mcpg_plugin_api::remote::LoadedPlugin;
use mcpg_plugin_testkit::{Harness, boot, built_library, run, state_and_leases_survive_restart};

fn config(url: &str) -> serde_json::Value {
    serde_json::json!({
        "servers": [url],
        "node": {"id": "ignored", "heartbeat_interval_sec": 1, "peer_expiry_sec": 2},
        "jetstream": {"storage": "file"},
    })
}

struct NatsHarness {
    plugin: LoadedPlugin,
    server: NatsServer,
    /// `lease.renew_before_expiry_percent`, when not the default.
    renew_percent: Option<u32>,
}

#[async_trait::async_trait]
impl Harness for NatsHarness {
    async fn instance(&self, node_id: &str) -> Arc<dyn Coordinator> {
        let mut c = config(&self.server.url());
        if let Some(p) = self.renew_percent {
            c["lease"] = serde_json::json!({"renew_before_expiry_percent": p});
        }
        boot(&self.plugin, c, node_id)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    async fn break_lease(&self, name: &str) -> bool {
        // Delete the holder's entry behind its back, with a client of our own.
        let Ok(client) = async_nats::connect(self.server.url()).await else {
            return false;
        };
        let js = async_nats::jetstream::new(client);
        let Ok(kv) = js.get_key_value("mcpg-leases").await else {
            return false;
        };
        kv.delete(mcpg_cluster_nats::coordinator::encode_key(name))
            .await
            .is_ok()
    }

    fn min_ttl(&self) -> Duration {
        // NATS message TTLs are whole seconds.
        Duration::from_secs(1)
    }

    fn peer_expiry(&self) -> Duration {
        Duration::from_secs(2)
    }

    /// What the bucket holds once a node's presence lapsed: no live entry for it.
    async fn expire_presence(&self, node_id: &str) -> bool {
        let Ok(client) = async_nats::connect(self.server.url()).await else {
            return false;
        };
        let js = async_nats::jetstream::new(client);
        let Ok(kv) = js.get_key_value("mcpg-leases").await else {
            return false;
        };
        let key = format!(
            "peers.{}",
            mcpg_cluster_nats::coordinator::encode_key(node_id)
        );
        kv.delete(key).await.is_ok()
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
async fn the_shared_library_passes_the_test_kit_against_real_nats() {
    let harness = NatsHarness {
        plugin: built_library("libmcpg_cluster_nats.so", "dev.mcpg.cluster.nats"),
        server: NatsServer::start(),
        renew_percent: None,
    };
    run(&harness).await.assert_passed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_and_user_password_authentication() {
    let p = built_library("libmcpg_cluster_nats.so", "dev.mcpg.cluster.nats");
    let server = NatsServer::start_with(&["--auth", "s3cret-token"]);
    let mut c = config(&server.url());
    let err = boot(&p, c.clone(), "a")
        .await
        .err()
        .expect("no credentials must fail");
    assert!(err.contains("cannot reach NATS at"), "{err}");
    c["auth"] = serde_json::json!({"method": "token", "token": "s3cret-token"});
    let coord = boot(&p, c, "a").await.unwrap();
    coord.put("k", b"v".to_vec(), None).await.unwrap();

    let server = NatsServer::start_with(&["--user", "mcpg", "--pass", "pw-1"]);
    let mut c = config(&server.url());
    c["auth"] =
        serde_json::json!({"method": "user_password", "username": "mcpg", "password": "wrong"});
    assert!(boot(&p, c.clone(), "b").await.is_err());
    c["auth"] =
        serde_json::json!({"method": "user_password", "username": "mcpg", "password": "pw-1"});
    let coord = boot(&p, c, "b").await.unwrap();
    assert!(coord.health().await.ok);

    let mut c = config(&server.url());
    c["auth"] =
        serde_json::json!({"method": "credentials_file", "path": "/nonexistent/mcpg.creds"});
    let err = boot(&p, c, "c").await.err().unwrap();
    assert!(
        err.contains("cannot read NATS credentials file /nonexistent/mcpg.creds"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_and_state_survive_a_server_restart_with_file_storage() {
    let mut server = NatsServer::start();
    let plugin = built_library("libmcpg_cluster_nats.so", "dev.mcpg.cluster.nats");
    let config = config(&server.url());
    state_and_leases_survive_restart(&plugin, config, || server.restart()).await;
}

/// Lease safety under contention (issue 19): 3 replicas x 3 contenders, holder intervals on
/// the monotonic clock never overlap and fencing tokens strictly increase. 100 acquisitions in
/// CI; `MCPG_LEASE_SAFETY_N=10000` for the long run (docs/reliability.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_safety_under_contention() {
    let harness = NatsHarness {
        plugin: built_library("libmcpg_cluster_nats.so", "dev.mcpg.cluster.nats"),
        server: NatsServer::start(),
        renew_percent: None,
    };
    let n = mcpg_plugin_testkit::lease_safety_runs(100);
    let found = mcpg_plugin_testkit::lease_safety(&harness, 3, 3, n).await;
    eprintln!("lease safety: {found:?}");
    found.assert_safe();
}

/// A release sent while the lease's renewal is in flight must still release it (it failed
/// with "wrong last sequence", error code 10071, when the renewal moved the revision between
/// the release's read and its delete). Renewals at the tightest interval (1 % of a 1 s TTL,
/// every 10 ms) and 300 releases spread over two intervals make the race near certain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn release_is_correct_whatever_a_concurrent_renewal_did() {
    let harness = NatsHarness {
        plugin: built_library("libmcpg_cluster_nats.so", "dev.mcpg.cluster.nats"),
        server: NatsServer::start(),
        renew_percent: Some(1),
    };
    let failures = mcpg_plugin_testkit::release_races_renewal(
        &harness,
        Duration::from_secs(1),
        Duration::from_millis(10),
        300,
    )
    .await;
    assert!(
        failures.is_empty(),
        "{} of 300 releases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Lease safety across processes (issue 19): 3 contender processes × 3 contenders, a holder
/// SIGSTOPped for twice the TTL every 3 s, the server restarted (file storage) every 10 s. No
/// overlapping holders, strictly increasing tokens. 150 acquisitions in CI; the long run sets
/// `MCPG_LEASE_SAFETY_N=10000` (docs/reliability.md).
#[test]
fn lease_safety_across_processes_with_paused_holders_and_restarts() {
    let mut server = NatsServer::start();
    let plan = mcpg_plugin_testkit::processes::plan_from_env(150, Some(Duration::from_secs(10)));
    let found = mcpg_plugin_testkit::processes::lease_safety_processes(
        &mcpg_plugin_testkit::library_path("libmcpg_cluster_nats.so"),
        "dev.mcpg.cluster.nats",
        config(&server.url()),
        &plan,
        || server.restart(),
    );
    eprintln!("lease safety across processes: {}", found.summary());
    found.assert_safe();
}

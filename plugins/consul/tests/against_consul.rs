//! The Consul plugin against a real Consul — only when one is given. No Consul server can be
//! installed on this project's machines (it is not in Debian, PyPI or npm), so the test kit
//! runs when `CONSUL_HTTP_ADDR` points at one (`consul agent -dev` anywhere), and otherwise says
//! loudly that it did not run. A fake Consul would prove nothing and is deliberately absent.
//! What *is* always tested for real: every config rule (unit tests in `config.rs` and the
//! e2e config-check test), loading the built `.so`, and a boot failure against a closed port.

use std::sync::Arc;
use std::time::Duration;

use mcpg_plugin_api::coordinator::Coordinator;
use mcpg_plugin_api::remote::LoadedPlugin;
use mcpg_plugin_testkit::{Harness, boot, built_library, run};

struct ConsulHarness {
    plugin: LoadedPlugin,
    address: String,
    prefix: String,
}

#[async_trait::async_trait]
impl Harness for ConsulHarness {
    async fn instance(&self, node_id: &str) -> Arc<dyn Coordinator> {
        boot(&self.plugin, serde_json::json!({"address": self.address, "service_name": "mcpg-test", "kv_prefix": self.prefix}), node_id)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn min_ttl(&self) -> Duration {
        // Consul sessions have a 10 s minimum TTL and expire within two TTLs.
        mcpg_cluster_consul::config::MIN_SESSION_TTL
    }

    fn peer_expiry(&self) -> Duration {
        mcpg_cluster_consul::config::PEER_TTL * 2
    }

    /// What Consul does once the node stopped renewing past the session TTL: the session is
    /// gone, and the key it locked with it.
    async fn expire_presence(&self, node_id: &str) -> bool {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::new();
        let key = format!("{}/v1/kv/{}peers/{node_id}", self.address, self.prefix);
        let Ok(r) = http.get(key).send().await else {
            return false;
        };
        let pairs: Vec<serde_json::Value> = r.json().await.unwrap_or_default();
        let Some(session) = pairs.first().and_then(|p| p["Session"].as_str()) else {
            return false;
        };
        let destroy = format!("{}/v1/session/destroy/{session}", self.address);
        http.put(destroy)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
    }
}

// No Consul server can be installed where CI runs, so this test is skipped there (and shown as
// skipped, not passed). With a Consul at hand: `CONSUL_HTTP_ADDR=http://127.0.0.1:8500 cargo
// test -p mcpg-cluster-consul -- --include-ignored`; run without the variable, it fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs a real Consul: set CONSUL_HTTP_ADDR and pass --include-ignored"]
async fn the_test_kit_against_a_real_consul() {
    let address = std::env::var("CONSUL_HTTP_ADDR").expect(
        "CONSUL_HTTP_ADDR names the Consul to test against (e.g. http://127.0.0.1:8500 from `consul agent -dev`)",
    );
    let address = if address.contains("://") {
        address
    } else {
        format!("http://{address}")
    };
    let prefix = format!("mcpg-test-{}/", std::process::id());
    run(&ConsulHarness {
        plugin: built_library("libmcpg_cluster_consul.so", "dev.mcpg.cluster.consul"),
        address,
        prefix,
    })
    .await
    .assert_passed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boot_against_a_closed_port_fails_saying_where() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = boot(&built_library("libmcpg_cluster_consul.so", "dev.mcpg.cluster.consul"), serde_json::json!({"address": format!("http://127.0.0.1:{port}"), "service_name": "m", "token": "s3cret"}), "a")
        .await
        .err()
        .expect("no Consul listens there");
    assert!(
        err.contains(&format!("cannot reach Consul at http://127.0.0.1:{port}")),
        "{err}"
    );
    assert!(!err.contains("s3cret"), "{err}");
}

//! The derived coordinator (`mcpg_plugin_api::layer::Layer`) passes the whole kit over the
//! small store in memory: the layer's leases, fencing, presence, watches and pub/sub are
//! proven here once for every backend built on it.

use std::sync::Arc;
use std::time::Duration;

use mcpg_plugin_api::coordinator::Coordinator;
use mcpg_plugin_api::layer::{Cond, Layer, LayerConfig, LocalStore, Store};
use mcpg_plugin_api::memory::lease_key;
use mcpg_plugin_testkit::{Harness, run};

struct LayerHarness(LocalStore);

fn config(node_id: &str) -> LayerConfig {
    LayerConfig {
        peer_ttl: Duration::from_millis(600),
        peer_refresh: Duration::from_millis(200),
        ..LayerConfig::new(node_id)
    }
}

#[async_trait::async_trait]
impl Harness for LayerHarness {
    async fn instance(&self, node_id: &str) -> Arc<dyn Coordinator> {
        Arc::new(Layer::new(self.0.clone(), config(node_id)))
    }

    async fn break_lease(&self, name: &str) -> bool {
        matches!(
            self.0.delete_if(&lease_key(name), Cond::Any).await,
            Ok(Some(_))
        )
    }

    fn peer_expiry(&self) -> Duration {
        Duration::from_millis(600)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_layer_over_the_in_memory_store_passes_the_test_kit() {
    run(&LayerHarness(LocalStore::new())).await.assert_passed();
}

/// A channel that takes only small payloads (as PostgreSQL's `NOTIFY`): the layer passes the
/// kit's large messages and watch events by reference.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_layer_over_a_store_with_a_small_channel_limit_passes_the_test_kit() {
    run(&LayerHarness(LocalStore::with_max_payload(100)))
        .await
        .assert_passed();
}

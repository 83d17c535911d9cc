//! The built-in `single_node` coordinator passes the coordinator test kit; its instances are
//! handles onto one in-process store, as replicas would be onto one backend.

use std::sync::Arc;
use std::time::Duration;

use mcpg::coordinator::single_node_config;
use mcpg_plugin_api::coordinator::Coordinator;
use mcpg_plugin_api::memory::{MemoryConfig, MemoryStore, lease_key};
use mcpg_plugin_testkit::{Harness, run};

struct SingleNode(MemoryStore);

#[async_trait::async_trait]
impl Harness for SingleNode {
    async fn instance(&self, node_id: &str) -> Arc<dyn Coordinator> {
        Arc::new(self.0.handle(node_id))
    }

    async fn break_lease(&self, name: &str) -> bool {
        self.0
            .handle("breaker")
            .delete(&lease_key(name), None)
            .await
            .unwrap_or(false)
    }

    fn peer_expiry(&self) -> Duration {
        Duration::from_millis(600)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_node_passes_the_test_kit() {
    // The shipped timing, with a short peer TTL so expiry is observed quickly.
    let store = MemoryStore::new(MemoryConfig {
        peer_ttl: Duration::from_millis(600),
        ..single_node_config()
    });
    run(&SingleNode(store)).await.assert_passed();
}

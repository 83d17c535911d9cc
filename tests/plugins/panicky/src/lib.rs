//! Test fixture `dev.mcpg.cluster.panicky`: panics in `validate`, `boot` or the `get`
//! primitive when its config's `panic_in` says so, to prove panics never cross the boundary.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use mcpg_plugin_api::memory::{MemoryCoordinator, MemoryStore};
use mcpg_plugin_api::prelude::*;

pub struct Panicky;

fn panic_in(config: &serde_json::Value) -> &str {
    config
        .get("panic_in")
        .and_then(|v| v.as_str())
        .unwrap_or("none")
}

impl Plugin for Panicky {
    const ID: &'static str = "dev.mcpg.cluster.panicky";

    fn config_schema() -> serde_json::Value {
        serde_json::json!({"type": "object", "properties": {"panic_in": {"enum": ["none", "validate", "boot", "get"]}}})
    }

    fn validate(config: &serde_json::Value) -> Vec<PluginDiagnostic> {
        if panic_in(config) == "validate" {
            panic!("deliberate panic in validate");
        }
        Vec::new()
    }

    async fn boot(
        config: serde_json::Value,
        host: HostInfo,
    ) -> Result<Arc<dyn Coordinator>, String> {
        let mode = panic_in(&config).to_owned();
        if mode == "boot" {
            panic!("deliberate panic in boot");
        }
        static STORE: OnceLock<MemoryStore> = OnceLock::new();
        let store = STORE.get_or_init(|| MemoryStore::new(Default::default()));
        Ok(Arc::new(PanicOnGet {
            inner: store.handle(host.node_id.unwrap_or_else(|| "panicky".into())),
            panic_on_get: mode == "get",
        }))
    }
}

struct PanicOnGet {
    inner: MemoryCoordinator,
    panic_on_get: bool,
}

#[async_trait]
impl Coordinator for PanicOnGet {
    fn node_id(&self) -> String {
        self.inner.node_id()
    }
    async fn health(&self) -> Health {
        self.inner.health().await
    }
    async fn get(&self, key: &str) -> CoordResult<Option<Entry>> {
        if self.panic_on_get {
            panic!("deliberate panic in get({key})");
        }
        self.inner.get(key).await
    }
    async fn put(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> CoordResult<u64> {
        self.inner.put(key, value, ttl).await
    }
    async fn create(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> CoordResult<Option<u64>> {
        self.inner.create(key, value, ttl).await
    }
    async fn compare_and_swap(
        &self,
        key: &str,
        expected: u64,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> CoordResult<CasOutcome> {
        self.inner.compare_and_swap(key, expected, value, ttl).await
    }
    async fn delete(&self, key: &str, expected: Option<u64>) -> CoordResult<bool> {
        self.inner.delete(key, expected).await
    }
    async fn list(&self, prefix: &str) -> CoordResult<Vec<Entry>> {
        self.inner.list(prefix).await
    }
    async fn publish(&self, subject: &str, payload: Vec<u8>) -> CoordResult<()> {
        self.inner.publish(subject, payload).await
    }
    async fn subscribe(&self, pattern: &str) -> CoordResult<BoxStream<'static, Message>> {
        self.inner.subscribe(pattern).await
    }
    async fn acquire(
        &self,
        name: &str,
        ttl: Option<Duration>,
        wait: Duration,
    ) -> CoordResult<Option<Box<dyn Lease>>> {
        self.inner.acquire(name, ttl, wait).await
    }
    async fn register(&self, meta: String) -> CoordResult<Box<dyn Presence>> {
        self.inner.register(meta).await
    }
    async fn peers(&self) -> CoordResult<Vec<Peer>> {
        self.inner.peers().await
    }
    async fn watch_peers(&self) -> CoordResult<BoxStream<'static, PeerEvent>> {
        self.inner.watch_peers().await
    }
    async fn watch_prefix(&self, prefix: &str) -> CoordResult<BoxStream<'static, KvEvent>> {
        self.inner.watch_prefix(prefix).await
    }
}

export_plugin!(Panicky);

//! The capability layer: `sessions`, `pipelines`, `tasks`, `subscriptions`, `delivery` and
//! `cancellation` each get a key-value store and a bus, chosen by
//! `mcp.configurations.<capability>`: the cluster coordinator (the default), in-process memory,
//! or (stores only) a durable file store; `rate_limits` (budgets) always the coordinator. The data plane keeps all of its state here and never
//! names a backend; cluster-wide leases, the peer directory and the forwarding secret are
//! operations of [`cluster::Coordination`].

pub mod cluster;
mod file;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use mcpg_plugin_api::coordinator::{CasOutcome, CoordResult, Coordinator, Entry, Message};
use mcpg_plugin_api::memory::{MemoryConfig, MemoryStore};

use crate::config::model::{
    BusKind, Capabilities as CapabilitiesConfig, CapabilityConfig, StoreKind,
};

pub use file::FileStore;

/// A capability's key-value store. Keys are the capability's own; the store namespaces them.
#[async_trait]
pub trait Store: Send + Sync {
    async fn get(&self, key: &str) -> CoordResult<Option<Entry>>;
    async fn put(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> CoordResult<u64>;
    async fn create(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> CoordResult<Option<u64>>;
    async fn compare_and_swap(
        &self,
        key: &str,
        expected: u64,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> CoordResult<CasOutcome>;
    async fn delete(&self, key: &str, expected: Option<u64>) -> CoordResult<bool>;
    async fn list(&self, prefix: &str) -> CoordResult<Vec<Entry>>;
}

/// A capability's bus. Subjects are the capability's own; the bus namespaces them.
#[async_trait]
pub trait Bus: Send + Sync {
    async fn publish(&self, subject: &str, payload: Vec<u8>) -> CoordResult<()>;
    async fn subscribe(&self, pattern: &str) -> CoordResult<BoxStream<'static, Message>>;
}

/// A store or bus over a coordinator, under a namespace (`cap/<capability>/` for keys,
/// `cap.<capability>.` for subjects) so capabilities never see each other's data.
struct Namespaced {
    coordinator: Arc<dyn Coordinator>,
    key_prefix: String,
    subject_prefix: String,
}

impl Namespaced {
    fn new(coordinator: Arc<dyn Coordinator>, capability: &str) -> Self {
        Self {
            coordinator,
            key_prefix: format!("cap/{capability}/"),
            subject_prefix: format!("cap.{capability}."),
        }
    }

    fn k(&self, key: &str) -> String {
        format!("{}{key}", self.key_prefix)
    }

    fn strip(&self, mut e: Entry) -> Entry {
        e.key = e.key[self.key_prefix.len()..].to_owned();
        e
    }
}

#[async_trait]
impl Store for Namespaced {
    async fn get(&self, key: &str) -> CoordResult<Option<Entry>> {
        Ok(self
            .coordinator
            .get(&self.k(key))
            .await?
            .map(|e| self.strip(e)))
    }
    async fn put(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> CoordResult<u64> {
        self.coordinator.put(&self.k(key), value, ttl).await
    }
    async fn create(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> CoordResult<Option<u64>> {
        self.coordinator.create(&self.k(key), value, ttl).await
    }
    async fn compare_and_swap(
        &self,
        key: &str,
        expected: u64,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> CoordResult<CasOutcome> {
        Ok(
            match self
                .coordinator
                .compare_and_swap(&self.k(key), expected, value, ttl)
                .await?
            {
                CasOutcome::Mismatch(e) => CasOutcome::Mismatch(e.map(|e| self.strip(e))),
                swapped => swapped,
            },
        )
    }
    async fn delete(&self, key: &str, expected: Option<u64>) -> CoordResult<bool> {
        self.coordinator.delete(&self.k(key), expected).await
    }
    async fn list(&self, prefix: &str) -> CoordResult<Vec<Entry>> {
        Ok(self
            .coordinator
            .list(&self.k(prefix))
            .await?
            .into_iter()
            .map(|e| self.strip(e))
            .collect())
    }
}

#[async_trait]
impl Bus for Namespaced {
    async fn publish(&self, subject: &str, payload: Vec<u8>) -> CoordResult<()> {
        self.coordinator
            .publish(&format!("{}{subject}", self.subject_prefix), payload)
            .await
    }
    async fn subscribe(&self, pattern: &str) -> CoordResult<BoxStream<'static, Message>> {
        use futures::StreamExt;
        let n = self.subject_prefix.len();
        Ok(self
            .coordinator
            .subscribe(&format!("{}{pattern}", self.subject_prefix))
            .await?
            .map(move |mut m| {
                m.subject = m.subject[n..].to_owned();
                m
            })
            .boxed())
    }
}

/// Where one capability's state and messages live.
#[derive(Clone)]
pub struct Capability {
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
    /// For status and logs: `cluster`, `memory` or `file`.
    pub store_kind: StoreKind,
    pub bus_kind: BusKind,
}

/// All six capabilities, and the store of rate-limit budgets.
#[derive(Clone)]
pub struct Capabilities {
    pub sessions: Capability,
    pub pipelines: Capability,
    pub tasks: Capability,
    pub subscriptions: Capability,
    pub delivery: Capability,
    pub cancellation: Capability,
    /// Rate-limit budgets (`bindings[].rate_limits`): always the cluster coordinator, since
    /// a limit counted per replica keeps its budgets in memory instead.
    pub rate_limits: Capability,
    /// What replicas share about upstream pools (each one's view of its endpoints, the
    /// operators' drain/disable): always the cluster coordinator.
    pub pools: Capability,
}

/// A private in-process store under `capability`'s namespace (one replica's own state).
pub fn memory_store(capability: &str) -> Arc<dyn Store> {
    let store = MemoryStore::new(MemoryConfig::default());
    Arc::new(Namespaced::new(Arc::new(store.handle("local")), capability))
}

/// A file store could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("mcp.configurations.{capability}.store: cannot open {dir}: {source}")]
pub struct OpenError {
    pub capability: &'static str,
    pub dir: String,
    #[source]
    pub source: std::io::Error,
}

impl Capabilities {
    /// Builds every capability from its config: inherited ones share `coordinator`; `memory`
    /// ones get a private in-process store or bus; `file` stores open their directory.
    pub fn build(
        config: &CapabilitiesConfig,
        coordinator: &Arc<dyn Coordinator>,
    ) -> Result<Self, OpenError> {
        let one = |name: &'static str, c: &CapabilityConfig| -> Result<Capability, OpenError> {
            let local = || -> Arc<Namespaced> {
                let store = MemoryStore::new(MemoryConfig::default());
                Arc::new(Namespaced::new(
                    Arc::new(store.handle(coordinator.node_id())),
                    name,
                ))
            };
            let store: Arc<dyn Store> = match (c.store.kind, &c.store.dir) {
                (StoreKind::Cluster, _) => Arc::new(Namespaced::new(coordinator.clone(), name)),
                (StoreKind::Memory, _) => local(),
                (StoreKind::File, Some(dir)) => {
                    Arc::new(FileStore::open(dir).map_err(|source| OpenError {
                        capability: name,
                        dir: dir.display().to_string(),
                        source,
                    })?)
                }
                (StoreKind::File, None) => unreachable!("the loader requires dir for a file store"),
            };
            let bus: Arc<dyn Bus> = match c.bus.kind {
                BusKind::Cluster => Arc::new(Namespaced::new(coordinator.clone(), name)),
                BusKind::Memory => local(),
            };
            Ok(Capability {
                store,
                bus,
                store_kind: c.store.kind,
                bus_kind: c.bus.kind,
            })
        };
        Ok(Self {
            sessions: one("sessions", &config.sessions)?,
            pipelines: one("pipelines", &config.pipelines)?,
            tasks: one("tasks", &config.tasks)?,
            subscriptions: one("subscriptions", &config.subscriptions)?,
            delivery: one("delivery", &config.delivery)?,
            cancellation: one("cancellation", &config.cancellation)?,
            rate_limits: one("rate_limits", &CapabilityConfig::default())?,
            pools: one("pools", &CapabilityConfig::default())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::{BusConfig, StoreConfig};
    use futures::StreamExt;

    fn cfg(store: StoreKind, dir: Option<std::path::PathBuf>, bus: BusKind) -> CapabilityConfig {
        CapabilityConfig {
            store: StoreConfig { kind: store, dir },
            bus: BusConfig { kind: bus },
        }
    }

    #[tokio::test]
    async fn inherited_capabilities_share_the_coordinator_under_their_own_namespace() {
        let shared = MemoryStore::new(MemoryConfig::default());
        let a: Arc<dyn Coordinator> = Arc::new(shared.handle("a"));
        let b: Arc<dyn Coordinator> = Arc::new(shared.handle("b"));
        let ca = Capabilities::build(&CapabilitiesConfig::default(), &a).unwrap();
        let cb = Capabilities::build(&CapabilitiesConfig::default(), &b).unwrap();
        ca.sessions
            .store
            .put("s1", b"x".to_vec(), None)
            .await
            .unwrap();
        // Another replica sees it; another capability does not.
        assert_eq!(
            cb.sessions.store.get("s1").await.unwrap().unwrap().value,
            b"x"
        );
        assert!(cb.tasks.store.get("s1").await.unwrap().is_none());
        assert_eq!(cb.sessions.store.list("").await.unwrap()[0].key, "s1");
        let mut sub = cb.delivery.bus.subscribe("client.*").await.unwrap();
        ca.delivery
            .bus
            .publish("client.1", b"hi".to_vec())
            .await
            .unwrap();
        let m = sub.next().await.unwrap();
        assert_eq!(
            (m.subject.as_str(), m.payload.as_slice()),
            ("client.1", &b"hi"[..])
        );
    }

    #[tokio::test]
    async fn memory_overrides_stay_on_this_replica() {
        let shared = MemoryStore::new(MemoryConfig::default());
        let a: Arc<dyn Coordinator> = Arc::new(shared.handle("a"));
        let b: Arc<dyn Coordinator> = Arc::new(shared.handle("b"));
        let config = CapabilitiesConfig {
            delivery: cfg(StoreKind::Memory, None, BusKind::Memory),
            ..Default::default()
        };
        let ca = Capabilities::build(&config, &a).unwrap();
        let cb = Capabilities::build(&config, &b).unwrap();
        ca.delivery
            .store
            .put("k", b"x".to_vec(), None)
            .await
            .unwrap();
        assert!(cb.delivery.store.get("k").await.unwrap().is_none());
        assert!(ca.delivery.store.get("k").await.unwrap().is_some());
    }

    #[tokio::test]
    async fn file_stores_open_their_directory() {
        let dir = std::env::temp_dir().join(format!("mcpg-cap-{}", std::process::id()));
        let shared = MemoryStore::new(MemoryConfig::default());
        let a: Arc<dyn Coordinator> = Arc::new(shared.handle("a"));
        let config = CapabilitiesConfig {
            tasks: cfg(StoreKind::File, Some(dir.clone()), BusKind::Cluster),
            ..Default::default()
        };
        let caps = Capabilities::build(&config, &a).unwrap();
        caps.tasks
            .store
            .put("t", b"1".to_vec(), None)
            .await
            .unwrap();
        assert!(
            a.get("cap/tasks/t").await.unwrap().is_none(),
            "file state is not in the coordinator"
        );
        let reopened = FileStore::open(&dir).unwrap();
        assert_eq!(reopened.get("t").await.unwrap().unwrap().value, b"1");
        let _ = std::fs::remove_dir_all(dir);
    }
}

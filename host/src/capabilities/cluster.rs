//! Cluster-wide coordination the data plane needs beyond stores and buses, as named
//! operations: each replica's ownership lease, the session sweeper's lease, the peer
//! directory and the forwarding secret. Their keys are fixed here and not namespaced, because
//! replicas of every release must agree on them during a rolling upgrade:
//! `mcpg/owners/<node id>`, `mcpg/sessions/sweeper` and `mcpg/control/forwarding-secret`.

use std::sync::Arc;
use std::time::Duration;

use mcpg_plugin_api::coordinator::{CoordError, CoordResult, Coordinator, Lease, Peer};

/// Where each replica's ownership lease lives: `mcpg/owners/<node id>`.
pub const OWNER_LEASE_PREFIX: &str = "mcpg/owners/";
/// The lease under which one replica at a time sweeps sessions left idle by departed replicas.
pub const SWEEPER_LEASE: &str = "mcpg/sessions/sweeper";
/// Where the forwarding secret is created once when the config gives none.
pub const SECRET_KEY: &str = "mcpg/control/forwarding-secret";

/// The coordination operations, over the cluster coordinator.
#[derive(Clone)]
pub struct Coordination {
    coordinator: Arc<dyn Coordinator>,
}

impl Coordination {
    pub fn new(coordinator: Arc<dyn Coordinator>) -> Self {
        Self { coordinator }
    }

    /// This replica's node id, as the coordinator knows it.
    pub fn node_id(&self) -> String {
        self.coordinator.node_id()
    }

    /// Takes `node`'s ownership lease, waiting up to `wait` for it to be free; `None` when it
    /// is still held.
    pub async fn owner_lease(
        &self,
        node: &str,
        ttl: Duration,
        wait: Duration,
    ) -> CoordResult<Option<Box<dyn Lease>>> {
        self.coordinator
            .acquire(&format!("{OWNER_LEASE_PREFIX}{node}"), Some(ttl), wait)
            .await
    }

    /// Takes the sweeper's lease if nobody holds it; `None` when it is held or the
    /// coordinator fails (the sweep waits for its next turn either way).
    pub async fn sweeper_lease(&self, ttl: Duration) -> Option<Box<dyn Lease>> {
        self.coordinator
            .acquire(SWEEPER_LEASE, Some(ttl), Duration::ZERO)
            .await
            .ok()
            .flatten()
    }

    /// One round trip to the backend (a read of the forwarding secret's key): what proves,
    /// with the lease not reported lost, that this replica still holds its ownership lease.
    pub async fn ping(&self) -> CoordResult<()> {
        self.coordinator.get(SECRET_KEY).await.map(|_| ())
    }

    /// The live peers, with the metadata each registered.
    pub async fn peers(&self) -> CoordResult<Vec<Peer>> {
        self.coordinator.peers().await
    }

    /// The secret replicas present to each other when forwarding: created once by whichever
    /// replica comes first, read by the rest.
    pub async fn forwarding_secret(&self) -> CoordResult<String> {
        let fresh = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        if self
            .coordinator
            .create(SECRET_KEY, fresh.clone().into_bytes(), None)
            .await?
            .is_some()
        {
            return Ok(fresh);
        }
        self.coordinator
            .get(SECRET_KEY)
            .await?
            .and_then(|e| String::from_utf8(e.value).ok())
            .ok_or_else(|| CoordError::backend("the forwarding secret vanished while it was read"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcpg_plugin_api::memory::{MemoryConfig, MemoryStore};

    /// The keys replicas of the previous release use: a replica of each release must see the
    /// other's ownership lease, sweeper lease and forwarding secret.
    #[tokio::test]
    async fn leases_and_secret_live_at_the_keys_every_release_uses() {
        let store = MemoryStore::new(MemoryConfig::default());
        let raw: Arc<dyn Coordinator> = Arc::new(store.handle("raw"));
        let ops = Coordination::new(Arc::new(store.handle("n1")));
        let ttl = Duration::from_secs(30);

        let owner = ops.owner_lease("n1", ttl, Duration::ZERO).await.unwrap();
        assert!(owner.is_some());
        let held = raw
            .acquire("mcpg/owners/n1", Some(ttl), Duration::ZERO)
            .await
            .unwrap();
        assert!(
            held.is_none(),
            "the ownership lease is at mcpg/owners/<node id>"
        );

        let sweeper = ops.sweeper_lease(ttl).await;
        assert!(sweeper.is_some());
        let held = raw
            .acquire("mcpg/sessions/sweeper", Some(ttl), Duration::ZERO)
            .await
            .unwrap();
        assert!(held.is_none(), "the sweeper lease is mcpg/sessions/sweeper");

        let secret = ops.forwarding_secret().await.unwrap();
        let stored = raw.get("mcpg/control/forwarding-secret").await.unwrap();
        assert_eq!(stored.unwrap().value, secret.as_bytes());
        assert_eq!(
            ops.forwarding_secret().await.unwrap(),
            secret,
            "created once"
        );
    }

    /// A lease taken through the raw key (as the previous release does) is seen as held.
    #[tokio::test]
    async fn an_owner_lease_taken_by_the_previous_release_is_respected() {
        let store = MemoryStore::new(MemoryConfig::default());
        let raw: Arc<dyn Coordinator> = Arc::new(store.handle("old"));
        let ttl = Duration::from_secs(30);
        let old = raw
            .acquire("mcpg/owners/old", Some(ttl), Duration::ZERO)
            .await
            .unwrap();
        assert!(old.is_some());
        let ops = Coordination::new(Arc::new(store.handle("new")));
        let probe = ops.owner_lease("old", ttl, Duration::ZERO).await.unwrap();
        assert!(probe.is_none(), "the old replica's ownership still stands");
    }
}

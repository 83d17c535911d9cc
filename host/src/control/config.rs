//! Which config each replica runs: this replica's digest and generation, published in the
//! coordinator under `mcpg/config/<node id>` with a TTL refreshed while it lives (presence
//! metadata is fixed at registration, a config is not), and the fleet's view read back from
//! there: how many distinct configs the live replicas run.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use mcpg_plugin_api::coordinator::Coordinator;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

/// Where each replica says which config it runs: `mcpg/config/<node id>`.
pub const CONFIG_PREFIX: &str = "mcpg/config/";
/// How long a published record outlives its replica's last refresh.
pub const CONFIG_TTL: Duration = Duration::from_secs(30);

/// What a replica publishes about its config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ConfigRecord {
    pub node_id: String,
    /// SHA-256 (hex) of the config file's bytes as last applied.
    pub digest: String,
    /// 1 at start, one more per applied reload.
    pub generation: u64,
    /// When it was loaded (ms since the Unix epoch).
    pub loaded_at_ms: u64,
}

/// The fleet as read from the coordinator.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Fleet {
    pub replicas: Vec<ConfigRecord>,
    /// How many distinct digests the replicas run.
    pub distinct_digests: usize,
    /// More than one config runs: normal during a rollout, a problem when it stays.
    pub drift: bool,
}

/// Reads every published record of a live replica (a record outlives a replica that died by
/// up to its TTL; presence says sooner who is gone).
pub async fn fleet(coordinator: &dyn Coordinator) -> Result<Fleet, String> {
    let entries = coordinator
        .list(CONFIG_PREFIX)
        .await
        .map_err(|e| format!("coordinator unavailable: {}", e.kind))?;
    let live: Option<BTreeSet<String>> = coordinator
        .peers()
        .await
        .ok()
        .map(|p| p.into_iter().map(|p| p.node_id).collect());
    let mut replicas: Vec<ConfigRecord> = entries
        .iter()
        .filter_map(|e| serde_json::from_slice::<ConfigRecord>(&e.value).ok())
        .filter(|r| live.as_ref().is_none_or(|l| l.contains(&r.node_id)))
        .collect();
    replicas.sort_by(|a, b| a.node_id.cmp(&b.node_id));
    let distinct_digests = replicas
        .iter()
        .map(|r| r.digest.as_str())
        .collect::<BTreeSet<_>>()
        .len();
    Ok(Fleet {
        replicas,
        distinct_digests,
        drift: distinct_digests > 1,
    })
}

/// Publishes the latest record at once and again every third of the TTL until `stop`; then
/// deletes it. Each round also reads the fleet back for `mcpg_config_fleet_digests`.
pub async fn publish(
    coordinator: Arc<dyn Coordinator>,
    mut record: watch::Receiver<Option<ConfigRecord>>,
    mut stop: watch::Receiver<bool>,
) {
    let mut key = None;
    loop {
        let current = record.borrow_and_update().clone();
        if let Some(r) = current {
            let k = format!("{CONFIG_PREFIX}{}", r.node_id);
            let body = serde_json::to_vec(&r).expect("record serialises");
            if let Err(e) = coordinator.put(&k, body, Some(CONFIG_TTL)).await {
                tracing::warn!(error = %e, "cannot publish this replica's config digest; retrying");
            }
            key = Some(k);
            if let Ok(f) = fleet(coordinator.as_ref()).await {
                crate::telemetry::metrics::metrics()
                    .config()
                    .set_fleet_digests(f.distinct_digests);
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(CONFIG_TTL / 3) => {}
            changed = record.changed() => if changed.is_err() { break },
            _ = super::stopped(&mut stop) => break,
        }
    }
    if let Some(k) = key {
        let _ = coordinator.delete(&k, None).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcpg_plugin_api::memory::{MemoryConfig, MemoryStore};

    async fn put(c: &dyn Coordinator, node: &str, digest: &str) {
        let r = ConfigRecord {
            node_id: node.into(),
            digest: digest.into(),
            generation: 1,
            loaded_at_ms: 0,
        };
        c.put(
            &format!("{CONFIG_PREFIX}{node}"),
            serde_json::to_vec(&r).unwrap(),
            Some(CONFIG_TTL),
        )
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn the_fleet_counts_the_digests_of_live_replicas_only() {
        let store = MemoryStore::new(MemoryConfig::default());
        let (a, b) = (store.handle("a"), store.handle("b"));
        let _pa = a.register("{}".into()).await.unwrap();
        let _pb = b.register("{}".into()).await.unwrap();
        put(&a, "a", "d1").await;
        put(&b, "b", "d1").await;
        let f = fleet(&a).await.unwrap();
        assert_eq!(
            (f.replicas.len(), f.distinct_digests, f.drift),
            (2, 1, false)
        );
        put(&b, "b", "d2").await;
        let f = fleet(&a).await.unwrap();
        assert_eq!((f.distinct_digests, f.drift), (2, true));
        // A record whose replica has no presence (it died; the record's TTL runs on) is left
        // out.
        put(&a, "gone", "d3").await;
        let f = fleet(&a).await.unwrap();
        assert_eq!(f.replicas.len(), 2);
        assert_eq!(f.distinct_digests, 2);
    }
}

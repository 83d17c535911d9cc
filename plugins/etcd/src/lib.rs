//! `dev.mcpg.cluster.etcd`: the cluster coordinator on etcd.
//!
//! - [`config`]: the seed's keys (`endpoints`, `key_prefix` ending in `/`, `event_ttl_ms` in
//!   seconds as documented, clamped renewal percent, `node_id`, `auth`) and validation.
//! - [`coordinator`]: transactions on revisions for KV, etcd leases with keep-alive for TTLs,
//!   leases and presence, fencing tokens from create revisions, pub/sub emulated on leased keys
//!   and a prefix watch.

pub mod config;
pub mod coordinator;

use std::sync::Arc;

use mcpg_plugin_api::prelude::*;

pub use coordinator::EtcdCoordinator;

pub struct EtcdPlugin;

impl Plugin for EtcdPlugin {
    const ID: &'static str = "dev.mcpg.cluster.etcd";

    fn config_schema() -> serde_json::Value {
        config::schema()
    }

    fn validate(config: &serde_json::Value) -> Vec<PluginDiagnostic> {
        config::validate(config)
    }

    async fn boot(
        config: serde_json::Value,
        host: HostInfo,
    ) -> Result<Arc<dyn Coordinator>, String> {
        let config: config::Config =
            serde_json::from_value(config).map_err(|e| format!("invalid config: {e}"))?;
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .ok()
            .filter(|h| !h.is_empty())
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "localhost".into());
        let node_id = config.node_id(host.node_id, &hostname);
        Ok(Arc::new(EtcdCoordinator::connect(config, node_id).await?))
    }
}

export_plugin!(EtcdPlugin);

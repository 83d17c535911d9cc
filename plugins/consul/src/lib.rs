//! `dev.mcpg.cluster.consul`: the cluster coordinator on Consul's HTTP API.
//!
//! - [`config`]: the seed's keys (`address`, not `url`; `service_name`; `kv_prefix`; `token`;
//!   `datacenter`; `node_id`; `subscribe_wait_ms` range; clamped renewal percent).
//! - [`coordinator`]: KV through `/v1/txn`, TTLs and leases through sessions, presence through
//!   session-bound keys, pub/sub and watches through blocking queries.
//!
//! No Consul server could be installed where this was built; see `docs/plugins/consul.md` for
//! exactly what has and has not been verified against a real one.

pub mod config;
pub mod coordinator;

use std::sync::Arc;

use mcpg_plugin_api::prelude::*;

pub use coordinator::ConsulCoordinator;

pub struct ConsulPlugin;

impl Plugin for ConsulPlugin {
    const ID: &'static str = "dev.mcpg.cluster.consul";

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
        let _ = rustls::crypto::ring::default_provider().install_default();
        let node_id = config.node_id(host.node_id, std::env::var("HOSTNAME").ok());
        Ok(Arc::new(ConsulCoordinator::connect(config, node_id).await?))
    }
}

export_plugin!(ConsulPlugin);

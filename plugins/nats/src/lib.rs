//! `dev.mcpg.cluster.nats`: the cluster coordinator on NATS JetStream.
//!
//! - [`config`]: the seed's keys (a list of `servers` and structured blocks), defaults, ranges
//!   and the plugin's pure validation.
//! - [`coordinator`]: KV on the state bucket, pub/sub on core subjects, leases and presence in
//!   the leases bucket, fencing tokens from the fencing bucket.

pub mod config;
pub mod coordinator;

use std::sync::Arc;

use mcpg_plugin_api::prelude::*;

pub use coordinator::NatsCoordinator;

pub struct NatsPlugin;

impl Plugin for NatsPlugin {
    const ID: &'static str = "dev.mcpg.cluster.nats";

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
        let node_id = host.node_id.unwrap_or_else(|| config.node.id.clone());
        let c = NatsCoordinator::connect(config, node_id).await?;
        Ok(Arc::new(c))
    }
}

export_plugin!(NatsPlugin);

//! `dev.mcpg.cluster.postgres`: the cluster coordinator on PostgreSQL, built on the
//! `mcpg_plugin_api::layer` (the layer derives leases, presence, watches and pub/sub).
//!
//! - [`config`]: the keys, defaults and ranges, and the plugin's pure validation.
//! - [`store`]: the layer's small store: one table of entries, a revision sequence,
//!   `NOTIFY` (with a table for payloads too big for it), and the sweeper of expired rows.

pub mod config;
pub mod store;

use std::sync::Arc;

use mcpg_plugin_api::layer::Layer;
use mcpg_plugin_api::prelude::*;

pub struct PostgresPlugin;

impl Plugin for PostgresPlugin {
    const ID: &'static str = "dev.mcpg.cluster.postgres";

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
        let layer = config.seed.layer(host.node_id);
        let store = store::PgStore::connect(&config).await?;
        Ok(Arc::new(Layer::new(store, layer)))
    }
}

export_plugin!(PostgresPlugin);

//! `dev.mcpg.cluster.template`: a complete, minimal coordinator plugin to copy.
//!
//! It shows every part a backend plugin has: a config type that is its own JSON Schema (the
//! seed's shared keys plus your own), pure validation (including a clamped value reported as a
//! warning), boot with the host's node id, and the export. The coordinator is the
//! [`Layer`](mcpg_plugin_api::layer::Layer) over a [`Store`](mcpg_plugin_api::layer::Store):
//! here [`LocalStore`], in process memory and shared by every instance booted in one process.
//! A real plugin writes its own `Store` (seven methods over its client) in place of it;
//! `plugins/postgres` is one.

use std::sync::{Arc, OnceLock};

use mcpg_plugin_api::layer::{Layer, LocalStore, SeedKeys};
use mcpg_plugin_api::prelude::*;
use schemars::JsonSchema;
use serde::Deserialize;

/// The plugin's config: the `cluster` block minus `kind`.
#[derive(Debug, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Config {
    /// Where the backend is. A real plugin has its own keys here (`url`, a namespace, TLS);
    /// the template's store is in memory, so this is only an example of one.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// `lease_ttl_ms`, `peer_ttl_ms`, `peer_refresh_interval_ms`,
    /// `lease_renew_before_expiry_percent`, `subscribe_pattern_buffer`, `node_id`,
    /// `service_name`, with the seed's defaults and ranges.
    #[serde(flatten)]
    pub seed: SeedKeys,
}

pub struct TemplatePlugin;

impl Plugin for TemplatePlugin {
    const ID: &'static str = "dev.mcpg.cluster.template";

    fn config_schema() -> serde_json::Value {
        serde_json::to_value(schemars::schema_for!(Config)).expect("schema serializes")
    }

    fn validate(config: &serde_json::Value) -> Vec<PluginDiagnostic> {
        let schema = Self::config_schema();
        // Values at these pointers are never quoted in messages (put your password keys here).
        let mut out = mcpg_plugin_api::schema_check::check_with_secrets(&schema, config, &[]);
        out.extend(SeedKeys::validate(config));
        out
    }

    async fn boot(
        config: serde_json::Value,
        host: HostInfo,
    ) -> Result<Arc<dyn Coordinator>, String> {
        let config: Config =
            serde_json::from_value(config).map_err(|e| format!("invalid config: {e}"))?;
        // A real plugin connects here (an error says where it tried) and makes its Store.
        static STORE: OnceLock<LocalStore> = OnceLock::new();
        let store = STORE.get_or_init(LocalStore::new).clone();
        Ok(Arc::new(Layer::new(store, config.seed.layer(host.node_id))))
    }
}

export_plugin!(TemplatePlugin);

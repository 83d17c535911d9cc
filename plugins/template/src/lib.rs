//! `dev.mcpg.cluster.template`: a complete, minimal coordinator plugin to copy.
//!
//! It shows every part a backend plugin has: a config type that is its own JSON Schema, pure
//! validation (including a clamped value reported as a warning), boot with the host's node id,
//! and the export. Its "backend" is the in-process store from `mcpg_plugin_api::memory`, shared
//! by every instance booted in one process; a real plugin replaces that with its client.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use mcpg_plugin_api::memory::{MemoryConfig, MemoryStore};
use mcpg_plugin_api::prelude::*;
use schemars::JsonSchema;
use serde::Deserialize;

/// The plugin's config: the `cluster` block minus `kind`.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Default lock / leadership TTL when the caller passes none, in milliseconds.
    #[serde(default = "default_lease_ttl_ms")]
    #[schemars(range(min = 10))]
    pub lease_ttl_ms: u64,
    /// TTL of a node's presence, in milliseconds; refreshed at half of it.
    #[serde(default = "default_peer_ttl_ms")]
    #[schemars(range(min = 100))]
    pub peer_ttl_ms: u64,
    /// Renew a lease when this percent of its TTL has elapsed. Clamped to 1..=99.
    #[serde(default = "default_renew_percent")]
    pub lease_renew_before_expiry_percent: i64,
    /// This node's id. Defaults to `template-<hostname>`; `mcpg --node-id` overrides it.
    #[serde(default)]
    pub node_id: Option<String>,
}

fn default_lease_ttl_ms() -> u64 {
    30_000
}

fn default_peer_ttl_ms() -> u64 {
    15_000
}

fn default_renew_percent() -> i64 {
    50
}

pub struct TemplatePlugin;

impl Plugin for TemplatePlugin {
    const ID: &'static str = "dev.mcpg.cluster.template";

    fn config_schema() -> serde_json::Value {
        serde_json::to_value(schemars::schema_for!(Config)).expect("schema serializes")
    }

    fn validate(config: &serde_json::Value) -> Vec<PluginDiagnostic> {
        let mut out = mcpg_plugin_api::schema_check::check(&Self::config_schema(), config);
        out.extend(mcpg_plugin_api::schema_check::clamped_percent(
            config,
            "lease_renew_before_expiry_percent",
        ));
        out
    }

    async fn boot(
        config: serde_json::Value,
        host: HostInfo,
    ) -> Result<Arc<dyn Coordinator>, String> {
        let config: Config =
            serde_json::from_value(config).map_err(|e| format!("invalid config: {e}"))?;
        let node_id = host
            .node_id
            .or(config.node_id)
            .unwrap_or_else(|| format!("template-{}", hostname()));
        // One store per process stands in for the shared backend every replica talks to.
        static STORE: OnceLock<MemoryStore> = OnceLock::new();
        let store = STORE.get_or_init(|| {
            MemoryStore::new(MemoryConfig {
                lease_ttl: Duration::from_millis(config.lease_ttl_ms),
                peer_ttl: Duration::from_millis(config.peer_ttl_ms),
                renew_percent: config.lease_renew_before_expiry_percent.clamp(1, 99) as u8,
            })
        });
        Ok(Arc::new(store.handle(node_id)))
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

export_plugin!(TemplatePlugin);

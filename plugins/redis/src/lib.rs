//! `dev.mcpg.cluster.redis`: the cluster coordinator on Redis.
//!
//! - [`config`]: the seed's keys, defaults and ranges, and the plugin's pure validation.
//! - [`coordinator`]: KV (Lua scripts with revisions, SCAN listing), leases (`SET NX PX` plus a
//!   fencing counter in the same script), presence (a sorted set scored by server time), and
//!   watches (events published by the write scripts, so no keyspace notifications are needed).
//! - [`pubsub`]: one pub/sub connection per instance that reconnects and re-subscribes.

pub mod config;
pub mod coordinator;
pub mod pubsub;

use std::sync::Arc;

use mcpg_plugin_api::prelude::*;

pub use coordinator::RedisCoordinator;

pub struct RedisPlugin;

impl Plugin for RedisPlugin {
    const ID: &'static str = "dev.mcpg.cluster.redis";

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
        // rediss:// needs a TLS crypto provider; installing it twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let node_id = config.node_id(host.node_id, std::env::var("HOSTNAME").ok());
        let c = RedisCoordinator::connect(config, node_id).await?;
        Ok(Arc::new(c))
    }
}

export_plugin!(RedisPlugin);

//! `dev.mcpg.cluster.postgres`: the cluster coordinator on PostgreSQL. The plugin supplies the
//! layer's small store ([`store`]); `mcpg_plugin_api::layer` derives leases, presence, watches
//! and pub/sub from it. The config follows the seed's conventions for a URL-addressed backend,
//! with a schema per deployment where Redis has a key prefix, and TLS by the URL's `sslmode`.

pub mod store;

use std::sync::Arc;

use mcpg_plugin_api::layer::{Layer, SeedKeys};
use mcpg_plugin_api::prelude::*;
use mcpg_plugin_api::schema_check::{check_with_secrets, url_key};
use mcpg_plugin_api::support::parse_config;
use mcpg_plugin_api::tls::TlsKeys;
use schemars::JsonSchema;
use serde::Deserialize;

/// `cluster` keys of `kind: postgres`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields, title = "dev.mcpg.cluster.postgres")]
pub struct Config {
    /// `postgres://` or `postgresql://` URL, libpq's URI form; `sslmode=disable|prefer|require`
    /// (default `prefer`) selects TLS. Its credentials are never printed.
    pub url: String,
    /// Schema of the plugin's tables (created at boot) and prefix of its notification
    /// channels. Give each deployment sharing a database its own.
    #[serde(default = "default_schema")]
    #[schemars(regex(pattern = r"^[a-z_][a-z0-9_]{0,39}$"))]
    pub schema: String,
    #[serde(flatten)]
    pub tls: TlsKeys,
    #[serde(flatten)]
    pub seed: SeedKeys,
}

fn default_schema() -> String {
    "mcpg".into()
}

pub struct PostgresPlugin;

impl Plugin for PostgresPlugin {
    const ID: &'static str = "dev.mcpg.cluster.postgres";

    fn config_schema() -> serde_json::Value {
        serde_json::to_value(schemars::schema_for!(Config)).expect("schema serializes")
    }

    /// Pure: the schema (never quoting the URL), the URL's scheme and its parse by boot's
    /// parser, and the seed's rules.
    fn validate(config: &serde_json::Value) -> Vec<PluginDiagnostic> {
        let mut out = check_with_secrets(&Self::config_schema(), config, &["/url"]);
        let parse = |u: &str| u.parse::<tokio_postgres::Config>().map(drop);
        out.extend(url_key(config, "url", &["postgres", "postgresql"], parse));
        out.extend(SeedKeys::validate(config));
        out
    }

    async fn boot(
        config: serde_json::Value,
        host: HostInfo,
    ) -> Result<Arc<dyn Coordinator>, String> {
        let config: Config = parse_config(config)?;
        let store = store::PgStore::connect(&config).await?;
        Ok(Arc::new(Layer::new(store, config.seed.layer(host.node_id))))
    }
}

export_plugin!(PostgresPlugin);

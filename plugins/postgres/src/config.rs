//! The PostgreSQL coordinator's config: the seed's conventions for a URL-addressed backend (a
//! schema per deployment where Redis has a key prefix; TLS by the URL's `sslmode`), and
//! pure validation.

use mcpg_plugin_api::export::PluginDiagnostic;
use mcpg_plugin_api::layer::SeedKeys;
use mcpg_plugin_api::schema_check::{check_with_secrets, url_scheme};
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
    /// PEM file of CA certificates trusted for TLS besides the public web roots.
    #[serde(default)]
    pub ca_cert: Option<String>,
    #[serde(flatten)]
    pub seed: SeedKeys,
}

fn default_schema() -> String {
    "mcpg".into()
}

pub fn schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(Config)).expect("schema serializes")
}

/// Every finding about a config; pure.
pub fn validate(config: &serde_json::Value) -> Vec<PluginDiagnostic> {
    let mut out = check_with_secrets(&schema(), config, &["/url"]);
    out.extend(url_scheme(config, "url", &["postgres", "postgresql"]));
    out.extend(SeedKeys::validate(config));
    out
}

//! The Consul coordinator's config: exactly the keys of mcpg's clustering page, with their
//! defaults and ranges, and its pure validation.

use std::time::Duration;

use mcpg_plugin_api::export::PluginDiagnostic;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

/// `cluster` keys of `kind: consul`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "dev.mcpg.cluster.consul")]
pub struct Config {
    /// Consul HTTP API base URL, `http://` or `https://` (note: `address`, not `url`).
    pub address: String,
    /// Name this gateway registers and looks up peers under; prefix of the synthesised
    /// `node_id`.
    #[schemars(length(min = 1))]
    pub service_name: String,
    /// KV path prefix for plugin state. Distinct per deployment on a shared Consul.
    #[serde(default = "default_kv_prefix")]
    #[schemars(length(min = 1))]
    pub kv_prefix: String,
    /// Consul ACL token, sent as `X-Consul-Token`; never logged.
    #[serde(default)]
    pub token: Option<String>,
    /// Datacenter for every request (`?dc=`); absent for the agent's own.
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub datacenter: Option<String>,
    /// Stable node id. Defaults to `service_name-$HOSTNAME`. `mcpg --node-id` overrides it.
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub node_id: Option<String>,
    /// Long-poll wait of the subscribe and watch paths, in milliseconds. Range 1..=600000
    /// (Consul's 10-minute maximum); outside it is an error.
    #[serde(default = "default_wait")]
    #[schemars(range(min = 1, max = 600_000))]
    pub subscribe_wait_ms: u64,
    /// Renew a session when this percent of its TTL has elapsed. Clamped to 1..=99 (a value
    /// outside is adjusted, with a warning).
    #[serde(default = "default_renew_percent")]
    pub lease_renew_before_expiry_percent: i64,
}

fn default_kv_prefix() -> String {
    "mcpg/".into()
}
fn default_wait() -> u64 {
    30_000
}
fn default_renew_percent() -> i64 {
    30
}

/// Consul refuses session TTLs under 10 s; every TTL mcpg asks for is raised to this.
pub const MIN_SESSION_TTL: Duration = Duration::from_secs(10);
/// Lease TTL when the caller gives none (the seed gives Consul no key for it).
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);
/// TTL of a replica's presence session.
pub const PEER_TTL: Duration = Duration::from_secs(15);

impl Config {
    pub fn renew_percent(&self) -> u32 {
        self.lease_renew_before_expiry_percent.clamp(1, 99) as u32
    }

    pub fn wait(&self) -> Duration {
        Duration::from_millis(self.subscribe_wait_ms)
    }

    pub fn node_id(&self, host_override: Option<String>, hostname_env: Option<String>) -> String {
        host_override
            .or_else(|| self.node_id.clone())
            .unwrap_or_else(|| {
                format!(
                    "{}-{}",
                    self.service_name,
                    hostname_env
                        .filter(|h| !h.is_empty())
                        .unwrap_or_else(|| format!("{:08x}", rand::random::<u32>()))
                )
            })
    }
}

pub fn schema() -> Value {
    serde_json::to_value(schemars::schema_for!(Config)).expect("schema serializes")
}

/// The API base URL as boot takes it, parsed by the HTTP client's URL parser (every request
/// URL is this plus a path); `validate` runs the same, so the checker refuses what boot would.
pub fn base_url(address: &str) -> Result<reqwest::Url, String> {
    let url = reqwest::Url::parse(address.trim_end_matches('/')).map_err(|e| e.to_string())?;
    match url.host_str() {
        Some(h) if !h.is_empty() => Ok(url),
        _ => Err("no host: write http://host:8500".into()),
    }
}

/// Every finding about a config; pure.
pub fn validate(config: &Value) -> Vec<PluginDiagnostic> {
    let has_url = config.get("url").is_some();
    let mut out: Vec<PluginDiagnostic> = mcpg_plugin_api::schema_check::check(&schema(), config)
        .into_iter()
        .filter(|d| !(has_url && d.pointer == "/address"))
        .map(|mut d| {
            if d.pointer == "/url" {
                d.message = "Consul takes `address` (the HTTP API base URL), not `url`: write `address: \"http://consul.svc:8500\"`".into();
            }
            d
        })
        .collect();
    if let Some(a) = config.get("address").and_then(Value::as_str) {
        match a.split_once("://") {
            Some(("http" | "https", rest)) if !rest.is_empty() => {
                if let Err(e) = base_url(a) {
                    out.push(PluginDiagnostic::error(
                        "/address",
                        format!("invalid URL: {e}"),
                    ));
                }
            }
            Some((scheme, _)) => out.push(PluginDiagnostic::error(
                "/address",
                format!("scheme `{scheme}` is not supported: use http:// or https://"),
            )),
            None => out.push(PluginDiagnostic::error(
                "/address",
                "must be a URL such as http://127.0.0.1:8500",
            )),
        }
    }
    out.extend(mcpg_plugin_api::schema_check::clamped_percent(
        config,
        "lease_renew_before_expiry_percent",
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcpg_plugin_api::export::Severity;
    use serde_json::json;

    fn findings(config: Value) -> Vec<(String, Severity, String)> {
        let mut v: Vec<_> = validate(&config)
            .into_iter()
            .map(|d| (d.pointer, d.severity, d.message))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn the_seed_example_is_valid_and_defaults_match_the_seed() {
        assert!(findings(json!({"address": "http://consul.svc:8500", "service_name": "mcpg", "kv_prefix": "mcpg/prod/"})).is_empty());
        let c: Config =
            serde_json::from_value(json!({"address": "https://c:8501", "service_name": "gw"}))
                .unwrap();
        assert_eq!(c.kv_prefix, "mcpg/");
        assert!(c.token.is_none() && c.datacenter.is_none());
        assert_eq!(c.subscribe_wait_ms, 30_000);
        assert_eq!(c.renew_percent(), 30);
        assert_eq!(c.node_id(None, Some("h".into())), "gw-h");
        assert!(c.node_id(None, None).starts_with("gw-"));
        assert_eq!(c.node_id(Some("flag".into()), Some("h".into())), "flag");
    }

    #[test]
    fn address_is_checked_with_boots_parser() {
        for bad in ["http://c:99999", "http://c:85 00", "http://"] {
            let f = findings(json!({"address": bad, "service_name": "m"}));
            assert_eq!(f.len(), 1, "{bad}: {f:?}");
            assert_eq!(f[0].0, "/address", "{bad}");
        }
        assert!(base_url("https://consul.svc:8501/").is_ok());
    }

    #[test]
    fn address_and_service_name_are_required_and_url_is_redirected() {
        let f = findings(json!({}));
        assert_eq!(
            f.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(),
            ["/address", "/service_name"]
        );
        let f = findings(json!({"url": "http://c:8500", "service_name": "mcpg"}));
        assert_eq!(f.len(), 1, "{f:?}");
        assert!(f[0].2.starts_with("Consul takes `address`"), "{f:?}");
        for bad in ["consul:8500", "grpc://c:8502", "redis://c:1"] {
            let f = findings(json!({"address": bad, "service_name": "m"}));
            assert_eq!(f[0].0, "/address", "{bad}");
        }
    }

    #[test]
    fn subscribe_wait_is_a_range_not_clamped() {
        for bad in [0, 600_001] {
            let f = findings(
                json!({"address": "http://c:8500", "service_name": "m", "subscribe_wait_ms": bad}),
            );
            assert_eq!(
                (f[0].0.as_str(), f[0].1),
                ("/subscribe_wait_ms", Severity::Error),
                "{bad}"
            );
        }
        assert!(findings(json!({"address": "http://c:8500", "service_name": "m", "subscribe_wait_ms": 600_000})).is_empty());
    }

    #[test]
    fn renew_percent_is_clamped_with_a_warning() {
        let f = findings(
            json!({"address": "http://c:8500", "service_name": "m", "lease_renew_before_expiry_percent": 100}),
        );
        assert_eq!(
            (f[0].1, f[0].2.as_str()),
            (
                Severity::Warning,
                "100 is outside 1..=99 and is clamped to 99"
            )
        );
    }

    #[test]
    fn unknown_keys_and_types() {
        let f = findings(
            json!({"address": "http://c:8500", "service_name": "m", "token": 5, "kv_prefx": "x"}),
        );
        assert_eq!(
            f.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(),
            ["/kv_prefx", "/token"]
        );
        assert!(f[0].2.contains("did you mean `kv_prefix`"));
    }
}

//! The etcd coordinator's config: exactly the keys of mcpg's clustering page, with their
//! defaults and rules, and its pure validation.

use std::time::Duration;

use mcpg_plugin_api::export::PluginDiagnostic;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

/// `cluster` keys of `kind: etcd`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "dev.mcpg.cluster.etcd")]
pub struct Config {
    /// One or more etcd endpoints (`http://host:2379` or `host:2379`; no TLS in this build);
    /// the client balances and retries across them.
    #[schemars(length(min = 1))]
    pub endpoints: Vec<String>,
    /// Prefix of every key the plugin owns; must end with `/`. Give each deployment sharing one
    /// etcd its own.
    #[serde(default = "default_key_prefix")]
    #[schemars(length(min = 1))]
    pub key_prefix: String,
    /// TTL of transient pub/sub events, in **seconds** despite the name (kept as documented).
    #[serde(default = "default_event_ttl")]
    #[schemars(range(min = 1))]
    pub event_ttl_ms: u64,
    /// Send a lease keep-alive when this percent of its TTL has elapsed. Clamped to 1..=99 (a
    /// value outside is adjusted, with a warning).
    #[serde(default = "default_renew_percent")]
    pub lease_renew_before_expiry_percent: i64,
    /// Stable node id. Defaults to `{key_prefix}node-{hostname}`. `mcpg --node-id` overrides it.
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub node_id: Option<String>,
    /// Credentials for an etcd with authentication enabled.
    #[serde(default)]
    pub auth: Option<Auth>,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Auth {
    #[schemars(length(min = 1))]
    pub username: String,
    pub password: String,
}

fn default_key_prefix() -> String {
    "/mcpg/".into()
}
fn default_event_ttl() -> u64 {
    60
}
fn default_renew_percent() -> i64 {
    30
}

/// Lease TTL when the caller gives none (the seed gives etcd no key for it).
pub const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(30);
/// TTL of a replica's presence lease (the seed gives etcd no key for it).
pub const PEER_TTL: Duration = Duration::from_secs(10);

impl Config {
    pub fn renew_percent(&self) -> u32 {
        self.lease_renew_before_expiry_percent.clamp(1, 99) as u32
    }

    /// Pub/sub events live this long (the key is in seconds).
    pub fn event_ttl(&self) -> Duration {
        Duration::from_secs(self.event_ttl_ms)
    }

    pub fn node_id(&self, host_override: Option<String>, hostname: &str) -> String {
        host_override
            .or_else(|| self.node_id.clone())
            .unwrap_or_else(|| format!("{}node-{hostname}", self.key_prefix))
    }
}

pub fn schema() -> Value {
    serde_json::to_value(schemars::schema_for!(Config)).expect("schema serializes")
}

/// An endpoint as the etcd client takes it at boot: `host:port` gets `http://` in front, and
/// the result is parsed by the client's own URI parser (`http::Uri`). Boot runs this on every
/// endpoint before connecting, and `validate` runs the same, so `mcpg-config-check` refuses
/// exactly what boot would. Also refused, as the client refuses them when connecting: a port
/// outside 1..=65535, a missing host, `https://` (this build's etcd client has no TLS).
pub fn endpoint_uri(endpoint: &str) -> Result<http::Uri, String> {
    let full = match endpoint.split_once("://") {
        Some(("http", _)) => endpoint.to_owned(),
        Some(("https", _)) => {
            return Err(
                "`https://` is not supported: this build's etcd client has no TLS; use http://"
                    .into(),
            );
        }
        Some((scheme, _)) => {
            return Err(format!(
                "scheme `{scheme}` is not supported: use http://host:port or host:port"
            ));
        }
        None => format!("http://{endpoint}"),
    };
    let uri: http::Uri = full.parse().map_err(|e| format!("{e}"))?;
    let authority = uri.authority().ok_or("no host: write http://host:port")?;
    if authority.host().is_empty() {
        return Err("no host: write http://host:port".into());
    }
    // `http://host` means port 80, as in the client; a bare `host` is not an endpoint.
    let port = authority.as_str().rsplit_once(':').map(|(_, p)| p);
    match port.filter(|_| !authority.as_str().ends_with(']')) {
        Some(p) if p.parse::<u16>().is_ok_and(|p| p > 0) => {}
        Some(p) => return Err(format!("port `{p}` is not a port number (1..=65535)")),
        None if full.len() != endpoint.len() => return Err("write host:port".into()),
        None => {}
    }
    Ok(uri)
}

/// Every finding about a config; pure.
pub fn validate(config: &Value) -> Vec<PluginDiagnostic> {
    let mut out = mcpg_plugin_api::schema_check::check(&schema(), config);
    if let Some(prefix) = config.get("key_prefix").and_then(Value::as_str)
        && !prefix.is_empty()
        && !prefix.ends_with('/')
    {
        out.push(PluginDiagnostic::error(
            "/key_prefix",
            format!("must end with `/`: write `{prefix}/`"),
        ));
    }
    out.extend(mcpg_plugin_api::schema_check::parsed_by(
        config,
        "/endpoints",
        "invalid endpoint",
        endpoint_uri,
    ));
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
        assert!(findings(json!({"endpoints": ["http://etcd-0:2379", "http://etcd-1:2379"], "key_prefix": "/mcpg/prod/"})).is_empty());
        let c: Config = serde_json::from_value(json!({"endpoints": ["etcd:2379"]})).unwrap();
        assert_eq!(c.key_prefix, "/mcpg/");
        assert_eq!(c.event_ttl_ms, 60);
        assert_eq!(
            c.event_ttl(),
            Duration::from_secs(60),
            "event_ttl_ms is seconds, as documented"
        );
        assert_eq!(c.renew_percent(), 30);
        assert!(c.auth.is_none());
        assert_eq!(c.node_id(None, "h1"), "/mcpg/node-h1");
        assert_eq!(c.node_id(Some("flag".into()), "h1"), "flag");
    }

    #[test]
    fn key_prefix_must_end_with_a_slash_and_the_message_shows_the_fix() {
        let f = findings(json!({"endpoints": ["etcd:2379"], "key_prefix": "/mcpg/prod"}));
        assert_eq!(
            f,
            vec![(
                "/key_prefix".into(),
                Severity::Error,
                "must end with `/`: write `/mcpg/prod/`".into()
            )]
        );
    }

    #[test]
    fn endpoints_are_required_and_checked() {
        assert_eq!(findings(json!({}))[0].0, "/endpoints");
        assert_eq!(findings(json!({"endpoints": []}))[0].0, "/endpoints");
        let f = findings(
            json!({"endpoints": ["http://a:2379", "grpc://b:2379", "nohost", "https://c:2379"]}),
        );
        assert_eq!(
            f.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(),
            ["/endpoints/1", "/endpoints/2", "/endpoints/3"]
        );
    }

    /// What boot's parser refuses, the checker refuses at the endpoint's index (issue 20, row
    /// 14: `http://etcd-0:23 79` and port 99999 passed the checker and failed boot).
    #[test]
    fn endpoints_are_checked_with_boots_parser() {
        let f = findings(json!({"endpoints": [
            "http://etcd-0:2379", "http://etcd-0:23 79", "http://etcd-0:99999", "etcd-1:0",
            "etcd-2:2379", "http://etcd-3", "[::1]:2379"
        ]}));
        let at: Vec<_> = f.iter().map(|x| x.0.as_str()).collect();
        assert_eq!(
            at,
            ["/endpoints/1", "/endpoints/2", "/endpoints/3"],
            "{f:?}"
        );
        assert!(
            f.iter().all(|x| x.2.starts_with("invalid endpoint: ")),
            "{f:?}"
        );
        assert!(f[1].2.contains("99999"), "{f:?}");
        for bad in [
            "http://etcd-0:23 79",
            "http://etcd-0:99999",
            "https://e:2379",
            "e",
        ] {
            assert!(endpoint_uri(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn renew_percent_is_clamped_with_a_warning() {
        let f = findings(json!({"endpoints": ["e:1"], "lease_renew_before_expiry_percent": 0}));
        assert_eq!(
            (f[0].1, f[0].2.as_str()),
            (Severity::Warning, "0 is outside 1..=99 and is clamped to 1")
        );
        let c: Config = serde_json::from_value(
            json!({"endpoints": ["e:1"], "lease_renew_before_expiry_percent": 120}),
        )
        .unwrap();
        assert_eq!(c.renew_percent(), 99);
    }

    #[test]
    fn auth_unknown_keys_and_ranges() {
        assert!(
            findings(json!({"endpoints": ["e:1"], "auth": {"username": "u", "password": "p"}}))
                .is_empty()
        );
        let f = findings(
            json!({"endpoints": ["e:1"], "auth": {"username": "u"}, "event_ttl_ms": 0, "pool": 1}),
        );
        assert_eq!(
            f.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(),
            ["/auth/password", "/event_ttl_ms", "/pool"]
        );
    }
}

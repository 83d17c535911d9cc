//! The Redis coordinator's config: exactly the keys of mcpg's clustering page, with their
//! defaults and ranges, and its pure validation.

use std::time::Duration;

use mcpg_plugin_api::export::PluginDiagnostic;
use schemars::JsonSchema;
use serde::Deserialize;

/// `cluster` keys of `kind: redis`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "dev.mcpg.cluster.redis")]
pub struct Config {
    /// Redis URL, `redis://` or `rediss://` (TLS). Any other scheme is rejected. Credentials
    /// in the URL are never logged.
    pub url: String,
    /// Prepended to every key and channel the plugin owns. Give each gateway deployment
    /// sharing one Redis a distinct prefix.
    #[serde(default = "default_key_prefix")]
    #[schemars(length(min = 1))]
    pub key_prefix: String,
    /// Default TTL for locks and leadership when the caller passes none, in milliseconds.
    #[serde(default = "default_lease_ttl_ms")]
    #[schemars(range(min = 10))]
    pub lease_ttl_ms: u64,
    /// TTL of this instance's peer-presence entry, in milliseconds; a missed refresh expires
    /// the peer.
    #[serde(default = "default_peer_ttl_ms")]
    #[schemars(range(min = 100))]
    pub peer_ttl_ms: u64,
    /// How often presence is re-registered, in milliseconds. Defaults to `peer_ttl_ms / 2`;
    /// must be less than `peer_ttl_ms`.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub peer_refresh_interval_ms: Option<u64>,
    /// Renew a lease when this percent of its TTL has elapsed. Clamped to 1..=99 (a value
    /// outside is adjusted, with a warning).
    #[serde(default = "default_renew_percent")]
    pub lease_renew_before_expiry_percent: i64,
    /// Buffer of each subscriber and peer-event stream, in messages. A consumer that falls
    /// this far behind loses messages (counted in the logs) rather than stalling the others.
    #[serde(default = "default_buffer")]
    #[schemars(range(min = 1))]
    pub subscribe_pattern_buffer: usize,
    /// Stable node id. Defaults to `service_name-$HOSTNAME`, or `service_name-<random>` when
    /// `HOSTNAME` is unset. `mcpg --node-id` overrides it.
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub node_id: Option<String>,
    /// Logical service name; prefix of the synthesised `node_id`.
    #[serde(default = "default_service_name")]
    #[schemars(length(min = 1))]
    pub service_name: String,
}

fn default_key_prefix() -> String {
    "mcpg:cluster:".into()
}
fn default_lease_ttl_ms() -> u64 {
    30_000
}
fn default_peer_ttl_ms() -> u64 {
    60_000
}
fn default_renew_percent() -> i64 {
    80
}
fn default_buffer() -> usize {
    256
}
fn default_service_name() -> String {
    "mcpg".into()
}

impl Config {
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.lease_ttl_ms)
    }

    pub fn peer_ttl(&self) -> Duration {
        Duration::from_millis(self.peer_ttl_ms)
    }

    pub fn peer_refresh(&self) -> Duration {
        Duration::from_millis(
            self.peer_refresh_interval_ms
                .unwrap_or(self.peer_ttl_ms / 2)
                .max(1),
        )
    }

    /// The renewal percent after clamping to 1..=99.
    pub fn renew_percent(&self) -> u32 {
        self.lease_renew_before_expiry_percent.clamp(1, 99) as u32
    }

    /// The node id: the host's override, else `node_id`, else `service_name-$HOSTNAME`, else
    /// `service_name-<random>`.
    pub fn node_id(&self, host_override: Option<String>, hostname_env: Option<String>) -> String {
        host_override
            .or_else(|| self.node_id.clone())
            .unwrap_or_else(|| match hostname_env.filter(|h| !h.is_empty()) {
                Some(h) => format!("{}-{h}", self.service_name),
                None => format!("{}-{:08x}", self.service_name, rand::random::<u32>()),
            })
    }
}

pub fn schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(Config)).expect("schema serializes")
}

/// Every finding about a config; pure.
pub fn validate(config: &serde_json::Value) -> Vec<PluginDiagnostic> {
    let mut out: Vec<PluginDiagnostic> = mcpg_plugin_api::schema_check::check(&schema(), config)
        .into_iter()
        .map(|mut d| {
            if d.pointer == "/pool_size" {
                d.message = format!(
                    "there is no `pool_size` key: the Redis coordinator pools connections internally; remove it ({})",
                    d.message
                );
            }
            d
        })
        .collect();
    if let Some(url) = config.get("url").and_then(|v| v.as_str()) {
        match url.split_once("://") {
            // Then what boot does with it: the client's own URL parser.
            Some(("redis" | "rediss", rest)) if !rest.is_empty() => out.extend(
                mcpg_plugin_api::schema_check::parsed_by(config, "/url", "invalid URL", client),
            ),
            Some((scheme, _)) => out.push(PluginDiagnostic::error(
                "/url",
                format!("scheme `{scheme}` is not supported: use redis:// or rediss:// (TLS)"),
            )),
            None => out.push(PluginDiagnostic::error(
                "/url",
                "must be a redis:// or rediss:// URL, e.g. redis://127.0.0.1:6379",
            )),
        }
    }
    out.extend(mcpg_plugin_api::schema_check::clamped_percent(
        config,
        "lease_renew_before_expiry_percent",
    ));
    let ttl = config
        .get("peer_ttl_ms")
        .and_then(|v| v.as_u64())
        .unwrap_or(default_peer_ttl_ms());
    if let Some(r) = config
        .get("peer_refresh_interval_ms")
        .and_then(|v| v.as_u64())
        && r >= ttl
    {
        out.push(PluginDiagnostic::error(
            "/peer_refresh_interval_ms",
            format!("must be less than peer_ttl_ms ({ttl}), or the peer expires between refreshes"),
        ));
    }
    out
}

/// The URL without credentials, for messages.
/// The client for `url`, as boot makes it (pure: nothing connects); `validate` runs the same
/// so the checker refuses what boot would. The message never quotes the URL.
pub fn client(url: &str) -> Result<redis::Client, String> {
    redis::Client::open(url).map_err(|e| e.to_string())
}

pub fn redacted_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.rsplit_once('@').map(|(_, h)| h).unwrap_or(rest);
            format!("{scheme}://{host}")
        }
        None => "<invalid url>".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcpg_plugin_api::export::Severity;
    use serde_json::json;

    fn findings(config: serde_json::Value) -> Vec<(String, Severity, String)> {
        let mut v: Vec<_> = validate(&config)
            .into_iter()
            .map(|d| (d.pointer, d.severity, d.message))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn the_seed_example_is_valid_and_defaults_match_the_seed() {
        let seed = json!({"url": "redis://127.0.0.1:6379", "key_prefix": "mcpg:cluster:", "lease_ttl_ms": 30000, "peer_ttl_ms": 60000});
        assert!(findings(seed).is_empty());
        let c: Config = serde_json::from_value(json!({"url": "rediss://r:6380"})).unwrap();
        assert_eq!(c.key_prefix, "mcpg:cluster:");
        assert_eq!(c.lease_ttl_ms, 30_000);
        assert_eq!(c.peer_ttl_ms, 60_000);
        assert_eq!(c.peer_refresh(), Duration::from_millis(30_000));
        assert_eq!(c.renew_percent(), 80);
        assert_eq!(c.subscribe_pattern_buffer, 256);
        assert_eq!(c.service_name, "mcpg");
        assert_eq!(c.node_id(None, Some("host-1".into())), "mcpg-host-1");
        assert!(c.node_id(None, None).starts_with("mcpg-"));
        assert_ne!(
            c.node_id(None, None),
            c.node_id(None, None),
            "random suffix"
        );
        assert_eq!(c.node_id(Some("flag".into()), Some("h".into())), "flag");
    }

    #[test]
    fn url_is_required_and_only_redis_schemes_are_accepted() {
        let f = findings(json!({}));
        assert_eq!(f[0].0, "/url");
        assert_eq!(f[0].2, "required key is missing");
        for bad in [
            "http://x:6379",
            "unix:///tmp/r.sock",
            "tcp://x",
            "redis-host:6379",
        ] {
            let f = findings(json!({"url": bad}));
            assert_eq!(f.len(), 1, "{bad}: {f:?}");
            assert_eq!(
                (f[0].0.as_str(), f[0].1),
                ("/url", Severity::Error),
                "{bad}"
            );
        }
        assert!(findings(json!({"url": "rediss://user:pw@r:6380/2"})).is_empty());
        // What boot's parser refuses, at the key, without quoting the URL (issue 20, row 14).
        for bad in ["redis://user:pw@r:99999", "redis://r:63 79"] {
            let f = findings(json!({"url": bad}));
            assert_eq!(f.len(), 1, "{bad}: {f:?}");
            assert_eq!(f[0].0, "/url");
            assert!(f[0].2.starts_with("invalid URL: "), "{f:?}");
            assert!(!f[0].2.contains("pw"), "{f:?}");
            assert!(client(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn unknown_keys_are_rejected_with_pool_size_explained() {
        let f = findings(json!({"url": "redis://x", "pool_size": 8, "urll": 1}));
        assert_eq!(f.len(), 2);
        assert!(f[0].2.starts_with("there is no `pool_size` key"), "{f:?}");
        assert!(f[1].2.contains("did you mean `url`"), "{f:?}");
    }

    #[test]
    fn renew_percent_is_clamped_with_a_warning_not_rejected() {
        for (given, clamped) in [(0, 1), (100, 99), (-5, 1), (250, 99)] {
            let f =
                findings(json!({"url": "redis://x", "lease_renew_before_expiry_percent": given}));
            assert_eq!(f.len(), 1);
            assert_eq!(f[0].1, Severity::Warning);
            assert!(f[0].2.contains(&format!("clamped to {clamped}")), "{f:?}");
            let c: Config = serde_json::from_value(
                json!({"url": "redis://x", "lease_renew_before_expiry_percent": given}),
            )
            .unwrap();
            assert_eq!(c.renew_percent(), clamped);
        }
        assert!(
            findings(json!({"url": "redis://x", "lease_renew_before_expiry_percent": 99}))
                .is_empty()
        );
    }

    #[test]
    fn ranges_and_types() {
        let f = findings(json!({
            "url": "redis://x", "lease_ttl_ms": 0, "peer_ttl_ms": 10, "subscribe_pattern_buffer": 0,
            "key_prefix": "", "service_name": "", "node_id": "", "peer_refresh_interval_ms": 0
        }));
        let pointers: Vec<&str> = f.iter().map(|x| x.0.as_str()).collect();
        assert_eq!(
            pointers,
            [
                "/key_prefix",
                "/lease_ttl_ms",
                "/node_id",
                "/peer_refresh_interval_ms",
                "/peer_ttl_ms",
                "/service_name",
                "/subscribe_pattern_buffer"
            ]
        );
        let f = findings(
            json!({"url": "redis://x", "peer_ttl_ms": 1000, "peer_refresh_interval_ms": 1000}),
        );
        assert_eq!(f[0].0, "/peer_refresh_interval_ms");
        let f = findings(json!({"url": "redis://x", "lease_ttl_ms": "30s"}));
        assert_eq!(f[0].2, "expected an integer, found a string");
    }

    #[test]
    fn credentials_never_reach_messages() {
        assert_eq!(
            redacted_url("redis://user:secret@h:6379/0"),
            "redis://h:6379/0"
        );
        assert_eq!(redacted_url("rediss://h:6380"), "rediss://h:6380");
    }
}

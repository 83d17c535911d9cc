//! [`SeedKeys`]: the `cluster` keys every backend on the layer shares, with the seed's names,
//! defaults and ranges, to `#[serde(flatten)]` into a plugin's own config.

use std::time::Duration;

use schemars::JsonSchema;
use serde::Deserialize;

use super::LayerConfig;
use crate::export::PluginDiagnostic;

/// The keys the seed gives every URL-addressed backend (Redis's page), minus the backend's
/// own (`url`, a namespace, TLS). Flatten it into your config and mark the outer struct
/// `#[schemars(deny_unknown_fields)]` (serde's `deny_unknown_fields` does not combine with
/// `flatten`; mcpg runs your `validate`, which rejects unknown keys, before `boot`).
#[derive(Debug, Clone, Deserialize, JsonSchema)]
pub struct SeedKeys {
    /// TTL of a lease when the caller gives none, in milliseconds.
    #[serde(default = "lease_ttl_ms")]
    #[schemars(range(min = 10))]
    pub lease_ttl_ms: u64,
    /// TTL of this replica's presence, in milliseconds; a replica that misses its refreshes
    /// for this long is gone.
    #[serde(default = "peer_ttl_ms")]
    #[schemars(range(min = 100))]
    pub peer_ttl_ms: u64,
    /// How often presence is refreshed, in milliseconds. Defaults to `peer_ttl_ms / 2`; must
    /// be less than `peer_ttl_ms`.
    #[serde(default)]
    #[schemars(range(min = 1))]
    pub peer_refresh_interval_ms: Option<u64>,
    /// Renew a lease when this percent of its TTL has elapsed since the last renewal. Clamped
    /// to 1..=99 (a value outside is adjusted, with a warning).
    #[serde(default = "renew_percent")]
    pub lease_renew_before_expiry_percent: i64,
    /// Messages buffered per subscriber and per watch. A consumer that falls this far behind
    /// loses messages rather than stalling the others.
    #[serde(default = "buffer")]
    #[schemars(range(min = 1))]
    pub subscribe_pattern_buffer: usize,
    /// Stable node id. Defaults to `service_name-$HOSTNAME`, or `service_name-<random>` when
    /// `HOSTNAME` is unset. `mcpg --node-id` overrides it.
    #[serde(default)]
    #[schemars(length(min = 1))]
    pub node_id: Option<String>,
    /// Logical service name; prefix of the synthesised `node_id`.
    #[serde(default = "service_name")]
    #[schemars(length(min = 1))]
    pub service_name: String,
}

fn lease_ttl_ms() -> u64 {
    30_000
}
fn peer_ttl_ms() -> u64 {
    60_000
}
fn renew_percent() -> i64 {
    80
}
fn buffer() -> usize {
    256
}
fn service_name() -> String {
    "mcpg".into()
}

impl Default for SeedKeys {
    fn default() -> Self {
        serde_json::from_value(serde_json::json!({})).expect("every key has a default")
    }
}

impl SeedKeys {
    /// The layer's settings; `host` is the host's node id override (`HostInfo::node_id`).
    pub fn layer(&self, host: Option<String>) -> LayerConfig {
        let node_id = crate::support::node_id(host, self.node_id.clone(), &self.service_name);
        let refresh = self
            .peer_refresh_interval_ms
            .unwrap_or(self.peer_ttl_ms / 2);
        LayerConfig {
            lease_ttl: Duration::from_millis(self.lease_ttl_ms),
            peer_ttl: Duration::from_millis(self.peer_ttl_ms),
            peer_refresh: Duration::from_millis(refresh.max(1)),
            renew_percent: self.lease_renew_before_expiry_percent.clamp(1, 99) as u8,
            buffer: self.subscribe_pattern_buffer,
            ..LayerConfig::new(node_id)
        }
    }

    /// The rules a schema cannot say: the clamped percent (a warning) and the refresh
    /// interval below the presence TTL. Pure; run it beside `schema_check::check`.
    pub fn validate(config: &serde_json::Value) -> Vec<PluginDiagnostic> {
        let mut out: Vec<PluginDiagnostic> =
            crate::schema_check::clamped_percent(config, "lease_renew_before_expiry_percent")
                .into_iter()
                .collect();
        let ttl = config.get("peer_ttl_ms").and_then(|v| v.as_u64());
        let ttl = ttl.unwrap_or(peer_ttl_ms());
        let refresh = config
            .get("peer_refresh_interval_ms")
            .and_then(|v| v.as_u64());
        if refresh.is_some_and(|r| r >= ttl) {
            out.push(PluginDiagnostic::error(
                "/peer_refresh_interval_ms",
                format!(
                    "must be less than peer_ttl_ms ({ttl}), or the peer expires between refreshes"
                ),
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_seeds() {
        let k = SeedKeys::default();
        assert_eq!((k.lease_ttl_ms, k.peer_ttl_ms), (30_000, 60_000));
        assert_eq!(k.lease_renew_before_expiry_percent, 80);
        assert_eq!(k.subscribe_pattern_buffer, 256);
        let l = k.layer(Some("n".into()));
        assert_eq!(l.peer_refresh, Duration::from_secs(30));
        assert_eq!((l.node_id.as_str(), l.renew_percent), ("n", 80));
    }

    #[test]
    fn refresh_must_be_below_the_ttl_and_percent_is_clamped() {
        let d = SeedKeys::validate(&serde_json::json!({
            "peer_ttl_ms": 1000, "peer_refresh_interval_ms": 1000,
            "lease_renew_before_expiry_percent": 0
        }));
        let got: Vec<_> = d.iter().map(|d| (d.pointer.as_str(), d.severity)).collect();
        use crate::export::Severity::*;
        assert_eq!(
            got,
            [
                ("/lease_renew_before_expiry_percent", Warning),
                ("/peer_refresh_interval_ms", Error)
            ]
        );
    }
}

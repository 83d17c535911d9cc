//! The NATS coordinator's config: exactly the keys of mcpg's clustering page (a list of servers
//! and structured `node`, `jetstream`, `lease`, `auth`, `tls` and `connection` blocks), with
//! their defaults and ranges, and its pure validation.

use std::time::Duration;

use mcpg_plugin_api::export::PluginDiagnostic;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `cluster` keys of `kind: nats`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "dev.mcpg.cluster.nats")]
pub struct Config {
    /// One or more NATS server URLs (`nats://`, `tls://`, `nats+tls://`, `ws://`, `wss://`);
    /// the client balances across them and reconnects.
    #[schemars(length(min = 1))]
    pub servers: Vec<String>,
    /// This replica.
    pub node: NodeConfig,
    /// Buckets and the stream the coordinator keeps its state in; created on first boot.
    #[serde(default)]
    pub jetstream: JetStreamConfig,
    /// Lease timing.
    #[serde(default)]
    pub lease: LeaseConfig,
    /// How to authenticate; absent for none.
    #[serde(default)]
    pub auth: Option<Auth>,
    /// TLS for `tls://`, `nats+tls://` and `wss://` servers.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Connection deadlines.
    #[serde(default)]
    pub connection: ConnectionConfig,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Unique per replica (pin it to the pod or host name). `mcpg --node-id` overrides it.
    #[schemars(length(min = 1))]
    pub id: String,
    /// How often this replica refreshes its presence, in seconds.
    #[serde(default = "default_heartbeat")]
    #[schemars(range(min = 1))]
    pub heartbeat_interval_sec: u64,
    /// A peer whose presence is older than this is gone, in seconds. Must be greater than
    /// `heartbeat_interval_sec`.
    #[serde(default = "default_peer_expiry")]
    #[schemars(range(min = 1))]
    pub peer_expiry_sec: u64,
}

fn default_heartbeat() -> u64 {
    10
}
fn default_peer_expiry() -> u64 {
    30
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Storage {
    /// Survives NATS restarts.
    #[default]
    File,
    /// Faster, but lease and state are lost when NATS restarts.
    Memory,
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JetStreamConfig {
    /// Replication factor of the buckets and the stream; 3 on a 3+ node NATS cluster.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 5))]
    pub replicas: usize,
    /// `file` (durable) or `memory`.
    #[serde(default)]
    pub storage: Storage,
    /// KV bucket for leases, locks and peer presence.
    #[serde(default = "default_leases_bucket")]
    #[schemars(pattern(r"^[A-Za-z0-9_-]+$"))]
    pub leases_bucket: String,
    /// KV bucket for fencing-token counters.
    #[serde(default = "default_fencing_bucket")]
    #[schemars(pattern(r"^[A-Za-z0-9_-]+$"))]
    pub fencing_bucket: String,
    /// Stream for pub/sub fan-out; its name is also the namespace of the coordinator's core
    /// NATS subjects (`<notifications_stream>.…`).
    #[serde(default = "default_notifications_stream")]
    #[schemars(pattern(r"^[A-Za-z0-9_-]+$"))]
    pub notifications_stream: String,
    /// KV bucket for capability (session, task, …) state.
    #[serde(default = "default_state_bucket")]
    #[schemars(pattern(r"^[A-Za-z0-9_-]+$"))]
    pub state_bucket: String,
    /// JetStream domain (leaf-node segmentation); absent for the default domain.
    #[serde(default)]
    #[schemars(pattern(r"^[A-Za-z0-9_-]+$"))]
    pub domain: Option<String>,
}

fn default_replicas() -> usize {
    1
}
fn default_leases_bucket() -> String {
    "mcpg-leases".into()
}
fn default_fencing_bucket() -> String {
    "mcpg-fencing".into()
}
fn default_notifications_stream() -> String {
    "mcpg-notifications".into()
}
fn default_state_bucket() -> String {
    "mcpg-state".into()
}

impl Default for JetStreamConfig {
    fn default() -> Self {
        Self {
            replicas: default_replicas(),
            storage: Storage::default(),
            leases_bucket: default_leases_bucket(),
            fencing_bucket: default_fencing_bucket(),
            notifications_stream: default_notifications_stream(),
            state_bucket: default_state_bucket(),
            domain: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseConfig {
    /// Default lease TTL when the caller passes none, in seconds.
    #[serde(default = "default_lease_ttl")]
    #[schemars(range(min = 1))]
    pub default_ttl_sec: u64,
    /// Renew a lease when this percent of its TTL has elapsed. Range 1..=99: a value outside
    /// is an error (this backend does not clamp).
    #[serde(default = "default_renew_percent")]
    #[schemars(range(min = 1, max = 99))]
    pub renew_before_expiry_percent: u32,
}

fn default_lease_ttl() -> u64 {
    30
}
fn default_renew_percent() -> u32 {
    50
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            default_ttl_sec: default_lease_ttl(),
            renew_before_expiry_percent: default_renew_percent(),
        }
    }
}

/// Authentication, tagged on `method`.
#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum Auth {
    /// `{method: token, token: …}`.
    Token { token: String },
    /// `{method: user_password, username: …, password: …}`.
    UserPassword { username: String, password: String },
    /// `{method: credentials_file, path: …}`: a NATS `.creds` file (JWT and NKey seed), read at
    /// boot.
    CredentialsFile { path: String },
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the CA that signed the servers' certificates (added to the system roots).
    #[serde(default)]
    pub ca_cert: Option<String>,
    /// Verify the server's certificate. Must be `true`: mcpg does not talk to unverified
    /// servers; use `ca_cert` for a private CA.
    #[serde(default = "default_true")]
    pub verify_peer: bool,
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionConfig {
    /// Connect deadline, in milliseconds.
    #[serde(default = "default_connect_timeout")]
    #[schemars(range(min = 1))]
    pub connect_timeout_ms: u64,
    /// Deadline of each coordinator operation, in milliseconds.
    #[serde(default = "default_operation_timeout")]
    #[schemars(range(min = 1))]
    pub operation_timeout_ms: u64,
}

fn default_connect_timeout() -> u64 {
    5_000
}
fn default_operation_timeout() -> u64 {
    10_000
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            connect_timeout_ms: default_connect_timeout(),
            operation_timeout_ms: default_operation_timeout(),
        }
    }
}

impl Config {
    pub fn lease_ttl(&self) -> Duration {
        Duration::from_secs(self.lease.default_ttl_sec)
    }
    pub fn heartbeat(&self) -> Duration {
        Duration::from_secs(self.node.heartbeat_interval_sec)
    }
    pub fn peer_expiry(&self) -> Duration {
        Duration::from_secs(self.node.peer_expiry_sec)
    }
    pub fn operation_timeout(&self) -> Duration {
        Duration::from_millis(self.connection.operation_timeout_ms)
    }
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connection.connect_timeout_ms)
    }
}

pub fn schema() -> Value {
    serde_json::to_value(schemars::schema_for!(Config)).expect("schema serializes")
}

const SCHEMES: [&str; 5] = ["nats", "tls", "nats+tls", "ws", "wss"];

/// A server as boot gives it to the client (`nats+tls://` is the seed's spelling of `tls://`),
/// parsed by the client's own parser; `validate` runs the same, so the checker refuses what
/// boot would.
pub fn server_addr(server: &str) -> Result<async_nats::ServerAddr, String> {
    let server = server.replacen("nats+tls://", "tls://", 1);
    server.parse().map_err(|e: std::io::Error| e.to_string())
}

/// Every finding about a config; pure.
pub fn validate(config: &Value) -> Vec<PluginDiagnostic> {
    let mut out: Vec<PluginDiagnostic> = mcpg_plugin_api::schema_check::check(&schema(), config)
        .into_iter()
        // `auth` is a tagged union; its own check below says more than "not valid under any
        // of the schemas".
        .filter(|d| !d.pointer.starts_with("/auth/") && d.pointer != "/auth")
        .map(|mut d| {
            match d.pointer.as_str() {
                "/url" => d.message = "NATS takes a list of servers, not `url`: write `servers: [\"nats://host:4222\"]`".into(),
                "/bucket" => {
                    d.message = "NATS takes a structured `jetstream` block, not `bucket`: write `jetstream: {state_bucket: …, leases_bucket: …, fencing_bucket: …, notifications_stream: …}`".into()
                }
                _ => {}
            }
            d
        })
        .collect();
    if let Some(servers) = config.get("servers").and_then(Value::as_array) {
        for (i, s) in servers.iter().enumerate() {
            let Some(s) = s.as_str() else { continue };
            match s.split_once("://") {
                Some((scheme, rest)) if SCHEMES.contains(&scheme) && !rest.is_empty() => {
                    if let Err(e) = server_addr(s) {
                        out.push(PluginDiagnostic::error(
                            format!("/servers/{i}"),
                            format!("invalid server address: {e}"),
                        ));
                    }
                }
                Some((scheme, _)) => out.push(PluginDiagnostic::error(
                    format!("/servers/{i}"),
                    format!("scheme `{scheme}` is not supported: use nats://, tls://, nats+tls://, ws:// or wss://"),
                )),
                None => out.push(PluginDiagnostic::error(
                    format!("/servers/{i}"),
                    "must be a URL such as nats://127.0.0.1:4222",
                )),
            }
        }
    }
    let heartbeat = config
        .pointer("/node/heartbeat_interval_sec")
        .and_then(Value::as_u64)
        .unwrap_or(default_heartbeat());
    let expiry = config
        .pointer("/node/peer_expiry_sec")
        .and_then(Value::as_u64)
        .unwrap_or(default_peer_expiry());
    if expiry <= heartbeat {
        out.push(PluginDiagnostic::error(
            "/node/peer_expiry_sec",
            format!("must be greater than node.heartbeat_interval_sec ({heartbeat}), or live peers expire between heartbeats"),
        ));
    }
    if config.pointer("/tls/verify_peer") == Some(&Value::Bool(false)) {
        out.push(PluginDiagnostic::error(
            "/tls/verify_peer",
            "`false` is not supported: mcpg always verifies the server's certificate; give `ca_cert` for a private CA",
        ));
    }
    if let Some(auth) = config.get("auth") {
        check_auth(auth, &mut out);
    }
    out
}

fn check_auth(auth: &Value, out: &mut Vec<PluginDiagnostic>) {
    let Some(obj) = auth.as_object() else {
        out.push(PluginDiagnostic::error(
            "/auth",
            "expected a mapping with `method`",
        ));
        return;
    };
    let fields: &[&str] = match obj.get("method").and_then(Value::as_str) {
        Some("token") => &["token"],
        Some("user_password") => &["username", "password"],
        Some("credentials_file") => &["path"],
        Some(other) => {
            out.push(PluginDiagnostic::error(
                "/auth/method",
                format!(
                    "`{other}` is not an auth method: use token, user_password or credentials_file"
                ),
            ));
            return;
        }
        None => {
            out.push(PluginDiagnostic::error(
                "/auth/method",
                "required key is missing: token, user_password or credentials_file",
            ));
            return;
        }
    };
    for f in fields {
        match obj.get(*f) {
            None => out.push(PluginDiagnostic::error(
                format!("/auth/{f}"),
                "required key is missing",
            )),
            Some(Value::String(s)) if !s.is_empty() => {}
            Some(_) => out.push(PluginDiagnostic::error(
                format!("/auth/{f}"),
                "must be a non-empty string",
            )),
        }
    }
    for key in obj.keys() {
        if key != "method" && !fields.contains(&key.as_str()) {
            out.push(PluginDiagnostic::error(
                format!("/auth/{key}"),
                format!(
                    "unknown key for this method (allowed here: method, {})",
                    fields.join(", ")
                ),
            ));
        }
    }
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

    fn minimal() -> Value {
        json!({"servers": ["nats://127.0.0.1:4222"], "node": {"id": "a"}})
    }

    #[test]
    fn seed_examples_are_valid_and_defaults_match_the_seed() {
        assert!(findings(json!({"servers": ["nats://n:4222"], "node": {"id": "h"}, "jetstream": {"replicas": 3, "storage": "file"}})).is_empty());
        assert!(
            findings(json!({
                "servers": ["tls://nats.svc:4222"], "node": {"id": "h"},
                "auth": {"method": "credentials_file", "path": "/etc/mcpg/nats.creds"},
                "tls": {"ca_cert": "/etc/mcpg/certs/nats-ca.pem", "verify_peer": true}
            }))
            .is_empty()
        );
        let c: Config = serde_json::from_value(minimal()).unwrap();
        assert_eq!(
            (c.node.heartbeat_interval_sec, c.node.peer_expiry_sec),
            (10, 30)
        );
        let j = &c.jetstream;
        assert_eq!((j.replicas, j.storage), (1, Storage::File));
        assert_eq!(
            (
                j.leases_bucket.as_str(),
                j.fencing_bucket.as_str(),
                j.notifications_stream.as_str(),
                j.state_bucket.as_str()
            ),
            (
                "mcpg-leases",
                "mcpg-fencing",
                "mcpg-notifications",
                "mcpg-state"
            )
        );
        assert!(j.domain.is_none());
        assert_eq!(
            (c.lease.default_ttl_sec, c.lease.renew_before_expiry_percent),
            (30, 50)
        );
        assert_eq!(
            (
                c.connection.connect_timeout_ms,
                c.connection.operation_timeout_ms
            ),
            (5000, 10000)
        );
        assert!(c.auth.is_none() && c.tls.is_none());
    }

    #[test]
    fn servers_are_checked_with_boots_parser() {
        let f = findings(
            json!({"servers": ["nats://a:4222", "nats://a:99999", "tls://a:42 22"], "node": {"id": "a"}}),
        );
        let at: Vec<_> = f.iter().map(|x| x.0.as_str()).collect();
        assert_eq!(at, ["/servers/1", "/servers/2"], "{f:?}");
        assert!(
            f.iter()
                .all(|x| x.2.starts_with("invalid server address: ")),
            "{f:?}"
        );
        assert!(server_addr("nats+tls://a:4222").is_ok());
    }

    #[test]
    fn servers_and_node_id_are_required_and_schemes_checked() {
        let f = findings(json!({}));
        assert_eq!(
            f.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(),
            ["/node", "/servers"]
        );
        let f = findings(json!({"servers": [], "node": {"id": "a"}}));
        assert_eq!(f[0].0, "/servers");
        let f = findings(
            json!({"servers": ["nats://ok:1", "http://bad:1", "redis://bad:2", "nohost"], "node": {"id": "a"}}),
        );
        assert_eq!(
            f.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(),
            ["/servers/1", "/servers/2", "/servers/3"]
        );
        for ok in ["tls://a:1", "nats+tls://a:1", "ws://a:1", "wss://a:1"] {
            assert!(
                findings(json!({"servers": [ok], "node": {"id": "a"}})).is_empty(),
                "{ok}"
            );
        }
        let f = findings(json!({"servers": ["nats://a:1"], "node": {}}));
        assert_eq!(
            (f[0].0.as_str(), f[0].2.as_str()),
            ("/node/id", "required key is missing")
        );
    }

    #[test]
    fn url_and_bucket_get_messages_saying_what_to_write() {
        let f = findings(json!({"url": "nats://a:4222", "bucket": "mcpg", "node": {"id": "a"}}));
        let msgs: Vec<&str> = f.iter().map(|x| x.2.as_str()).collect();
        assert!(
            msgs.iter()
                .any(|m| m.starts_with("NATS takes a structured `jetstream` block, not `bucket`")),
            "{msgs:?}"
        );
        assert!(
            msgs.iter()
                .any(|m| m.starts_with("NATS takes a list of servers, not `url`: write `servers:")),
            "{msgs:?}"
        );
    }

    #[test]
    fn renew_percent_out_of_range_is_an_error_not_clamped() {
        for bad in [0, 100, 150] {
            let mut c = minimal();
            c["lease"] = json!({"renew_before_expiry_percent": bad});
            let f = findings(c);
            assert_eq!(
                (f[0].0.as_str(), f[0].1),
                ("/lease/renew_before_expiry_percent", Severity::Error),
                "{bad}"
            );
        }
        let mut c = minimal();
        c["lease"] = json!({"renew_before_expiry_percent": 99, "default_ttl_sec": 1});
        assert!(findings(c).is_empty());
    }

    #[test]
    fn peer_expiry_must_exceed_heartbeat() {
        let f = findings(
            json!({"servers": ["nats://a:1"], "node": {"id": "a", "heartbeat_interval_sec": 10, "peer_expiry_sec": 10}}),
        );
        assert_eq!(f[0].0, "/node/peer_expiry_sec");
        let f = findings(
            json!({"servers": ["nats://a:1"], "node": {"id": "a", "heartbeat_interval_sec": 40}}),
        );
        assert_eq!(
            f[0].0, "/node/peer_expiry_sec",
            "default expiry 30 is not above 40"
        );
    }

    #[test]
    fn jetstream_block_is_checked() {
        let mut c = minimal();
        c["jetstream"] = json!({"replicas": 0, "storage": "disk", "state_bucket": "bad name", "domain": "a.b", "extra": 1});
        let f = findings(c);
        let pointers: Vec<&str> = f.iter().map(|x| x.0.as_str()).collect();
        assert_eq!(
            pointers,
            [
                "/jetstream/domain",
                "/jetstream/extra",
                "/jetstream/replicas",
                "/jetstream/state_bucket",
                "/jetstream/storage"
            ]
        );
    }

    #[test]
    fn auth_is_tagged_on_method() {
        let with = |auth: Value| {
            let mut c = minimal();
            c["auth"] = auth;
            findings(c)
        };
        assert!(with(json!({"method": "token", "token": "t"})).is_empty());
        assert!(
            with(json!({"method": "user_password", "username": "u", "password": "p"})).is_empty()
        );
        assert!(
            with(json!({"method": "credentials_file", "path": "/no/such/file.creds"})).is_empty(),
            "files are checked at boot, not here"
        );
        let f = with(json!({"method": "user_password", "username": "u"}));
        assert_eq!(
            (f[0].0.as_str(), f[0].2.as_str()),
            ("/auth/password", "required key is missing")
        );
        let f = with(json!({"method": "kerberos"}));
        assert_eq!(f[0].0, "/auth/method");
        let f = with(json!({"token": "t"}));
        assert_eq!(f[0].0, "/auth/method");
        let f = with(json!({"method": "token", "token": "t", "path": "/x"}));
        assert_eq!(f[0].0, "/auth/path");
    }

    #[test]
    fn tls_and_connection_keys() {
        let mut c = minimal();
        c["tls"] = json!({"verify_peer": false});
        c["connection"] = json!({"connect_timeout_ms": 0, "operation_timeout_ms": 1});
        let f = findings(c);
        assert_eq!(
            f.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(),
            ["/connection/connect_timeout_ms", "/tls/verify_peer"]
        );
    }
}

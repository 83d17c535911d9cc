//! The configuration types: the single source of truth for the JSON Schema, the reference docs
//! and what start-up reads. Doc comments here become schema descriptions.

use std::collections::BTreeMap;
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// An mcpg configuration file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "mcpg configuration")]
pub struct AppConfig {
    /// Listeners, advertised address and shutdown behaviour of this replica.
    #[serde(default)]
    pub server: ServerConfig,
    /// The MCP endpoints this gateway serves. Each binding is one MCP server at its own path,
    /// made of one or more upstream servers.
    #[serde(default)]
    pub bindings: Vec<BindingConfig>,
    /// The cluster coordinator every replica shares state through. Absent means
    /// `kind: single_node`.
    #[serde(default)]
    pub cluster: ClusterConfig,
    /// Native plugins mcpg may load. A `cluster.kind` other than `single_node` needs the entry
    /// `dev.mcpg.cluster.<kind>` here.
    #[serde(default)]
    pub plugins: Vec<PluginConfig>,
    /// MCP-level settings.
    #[serde(default)]
    pub mcp: McpConfig,
    /// The audit log of MCP requests.
    #[serde(default)]
    pub audit: AuditConfig,
    /// Logs, metrics and traces.
    #[serde(default)]
    pub observability: ObservabilityConfig,
}

/// Listeners, advertised address and shutdown behaviour of this replica.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address (`IP:PORT`) for MCP traffic. `0.0.0.0:8080` listens on every interface.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Address (`IP:PORT`) for the admin API and metrics. When absent they are served on
    /// `listen`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<String>,
    /// Base URL (`http://` or `https://`) at which other replicas reach this replica's `listen`;
    /// a forwarded request goes to `<advertise_url><binding path>`. Required when
    /// `cluster.kind` is not `single_node` and `listen` is an unspecified address
    /// (`0.0.0.0` or `[::]`); otherwise derived from `listen`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise_url: Option<String>,
    /// How long a shutdown (SIGTERM, Ctrl-C) waits for in-flight requests before exiting, in
    /// milliseconds. The replica reports not-ready the moment shutdown starts.
    #[serde(default = "default_drain_timeout_ms")]
    #[schemars(range(max = 3_600_000))]
    pub drain_timeout_ms: u64,
    /// After a shutdown signal, keep accepting requests for this long (answering `/readyz` with
    /// 503) before closing the listeners, so a load balancer stops routing here first. In
    /// milliseconds.
    #[serde(default)]
    #[schemars(range(max = 600_000))]
    pub shutdown_delay_ms: u64,
    /// Threads that serve requests (see `scheduler`). `0`, the default, is one per CPU. Fewer
    /// can be faster on a small machine shared with other busy processes (measured in
    /// `docs/deployment.md`).
    #[serde(default)]
    #[schemars(range(max = 1024))]
    pub worker_threads: u16,
    /// How connections are spread over those threads. `pinned` (the default): each thread
    /// runs its own single-threaded runtime, a new connection goes to the thread with the
    /// fewest open connections and stays there, and each upstream keeps a connection pool per
    /// thread, so a request is served on one thread from end to end. `work_stealing`: one
    /// runtime whose threads take work from each other, for few client connections that each
    /// carry many concurrent requests (HTTP/2); every hand-over between threads costs a
    /// wake-up.
    #[serde(default)]
    pub scheduler: Scheduler,
    /// Host names (optionally `name:port`) MCP requests may carry in their `Host` header,
    /// against DNS rebinding. When empty, a loopback `listen` allows only the loopback names
    /// (`localhost`, `127.0.0.1`, `[::1]`) and any other `listen` allows every host. When set,
    /// these names are allowed in addition to the loopback names on a loopback `listen`.
    /// Behind a load balancer, it must forward the client's `Host`.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// Origins (`scheme://host[:port]`) allowed to call MCP endpoints from a browser, besides
    /// those whose host passes the `Host` allowlist (the loopback names on a loopback `listen`,
    /// and `allowed_hosts`). A request carrying any other `Origin` is refused with 403; with no
    /// allowlist in force, only listed origins pass. Requests without `Origin` (non-browser
    /// clients) are not affected.
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    /// The secret replicas present to each other when one forwards a request to the replica
    /// that owns its session (never sent to clients or upstreams; a request carrying a wrong
    /// one is refused with 403). Give every replica the same value, e.g.
    /// `${env.MCPG_FORWARDING_SECRET}`. When absent, the first replica creates a random one in
    /// the cluster coordinator and the others read it there. The config check warns on a
    /// known placeholder value and on one shorter than 32 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 16))]
    pub forwarding_secret: Option<String>,
    /// Serve `listen` over HTTPS with this certificate and key. Absent means plain HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ServerTlsConfig>,
    /// Serve `admin_listen` over HTTPS with this certificate and key. Absent means plain HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_tls: Option<ServerTlsConfig>,
    /// The bearer token the admin API (`/api/…`) and `/metrics` require, e.g.
    /// `${env.MCPG_ADMIN_TOKEN}`. Without it they are served only on a loopback address: on a
    /// non-loopback `admin_listen` (or `listen` when `admin_listen` is absent) they answer
    /// `403`, and the config check warns. It also warns on a known placeholder value and on
    /// a token shorter than 32 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 16))]
    pub admin_token: Option<String>,
    /// PEM file of the certificate authorities trusted when forwarding to another replica's
    /// `https://` `advertise_url`, in addition to the system's web PKI roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarding_ca_file: Option<PathBuf>,
    /// Timeouts and connection limits every listener (`listen` and `admin_listen`, HTTP or
    /// HTTPS) enforces, so a slow or hostile client cannot hold connections open.
    #[serde(default)]
    pub limits: ListenerLimits,
    /// Reloading this config without a restart: besides SIGHUP and
    /// `POST /api/config/reload`, the file is watched for changes.
    #[serde(default)]
    pub config_reload: ConfigReloadConfig,
}

/// How the running config follows its file.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfigReloadConfig {
    /// Watch the config file's directory and reload when the file's content changes (an
    /// in-place write, an atomic rename, or a Kubernetes ConfigMap's `..data` symlink swap).
    /// SIGHUP and `POST /api/config/reload` work either way.
    #[serde(default = "default_true")]
    pub watch: bool,
    /// How long the file must stay quiet after a change before it is read, in milliseconds,
    /// so an editor's or a deployment tool's several writes make one reload.
    #[serde(default = "default_reload_debounce_ms")]
    #[schemars(range(min = 10, max = 60_000))]
    pub debounce_ms: u64,
}

fn default_reload_debounce_ms() -> u64 {
    500
}

impl Default for ConfigReloadConfig {
    fn default() -> Self {
        Self {
            watch: true,
            debounce_ms: default_reload_debounce_ms(),
        }
    }
}

/// Timeouts and connection limits of the listeners. Each listener applies them on its own
/// (`max_connections` counts per listener).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListenerLimits {
    /// How long a client may take to send a complete request head (request line and headers),
    /// counted from the connection's start for its first request and from the first byte for
    /// the next ones, in milliseconds. A connection that exceeds it is closed; this also closes
    /// connections that never send anything.
    #[serde(default = "default_header_read_timeout_ms")]
    #[schemars(range(min = 100, max = 600_000))]
    pub header_read_timeout_ms: u64,
    /// The longest silence allowed while a request body is being read, in milliseconds (the
    /// timer restarts with every piece of the body that arrives). A body that stalls longer is
    /// answered `408` and its connection closed.
    #[serde(default = "default_body_read_timeout_ms")]
    #[schemars(range(min = 100, max = 3_600_000))]
    pub body_read_timeout_ms: u64,
    /// How long a kept-alive connection may stay open with no request in flight before it is
    /// closed, in milliseconds. Streams being answered (SSE) are requests in flight and are not
    /// cut by it.
    #[serde(default = "default_idle_timeout_ms")]
    #[schemars(range(min = 100, max = 3_600_000))]
    pub idle_timeout_ms: u64,
    /// The most connections one listener holds open at once. A connection beyond it is closed
    /// as soon as it is accepted.
    #[serde(default = "default_max_connections")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub max_connections: u32,
    /// The most connections one client address may hold open on one listener; absent means no
    /// limit per address. The address is the TCP peer's: behind a reverse proxy every client
    /// shares the proxy's address, so leave this unset there (mcpg does not read
    /// `X-Forwarded-For`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub max_connections_per_client: Option<u32>,
    /// HTTP/2: the most streams (requests) one connection may have open at once, announced to
    /// the client in `SETTINGS_MAX_CONCURRENT_STREAMS`.
    #[serde(default = "default_http2_max_concurrent_streams")]
    #[schemars(range(min = 1, max = 10_000))]
    pub http2_max_concurrent_streams: u32,
    /// HTTP/2: the largest header list (decoded names and values plus 32 bytes per field) a
    /// request may carry, in bytes, announced in `SETTINGS_MAX_HEADER_LIST_SIZE`. A larger one
    /// is refused with `431`.
    #[serde(default = "default_http2_max_header_list_bytes")]
    #[schemars(range(min = 1024, max = 16_777_216))]
    pub http2_max_header_list_bytes: u32,
}

fn default_header_read_timeout_ms() -> u64 {
    10_000
}

fn default_body_read_timeout_ms() -> u64 {
    30_000
}

fn default_idle_timeout_ms() -> u64 {
    60_000
}

fn default_max_connections() -> u32 {
    10_000
}

fn default_http2_max_concurrent_streams() -> u32 {
    100
}

fn default_http2_max_header_list_bytes() -> u32 {
    65_536
}

impl Default for ListenerLimits {
    fn default() -> Self {
        Self {
            header_read_timeout_ms: default_header_read_timeout_ms(),
            body_read_timeout_ms: default_body_read_timeout_ms(),
            idle_timeout_ms: default_idle_timeout_ms(),
            max_connections: default_max_connections(),
            max_connections_per_client: None,
            http2_max_concurrent_streams: default_http2_max_concurrent_streams(),
            http2_max_header_list_bytes: default_http2_max_header_list_bytes(),
        }
    }
}

/// A TLS certificate and key for a listener. Both files are PEM; they are read at start and
/// read again whenever either changes on disk (checked every `reload_interval_ms`), so a
/// renewed certificate is served without a restart. A change that does not load keeps the old
/// certificate and logs an error.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    /// The certificate chain (leaf first); relative paths are resolved against the config
    /// file's directory.
    pub cert_file: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// How often the files are checked for changes, in milliseconds.
    #[serde(default = "default_tls_reload")]
    #[schemars(range(min = 100, max = 86_400_000))]
    pub reload_interval_ms: u64,
}

fn default_tls_reload() -> u64 {
    10_000
}

fn default_listen() -> String {
    "127.0.0.1:8080".into()
}

fn default_drain_timeout_ms() -> u64 {
    30_000
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            admin_listen: None,
            advertise_url: None,
            drain_timeout_ms: default_drain_timeout_ms(),
            shutdown_delay_ms: 0,
            worker_threads: 0,
            scheduler: Scheduler::default(),
            allowed_hosts: Vec::new(),
            forwarding_secret: None,
            allowed_origins: Vec::new(),
            tls: None,
            admin_tls: None,
            admin_token: None,
            forwarding_ca_file: None,
            limits: ListenerLimits::default(),
            config_reload: ConfigReloadConfig::default(),
        }
    }
}

/// One MCP endpoint: a downstream path served as one MCP server made of its upstreams.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BindingConfig {
    /// Unique name of the binding, used in logs, metrics and the audit log.
    #[schemars(pattern(r"^[A-Za-z0-9][A-Za-z0-9_-]*$"))]
    pub name: String,
    /// Downstream path clients connect to, e.g. `/mcp`. Unique, and none of the gateway's own
    /// paths (`/healthz`, `/readyz`, `/metrics`, `/mcpg/…`, `/api/…`).
    #[schemars(pattern(r"^/"))]
    pub path: String,
    /// The upstream MCP servers behind this binding.
    #[schemars(length(min = 1))]
    pub upstreams: Vec<UpstreamConfig>,
    /// Whether tool and prompt names, resource URIs and task ids are prefixed with the
    /// upstream's name: `auto` (only when the binding has more than one upstream), `always`
    /// or `never` (names must then be unique across upstreams; the first upstream listing a
    /// name wins).
    #[serde(default)]
    pub prefix: PrefixMode,
    /// Separator between the upstream name and a tool, prompt or task name:
    /// `<upstream><separator><name>`. Resource URIs are prefixed as `<upstream>+<uri>`.
    #[serde(default = "default_separator")]
    #[schemars(length(min = 1, max = 8), pattern(r"^[A-Za-z0-9_.-]+$"))]
    pub separator: String,
    /// What a client sees when an upstream is down: `fail_open` (the default) leaves it out
    /// of list results and answers its own calls with an error; `fail_closed` answers every
    /// request of the binding with an error while any upstream is down.
    #[serde(default)]
    pub on_upstream_failure: FailurePolicy,
    /// Who may call this binding. Absent means anyone who can reach it (no authentication).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthConfig>,
    /// Which tools, prompts and resources each caller may see and use. Absent means everything,
    /// for everyone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<AccessConfig>,
    /// Upstreams (by name) this replica needs to be ready: while the last attempt to reach
    /// one of them failed (or none has been made yet, at start), `/readyz` answers 503.
    /// Empty, the default: upstreams never affect readiness, because every replica would see
    /// the same dead upstream and a load balancer would be left with none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ready_requires: Vec<String>,
    /// Rate limits, quotas and concurrency limits on the binding's requests, each for the
    /// callers its `match` selects (every one that applies must admit a request). Not to be
    /// confused with `mcp.limits` (sizes and timeouts). See `docs/mcp/rate-limits.md`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rate_limits: Vec<RateLimit>,
}

/// One limit: how many requests (or calls of which tools) the callers it matches may make,
/// counted per `scope`. A request over it is answered `429` with `Retry-After` before it
/// reaches an upstream. Give `rate` or `quota`, `concurrency`, or both kinds.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Unique within the binding; the `limit` label of `mcpg_rate_limited_total`, and named
    /// in the audit log and in the error a limited client gets.
    #[schemars(pattern(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"), length(max = 64))]
    pub name: String,
    /// Which callers the limit applies to, as in access rules; every condition given must
    /// hold. Empty: every caller.
    #[serde(default, rename = "match")]
    pub matches: AccessMatch,
    /// What one budget is shared by: `caller` (each caller its own, the default),
    /// `caller_tool` (each caller and tool), `upstream` (each upstream, all callers together)
    /// or `global` (the whole binding).
    #[serde(default)]
    pub scope: LimitScope,
    /// What is counted: `requests` (every request, the default) or `tool_calls` (only
    /// `tools/call`).
    #[serde(default)]
    pub count: LimitCount,
    /// Tool names (as clients see them; `*` and `?` patterns): given, only `tools/call` of a
    /// matching tool counts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<String>,
    /// A sustained rate, `N/<period>` (period `s`, `min`, `h` or `day`, optionally with a
    /// count: `60/min`, `5/s`, `10/30s`), enforced as a generic cell rate (GCRA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^[0-9]+/[0-9]*(s|min|h|day)$"))]
    pub rate: Option<String>,
    /// How many requests may come at once above the sustained `rate` (only with `rate`).
    /// Default: 1, requests spaced evenly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000_000))]
    pub burst: Option<u64>,
    /// A quota over a fixed window, `N/<period>` (`10000/day`, `500/h`, `20/10s`): at most N
    /// per window, windows aligned to the Unix epoch (so a daily quota resets at 00:00 UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^[0-9]+/[0-9]*(s|min|h|day)$"))]
    pub quota: Option<String>,
    /// At most this many of the requests the limit counts in flight at once, per caller
    /// (`caller`, `caller_tool`), per upstream (`upstream`) or for the binding (`global`).
    /// Always counted on each replica: see the docs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub concurrency: Option<u32>,
    /// Where `rate` and `quota` are counted: `cluster` (the default: one budget shared by
    /// every replica, through the coordinator) or `local` (each replica its own budget).
    #[serde(default)]
    pub enforce: LimitEnforce,
    /// What a `cluster` limit does while the coordinator cannot be used: `fail_open` (the
    /// default: each replica counts the limit on its own meanwhile) or `fail_closed` (its
    /// requests are refused with `503`).
    #[serde(default)]
    pub on_coordinator_error: CoordinatorFailure,
}

/// How connections are spread over the threads that serve them (`server.scheduler`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Scheduler {
    #[default]
    Pinned,
    WorkStealing,
}

/// What one budget of a limit is shared by.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LimitScope {
    #[default]
    Caller,
    CallerTool,
    Upstream,
    Global,
}

/// What a limit counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LimitCount {
    #[default]
    Requests,
    ToolCalls,
}

/// Where a limit is counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LimitEnforce {
    #[default]
    Cluster,
    Local,
}

/// A cluster-wide limit while the coordinator fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum CoordinatorFailure {
    #[default]
    FailOpen,
    FailClosed,
}

/// `N/<k><unit>` (`60/min`, `10/30s`) as (N, period in milliseconds).
pub fn per_period(s: &str) -> Result<(u64, u64), String> {
    let (n, period) = s
        .split_once('/')
        .ok_or_else(|| format!("`{s}` is not `N/<period>`, e.g. `60/min`"))?;
    let n: u64 = n
        .parse()
        .map_err(|_| format!("`{n}` in `{s}` is not a count"))?;
    if n == 0 {
        return Err(format!(
            "`{s}` allows nothing; a count of at least 1 is needed"
        ));
    }
    let digits = period.len()
        - period
            .trim_start_matches(|c: char| c.is_ascii_digit())
            .len();
    let (k, unit) = period.split_at(digits);
    let k: u64 = if k.is_empty() {
        1
    } else {
        k.parse()
            .map_err(|_| format!("`{k}` in `{s}` is not a number"))?
    };
    let unit_ms = match unit {
        "s" => 1_000,
        "min" => 60_000,
        "h" => 3_600_000,
        "day" => 86_400_000,
        _ => {
            return Err(format!(
                "`{unit}` in `{s}` is not a period: use s, min, h or day"
            ));
        }
    };
    let period_ms = k
        .checked_mul(unit_ms)
        .filter(|p| *p > 0 && *p <= 366 * 86_400_000)
        .ok_or_else(|| format!("the period of `{s}` must be between 1 s and 366 days"))?;
    Ok((n, period_ms))
}

/// Downstream authentication of a binding, as an OAuth 2.1 resource server (the MCP
/// authorization specification): requests need `Authorization: Bearer <token>`; a missing or
/// invalid token is answered `401` with `WWW-Authenticate` pointing at the protected-resource
/// metadata document (`/.well-known/oauth-protected-resource<path>`). At least one of `tokens`
/// or `jwt` must be given; a token is checked against `tokens` first, then as a JWT.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Static bearer tokens, each with a name that identifies its holder in access rules, logs
    /// and the audit log.
    #[serde(default)]
    pub tokens: Vec<StaticToken>,
    /// JSON Web Tokens issued by an authorization server, checked against its keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtConfig>,
    /// The resource identifier announced in the protected-resource metadata (the canonical URL
    /// of this binding, e.g. `https://mcp.example.com/mcp`). Absent: derived from the request
    /// (`Host` header and, behind a proxy, `X-Forwarded-Proto`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// Authorization servers announced in the protected-resource metadata. Absent: the JWT
    /// issuer, when `jwt` is set.
    #[serde(default)]
    pub authorization_servers: Vec<String>,
    /// Scopes announced in the protected-resource metadata and in `WWW-Authenticate`.
    #[serde(default)]
    pub scopes_supported: Vec<String>,
}

/// A static bearer token.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StaticToken {
    /// Who holds the token (`token:<name>` is its identity), unique within the binding.
    #[schemars(pattern(r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$"))]
    pub name: String,
    /// The token itself; give it from the environment, e.g. `${env.MCPG_CI_TOKEN}`. The
    /// config check warns on a known placeholder value and on one shorter than 32 characters.
    #[schemars(length(min = 16))]
    pub token: String,
}

/// JWT validation: signature against the issuer's keys, `iss`, `aud`, `exp` and `nbf`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// URL of the issuer's JSON Web Key Set (`http://` or `https://`), fetched at start and again
    /// every `jwks_refresh_ms`, or at once (at most every 10 s) when a token names a key id it
    /// does not hold. Exactly one of `jwks_url` or `jwks_file`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_url: Option<String>,
    /// A JSON Web Key Set file, read at start and whenever it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwks_file: Option<PathBuf>,
    /// The required `iss` claim.
    #[schemars(length(min = 1))]
    pub issuer: String,
    /// Accepted `aud` values; a token must carry at least one of them (RFC 8707: tokens meant
    /// for another resource are refused).
    #[schemars(length(min = 1))]
    pub audiences: Vec<String>,
    /// Tolerance for `exp` and `nbf`, in milliseconds.
    #[serde(default = "default_clock_skew")]
    #[schemars(range(max = 600_000))]
    pub clock_skew_ms: u64,
    /// Accepted signature algorithms. Symmetric (`HS*`) algorithms are not supported.
    #[serde(default = "default_jwt_algorithms")]
    #[schemars(length(min = 1))]
    pub algorithms: Vec<JwtAlgorithm>,
    /// The claim that names the caller: the identity is `jwt:<value>`.
    #[serde(default = "default_identity_claim")]
    #[schemars(length(min = 1))]
    pub identity_claim: String,
    /// Scopes every token must carry (in its `scope` or `scp` claim); a token without them is
    /// answered `403` with `error="insufficient_scope"`.
    #[serde(default)]
    pub required_scopes: Vec<String>,
    /// How often the key set is fetched again, in milliseconds.
    #[serde(default = "default_jwks_refresh")]
    #[schemars(range(min = 1000, max = 86_400_000))]
    pub jwks_refresh_ms: u64,
    /// PEM file of certificate authorities trusted for an `https://` `jwks_url`, in addition to
    /// the web PKI roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

fn default_clock_skew() -> u64 {
    60_000
}

fn default_identity_claim() -> String {
    "sub".into()
}

fn default_jwks_refresh() -> u64 {
    300_000
}

fn default_jwt_algorithms() -> Vec<JwtAlgorithm> {
    vec![JwtAlgorithm::RS256, JwtAlgorithm::ES256]
}

/// A JWT signature algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum JwtAlgorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

/// Per-caller access to a binding's tools, prompts and resources, applied to calls and to list
/// results alike (a denied tool is neither listed nor callable). The rules that match a caller
/// are combined: a name denied by any of them is denied; otherwise a name allowed by any of
/// them is allowed; otherwise `default` decides.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessConfig {
    /// What a name no matching rule mentions gets: `allow` or `deny`.
    #[serde(default)]
    pub default: AccessDefault,
    /// The rules, each for the callers its `match` selects.
    #[serde(default)]
    pub rules: Vec<AccessRule>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AccessDefault {
    #[default]
    Allow,
    Deny,
}

/// One access rule.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessRule {
    /// Which callers the rule applies to; every condition given must hold. Empty: every
    /// caller, including unauthenticated ones on a binding without `auth`.
    #[serde(default, rename = "match")]
    pub matches: AccessMatch,
    /// Names this rule allows.
    #[serde(default)]
    pub allow: AccessNames,
    /// Names this rule denies (deny wins over allow).
    #[serde(default)]
    pub deny: AccessNames,
}

/// Conditions on the caller.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessMatch {
    /// Names of static tokens (any of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<String>,
    /// JWT identities: values of the `identity_claim` (any of them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subjects: Vec<String>,
    /// JWT claims and a value each must have (equal, or contained when the claim is a list;
    /// `scope` is split on spaces). All of them must hold.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub claims: BTreeMap<String, String>,
}

/// Name patterns per kind, as clients see them (prefixed where the binding prefixes). `*`
/// matches any run of characters, `?` one character.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AccessNames {
    /// Tool names.
    #[serde(default)]
    pub tools: Vec<String>,
    /// Prompt names.
    #[serde(default)]
    pub prompts: Vec<String>,
    /// Resource URIs (and resource template URI templates in list results).
    #[serde(default)]
    pub resources: Vec<String>,
}

fn default_separator() -> String {
    "__".into()
}

/// When upstream names prefix tool and prompt names, resource URIs and task ids.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PrefixMode {
    #[default]
    Auto,
    Always,
    Never,
}

/// How a binding behaves while one of its upstreams is down.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailurePolicy {
    #[default]
    FailOpen,
    FailClosed,
}

/// An upstream MCP server. Exactly one transport, `stdio` or `http`, must be given.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Name of the upstream, unique within its binding; used as the prefix of tool and prompt
    /// names when a binding has several upstreams.
    #[schemars(pattern(r"^[A-Za-z0-9][A-Za-z0-9_-]*$"))]
    pub name: String,
    /// Run the server as a child process speaking JSON-RPC over stdin/stdout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdio: Option<StdioTransport>,
    /// Reach the server over Streamable HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpTransport>,
    /// How long one request to this upstream may take, in milliseconds; overrides
    /// `mcp.limits.request_timeout_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 86_400_000))]
    pub request_timeout_ms: Option<u64>,
    /// The largest single message mcpg reads from this upstream, in bytes: a JSON answer, one
    /// SSE event, or one line of a stdio child (or of a newline-delimited JSON answer). It is
    /// enforced while reading, so nothing larger is ever buffered; the request it answered gets
    /// a JSON-RPC error naming the upstream and the limit. A stdio child's oversized line is
    /// skipped to its end and the child kept (the conversation resynchronises at the next
    /// line).
    #[serde(default = "default_max_response_bytes")]
    #[schemars(range(min = 1024, max = 1_073_741_824))]
    pub max_response_bytes: u64,
    /// Pass a legacy session's fencing token to this upstream with each of the session's
    /// requests, so an upstream that keeps state can refuse a request carrying a lower token
    /// than one it has already seen for the session (a replica that lost the session and
    /// does not know yet). The token grows with each change of the session's owner: `meta`
    /// (in `params._meta["dev.mcpg/fencingToken"]`, a number), `header` (the
    /// `Mcp-Fencing-Token` HTTP header; a stdio upstream gets it in `_meta`), or `off`
    /// (messages pass unchanged).
    #[serde(default)]
    pub fencing_token: FencingToken,
    /// Several endpoints serving this upstream as one pool (replicas of the same MCP server),
    /// instead of one `stdio` or `http` transport. Each has exactly one transport, all of the
    /// same kind; tools are listed once per upstream. See `docs/mcp/pools.md`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<EndpointConfig>,
    /// How requests are spread over the endpoints: `round_robin` (weighted, the default) or
    /// `least_requests` (the less busy of two endpoints picked at random by weight). A
    /// legacy session stays on the endpoint chosen at its `initialize`.
    #[serde(default)]
    pub balance: BalancePolicy,
    /// Health checking of the endpoints: active MCP-level probes and passive outlier
    /// detection from real traffic. Defaults apply when absent.
    #[serde(default)]
    pub health: HealthConfig,
    /// How many requests that failed before reaching an endpoint may be retried on another.
    #[serde(default)]
    pub retry_budget: RetryBudgetConfig,
}

/// One endpoint of an upstream pool.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    /// Name of the endpoint in the management API, metrics, logs and audit records, unique
    /// within its upstream. Default: its position in `endpoints` (`0`, `1`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(pattern(r"^[A-Za-z0-9][A-Za-z0-9_-]*$"))]
    pub name: Option<String>,
    /// Run this endpoint as a child process (or set of children, by `mode`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdio: Option<StdioTransport>,
    /// Reach this endpoint over Streamable HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpTransport>,
    /// Relative share of new sessions and stateless requests this endpoint gets.
    #[serde(default = "default_weight")]
    #[schemars(range(min = 1, max = 1000))]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// How an upstream pool picks an endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BalancePolicy {
    #[default]
    RoundRobin,
    LeastRequests,
}

/// Health checking of an upstream's endpoints.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Milliseconds between active probes of each endpoint (an `initialize` or
    /// `server/discover` round trip, per era). `0` turns active probing off. Only pools of
    /// two or more endpoints are probed actively; a single endpoint is probed at start.
    #[serde(default = "default_health_interval")]
    #[schemars(range(min = 0, max = 3_600_000))]
    pub interval_ms: u64,
    /// How long one probe may take, in milliseconds.
    #[serde(default = "default_health_timeout")]
    #[schemars(range(min = 1, max = 600_000))]
    pub timeout_ms: u64,
    /// Consecutive successful probes that bring an unhealthy endpoint back.
    #[serde(default = "default_healthy_threshold")]
    #[schemars(range(min = 1, max = 100))]
    pub healthy_threshold: u32,
    /// Consecutive failed probes that mark an endpoint unhealthy.
    #[serde(default = "default_unhealthy_threshold")]
    #[schemars(range(min = 1, max = 100))]
    pub unhealthy_threshold: u32,
    /// Passive outlier detection from real traffic.
    #[serde(default)]
    pub outlier: OutlierConfig,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            interval_ms: default_health_interval(),
            timeout_ms: default_health_timeout(),
            healthy_threshold: default_healthy_threshold(),
            unhealthy_threshold: default_unhealthy_threshold(),
            outlier: OutlierConfig::default(),
        }
    }
}

fn default_health_interval() -> u64 {
    10_000
}

fn default_health_timeout() -> u64 {
    5_000
}

fn default_healthy_threshold() -> u32 {
    2
}

fn default_unhealthy_threshold() -> u32 {
    3
}

/// Passive outlier detection: an endpoint whose requests keep failing is ejected (taken out
/// of the rotation) for a while.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OutlierConfig {
    /// Consecutive failed requests (not reached, closed, timed out) that eject an endpoint.
    /// `0` turns passive detection off.
    #[serde(default = "default_consecutive_failures")]
    #[schemars(range(min = 0, max = 10_000))]
    pub consecutive_failures: u32,
    /// How long the first ejection lasts, in milliseconds; each further ejection of the same
    /// endpoint doubles it, up to `max_ejection_ms`.
    #[serde(default = "default_base_ejection")]
    #[schemars(range(min = 1, max = 3_600_000))]
    pub base_ejection_ms: u64,
    /// The longest an ejection lasts, in milliseconds.
    #[serde(default = "default_max_ejection")]
    #[schemars(range(min = 1, max = 86_400_000))]
    pub max_ejection_ms: u64,
    /// The largest share of the pool, in percent, that may be ejected at once (rounded
    /// down, so one endpoint of a pool always stays; a bad probe cannot empty the pool).
    #[serde(default = "default_max_ejection_percent")]
    #[schemars(range(min = 0, max = 100))]
    pub max_ejection_percent: u32,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: default_consecutive_failures(),
            base_ejection_ms: default_base_ejection(),
            max_ejection_ms: default_max_ejection(),
            max_ejection_percent: default_max_ejection_percent(),
        }
    }
}

fn default_consecutive_failures() -> u32 {
    5
}

fn default_base_ejection() -> u64 {
    30_000
}

fn default_max_ejection() -> u64 {
    300_000
}

fn default_max_ejection_percent() -> u32 {
    50
}

/// The retry budget of an upstream pool: retries may add at most `ratio_percent` of the
/// requests of the last ten seconds, plus `min_per_second`, so that an outage does not
/// multiply the load on the endpoints left.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryBudgetConfig {
    /// Retries as a share of requests, in percent.
    #[serde(default = "default_retry_ratio")]
    #[schemars(range(min = 0, max = 1000))]
    pub ratio_percent: u32,
    /// Retries always allowed per second, whatever the ratio.
    #[serde(default = "default_retry_min")]
    #[schemars(range(min = 0, max = 100_000))]
    pub min_per_second: u32,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        Self {
            ratio_percent: default_retry_ratio(),
            min_per_second: default_retry_min(),
        }
    }
}

fn default_retry_ratio() -> u32 {
    20
}

fn default_retry_min() -> u32 {
    10
}

/// One endpoint's transport, borrowed from the config.
#[derive(Debug, Clone, Copy)]
pub enum TransportRef<'a> {
    Stdio(&'a StdioTransport),
    Http(&'a HttpTransport),
}

/// One endpoint of an upstream as the pool sees it: a single-transport upstream is a pool of
/// one endpoint named `0`.
#[derive(Debug, Clone)]
pub struct EndpointRef<'a> {
    pub name: String,
    pub transport: TransportRef<'a>,
    pub weight: u32,
}

impl UpstreamConfig {
    /// The endpoints of this upstream (the one transport, or `endpoints`), those with a
    /// transport; a valid config has at least one and exactly one transport for each.
    pub fn pool(&self) -> Vec<EndpointRef<'_>> {
        fn one<'a>(
            stdio: &'a Option<StdioTransport>,
            http: &'a Option<HttpTransport>,
        ) -> Option<TransportRef<'a>> {
            stdio
                .as_ref()
                .map(TransportRef::Stdio)
                .or(http.as_ref().map(TransportRef::Http))
        }
        if self.endpoints.is_empty() {
            return one(&self.stdio, &self.http)
                .map(|transport| EndpointRef {
                    name: "0".into(),
                    transport,
                    weight: 1,
                })
                .into_iter()
                .collect();
        }
        self.endpoints
            .iter()
            .enumerate()
            .filter_map(|(i, e)| {
                Some(EndpointRef {
                    name: e.name.clone().unwrap_or_else(|| i.to_string()),
                    transport: one(&e.stdio, &e.http)?,
                    weight: e.weight,
                })
            })
            .collect()
    }
}

fn default_max_response_bytes() -> u64 {
    16 * 1024 * 1024
}

/// How an upstream is told the fencing token of a session's owner.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum FencingToken {
    #[default]
    Off,
    Meta,
    Header,
}

/// A child process speaking MCP over stdin/stdout.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StdioTransport {
    /// The program to run, found on `PATH` when it has no slash.
    #[schemars(length(min = 1))]
    pub command: String,
    /// Arguments passed to the program.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment variables for the child, added to its minimal environment.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Working directory of the child; relative paths are resolved against the config file's
    /// directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<PathBuf>,
    /// Pass mcpg's whole environment to the child. Off by default: the child gets only `PATH`,
    /// `HOME` and `LANG` plus `env`, because mcpg's environment holds its secrets.
    #[serde(default)]
    pub inherit_env: bool,
    /// How children map to clients: `per_session` (one child per legacy session, initialised
    /// with that client's own `initialize`; the faithful choice for stateful servers) or
    /// `shared` (one child for every client, request ids remapped; for stateless tools and
    /// modern-era traffic).
    #[serde(default)]
    pub mode: StdioMode,
    /// The most children `per_session` runs at once for this upstream; a new session beyond
    /// it is refused with an error rather than exhausting the host.
    #[serde(default = "default_max_children")]
    #[schemars(range(min = 1, max = 100_000))]
    pub max_children: u32,
    /// The most `per_session` children one caller may hold at once for this upstream: the
    /// caller is the authenticated identity when the binding has `auth`, else the client's
    /// address (the TCP peer's: behind a reverse proxy every client shares the proxy's
    /// address, so set this there only with `auth`). A new session beyond it is refused with
    /// an error naming the limit. Absent means no limit per caller (only `max_children`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100_000))]
    pub max_children_per_caller: Option<u32>,
    /// Restart backoff after a child dies: the first delay, in milliseconds, doubling up to
    /// `restart_max_backoff_ms`.
    #[serde(default = "default_restart_backoff")]
    #[schemars(range(min = 1, max = 600_000))]
    pub restart_backoff_ms: u64,
    /// The longest delay between restarts, in milliseconds.
    #[serde(default = "default_restart_max_backoff")]
    #[schemars(range(min = 1, max = 3_600_000))]
    pub restart_max_backoff_ms: u64,
}

fn default_max_children() -> u32 {
    64
}

fn default_restart_backoff() -> u64 {
    250
}

fn default_restart_max_backoff() -> u64 {
    30_000
}

/// How a stdio upstream's children map to clients.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StdioMode {
    #[default]
    PerSession,
    Shared,
}

/// An MCP server reached over Streamable HTTP.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpTransport {
    /// The server's MCP endpoint URL (`http://` or `https://`).
    pub url: String,
    /// Headers sent with every request to this upstream (for example an API key from
    /// `${env.…}`).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The protocol era the upstream speaks: `auto` (probe once with `server/discover`, fall
    /// back to `initialize`, and remember), `legacy` (2025-11-25 and earlier) or `modern`
    /// (2026-07-28).
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// How long establishing a connection may take, in milliseconds.
    #[serde(default = "default_connect_timeout")]
    #[schemars(range(min = 1, max = 600_000))]
    pub connect_timeout_ms: u64,
    /// Headers of the client's request copied to this upstream (e.g. `authorization` to let the
    /// upstream see the client's own token). Nothing of the client's is sent unless listed
    /// here: by default the upstream receives only `headers`.
    #[serde(default)]
    pub pass_through_headers: Vec<String>,
    /// PEM file of certificate authorities trusted for this upstream's `https://` URL, in
    /// addition to the web PKI roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

fn default_connect_timeout() -> u64 {
    10_000
}

/// The protocol era of an HTTP upstream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamProtocol {
    #[default]
    Auto,
    Legacy,
    Modern,
}

/// The cluster coordinator. `kind` selects it; every other key belongs to the coordinator
/// plugin, which validates them itself.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ClusterConfig {
    /// `single_node` (built in, in-process, the default) or the kind of a coordinator plugin
    /// `dev.mcpg.cluster.<kind>`: `redis`, `nats`, `consul`, `etcd`, or a third party's.
    #[serde(default = "default_cluster_kind")]
    #[schemars(pattern(r"^[a-z0-9_]+$"))]
    pub kind: String,
    /// Kind-specific keys, passed verbatim to the plugin as its configuration and checked by
    /// the plugin (see `docs/plugins/<kind>.md` and `schemas/plugins/`).
    #[serde(flatten)]
    pub settings: Map<String, Value>,
}

pub const SINGLE_NODE: &str = "single_node";

fn default_cluster_kind() -> String {
    SINGLE_NODE.into()
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            kind: default_cluster_kind(),
            settings: Map::new(),
        }
    }
}

/// A native plugin mcpg may load.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// The plugin's id, e.g. `dev.mcpg.cluster.redis`. It must match the id the library
    /// reports when loaded.
    #[schemars(pattern(r"^[a-z0-9_-]+(\.[a-z0-9_-]+)+$"))]
    pub id: String,
    /// Where the plugin's library comes from: exactly one of `path` or `oci`.
    pub source: PluginSource,
    /// The plugin's configuration. For the coordinator plugin selected by `cluster.kind`, the
    /// inline `cluster.*` keys replace this block when any are given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Map<String, Value>>,
}

/// Where a plugin library comes from. Exactly one key.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PluginSource {
    /// Path to the plugin's shared library (`.so`); relative paths are resolved against the
    /// config file's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// OCI artifact reference, `registry/repository:tag` or `registry/repository@sha256:…`,
    /// as published by `mcpg plugin push`. mcpg pulls the build for its OS, architecture and
    /// plugin ABI, verifies every digest, and caches it (see `cache_dir`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oci: Option<String>,
    /// When an `oci` source contacts its registry: `if_not_present` uses the cached artifact
    /// when there is one, so a cached plugin boots offline (the default for a digest-pinned
    /// reference); `always` resolves the reference again at every start (the default for a
    /// tag, whose resolved digest is logged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_policy: Option<PullPolicy>,
    /// Reach an `oci` source's registry over plain HTTP instead of HTTPS. Only for a registry
    /// you trust on the path, such as one on loopback.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub plain_http: bool,
    /// HTTP basic credentials for an `oci` source's registry, e.g. from `${env.…}`. Without
    /// them, the entry for the registry in the container tools' credentials file
    /// (`$DOCKER_CONFIG/config.json`, else `~/.docker/config.json`) is used when there is
    /// one, else the registry is asked anonymously.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<RegistryCredentials>,
    /// Where pulled plugins are cached, by digest. Default: `$MCPG_PLUGIN_CACHE`, else
    /// `$XDG_CACHE_HOME/mcpg/plugins`, else `~/.cache/mcpg/plugins`. Relative paths are
    /// resolved against the config file's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_dir: Option<PathBuf>,
}

/// When an `oci` plugin source contacts its registry: `if_not_present` (use the cached
/// artifact when there is one) or `always` (resolve the reference at every start).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PullPolicy {
    IfNotPresent,
    Always,
}

/// HTTP basic credentials for a registry.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RegistryCredentials {
    pub username: String,
    pub password: String,
}

/// MCP-level settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct McpConfig {
    /// Per-capability overrides of where state is stored and how messages fan out. Every
    /// capability inherits the cluster coordinator by default.
    #[serde(default)]
    pub configurations: Capabilities,
    /// Legacy-era sessions.
    #[serde(default)]
    pub sessions: SessionsConfig,
    /// Limits on requests from clients.
    #[serde(default)]
    pub limits: LimitsConfig,
}

/// Legacy-era sessions (`initialize` … `Mcp-Session-Id` … `DELETE`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionsConfig {
    /// A session with no request for this long is ended and its upstream sessions and
    /// children closed, in milliseconds.
    #[serde(default = "default_idle_ttl")]
    #[schemars(range(min = 1000, max = 604_800_000))]
    pub idle_ttl_ms: u64,
    /// A session that has sent no request since its `initialize` is ended this long after it
    /// started, in milliseconds (its upstream sessions and children closed), so sessions
    /// opened and left alone cannot hold `per_session` children or `max_sessions` slots for
    /// the whole `idle_ttl_ms`. Once it has sent a request, `idle_ttl_ms` applies. A value
    /// above `idle_ttl_ms` has no effect.
    #[serde(default = "default_unused_ttl")]
    #[schemars(range(min = 1000, max = 604_800_000))]
    pub unused_ttl_ms: u64,
    /// The most legacy sessions this replica serves at once; an `initialize` beyond it is
    /// refused with 503 and a JSON-RPC error, so a flood of sessions cannot exhaust the host.
    #[serde(default = "default_max_sessions")]
    #[schemars(range(min = 1, max = 10_000_000))]
    pub max_sessions: u64,
    /// How many of a session's GET-stream messages are kept for `Last-Event-ID` resumption;
    /// older ones are dropped.
    #[serde(default = "default_event_log_max_events")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub event_log_max_events: u64,
    /// How long a GET-stream message is kept for resumption, in milliseconds.
    #[serde(default = "default_event_log_max_age")]
    #[schemars(range(min = 1000, max = 86_400_000))]
    pub event_log_max_age_ms: u64,
    /// The TTL of the lease under which a replica owns the sessions it serves, in
    /// milliseconds. When a replica dies, the others take its sessions over once this lease
    /// has expired (a replica that shuts down hands its sessions over at once). Shorter means
    /// faster takeover and more lease renewals.
    #[serde(default = "default_owner_ttl")]
    #[schemars(range(min = 1000, max = 600_000))]
    pub owner_ttl_ms: u64,
}

fn default_owner_ttl() -> u64 {
    15_000
}

fn default_event_log_max_events() -> u64 {
    1000
}

fn default_event_log_max_age() -> u64 {
    5 * 60 * 1000
}

fn default_max_sessions() -> u64 {
    100_000
}

fn default_unused_ttl() -> u64 {
    60_000
}

fn default_idle_ttl() -> u64 {
    30 * 60 * 1000
}

impl Default for SessionsConfig {
    fn default() -> Self {
        Self {
            idle_ttl_ms: default_idle_ttl(),
            unused_ttl_ms: default_unused_ttl(),
            max_sessions: default_max_sessions(),
            event_log_max_events: default_event_log_max_events(),
            event_log_max_age_ms: default_event_log_max_age(),
            owner_ttl_ms: default_owner_ttl(),
        }
    }
}

/// Limits on requests from clients.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// The largest request body accepted, in bytes; larger ones get 413.
    #[serde(default = "default_max_request_bytes")]
    #[schemars(range(min = 1024, max = 1_073_741_824))]
    pub max_request_bytes: u64,
    /// How long one request may take end to end, in milliseconds, unless its upstream sets
    /// `request_timeout_ms`. A request that runs out is cancelled upstream and answered with
    /// a JSON-RPC error.
    #[serde(default = "default_request_timeout")]
    #[schemars(range(min = 1, max = 86_400_000))]
    pub request_timeout_ms: u64,
}

fn default_max_request_bytes() -> u64 {
    4 * 1024 * 1024
}

fn default_request_timeout() -> u64 {
    300_000
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_request_bytes: default_max_request_bytes(),
            request_timeout_ms: default_request_timeout(),
        }
    }
}

/// The gateway's capabilities, each inheriting the coordinator unless overridden.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// Session records (legacy protocol era).
    #[serde(default)]
    pub sessions: CapabilityConfig,
    /// Multi-step exchanges the gateway carries for a client (input-required rounds, bridged
    /// handshakes, server-to-client requests awaiting an answer).
    #[serde(default)]
    pub pipelines: CapabilityConfig,
    /// Task records.
    #[serde(default)]
    pub tasks: CapabilityConfig,
    /// Resource subscriptions.
    #[serde(default)]
    pub subscriptions: CapabilityConfig,
    /// Server-to-client messages reaching the replica that holds the client's stream.
    #[serde(default)]
    pub delivery: CapabilityConfig,
    /// Cancellation reaching the replica that runs the request.
    #[serde(default)]
    pub cancellation: CapabilityConfig,
}

/// Where one capability keeps its state and how it fans messages out.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CapabilityConfig {
    /// The capability's key-value store.
    #[serde(default)]
    pub store: StoreConfig,
    /// The capability's publish/subscribe bus.
    #[serde(default)]
    pub bus: BusConfig,
}

/// A capability's store.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `cluster` delegates to the coordinator (the default), `memory` keeps state in-process
    /// (single replica only), `file` keeps it durable under `dir` (single replica only).
    #[serde(default)]
    pub kind: StoreKind,
    /// Directory for `kind: file`; relative paths are resolved against the config file's
    /// directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StoreKind {
    #[default]
    Cluster,
    Memory,
    File,
}

/// A capability's bus.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BusConfig {
    /// `cluster` delegates to the coordinator (the default); `memory` is in-process and
    /// reaches only this replica.
    #[serde(default)]
    pub kind: BusKind,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum BusKind {
    #[default]
    Cluster,
    Memory,
}

/// The audit log: one structured record per MCP request and its outcome.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Record every MCP request. Needs at least one sink (`file` or `stdout`).
    #[serde(default)]
    pub enabled: bool,
    /// Write records as JSON lines to standard output.
    #[serde(default)]
    pub stdout: bool,
    /// Write records as JSON lines to a rotated, hash-chained file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<AuditFileConfig>,
    /// Include tool, prompt and resource arguments in records.
    #[serde(default)]
    pub include_arguments: bool,
    /// Include results in records.
    #[serde(default)]
    pub include_results: bool,
    /// Field names whose values are replaced by `"[redacted]"` wherever they appear in recorded
    /// arguments and results.
    #[serde(default)]
    pub redact: Vec<String>,
    /// Records buffered between traffic and the sinks. When full, records are dropped and
    /// counted rather than blocking traffic.
    #[serde(default = "default_audit_queue")]
    #[schemars(range(min = 1, max = 10_000_000))]
    pub queue_capacity: u32,
}

fn default_audit_queue() -> u32 {
    10_000
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            stdout: false,
            file: None,
            include_arguments: false,
            include_results: false,
            redact: Vec::new(),
            queue_capacity: default_audit_queue(),
        }
    }
}

/// The audit file sink.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AuditFileConfig {
    /// The file to append to; relative paths are resolved against the config file's directory.
    pub path: PathBuf,
    /// Rotate the file when it reaches this many bytes.
    #[serde(default = "default_rotate_bytes")]
    #[schemars(range(min = 4096))]
    pub max_bytes: u64,
    /// Rotated files to keep besides the live one.
    #[serde(default = "default_keep_files")]
    #[schemars(range(max = 10_000))]
    pub max_files: u32,
}

fn default_rotate_bytes() -> u64 {
    100 * 1024 * 1024
}

fn default_keep_files() -> u32 {
    10
}

/// Logs, metrics and traces.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ObservabilityConfig {
    /// Serve Prometheus metrics and export traces (when `tracing` is set). Logs are always
    /// written.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Log output.
    #[serde(default)]
    pub logs: LogConfig,
    /// OpenTelemetry trace export over OTLP. Absent means no traces are exported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracing: Option<TracingConfig>,
}

fn default_true() -> bool {
    true
}

impl Default for ObservabilityConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            logs: LogConfig::default(),
            tracing: None,
        }
    }
}

/// Log output. The `MCPG_LOG` environment variable, when set, overrides `level`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `auto` (human-readable on a terminal, JSON otherwise), `human` or `json`.
    #[serde(default)]
    pub format: LogFormat,
    /// A level (`error`, `warn`, `info`, `debug`, `trace`) or a `tracing` filter directive such
    /// as `info,mcpg=debug`.
    #[serde(default = "default_log_level")]
    pub level: String,
}

fn default_log_level() -> String {
    "info".into()
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::default(),
            level: default_log_level(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Auto,
    Human,
    Json,
}

/// OpenTelemetry trace export.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TracingConfig {
    /// OTLP/HTTP endpoint (`http://` or `https://`), e.g. `http://127.0.0.1:4318`.
    pub otlp_endpoint: String,
    /// The `service.name` resource attribute.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Fraction of requests traced, from 0 to 1.
    #[serde(default = "default_sample_ratio")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub sample_ratio: f64,
}

fn default_service_name() -> String {
    "mcpg".into()
}

fn default_sample_ratio() -> f64 {
    1.0
}

/// A name pattern (glob syntax): `*` any run of characters (slashes included: resource URIs
/// are not paths here), `?` one character, `[…]` a character class, `{a,b}` alternatives;
/// `\` escapes.
pub fn name_pattern(p: &str) -> Result<globset::GlobMatcher, globset::Error> {
    Ok(globset::GlobBuilder::new(p)
        .literal_separator(false)
        .backslash_escape(true)
        .build()?
        .compile_matcher())
}

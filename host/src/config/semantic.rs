//! Rules the JSON Schema cannot express (uniqueness, cross-field requirements, addresses, the
//! cluster/plugin pairing), checked on the typed config. Pure: no network, no files, no spawning.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use url::Url;

use super::diagnostics::{Diagnostic, KeyPath};
use super::model::{
    AccessConfig, AuditConfig, AuthConfig, BindingConfig, BusKind, CapabilityConfig, ClusterConfig,
    ObservabilityConfig, PluginConfig, PrefixMode, SINGLE_NODE, ServerConfig, StoreKind,
    UpstreamConfig,
};
use super::model::{HttpTransport, StdioTransport};
use super::yaml::SourceMap;

/// Paths the gateway serves itself; no binding may take them.
pub const RESERVED_PATHS: &[&str] = &["/healthz", "/readyz", "/metrics"];
/// Path prefixes the gateway keeps for itself (`/mcpg/meta`, the admin API).
pub const RESERVED_PREFIXES: &[&str] = &["/mcpg", "/api", "/.well-known"];

/// Where the coordinator comes from, once validated.
#[derive(Debug, Clone, PartialEq)]
pub enum ClusterPlan {
    /// The built-in in-process coordinator.
    SingleNode,
    /// A coordinator plugin from `plugins[plugin_index]`.
    Plugin {
        kind: String,
        plugin_id: String,
        plugin_index: usize,
        /// The configuration the plugin receives: the inline `cluster.*` keys if any were
        /// given, else the entry's `config`.
        config: Map<String, Value>,
        /// The JSON pointer under which `config`'s keys stand in the file, so the plugin's own
        /// diagnostics can be positioned.
        config_pointer: String,
    },
}

/// What the semantic phase derives for start-up.
#[derive(Debug, Clone)]
pub struct Derived {
    pub listen: SocketAddr,
    pub admin_listen: Option<SocketAddr>,
    pub advertise_url: Option<Url>,
    pub cluster: ClusterPlan,
}

/// The parts of the document that passed the schema, each deserialized on its own, so that one
/// bad section does not hide the semantic mistakes of the others. List entries keep their index
/// in the file.
#[derive(Debug, Default)]
pub struct Sections {
    pub server: Option<ServerConfig>,
    pub bindings: Vec<(usize, BindingConfig)>,
    /// Every binding passed the schema (so "no bindings" and uniqueness are meaningful).
    pub bindings_complete: bool,
    /// Bindings that did not deserialize (a required key was invalid or missing), as they
    /// stand: their valid names, paths and upstreams are still checked.
    pub broken_bindings: Vec<(usize, Value)>,
    pub cluster: Option<ClusterConfig>,
    pub plugins: Vec<(usize, PluginConfig)>,
    pub plugins_complete: bool,
    pub capabilities: Vec<(&'static str, CapabilityConfig)>,
    pub audit: Option<AuditConfig>,
    pub observability: Option<ObservabilityConfig>,
}

pub const CAPABILITIES: [&str; 6] = [
    "sessions",
    "pipelines",
    "tasks",
    "subscriptions",
    "delivery",
    "cancellation",
];

/// Keys whose value decides how the rest of their block is read: when one is invalid, falling back
/// to its default would make later rules report mistakes the user did not make.
const DECISIVE_KEYS: &[&str] = &["kind", "enabled", "stdout"];

impl Sections {
    /// Deserializes what the schema left usable. `doc` has had unknown keys removed; `invalid`
    /// lists the pointers of values that violate the schema. An invalid leaf value is dropped, so
    /// its key takes its default and the rest of its block is still checked; anything larger (or
    /// a decisive key) takes out the nearest list entry or top-level block instead.
    pub fn extract(doc: &Value, invalid: &[String]) -> Self {
        let mut doc = doc.clone();
        let mut dead: Vec<String> = Vec::new();
        for pointer in invalid {
            let Some((parent, key)) = pointer.rsplit_once('/') else {
                dead.push(String::new());
                continue;
            };
            let leaf = doc
                .pointer(pointer)
                .is_some_and(|v| !v.is_object() && !v.is_array());
            if leaf
                && !DECISIVE_KEYS.contains(&key)
                && let Some(Value::Object(m)) = doc.pointer_mut(parent)
            {
                m.remove(&key.replace("~1", "/").replace("~0", "~"));
                continue;
            }
            let unit = enclosing_unit(&doc, pointer);
            if let Some(v) = doc.pointer_mut(&unit)
                && unit
                    .rsplit_once('/')
                    .is_some_and(|(_, last)| last.parse::<usize>().is_ok())
            {
                // A list entry: null it so that the indices of the others stay as in the file.
                *v = Value::Null;
            } else {
                dead.push(unit);
            }
        }
        let alive = |pointer: &str| !dead.iter().any(|d| d.is_empty() || d == pointer);
        fn section<T: serde::de::DeserializeOwned + Default>(
            doc: &Value,
            pointer: &str,
        ) -> Option<T> {
            match doc.pointer(pointer) {
                None => Some(T::default()),
                Some(v) => serde_json::from_value(v.clone()).ok(),
            }
        }
        type List<T> = (Vec<(usize, T)>, bool, Vec<(usize, Value)>);
        fn list<T: serde::de::DeserializeOwned>(doc: &Value, name: &str) -> List<T> {
            let items = doc
                .get(name)
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let mut out = Vec::new();
            let mut broken = Vec::new();
            for (i, item) in items.into_iter().enumerate() {
                match serde_json::from_value(item.clone()) {
                    Ok(v) => out.push((i, v)),
                    Err(_) => broken.push((i, item)),
                }
            }
            let complete = broken.is_empty();
            (out, complete, broken)
        }
        let (mut bindings, mut bindings_complete, mut broken_bindings) = list(&doc, "bindings");
        if !alive("/bindings") {
            (bindings, bindings_complete, broken_bindings) = (Vec::new(), false, Vec::new());
        }
        let (mut plugins, mut plugins_complete, _) = list(&doc, "plugins");
        if !alive("/plugins") {
            (plugins, plugins_complete) = (Vec::new(), false);
        }
        let capabilities = CAPABILITIES
            .iter()
            .filter_map(|name| {
                let pointer = format!("/mcp/configurations/{name}");
                (alive("/mcp") && alive(&pointer))
                    .then(|| section(&doc, &pointer))
                    .flatten()
                    .map(|c| (*name, c))
            })
            .collect();
        let get = |pointer: &'static str| alive(pointer).then_some(pointer);
        Self {
            server: get("/server").and_then(|p| section(&doc, p)),
            bindings,
            bindings_complete,
            broken_bindings,
            cluster: get("/cluster").and_then(|p| section(&doc, p)),
            plugins,
            plugins_complete,
            capabilities,
            audit: get("/audit").and_then(|p| section(&doc, p)),
            observability: get("/observability").and_then(|p| section(&doc, p)),
        }
    }
}

/// The unit a broken value takes out: the nearest enclosing list entry, else its capability
/// (`/mcp/configurations/<name>`), else its top-level block.
fn enclosing_unit(doc: &Value, pointer: &str) -> String {
    let segments: Vec<&str> = pointer.split('/').skip(1).collect();
    let mut cur = Some(doc);
    let mut unit_len = 1.min(segments.len());
    for (i, seg) in segments.iter().enumerate() {
        if let Some(Value::Array(_)) = cur {
            unit_len = i + 1;
        }
        cur = match cur {
            Some(Value::Array(a)) => seg.parse::<usize>().ok().and_then(|n| a.get(n)),
            Some(Value::Object(m)) => m.get(&seg.replace("~1", "/").replace("~0", "~")),
            _ => None,
        };
    }
    if unit_len <= 1
        && segments.len() >= 3
        && segments[0] == "mcp"
        && segments[1] == "configurations"
    {
        unit_len = 3;
    }
    segments[..unit_len]
        .iter()
        .fold(String::new(), |acc, s| format!("{acc}/{s}"))
}

pub struct Checker<'a> {
    pub doc: &'a Value,
    pub map: &'a SourceMap,
    pub out: Vec<Diagnostic>,
    /// The coordinator plan, when `cluster` and its plugin entry are usable, even if other
    /// parts of the file are not: the plugin phase of `mcpg-config-check` runs on it.
    pub plan: Option<ClusterPlan>,
}

impl Checker<'_> {
    fn error(&mut self, path: KeyPath, msg: impl Into<String>) {
        let pos = self.map.value_pos(&path.pointer());
        self.out.push(Diagnostic::error(pos, path, msg));
    }

    fn error_at_key(&mut self, path: KeyPath, msg: impl Into<String>) {
        let pos = self.map.key_pos(&path.pointer());
        self.out.push(Diagnostic::error(pos, path, msg));
    }

    fn warn_at_value(&mut self, path: KeyPath, msg: impl Into<String>) {
        let pos = self.map.value_pos(&path.pointer());
        self.out.push(Diagnostic::warning(pos, path, msg));
    }

    fn warn(&mut self, path: KeyPath, msg: impl Into<String>) {
        let pos = self.map.key_pos(&path.pointer());
        self.out.push(Diagnostic::warning(pos, path, msg));
    }

    /// Shows a config value in a message unless it came from the environment.
    fn show(&self, path: &KeyPath, value: &str) -> String {
        if self.map.is_secret(&path.pointer()) {
            "the value from the environment".into()
        } else {
            format!("`{value}`")
        }
    }

    fn present(&self, path: &KeyPath) -> bool {
        self.doc.pointer(&path.pointer()).is_some()
    }

    /// Runs every rule on the sections that passed the schema; returns what start-up needs when
    /// everything passed and no error was found.
    pub fn check(&mut self, s: &Sections) -> Option<Derived> {
        let kind = s.cluster.as_ref().map(|c| c.kind.as_str());
        let server = KeyPath::root().key("server");
        let (mut listen, mut admin_listen, mut advertise_url) = (None, None, None);
        if let Some(cfg) = &s.server {
            listen = self.socket_addr(server.clone().key("listen"), &cfg.listen);
            admin_listen = cfg
                .admin_listen
                .as_deref()
                .and_then(|a| self.socket_addr(server.clone().key("admin_listen"), a));
            if let (Some(l), Some(a)) = (listen, admin_listen)
                && l.port() == a.port()
                && l.port() != 0
                && (l.ip() == a.ip() || l.ip().is_unspecified() || a.ip().is_unspecified())
            {
                self.error(
                    server.clone().key("admin_listen"),
                    "overlaps `server.listen`; give the admin listener its own port, or omit it to serve the admin API on `listen`",
                );
            }
            advertise_url = self.advertise(cfg, kind, listen);
            self.admin_access(cfg, listen, admin_listen);
            for (key, value) in [
                ("forwarding_secret", &cfg.forwarding_secret),
                ("admin_token", &cfg.admin_token),
            ] {
                if let Some(v) = value {
                    self.secret_strength(server.clone().key(key), v);
                }
            }
        }
        self.bindings(s);
        let cluster = s.cluster.as_ref().and_then(|c| self.cluster(c, s));
        self.plan = cluster.clone();
        self.plugins(s, kind, &cluster);
        self.capabilities(s, kind);
        if let Some(a) = &s.audit {
            self.audit(a);
        }
        if let Some(o) = &s.observability {
            self.observability(o);
        }

        if self
            .out
            .iter()
            .any(|d| d.severity == super::Severity::Error)
        {
            return None;
        }
        Some(Derived {
            listen: listen?,
            admin_listen,
            advertise_url,
            cluster: cluster?,
        })
    }

    fn socket_addr(&mut self, path: KeyPath, value: &str) -> Option<SocketAddr> {
        match value.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => {
                let shown = self.show(&path, value);
                self.error(
                    path,
                    format!("{shown} is not an `IP:PORT` address (for example `127.0.0.1:8080`, `0.0.0.0:8080` or `[::1]:8080`)"),
                );
                None
            }
        }
    }

    fn http_url(&mut self, path: KeyPath, value: &str) -> Option<Url> {
        let shown = self.show(&path, value);
        match Url::parse(value) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Some(u),
            Ok(u) => {
                self.error(path, format!("{shown} must be an `http://` or `https://` URL (scheme `{}` is not supported)", u.scheme()));
                None
            }
            Err(e) => {
                self.error(path, format!("{shown} is not a valid URL: {e}"));
                None
            }
        }
    }

    /// The admin API and metrics need a token wherever they are reachable from other hosts;
    /// without one they are not served there (see `server::admin`).
    fn admin_access(
        &mut self,
        cfg: &ServerConfig,
        listen: Option<SocketAddr>,
        admin_listen: Option<SocketAddr>,
    ) {
        let server = KeyPath::root().key("server");
        let (addr, key) = match (admin_listen, &cfg.admin_listen) {
            (Some(a), _) => (Some(a), "admin_listen"),
            (None, Some(_)) => (None, "admin_listen"),
            (None, None) => (listen, "listen"),
        };
        if let Some(addr) = addr
            && !addr.ip().is_loopback()
            && cfg.admin_token.is_none()
        {
            let shown = self.show(&server.clone().key(key), &addr.to_string());
            let hint = if key == "listen" {
                "; or give the admin API its own loopback listener with `server.admin_listen: 127.0.0.1:9090`"
            } else {
                ""
            };
            self.warn(
                server.clone().key(key),
                format!("the admin API and /metrics are not served on {shown} (not a loopback address) without a token: set `server.admin_token` (e.g. `${{env.MCPG_ADMIN_TOKEN}}`) to use them{hint}"),
            );
        }
        if cfg.admin_tls.is_some() && cfg.admin_listen.is_none() {
            self.error_at_key(
                server.key("admin_tls"),
                "applies to `admin_listen`, which is not set (without it the admin API is served on `listen`, with `server.tls`)",
            );
        }
    }

    fn advertise(
        &mut self,
        cfg: &ServerConfig,
        kind: Option<&str>,
        listen: Option<SocketAddr>,
    ) -> Option<Url> {
        let path = KeyPath::root().key("server").key("advertise_url");
        if let Some(raw) = &cfg.advertise_url {
            let url = self.http_url(path.clone(), raw)?;
            if url.query().is_some() || url.fragment().is_some() {
                self.error(path, "must not have a query or fragment: forwarded requests go to `<advertise_url><binding path>`");
                return None;
            }
            return Some(url);
        }
        let listen = listen?;
        if listen.ip().is_unspecified() {
            if kind.is_some_and(|k| k != SINGLE_NODE) {
                self.error(
                    path,
                    format!(
                        "required: `server.listen` ({listen}) listens on every interface, so other replicas cannot derive where to reach this one; set `advertise_url` (for example `http://<this host>:{}`) or pass `--advertise-url`",
                        listen.port()
                    ),
                );
            }
            return None;
        }
        let scheme = if cfg.tls.is_some() { "https" } else { "http" };
        Url::parse(&format!("{scheme}://{listen}")).ok()
    }

    fn bindings(&mut self, s: &Sections) {
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut paths: HashMap<&str, usize> = HashMap::new();
        if s.bindings_complete && s.bindings.is_empty() {
            self.warn(
                KeyPath::root().key("bindings"),
                "no bindings: mcpg will serve no MCP endpoint",
            );
        }
        // Names and paths of every binding, usable or not, in file order: a duplicate is a
        // duplicate even when the other entry has mistakes of its own.
        let mut all: Vec<(usize, Option<&str>, Option<&str>)> = s
            .bindings
            .iter()
            .map(|(i, b)| (*i, Some(b.name.as_str()), Some(b.path.as_str())))
            .chain(s.broken_bindings.iter().map(|(i, v)| {
                (
                    *i,
                    v.get("name").and_then(Value::as_str),
                    v.get("path").and_then(Value::as_str),
                )
            }))
            .collect();
        all.sort_by_key(|(i, _, _)| *i);
        for (i, name, path) in all {
            let base = KeyPath::root().key("bindings").index(i);
            if let Some(name) = name
                && let Some(first) = names.insert(name, i)
            {
                self.error(
                    base.clone().key("name"),
                    format!("duplicate binding name `{name}` (also used by bindings[{first}])"),
                );
            }
            let Some(path) = path else { continue };
            if let Some(msg) = path_problem(path) {
                self.error(base.clone().key("path"), msg);
            } else if let Some(first) = paths.insert(path, i) {
                self.error(
                    base.clone().key("path"),
                    format!("duplicate path `{path}` (also used by bindings[{first}])"),
                );
            }
        }
        for (i, b) in &s.bindings {
            let base = KeyPath::root().key("bindings").index(*i);
            let prefixed = match b.prefix {
                PrefixMode::Auto => b.upstreams.len() > 1,
                PrefixMode::Always => true,
                PrefixMode::Never => false,
            };
            let separator = (prefixed && !b.separator.is_empty()).then_some(b.separator.as_str());
            let upstreams: Vec<_> = b.upstreams.iter().enumerate().collect();
            self.upstreams(&base, &upstreams, separator);
            for (k, name) in b.ready_requires.iter().enumerate() {
                if !b.upstreams.iter().any(|u| u.name == *name) {
                    let names: Vec<&str> = b.upstreams.iter().map(|u| u.name.as_str()).collect();
                    self.error(
                        base.clone().key("ready_requires").index(k),
                        format!(
                            "`{name}` is not an upstream of this binding (its upstreams: {})",
                            names.join(", ")
                        ),
                    );
                }
            }
            let token_names = match &b.auth {
                Some(a) => self.auth(base.clone().key("auth"), a),
                None => Vec::new(),
            };
            if let Some(acc) = &b.access {
                self.access(
                    base.clone().key("access"),
                    acc,
                    b.auth.as_ref(),
                    &token_names,
                );
            }
            self.rate_limits(&base, b, &token_names);
        }
        // A binding that did not deserialize: its upstreams that did are still checked.
        for (i, raw) in &s.broken_bindings {
            let base = KeyPath::root().key("bindings").index(*i);
            let parsed: Vec<(usize, UpstreamConfig)> = raw
                .get("upstreams")
                .and_then(Value::as_array)
                .map(|items| {
                    items
                        .iter()
                        .enumerate()
                        .filter_map(|(j, u)| Some((j, serde_json::from_value(u.clone()).ok()?)))
                        .collect()
                })
                .unwrap_or_default();
            let upstreams: Vec<_> = parsed.iter().map(|(j, u)| (*j, u)).collect();
            self.upstreams(&base, &upstreams, None);
            if let Some(auth) = raw
                .get("auth")
                .and_then(|a| serde_json::from_value::<AuthConfig>(a.clone()).ok())
            {
                self.auth(base.clone().key("auth"), &auth);
            }
        }
    }

    /// One binding's upstreams (those that deserialized, with their index in the file).
    /// `separator` is the binding's, when its tool names are prefixed.
    fn upstreams(
        &mut self,
        base: &KeyPath,
        upstreams: &[(usize, &UpstreamConfig)],
        separator: Option<&str>,
    ) {
        let mut upstream_names: HashMap<&str, usize> = HashMap::new();
        for (j, u) in upstreams {
            let j = *j;
            let up = base.clone().key("upstreams").index(j);
            if let Some(first) = upstream_names.insert(&u.name, j) {
                self.error(up.clone().key("name"), format!("duplicate upstream name `{}` in this binding (also used by upstreams[{first}])", u.name));
            }
            // `<upstream><separator><name>` must split one way only.
            if let Some(sep) = separator
                && u.name.contains(sep)
            {
                self.error(
                    up.clone().key("name"),
                    format!(
                        "`{}` contains the binding's separator `{sep}`, so prefixed names could not be told apart; rename the upstream or set `separator`",
                        u.name
                    ),
                );
            }
            if u.endpoints.is_empty() {
                match (&u.stdio, &u.http) {
                    (Some(_), Some(_)) => self.error_at_key(
                        up.clone().key("http"),
                        "an upstream has exactly one transport: remove `stdio` or `http`",
                    ),
                    (None, None) => self.error(
                        up.clone(),
                        "an upstream needs a transport: add `stdio: {command: …}` or `http: {url: …}` (or `endpoints` for a pool)",
                    ),
                    _ => {}
                }
            } else if u.stdio.is_some() || u.http.is_some() {
                let key = if u.stdio.is_some() { "stdio" } else { "http" };
                self.error_at_key(
                    up.clone().key(key),
                    "an upstream has either one transport or `endpoints`: move this transport into `endpoints` or remove `endpoints`",
                );
            }
            self.transport(&up, &u.stdio, &u.http);
            self.endpoints(&up, u);
        }
    }

    /// The endpoints of an upstream pool: one transport each, all of one kind, unique names.
    fn endpoints(&mut self, up: &KeyPath, u: &UpstreamConfig) {
        let mut names: HashMap<String, usize> = HashMap::new();
        let mut first_kind: Option<(&str, usize)> = None;
        for (k, e) in u.endpoints.iter().enumerate() {
            let ep = up.clone().key("endpoints").index(k);
            let name = e.name.clone().unwrap_or_else(|| k.to_string());
            if let Some(first) = names.insert(name.clone(), k) {
                let at = if e.name.is_some() {
                    ep.clone().key("name")
                } else {
                    ep.clone()
                };
                self.error(at, format!("duplicate endpoint name `{name}` in this upstream (also used by endpoints[{first}]); endpoints without a name are named by their position"));
            }
            let kind = match (&e.stdio, &e.http) {
                (Some(_), Some(_)) => {
                    self.error_at_key(
                        ep.clone().key("http"),
                        "an endpoint has exactly one transport: remove `stdio` or `http`",
                    );
                    None
                }
                (None, None) => {
                    self.error(ep.clone(), "an endpoint needs a transport: add `stdio: {command: …}` or `http: {url: …}`");
                    None
                }
                (Some(_), None) => Some("stdio"),
                (None, Some(_)) => Some("http"),
            };
            match (kind, first_kind) {
                (Some(kind), None) => first_kind = Some((kind, k)),
                (Some(kind), Some((first, at))) if kind != first => self.error_at_key(
                    ep.clone().key(kind),
                    format!("the endpoints of one upstream share a transport kind: endpoints[{at}] uses `{first}`; make this one `{first}` too, or make it its own upstream"),
                ),
                _ => {}
            }
            self.transport(&ep, &e.stdio, &e.http);
        }
        let o = &u.health.outlier;
        if o.max_ejection_ms < o.base_ejection_ms {
            self.error(
                up.clone()
                    .key("health")
                    .key("outlier")
                    .key("max_ejection_ms"),
                format!(
                    "must be at least `base_ejection_ms` ({})",
                    o.base_ejection_ms
                ),
            );
        }
    }

    /// Checks one transport (of an upstream or of one of its endpoints) under `at`.
    fn transport(
        &mut self,
        at: &KeyPath,
        stdio: &Option<StdioTransport>,
        http: &Option<HttpTransport>,
    ) {
        if let Some(s) = stdio {
            for key in s.env.keys() {
                if key.is_empty() || key.contains(['=', '\0']) {
                    self.error_at_key(
                        at.clone().key("stdio").key("env").key(key),
                        "not a valid environment variable name (it must be non-empty, without `=`)",
                    );
                }
            }
        }
        if let Some(h) = http {
            self.http_url(at.clone().key("http").key("url"), &h.url);
            self.headers(at.clone().key("http").key("headers"), &h.headers);
            for (k, name) in h.pass_through_headers.iter().enumerate() {
                let p = at.clone().key("http").key("pass_through_headers").index(k);
                if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    self.error(p, format!("`{name}` is not a valid HTTP header name"));
                } else if h.headers.keys().any(|k| k.eq_ignore_ascii_case(name)) {
                    self.error(p, format!("`{name}` is also set in `headers`; an upstream gets a header from one place"));
                }
            }
        }
    }

    /// Warns about a secret anyone could guess: a known placeholder, or one shorter than
    /// [`STRONG_SECRET_LEN`]. The value itself is never printed.
    fn secret_strength(&mut self, path: KeyPath, value: &str) {
        if is_placeholder_secret(value) {
            self.warn_at_value(
                path,
                "this is a placeholder value from examples or guides, so anyone who has read them can use it; generate a secret (e.g. `openssl rand -hex 32`) and give it from the environment",
            );
        } else if value.chars().count() < STRONG_SECRET_LEN {
            self.warn_at_value(
                path,
                format!(
                    "shorter than {STRONG_SECRET_LEN} characters: a bearer secret should carry at least 128 bits of randomness, which is 32 hex characters; generate one with `openssl rand -hex 32`"
                ),
            );
        }
    }

    /// A binding's `auth`; returns the static token names.
    fn auth(&mut self, base: KeyPath, a: &AuthConfig) -> Vec<String> {
        if a.tokens.is_empty() && a.jwt.is_none() {
            self.error(
                base.clone(),
                "needs `tokens`, `jwt` or both: otherwise no request could be authenticated",
            );
        }
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut values: HashMap<&str, usize> = HashMap::new();
        for (i, t) in a.tokens.iter().enumerate() {
            let p = base.clone().key("tokens").index(i);
            if let Some(first) = names.insert(&t.name, i) {
                self.error(
                    p.clone().key("name"),
                    format!(
                        "duplicate token name `{}` (also used by tokens[{first}])",
                        t.name
                    ),
                );
            }
            if let Some(first) = values.insert(&t.token, i) {
                self.error(
                    p.key("token"),
                    format!("the same token as tokens[{first}]: each holder needs its own token"),
                );
            } else {
                self.secret_strength(p.key("token"), &t.token);
            }
        }
        if let Some(j) = &a.jwt {
            let jp = base.clone().key("jwt");
            match (&j.jwks_url, &j.jwks_file) {
                (Some(_), Some(_)) => self.error_at_key(jp.clone().key("jwks_file"), "give one of `jwks_url` or `jwks_file`, not both"),
                (None, None) => self.error(jp.clone(), "needs the issuer's keys: `jwks_url` (e.g. `https://idp.example/.well-known/jwks.json`) or `jwks_file`"),
                (Some(u), None) => {
                    self.http_url(jp.clone().key("jwks_url"), u);
                }
                _ => {}
            }
        }
        if let Some(r) = &a.resource
            && let Some(u) = self.http_url(base.clone().key("resource"), r)
            && u.fragment().is_some()
        {
            self.error(
                base.clone().key("resource"),
                "must not have a fragment (RFC 9728)",
            );
        }
        for (i, s) in a.authorization_servers.iter().enumerate() {
            self.http_url(base.clone().key("authorization_servers").index(i), s);
        }
        a.tokens.iter().map(|t| t.name.clone()).collect()
    }

    /// A binding's `access` rules.
    fn access(
        &mut self,
        base: KeyPath,
        acc: &AccessConfig,
        auth: Option<&AuthConfig>,
        token_names: &[String],
    ) {
        let jwt = auth.is_some_and(|a| a.jwt.is_some());
        for (i, r) in acc.rules.iter().enumerate() {
            let rp = base.clone().key("rules").index(i);
            let m = &r.matches;
            let conditional =
                !(m.tokens.is_empty() && m.subjects.is_empty() && m.claims.is_empty());
            if conditional && auth.is_none() {
                self.warn(rp.clone().key("match"), "the binding has no `auth`, so no caller has an identity and this rule never applies");
            }
            for (k, t) in m.tokens.iter().enumerate() {
                if auth.is_some() && !token_names.contains(t) {
                    self.error(
                        rp.clone().key("match").key("tokens").index(k),
                        format!("no token named `{t}` in this binding's `auth.tokens`"),
                    );
                }
            }
            if auth.is_some() && !jwt && (!m.subjects.is_empty() || !m.claims.is_empty()) {
                self.warn(rp.clone().key("match"), "`subjects` and `claims` match JWT callers, and this binding's `auth` has no `jwt`: the rule never applies");
            }
            for (side, names) in [("allow", &r.allow), ("deny", &r.deny)] {
                for (kind, list) in [
                    ("tools", &names.tools),
                    ("prompts", &names.prompts),
                    ("resources", &names.resources),
                ] {
                    for (k, pat) in list.iter().enumerate() {
                        if let Err(e) = super::model::name_pattern(pat) {
                            self.error(
                                rp.clone().key(side).key(kind).index(k),
                                format!("`{pat}` is not a valid name pattern: {}", e.kind()),
                            );
                        }
                    }
                }
            }
        }
    }

    /// A binding's `rate_limits`: unique names, a budget each, periods that parse, token
    /// names the binding knows, valid tool patterns.
    fn rate_limits(&mut self, base: &KeyPath, b: &BindingConfig, token_names: &[String]) {
        let mut names: HashMap<&str, usize> = HashMap::new();
        for (i, l) in b.rate_limits.iter().enumerate() {
            let lp = base.clone().key("rate_limits").index(i);
            if let Some(first) = names.insert(l.name.as_str(), i) {
                self.error(
                    lp.clone().key("name"),
                    format!(
                        "duplicate limit name `{}` (also used by rate_limits[{first}])",
                        l.name
                    ),
                );
            }
            if l.rate.is_none() && l.quota.is_none() && l.concurrency.is_none() {
                self.error(
                    lp.clone().key("name"),
                    "the limit has no usable budget: give a valid `rate` (with `burst`), `quota` or `concurrency`",
                );
            }
            if l.rate.is_some() && l.quota.is_some() {
                self.error_at_key(
                    lp.clone().key("quota"),
                    "give `rate` or `quota`, not both (two limits can have one each)",
                );
            }
            if l.burst.is_some() && l.rate.is_none() {
                self.error_at_key(
                    lp.clone().key("burst"),
                    "`burst` goes with `rate` (a `quota` allows its whole count at once)",
                );
            }
            for (key, v) in [("rate", &l.rate), ("quota", &l.quota)] {
                if let Some(v) = v
                    && let Err(m) = super::model::per_period(v)
                {
                    self.error(lp.clone().key(key), m);
                }
            }
            let m = &l.matches;
            let conditional =
                !(m.tokens.is_empty() && m.subjects.is_empty() && m.claims.is_empty());
            if conditional && b.auth.is_none() {
                self.warn(lp.clone().key("match"), "the binding has no `auth`, so no caller has an identity and this limit never applies");
            }
            for (k, t) in m.tokens.iter().enumerate() {
                if b.auth.is_some() && !token_names.contains(t) {
                    self.error(
                        lp.clone().key("match").key("tokens").index(k),
                        format!("no token named `{t}` in this binding's `auth.tokens`"),
                    );
                }
            }
            for (k, pat) in l.tools.iter().enumerate() {
                if let Err(e) = super::model::name_pattern(pat) {
                    self.error(
                        lp.clone().key("tools").index(k),
                        format!("`{pat}` is not a valid name pattern: {}", e.kind()),
                    );
                }
            }
        }
    }

    fn headers(&mut self, base: KeyPath, headers: &BTreeMap<String, String>) {
        for (name, value) in headers {
            let p = base.clone().key(name);
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                self.error_at_key(p.clone(), "not a valid HTTP header name");
            }
            if http::HeaderValue::from_str(value).is_err() {
                self.error(
                    p,
                    "not a valid HTTP header value (control characters or non-ASCII text)",
                );
            }
        }
    }

    fn cluster(&mut self, cluster: &ClusterConfig, s: &Sections) -> Option<ClusterPlan> {
        let base = KeyPath::root().key("cluster");
        let kind = &cluster.kind;
        if kind == SINGLE_NODE {
            if !cluster.settings.is_empty() {
                let keys: Vec<_> = cluster.settings.keys().map(|k| format!("`{k}`")).collect();
                self.warn(
                    base.clone().key(
                        cluster
                            .settings
                            .keys()
                            .next()
                            .map(String::as_str)
                            .unwrap_or("kind"),
                    ),
                    format!(
                        "`kind: single_node` ignores every other key in `cluster`; ignored: {}",
                        keys.join(", ")
                    ),
                );
            }
            return Some(ClusterPlan::SingleNode);
        }
        let plugin_id = mcpg_plugin_api::cluster_plugin_id(kind);
        let Some((index, entry)) = s.plugins.iter().find(|(_, p)| p.id == plugin_id) else {
            if !s.plugins_complete {
                // The entry may be among those the schema already rejected.
                return None;
            }
            let message = match closest_kind(kind, s) {
                Some(near) => format!(
                    "unknown cluster kind `{kind}`; did you mean `{near}`? (a kind is `single_node` or names a coordinator plugin declared in `plugins`, e.g. `redis` for `{}`)",
                    mcpg_plugin_api::cluster_plugin_id("redis")
                ),
                None => format!(
                    "`kind: {kind}` needs the coordinator plugin `{plugin_id}`, but `plugins` has no entry with that id; add `plugins: [{{id: {plugin_id}, source: {{path: …}}}}]`"
                ),
            };
            self.error(base.key("kind"), message);
            return None;
        };
        let index = *index;
        let (config, config_pointer) = if !cluster.settings.is_empty() {
            if entry.config.is_some() {
                self.warn(
                    KeyPath::root().key("plugins").index(index).key("config"),
                    "replaced by the inline `cluster.*` keys, which are the coordinator's runtime config; remove this block",
                );
            }
            (cluster.settings.clone(), "/cluster".to_string())
        } else {
            (
                entry.config.clone().unwrap_or_default(),
                format!("/plugins/{index}/config"),
            )
        };
        Some(ClusterPlan::Plugin {
            kind: kind.clone(),
            plugin_id,
            plugin_index: index,
            config,
            config_pointer,
        })
    }

    fn plugins(&mut self, s: &Sections, kind: Option<&str>, cluster: &Option<ClusterPlan>) {
        let mut ids: HashMap<&str, usize> = HashMap::new();
        for (i, p) in &s.plugins {
            let i = *i;
            let base = KeyPath::root().key("plugins").index(i);
            if let Some(first) = ids.insert(&p.id, i) {
                self.error(
                    base.clone().key("id"),
                    format!(
                        "duplicate plugin id `{}` (also declared by plugins[{first}])",
                        p.id
                    ),
                );
            }
            let src = base.clone().key("source");
            match (&p.source.path, &p.source.oci) {
                (Some(_), Some(_)) => self.error_at_key(
                    src.clone().key("oci"),
                    "a plugin source is exactly one of `path` or `oci`",
                ),
                (None, None) => {
                    self.error(src.clone(), "a plugin source needs `path: …` or `oci: …`")
                }
                _ => {}
            }
            if let Some(path) = &p.source.path
                && path.as_os_str().is_empty()
            {
                self.error(src.clone().key("path"), "must not be empty");
            }
            if let Some(r) = &p.source.oci
                && let Some(msg) = oci_reference_problem(r)
            {
                self.error(src.clone().key("oci"), msg);
            }
            if p.source.oci.is_none() {
                let s = &p.source;
                for (key, set) in [
                    ("pull_policy", s.pull_policy.is_some()),
                    ("plain_http", s.plain_http),
                    ("auth", s.auth.is_some()),
                    ("cache_dir", s.cache_dir.is_some()),
                ] {
                    if set {
                        self.error_at_key(
                            src.clone().key(key),
                            "applies only to an `oci` source (this source is a `path`)",
                        );
                    }
                }
            }
            if let Some(kind) = kind
                && cluster.is_some()
                && p.id != mcpg_plugin_api::cluster_plugin_id(kind)
                && p.id.starts_with(mcpg_plugin_api::CLUSTER_PLUGIN_PREFIX)
            {
                self.warn(base.key("id"), format!("plugin `{}` is declared but `cluster.kind` is `{kind}`, so it is not loaded", p.id));
            }
        }
    }

    fn capabilities(&mut self, s: &Sections, kind: Option<&str>) {
        let multi = kind.filter(|k| *k != SINGLE_NODE);
        for (name, cap) in &s.capabilities {
            let base = KeyPath::root().key("mcp").key("configurations").key(name);
            let store = base.clone().key("store");
            match (cap.store.kind, &cap.store.dir) {
                (StoreKind::File, None) => self.error(
                    store.clone().key("dir"),
                    "required for `store.kind: file`: the directory that holds the state",
                ),
                (StoreKind::File, Some(d)) if d.as_os_str().is_empty() => {
                    self.error(store.clone().key("dir"), "must not be empty")
                }
                (StoreKind::Cluster | StoreKind::Memory, Some(_)) => self.warn(
                    store.clone().key("dir"),
                    "ignored: `dir` is only used with `store.kind: file`",
                ),
                _ => {}
            }
            if let Some(kind) = multi
                && cap.store.kind != StoreKind::Cluster
            {
                self.warn(
                    store.key("kind"),
                    format!(
                        "`{name}` state pinned to this replica while `cluster.kind` is `{kind}`: other replicas will not see it; leave it inherited unless you run one replica"
                    ),
                );
            }
            if let Some(kind) = multi
                && cap.bus.kind == BusKind::Memory
            {
                self.warn(
                    base.key("bus").key("kind"),
                    format!(
                        "`{name}` messages pinned to this replica while `cluster.kind` is `{kind}`: cross-replica {name} will silently not happen; leave it inherited"
                    ),
                );
            }
        }
    }

    fn audit(&mut self, a: &AuditConfig) {
        let base = KeyPath::root().key("audit");
        if a.enabled && !a.stdout && a.file.is_none() {
            self.error(
                base.clone().key("enabled"),
                "audit is enabled but has no sink: set `audit.file.path`, or `audit.stdout: true`",
            );
        }
        if !a.enabled
            && (a.stdout || a.file.is_some())
            && self.present(&base.clone().key("enabled"))
        {
            self.warn(
                base.key("enabled"),
                "sinks are configured but `enabled` is false: nothing will be recorded",
            );
        }
    }

    fn observability(&mut self, o: &ObservabilityConfig) {
        let base = KeyPath::root().key("observability");
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&o.logs.level) {
            self.error(
                base.clone().key("logs").key("level"),
                format!("not a log level or filter directive: {e}"),
            );
        }
        if let Some(t) = &o.tracing {
            self.http_url(
                base.clone().key("tracing").key("otlp_endpoint"),
                &t.otlp_endpoint,
            );
            if !o.enabled {
                self.warn(
                    base.key("tracing"),
                    "ignored: `observability.enabled` is false",
                );
            }
        }
    }
}

/// Secrets (`server.forwarding_secret`, `server.admin_token`, `auth.tokens[].token`) shorter
/// than this are warned about: 32 hex characters carry 128 bits.
pub const STRONG_SECRET_LEN: usize = 32;

/// Whether `value` is a well-known placeholder: the examples' and guides' "change me" values,
/// and the words people type when a field wants something.
pub fn is_placeholder_secret(value: &str) -> bool {
    let folded: String = value
        .chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect();
    const CONTAINS: &[&str] = &[
        "changeme",
        "placeholder",
        "replaceme",
        "yoursecret",
        "yourtoken",
        "mysecret",
        "notasecret",
        "insecure",
        "example",
        "dummy",
        "xxxxxxxx",
    ];
    const EXACT: &[&str] = &[
        "secret",
        "password",
        "passw0rd",
        "token",
        "test",
        "admin",
        "default",
        "letmein",
        "qwerty",
        "abc123",
        "123456",
        "12345678",
        "1234567890",
    ];
    let repeated = folded
        .chars()
        .next()
        .is_some_and(|first| folded.chars().all(|c| c == first));
    repeated
        || CONTAINS.iter().any(|p| folded.contains(p))
        || EXACT.iter().any(|p| folded == *p)
        || ["secret", "password", "token"]
            .iter()
            .any(|w| folded.trim_end_matches(|c: char| c.is_ascii_digit()) == *w)
}

/// The coordinator kinds mcpg ships plugins for.
pub const KNOWN_KINDS: &[&str] = &["redis", "nats", "consul", "etcd", "postgres"];

/// The known or declared kind closest to a kind that matches no plugin, if one is close
/// (at most two edits, or one for short names).
fn closest_kind(kind: &str, s: &Sections) -> Option<String> {
    let declared = s.plugins.iter().filter_map(|(_, p)| {
        p.id.strip_prefix(mcpg_plugin_api::CLUSTER_PLUGIN_PREFIX)
            .map(str::to_owned)
    });
    let mut candidates: Vec<String> = declared
        .chain([SINGLE_NODE.to_owned()])
        .chain(KNOWN_KINDS.iter().map(|k| (*k).to_owned()))
        .collect();
    candidates.dedup();
    let limit = if kind.chars().count() <= 4 { 1 } else { 2 };
    candidates
        .into_iter()
        .filter(|c| c != kind)
        .map(|c| (strsim::damerau_levenshtein(kind, &c), c))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, c)| c)
}

/// Why a binding path is unusable, if it is.
fn path_problem(path: &str) -> Option<String> {
    if !path.starts_with('/') {
        return Some("must start with `/`".into());
    }
    if path.len() > 1 && path.ends_with('/') {
        return Some(format!(
            "must not end with `/`; write `{}`",
            path.trim_end_matches('/')
        ));
    }
    if let Some(c) = path
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "/-._~".contains(*c)))
    {
        return Some(format!(
            "`{c}` is not allowed in a path; use letters, digits and `/-._~`"
        ));
    }
    if path != "/"
        && path
            .split('/')
            .skip(1)
            .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return Some("must not contain empty, `.` or `..` segments".into());
    }
    if RESERVED_PATHS.contains(&path) {
        return Some(format!(
            "`{path}` is served by the gateway itself; choose another path, such as `/mcp`"
        ));
    }
    if let Some(prefix) = RESERVED_PREFIXES
        .iter()
        .find(|p| path == **p || path.starts_with(&format!("{p}/")))
    {
        return Some(format!(
            "paths under `{prefix}` are reserved for the gateway; choose another path, such as `/mcp`"
        ));
    }
    None
}

/// A light syntactic check of an OCI reference: `registry/repository(:tag|@sha256:hex)`.
fn oci_reference_problem(r: &str) -> Option<String> {
    let (name, digest) = match r.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (r, None),
    };
    if let Some(d) = digest {
        let ok = d.strip_prefix("sha256:").is_some_and(|h| {
            h.len() == 64
                && h.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        });
        if !ok {
            return Some("the digest must be `sha256:` followed by 64 lowercase hex digits".into());
        }
    }
    let Some((registry, _)) = name.split_once('/') else {
        return Some("must name a registry and a repository, e.g. `registry.example.com/mcpg/cluster-redis:1.2.0`".into());
    };
    if registry.is_empty()
        || !(registry.contains('.') || registry.contains(':') || registry == "localhost")
    {
        return Some(format!(
            "`{registry}` is not a registry host; write the registry explicitly, e.g. `registry.example.com/{name}`"
        ));
    }
    None
}

/// Resolves a relative path against the config file's directory.
pub fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_rules() {
        assert_eq!(path_problem("/mcp"), None);
        assert_eq!(path_problem("/"), None);
        assert!(path_problem("mcp").is_some());
        assert!(path_problem("/mcp/").unwrap().contains("`/mcp`"));
        assert!(path_problem("/healthz").is_some());
        assert!(path_problem("/api/x").is_some());
        assert!(path_problem("/mcpg").is_some());
        assert_eq!(path_problem("/apix"), None);
        assert!(path_problem("/a//b").is_some());
        assert!(path_problem("/a?b").is_some());
    }

    #[test]
    fn placeholder_secrets_are_recognised() {
        for p in [
            "change-me-to-a-long-random-secret",
            "placeholder-ci-token-change-me",
            "CHANGEME",
            "secret",
            "Secret123",
            "password",
            "token1",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            "your-secret-here-0123456789",
            "not-a-secret-at-all-really",
        ] {
            assert!(is_placeholder_secret(p), "{p}");
        }
        for real in [
            "9f2c41d7e08ab35c6d7f1e20b4a9c83e",
            "forwarding-secret-for-the-image-test",
            "0123456789abcdef0123456789abcdef",
            "s3cr3t-t0ken-value",
        ] {
            assert!(!is_placeholder_secret(real), "{real}");
        }
    }

    #[test]
    fn oci_reference_rules() {
        assert_eq!(
            oci_reference_problem("registry.example.com/mcpg/cluster-redis:1.2.0"),
            None
        );
        assert!(oci_reference_problem("localhost:5000/x@sha256:").is_some());
        let digest = format!("127.0.0.1:5000/x@sha256:{}", "a".repeat(64));
        assert_eq!(oci_reference_problem(&digest), None);
        assert!(oci_reference_problem("mcpg/cluster-redis:1").is_some());
        assert!(oci_reference_problem("redis").is_some());
    }
}

//! Values the loader has checked, kept parsed, so that nothing downstream parses the config
//! again: each HTTP upstream's URL, headers and passed-through header names; each binding's
//! announced resource URL, JWKS URL and compiled access-rule name patterns; the OTLP traces
//! URL. The model types stay strings because they are the schema (and what a diagnostic
//! quotes); this is their typed view, built once the config is valid. Durations stay integer
//! milliseconds in the model (the schema's unit, with nothing to parse) and become
//! `Duration`s where they are used.

use std::collections::BTreeMap;

use globset::GlobMatcher;
use http::{HeaderMap, HeaderName, HeaderValue};
use url::Url;

use super::diagnostics::{Diagnostic, KeyPath};
use super::model::{AccessNames, AppConfig, HttpTransport, RateLimit, name_pattern, per_period};
use super::yaml::SourceMap;

/// An HTTP upstream as it will be reached.
#[derive(Debug, Clone)]
pub struct HttpUpstream {
    pub url: Url,
    /// Sent with every request, marked sensitive (they often carry credentials).
    pub headers: HeaderMap,
    /// Headers of the client's request copied to this upstream.
    pub pass_through: Vec<HeaderName>,
}

/// The name patterns of one side (allow or deny) of an access rule, compiled.
#[derive(Debug, Clone, Default)]
pub struct NamePatterns {
    pub tools: Vec<GlobMatcher>,
    pub prompts: Vec<GlobMatcher>,
    pub resources: Vec<GlobMatcher>,
}

/// One access rule's patterns, compiled (in the order of `access.rules`).
#[derive(Debug, Clone, Default)]
pub struct RulePatterns {
    pub allow: NamePatterns,
    pub deny: NamePatterns,
}

/// One rate limit's parsed values (in the order of the binding's `rate_limits`).
#[derive(Debug, Clone, Default)]
pub struct LimitValues {
    /// `rate` as (count, period in ms).
    pub rate: Option<(u64, u64)>,
    /// `quota` as (count, window in ms).
    pub quota: Option<(u64, u64)>,
    /// `tools`, compiled.
    pub tools: Vec<GlobMatcher>,
}

/// The typed view of a valid config.
#[derive(Debug, Clone, Default)]
pub struct Parsed {
    /// By binding, upstream and endpoint position (`0` for a single-transport upstream).
    http: BTreeMap<(String, String, usize), HttpUpstream>,
    resources: BTreeMap<String, Url>,
    jwks: BTreeMap<String, Url>,
    access: BTreeMap<String, Vec<RulePatterns>>,
    limits: BTreeMap<String, Vec<LimitValues>>,
    traces: Option<Url>,
}

impl Parsed {
    /// The HTTP upstream `upstream` of binding `binding`, if it is one.
    pub fn http(&self, binding: &str, upstream: &str) -> Option<&HttpUpstream> {
        self.http_endpoint(binding, upstream, 0)
    }

    /// Endpoint `index` of the HTTP upstream `upstream` of binding `binding`, if it is one.
    pub fn http_endpoint(
        &self,
        binding: &str,
        upstream: &str,
        index: usize,
    ) -> Option<&HttpUpstream> {
        self.http
            .get(&(binding.to_owned(), upstream.to_owned(), index))
    }

    /// Binding `binding`'s configured `auth.resource`, if any.
    pub fn resource(&self, binding: &str) -> Option<&Url> {
        self.resources.get(binding)
    }

    /// Binding `binding`'s `auth.jwt.jwks_url`, if any.
    pub fn jwks_url(&self, binding: &str) -> Option<&Url> {
        self.jwks.get(binding)
    }

    /// Binding `binding`'s access rules' name patterns, compiled, in order (empty without
    /// `access`).
    pub fn access(&self, binding: &str) -> &[RulePatterns] {
        self.access.get(binding).map_or(&[], Vec::as_slice)
    }

    /// Binding `binding`'s rate limits' values, parsed, in order (empty without any).
    pub fn limits(&self, binding: &str) -> &[LimitValues] {
        self.limits.get(binding).map_or(&[], Vec::as_slice)
    }

    /// Where trace spans are posted (`observability.tracing.otlp_endpoint`): an endpoint
    /// without a path is the collector's base URL and gets the OTLP traces path `/v1/traces`,
    /// as `OTEL_EXPORTER_OTLP_ENDPOINT` does; one with a path is used as it is, as
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is.
    pub fn traces_endpoint(&self) -> Option<&Url> {
        self.traces.as_ref()
    }

    /// Parses what the semantic rules already checked. An error here means the two disagree:
    /// it is reported at the value's position like any other.
    pub fn build(config: &AppConfig, map: &SourceMap) -> Result<Self, Vec<Diagnostic>> {
        let mut parsed = Parsed::default();
        let mut errors = Vec::new();
        let mut fail = |path: KeyPath, message: String| {
            errors.push(Diagnostic::error(
                map.value_pos(&path.pointer()),
                path,
                message,
            ));
        };
        for (bi, b) in config.bindings.iter().enumerate() {
            let bp = KeyPath::root().key("bindings").index(bi);
            if let Some(r) = b.auth.as_ref().and_then(|a| a.resource.as_ref()) {
                match Url::parse(r) {
                    Ok(u) => {
                        parsed.resources.insert(b.name.clone(), u);
                    }
                    Err(e) => fail(bp.clone().key("auth").key("resource"), e.to_string()),
                }
            }
            if let Some(u) = b
                .auth
                .as_ref()
                .and_then(|a| a.jwt.as_ref())
                .and_then(|j| j.jwks_url.as_ref())
            {
                match Url::parse(u) {
                    Ok(u) => {
                        parsed.jwks.insert(b.name.clone(), u);
                    }
                    Err(e) => fail(
                        bp.clone().key("auth").key("jwt").key("jwks_url"),
                        e.to_string(),
                    ),
                }
            }
            if let Some(a) = &b.access {
                let mut rules = Vec::new();
                for (ri, r) in a.rules.iter().enumerate() {
                    let rp = bp.clone().key("access").key("rules").index(ri);
                    match (patterns(&r.allow), patterns(&r.deny)) {
                        (Ok(allow), Ok(deny)) => rules.push(RulePatterns { allow, deny }),
                        (Err((k, m)), _) => fail(rp.key("allow").key(k), m),
                        (_, Err((k, m))) => fail(rp.key("deny").key(k), m),
                    }
                }
                parsed.access.insert(b.name.clone(), rules);
            }
            let mut limits = Vec::new();
            for (li, l) in b.rate_limits.iter().enumerate() {
                let lp = bp.clone().key("rate_limits").index(li);
                match limit_values(l) {
                    Ok(v) => limits.push(v),
                    Err((k, m)) => fail(lp.key(k), m),
                }
            }
            parsed.limits.insert(b.name.clone(), limits);
            for (ui, u) in b.upstreams.iter().enumerate() {
                let up = bp.clone().key("upstreams").index(ui);
                let transports = std::iter::once((0, &u.http, up.clone())).chain(
                    u.endpoints
                        .iter()
                        .enumerate()
                        .map(|(k, e)| (k, &e.http, up.clone().key("endpoints").index(k))),
                );
                for (k, h, at) in transports {
                    let Some(h) = h else { continue };
                    match http_upstream(h) {
                        Ok(p) => {
                            parsed.http.insert((b.name.clone(), u.name.clone(), k), p);
                        }
                        Err((key, message)) => fail(at.key("http").key(key), message),
                    }
                }
            }
        }
        if let Some(t) = &config.observability.tracing {
            match traces_url(&t.otlp_endpoint) {
                Ok(u) => parsed.traces = Some(u),
                Err(m) => fail(
                    KeyPath::root()
                        .key("observability")
                        .key("tracing")
                        .key("otlp_endpoint"),
                    m,
                ),
            }
        }
        if errors.is_empty() {
            Ok(parsed)
        } else {
            Err(errors)
        }
    }
}

fn patterns(n: &AccessNames) -> Result<NamePatterns, (&'static str, String)> {
    let one = |key: &'static str, list: &[String]| {
        list.iter()
            .map(|p| name_pattern(p).map_err(|e| (key, format!("`{p}`: {e}"))))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(NamePatterns {
        tools: one("tools", &n.tools)?,
        prompts: one("prompts", &n.prompts)?,
        resources: one("resources", &n.resources)?,
    })
}

fn limit_values(l: &RateLimit) -> Result<LimitValues, (&'static str, String)> {
    let per = |key: &'static str, v: &Option<String>| {
        v.as_deref()
            .map(per_period)
            .transpose()
            .map_err(|m| (key, m))
    };
    Ok(LimitValues {
        rate: per("rate", &l.rate)?,
        quota: per("quota", &l.quota)?,
        tools: l
            .tools
            .iter()
            .map(|p| name_pattern(p).map_err(|e| ("tools", format!("`{p}`: {e}"))))
            .collect::<Result<_, _>>()?,
    })
}

fn traces_url(configured: &str) -> Result<Url, String> {
    let mut url = Url::parse(configured).map_err(|e| e.to_string())?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("{configured} is not an http:// or https:// URL"));
    }
    if url.path().is_empty() || url.path() == "/" {
        url.set_path("/v1/traces");
    }
    Ok(url)
}

fn http_upstream(h: &HttpTransport) -> Result<HttpUpstream, (&'static str, String)> {
    let url = Url::parse(&h.url).map_err(|e| ("url", e.to_string()))?;
    let mut headers = HeaderMap::new();
    for (k, v) in &h.headers {
        let name = HeaderName::from_bytes(k.as_bytes())
            .map_err(|_| ("headers", format!("`{k}` is not a valid header name")))?;
        let mut value = HeaderValue::from_str(v).map_err(|_| {
            (
                "headers",
                format!("the value of `{k}` is not a valid header value"),
            )
        })?;
        value.set_sensitive(true);
        headers.insert(name, value);
    }
    let pass_through = h
        .pass_through_headers
        .iter()
        .map(|n| {
            HeaderName::from_bytes(n.as_bytes()).map_err(|_| {
                (
                    "pass_through_headers",
                    format!("`{n}` is not a valid header name"),
                )
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(HttpUpstream {
        url,
        headers,
        pass_through,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_valid_config_carries_its_upstream_urls_headers_and_resource_parsed() {
        let text = r#"
bindings:
  - name: b
    path: /mcp
    auth: {tokens: [{name: t, token: "0123456789abcdef0123"}], resource: "https://mcp.example.com/mcp"}
    upstreams:
      - name: h
        http:
          url: "https://up.example.com/mcp"
          headers: {x-api-key: "${env.KEY}"}
          pass_through_headers: [x-trace]
      - name: s
        stdio: {command: x}
"#;
        let env = |k: &str| (k == "KEY").then(|| "secret".to_owned());
        let out = super::super::load_str("c.yaml", std::path::Path::new("."), text, &env);
        let cfg = out
            .config
            .unwrap_or_else(|| panic!("{:?}", out.diagnostics));
        let h = cfg.parsed.http("b", "h").expect("the HTTP upstream");
        assert_eq!(h.url.as_str(), "https://up.example.com/mcp");
        let key = &h.headers["x-api-key"];
        assert_eq!(key, "secret");
        assert!(key.is_sensitive());
        assert_eq!(h.pass_through, ["x-trace"]);
        assert!(cfg.parsed.http("b", "s").is_none(), "stdio has no URL");
        assert_eq!(
            cfg.parsed.resource("b").map(url::Url::as_str),
            Some("https://mcp.example.com/mcp")
        );
    }

    fn load(text: &str) -> super::super::ValidatedConfig {
        let out = super::super::load_str("c.yaml", std::path::Path::new("."), text, &|_| None);
        out.config
            .unwrap_or_else(|| panic!("{:?}", out.diagnostics))
    }

    #[test]
    fn jwks_url_and_access_patterns_are_carried_compiled() {
        let cfg = load(
            r#"
bindings:
  - name: b
    path: /mcp
    auth:
      jwt: {issuer: "https://idp.example", audiences: [a], jwks_url: "https://idp.example/jwks.json"}
    access:
      default: deny
      rules:
        - match: {subjects: [alice]}
          allow: {tools: ["time__*"]}
        - match: {subjects: [bob]}
          deny: {prompts: ["*"]}
    upstreams:
      - name: s
        stdio: {command: x}
"#,
        );
        assert_eq!(
            cfg.parsed.jwks_url("b").map(url::Url::as_str),
            Some("https://idp.example/jwks.json")
        );
        let rules = cfg.parsed.access("b");
        assert_eq!(rules.len(), 2, "one compiled entry per rule, in order");
        assert!(rules[0].allow.tools[0].is_match("time__now"));
        assert!(!rules[0].allow.tools[0].is_match("echo"));
        assert!(rules[1].deny.prompts[0].is_match("anything"));
        assert!(cfg.parsed.access("other").is_empty());
    }

    #[test]
    fn the_otlp_endpoint_resolves_to_the_traces_url() {
        let traces = |endpoint: &str| {
            let cfg = load(&format!(
                "observability:\n  enabled: true\n  tracing: {{otlp_endpoint: \"{endpoint}\"}}\nbindings:\n  - {{name: b, path: /mcp, upstreams: [{{name: s, stdio: {{command: x}}}}]}}\n"
            ));
            cfg.parsed.traces_endpoint().map(|u| u.to_string())
        };
        assert_eq!(
            traces("http://c:4318").as_deref(),
            Some("http://c:4318/v1/traces")
        );
        assert_eq!(
            traces("https://c:4318/").as_deref(),
            Some("https://c:4318/v1/traces")
        );
        assert_eq!(
            traces("http://c:4318/otlp/v1/traces").as_deref(),
            Some("http://c:4318/otlp/v1/traces")
        );
        assert!(super::traces_url("grpc://c:4317").is_err());
        assert!(super::traces_url("not a url").is_err());
    }
}

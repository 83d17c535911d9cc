//! Values the loader has checked, kept parsed, so that nothing downstream parses the config
//! again: each HTTP upstream's URL, headers and passed-through header names, and each
//! binding's announced resource URL. The model types stay strings because they are the schema
//! (and what a diagnostic quotes); this is their typed view, built once the config is valid.

use std::collections::BTreeMap;

use http::{HeaderMap, HeaderName, HeaderValue};
use url::Url;

use super::diagnostics::{Diagnostic, KeyPath};
use super::model::{AppConfig, HttpTransport};
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

/// The typed view of a valid config.
#[derive(Debug, Clone, Default)]
pub struct Parsed {
    http: BTreeMap<(String, String), HttpUpstream>,
    resources: BTreeMap<String, Url>,
}

impl Parsed {
    /// The HTTP upstream `upstream` of binding `binding`, if it is one.
    pub fn http(&self, binding: &str, upstream: &str) -> Option<&HttpUpstream> {
        self.http.get(&(binding.to_owned(), upstream.to_owned()))
    }

    /// Binding `binding`'s configured `auth.resource`, if any.
    pub fn resource(&self, binding: &str) -> Option<&Url> {
        self.resources.get(binding)
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
            for (ui, u) in b.upstreams.iter().enumerate() {
                let Some(h) = &u.http else { continue };
                let up = bp.clone().key("upstreams").index(ui).key("http");
                match http_upstream(h) {
                    Ok(p) => {
                        parsed.http.insert((b.name.clone(), u.name.clone()), p);
                    }
                    Err((key, message)) => fail(up.key(key), message),
                }
            }
        }
        if errors.is_empty() {
            Ok(parsed)
        } else {
            Err(errors)
        }
    }
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
}

//! DNS-rebinding protection for MCP endpoints: the `Host` allowlist and `Origin` validation
//! the Streamable HTTP transport asks servers for.

use axum::http::HeaderMap;
use axum::http::header::{HOST, ORIGIN};

/// The loopback names a loopback listener accepts in `Host` without configuration.
const LOOPBACK_NAMES: &[&str] = &["localhost", "127.0.0.1", "[::1]", "::1"];

#[derive(Debug, Clone)]
pub struct Guard {
    /// Allowed `Host` names (lowercase; `name` or `name:port`); `None` means any host.
    hosts: Option<Vec<String>>,
    /// Origins allowed besides those whose host passes the host allowlist.
    origins: Vec<String>,
}

impl Guard {
    pub fn new(
        loopback_listen: bool,
        allowed_hosts: &[String],
        allowed_origins: &[String],
    ) -> Self {
        let mut hosts: Vec<String> = allowed_hosts
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect();
        if loopback_listen {
            hosts.extend(LOOPBACK_NAMES.iter().map(|s| s.to_string()));
        }
        Self {
            hosts: (!hosts.is_empty()).then_some(hosts),
            origins: allowed_origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
        }
    }

    /// Why a request must be refused with 403, if it must.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), String> {
        let host = headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase();
        if let Some(allowed) = &self.hosts
            && !host_allowed(allowed, &host)
        {
            return Err(format!("Host `{host}` is not allowed on this endpoint"));
        }
        let Some(origin) = headers.get(ORIGIN) else {
            return Ok(());
        };
        let origin = origin.to_str().unwrap_or("null").to_ascii_lowercase();
        if self.origins.contains(&origin) {
            return Ok(());
        }
        let origin_host = origin
            .split_once("://")
            .map(|(_, rest)| rest.trim_end_matches('/'))
            .unwrap_or_default();
        match &self.hosts {
            Some(allowed) if !origin_host.is_empty() && host_allowed(allowed, origin_host) => {
                Ok(())
            }
            _ => Err(format!("Origin `{origin}` is not allowed on this endpoint")),
        }
    }
}

/// `host` (`name` or `name:port`) matches an entry given as `name` (any port) or `name:port`.
fn host_allowed(allowed: &[String], host: &str) -> bool {
    let name = strip_port(host);
    allowed.iter().any(|a| a == host || a == name)
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        // [v6]:port
        return match rest.find(']') {
            Some(i) => &host[..i + 2],
            None => host,
        };
    }
    match host.rsplit_once(':') {
        Some((n, p)) if p.chars().all(|c| c.is_ascii_digit()) => n,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(host: &str, origin: Option<&str>) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(HOST, host.parse().unwrap());
        if let Some(o) = origin {
            m.insert(ORIGIN, o.parse().unwrap());
        }
        m
    }

    #[test]
    fn loopback_listener_refuses_rebinding() {
        let g = Guard::new(true, &[], &[]);
        assert!(g.check(&h("127.0.0.1:8080", None)).is_ok());
        assert!(
            g.check(&h("localhost:8080", Some("http://localhost:3000")))
                .is_ok()
        );
        assert!(g.check(&h("[::1]:8080", None)).is_ok());
        assert!(g.check(&h("evil.example:8080", None)).is_err());
        assert!(
            g.check(&h("localhost:8080", Some("http://evil.example")))
                .is_err()
        );
        assert!(g.check(&h("localhost:8080", Some("null"))).is_err());
    }

    #[test]
    fn configured_hosts_and_origins() {
        let g = Guard::new(
            false,
            &["mcp.example.com".into()],
            &["https://app.example.com".into()],
        );
        assert!(g.check(&h("mcp.example.com", None)).is_ok());
        assert!(g.check(&h("other.example.com", None)).is_err());
        assert!(
            g.check(&h("mcp.example.com", Some("https://app.example.com")))
                .is_ok()
        );
        assert!(
            g.check(&h("mcp.example.com", Some("https://mcp.example.com")))
                .is_ok()
        );
        assert!(
            g.check(&h("mcp.example.com", Some("https://evil.example")))
                .is_err()
        );
        // No allowlist: any Host, but a browser Origin must be listed.
        let open = Guard::new(false, &[], &[]);
        assert!(open.check(&h("anything:1", None)).is_ok());
        assert!(
            open.check(&h("anything:1", Some("http://anything:1")))
                .is_err()
        );
    }
}

//! Strict HTTP on every listener, before any route sees a request: exactly one `Host`, and a
//! request target whose authority (absolute form, or HTTP/2's `:authority`) names the same
//! host and port as `Host` (RFC 9112 §3.2, RFC 9113 §8.3.1). Every other route reads `Host`
//! (the DNS-rebinding allowlist, derived resource URLs), so two answers to "which host?" are
//! refused rather than guessed.

use axum::body::Body;
use axum::http::header::{CONNECTION, CONTENT_TYPE, HOST};
use axum::http::uri::Authority;
use axum::http::{HeaderValue, Request, StatusCode, Version};
use axum::response::{IntoResponse, Response};

/// The `400` answering a request with an ambiguous host; `None` for a request that may pass.
pub fn refusal<B>(req: &Request<B>) -> Option<Response> {
    match host_problem(req) {
        None => None,
        Some(why) => {
            tracing::debug!("request refused: {why}");
            let mut r = (
                StatusCode::BAD_REQUEST,
                [(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                )],
                format!("Bad Request: {why}\n"),
            )
                .into_response();
            if req.version() <= Version::HTTP_11 {
                r.headers_mut()
                    .insert(CONNECTION, HeaderValue::from_static("close"));
            }
            Some(r)
        }
    }
}

fn host_problem<B>(req: &Request<B>) -> Option<&'static str> {
    let mut hosts = req.headers().get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Some("more than one Host header");
    }
    let default_port = if req.uri().scheme_str() == Some("https") {
        443
    } else {
        80
    };
    match (req.uri().authority(), host) {
        (Some(target), Some(host)) => {
            let Some(host) = host.to_str().ok().and_then(|h| h.parse::<Authority>().ok()) else {
                return Some("the Host header is not a valid host");
            };
            let same = target.host().eq_ignore_ascii_case(host.host())
                && target.port_u16().unwrap_or(default_port)
                    == host.port_u16().unwrap_or(default_port);
            (!same).then_some("the request target names another host than the Host header")
        }
        (None, None) if req.version() == Version::HTTP_11 => {
            Some("an HTTP/1.1 request needs a Host header")
        }
        _ => None,
    }
}

/// HTTP/2 carries the host in the `:authority` pseudo-header, which hyper puts in the URI, not
/// in `Host`; the routes read `Host`, so it is filled in from the authority when absent.
pub fn with_host(mut req: Request<Body>) -> Request<Body> {
    if !req.headers().contains_key(HOST)
        && let Some(v) = req
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    {
        req.headers_mut().insert(HOST, v);
    }
    req
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: Version, uri: &str, hosts: &[&str]) -> Request<()> {
        let mut b = Request::builder().version(version).uri(uri);
        for h in hosts {
            b = b.header(HOST, *h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn one_host_that_agrees_with_the_target_passes() {
        use Version as V;
        let ok = [
            req(V::HTTP_11, "/mcp", &["localhost:8080"]),
            req(V::HTTP_11, "http://LOCALHOST:8080/mcp", &["localhost:8080"]),
            req(V::HTTP_11, "http://localhost/mcp", &["localhost:80"]),
            req(V::HTTP_2, "https://example.com/mcp", &[]),
            req(V::HTTP_2, "https://example.com/mcp", &["example.com:443"]),
            req(V::HTTP_10, "/mcp", &[]),
        ];
        for r in ok {
            assert_eq!(host_problem(&r), None, "{r:?}");
        }
    }

    #[test]
    fn ambiguous_hosts_are_refused() {
        use Version as V;
        let bad = [
            req(V::HTTP_11, "/mcp", &["localhost", "evil.example"]),
            req(V::HTTP_11, "/mcp", &["localhost", "localhost"]),
            req(V::HTTP_11, "http://evil.example/mcp", &["localhost"]),
            req(V::HTTP_11, "http://localhost:9/mcp", &["localhost:8080"]),
            req(V::HTTP_2, "https://evil.example/mcp", &["localhost"]),
            req(V::HTTP_11, "/mcp", &[]),
            req(V::HTTP_11, "http://localhost/mcp", &["local host"]),
        ];
        for r in bad {
            assert!(host_problem(&r).is_some(), "{r:?}");
            let status = refusal(&r).expect("refused").status();
            assert_eq!(status, StatusCode::BAD_REQUEST);
        }
    }
}

//! Forwarding between replicas: a client's request, as received, to the replica that owns its
//! session (or holds its parked exchange) at `<advertise_url><path>`, authenticated with the
//! inter-replica secret; the owner's answer (JSON or an SSE stream) relayed back unchanged.
//! A forwarded request is never forwarded again. Forwards have deadlines: a connect timeout,
//! a response-start timeout (the client's budget plus [`RESPONSE_START_SLACK`]), and the
//! client's deadline passed on in [`DEADLINE`], past which the owner does not run the request
//! (a forward that waited in a paused owner's socket is dropped, never executed late).
//!
//! Forwards go through the same pooled hyper-util client as HTTP upstreams
//! (`upstream::http::clients`, one pool per serving thread), with no redirect followed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Full};
use subtle::ConstantTimeEq;

use crate::errors::error_chain;
use crate::mcp::upstream::http::{self as upstream_http, Clients};

/// Carries the inter-replica secret on a forwarded request.
pub const FORWARDED: &str = "x-mcpg-forwarded";
/// Names the replica that forwarded a request (for logs).
pub const FORWARDED_BY: &str = "x-mcpg-forwarded-by";
/// Marks an answer saying "not the owner": the forwarding replica looks again.
pub const MISDIRECTED: &str = "x-mcpg-misdirected";
/// The forwarding replica's deadline for the answer, in milliseconds since the Unix epoch
/// (wall clock: replicas' clocks are assumed to agree to well within a request timeout).
pub const DEADLINE: &str = "x-mcpg-deadline";

/// How long connecting to another replica may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How much longer than the client's budget the answer of an owner may take to begin (the
/// owner answers a request that ran out of time itself, with the upstream's timeout error).
pub const RESPONSE_START_SLACK: Duration = Duration::from_secs(2);

/// Headers that belong to one hop, not to the request.
const HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

/// Why a forward did not produce the owner's answer.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// The owner could not be reached: no connection was made, so the request was not
    /// delivered (it may be placed again, once the owner's lease decides).
    #[error("replica at {url} unreachable: {message}")]
    Unreachable { url: String, message: String },
    /// The request was sent, but no answer came (the connection broke, or the answer did not
    /// begin in time): the owner may have run it, so it is never run a second time.
    #[error("replica at {url} took the request but gave no answer: {message}")]
    Lost { url: String, message: String },
    /// The replica reached does not own the session (any more).
    #[error("the replica reached does not own the session")]
    Misdirected,
}

/// Now, in milliseconds since the Unix epoch.
fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Whether a forwarded request's deadline ([`DEADLINE`]) has passed: the replica that
/// forwarded it has given up, so it must not run. Judged when the request is read.
pub fn expired(headers: &HeaderMap) -> bool {
    headers
        .get(DEADLINE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .is_some_and(|d| now_unix_ms() >= d)
}

/// How a request claims to have come from another replica.
#[derive(Debug, PartialEq, Eq)]
pub enum Origin {
    Client,
    Replica,
    /// Carries the forwarding header with a wrong secret.
    Forged,
}

/// Sends requests to other replicas.
pub struct Forwarder {
    /// One client (and connection pool) per serving thread, as for upstreams
    /// (`server::threads`): a forwarded request stays on the thread that received it.
    clients: Clients,
    secret: String,
    node_id: String,
}

impl Forwarder {
    /// `ca_file` (`server.forwarding_ca_file`) is trusted for replicas' `https://` URLs in
    /// addition to the platform's roots; start-up has already checked that it reads.
    pub fn new(secret: String, node_id: String, ca_file: Option<&std::path::Path>) -> Self {
        let clients = upstream_http::clients(CONNECT_TIMEOUT, ca_file);
        Self {
            clients,
            secret,
            node_id,
        }
    }

    /// Whether a request came from another replica of this cluster.
    pub fn origin(&self, headers: &HeaderMap) -> Origin {
        match headers.get(FORWARDED) {
            None => Origin::Client,
            Some(v) if bool::from(v.as_bytes().ct_eq(self.secret.as_bytes())) => Origin::Replica,
            Some(_) => Origin::Forged,
        }
    }

    /// Forwards a request to `<base><path>` and relays the answer. `budget`: how long the
    /// client's request may still take; the owner is told the deadline, and an answer that
    /// has not begun within the budget plus [`RESPONSE_START_SLACK`] counts as unreachable.
    pub async fn send(
        &self,
        base: &str,
        path: &str,
        method: Method,
        headers: &HeaderMap,
        body: Bytes,
        budget: Duration,
    ) -> Result<Response, ForwardError> {
        let url = format!("{}{path}", base.trim_end_matches('/'));
        let uri = Uri::try_from(url.as_str()).map_err(|e| ForwardError::Unreachable {
            url: url.clone(),
            message: format!("not a URL: {e}"),
        })?;
        let started = tokio::time::timeout(
            budget + RESPONSE_START_SLACK,
            self.start(uri, &url, method, headers, body, budget),
        )
        .await
        .map_err(|_| ForwardError::Lost {
            url: url.clone(),
            message: format!(
                "no answer began within {} ms",
                (budget + RESPONSE_START_SLACK).as_millis()
            ),
        })??;
        relay_back(started, &url).await
    }

    /// Sends the request; the owner's response once its head arrives.
    async fn start(
        &self,
        uri: Uri,
        url: &str,
        method: Method,
        headers: &HeaderMap,
        body: Bytes,
        budget: Duration,
    ) -> Result<Response<hyper::body::Incoming>, ForwardError> {
        let mut out = HeaderMap::with_capacity(headers.len() + 2);
        for (k, v) in headers {
            let name = k.as_str();
            if HOP.contains(&name) || name == "content-length" || name.starts_with("x-mcpg-") {
                continue;
            }
            out.append(k.clone(), v.clone());
        }
        let mut secret = HeaderValue::from_str(&self.secret).expect("the secret is a header value");
        secret.set_sensitive(true);
        out.insert(HeaderName::from_static(FORWARDED), secret);
        // The owner's span becomes a child of this replica's (when traces are exported).
        crate::telemetry::inject_headers(&tracing::Span::current(), &mut out);
        if let Ok(v) = HeaderValue::from_str(&self.node_id) {
            out.insert(HeaderName::from_static(FORWARDED_BY), v);
        }
        let deadline = now_unix_ms().saturating_add(budget.as_millis() as u64);
        out.insert(
            HeaderName::from_static(DEADLINE),
            HeaderValue::from(deadline),
        );
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = method;
        *req.uri_mut() = uri;
        *req.headers_mut() = out;
        self.clients.get().request(req).await.map_err(|e| {
            let (url, message) = (url.to_owned(), error_chain(&e));
            if e.is_connect() {
                ForwardError::Unreachable { url, message }
            } else {
                ForwardError::Lost { url, message }
            }
        })
    }
}

/// The owner's answer relayed back: a stream as it is written, anything else whole.
async fn relay_back(
    resp: Response<hyper::body::Incoming>,
    url: &str,
) -> Result<Response, ForwardError> {
    if resp.headers().contains_key(MISDIRECTED) {
        return Err(ForwardError::Misdirected);
    }
    let status = resp.status();
    let mut headers = HeaderMap::with_capacity(resp.headers().len());
    for (k, v) in resp.headers() {
        if !HOP.contains(&k.as_str()) && k.as_str() != "content-length" {
            headers.append(k.clone(), v.clone());
        }
    }
    let streamed = resp
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    // A stream flows through as it is written; anything else is passed on whole, with its
    // length.
    let body = if streamed {
        Body::new(resp.into_body())
    } else {
        let whole = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ForwardError::Lost {
                url: url.to_owned(),
                message: error_chain(&e),
            })?;
        Body::from(whole.to_bytes())
    };
    let mut r = body.into_response();
    *r.status_mut() = status;
    *r.headers_mut() = headers;
    Ok(r)
}

/// The answer of a replica that was forwarded a request for a session it does not own.
pub fn misdirected() -> Response {
    (
        StatusCode::MISDIRECTED_REQUEST,
        [(
            HeaderName::from_static(MISDIRECTED),
            HeaderValue::from_static("1"),
        )],
        "this replica does not own the session\n",
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_deadline(ms: u64) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(DEADLINE, HeaderValue::from(ms));
        h
    }

    /// A forward read after its deadline is expired; one before it, or without one (from a
    /// replica of an earlier release), is not.
    #[test]
    fn a_forward_past_its_deadline_is_expired() {
        let now = now_unix_ms();
        assert!(expired(&with_deadline(now - 1)));
        assert!(!expired(&with_deadline(now + 60_000)));
        assert!(!expired(&HeaderMap::new()));
    }
}

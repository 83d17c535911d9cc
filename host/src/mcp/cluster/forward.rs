//! Forwarding between replicas: a client's request, as received, to the replica that owns its
//! session (or holds its parked exchange) at `<advertise_url><path>`, authenticated with the
//! inter-replica secret; the owner's answer (JSON or an SSE stream) relayed back unchanged.
//! A forwarded request is never forwarded again.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use crate::errors::error_chain;

/// Carries the inter-replica secret on a forwarded request.
pub const FORWARDED: &str = "x-mcpg-forwarded";
/// Names the replica that forwarded a request (for logs).
pub const FORWARDED_BY: &str = "x-mcpg-forwarded-by";
/// Marks an answer saying "not the owner": the forwarding replica looks again.
pub const MISDIRECTED: &str = "x-mcpg-misdirected";

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
    /// The owner could not be reached (connection refused, reset before an answer).
    #[error("replica at {url} unreachable: {message}")]
    Unreachable { url: String, message: String },
    /// The replica reached does not own the session (any more).
    #[error("the replica reached does not own the session")]
    Misdirected,
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
    client: reqwest::Client,
    secret: String,
    node_id: String,
}

impl Forwarder {
    /// `ca_file` (`server.forwarding_ca_file`) is trusted for replicas' `https://` URLs in
    /// addition to the platform's roots; start-up has already checked that it reads.
    pub fn new(secret: String, node_id: String, ca_file: Option<&std::path::Path>) -> Self {
        let builder = crate::tls::client_builder(ca_file).unwrap_or_else(|e| {
            tracing::error!(error = %e, "server.forwarding_ca_file not usable; trusting the platform roots only");
            reqwest::Client::builder()
        });
        let client = builder
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .pool_idle_timeout(Duration::from_secs(90))
            .build()
            .expect("the HTTP client configuration is static");
        Self {
            client,
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

    /// Forwards a request to `<base><path>` and relays the answer.
    pub async fn send(
        &self,
        base: &str,
        path: &str,
        method: Method,
        headers: &HeaderMap,
        body: Bytes,
    ) -> Result<Response, ForwardError> {
        let url = format!("{}{path}", base.trim_end_matches('/'));
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
        let resp = self
            .client
            .request(method, &url)
            .headers(out)
            .body(body)
            .send()
            .await
            .map_err(|e| ForwardError::Unreachable {
                url: url.clone(),
                message: error_chain(&e),
            })?;
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
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        // A stream flows through as it is written; anything else is passed on whole, with its
        // length.
        let body = if streamed {
            Body::from_stream(resp.bytes_stream())
        } else {
            Body::from(resp.bytes().await.map_err(|e| ForwardError::Unreachable {
                url: url.clone(),
                message: error_chain(&e),
            })?)
        };
        let mut r = body.into_response();
        *r.status_mut() = status;
        *r.headers_mut() = headers;
        Ok(r)
    }
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

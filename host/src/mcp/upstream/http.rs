//! The Streamable HTTP transport to an upstream: one POST per message, answered with JSON,
//! an SSE stream or 202; the upstream's session id and protocol version carried as headers
//! once known; the GET stream for what the upstream sends outside any request; DELETE when the
//! conversation ends.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use eventsource_stream::{EventStreamError, Eventsource};
use futures::StreamExt;
use futures::stream::BoxStream;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;

use super::conn::{Connection, Transport, UpstreamError};
use crate::config::parsed::HttpUpstream;
use crate::errors::error_chain;
use crate::mcp::wire::headers;
use crate::mcp::wire::jsonrpc::{self, Message};

use crate::mcp::wire::headers::{SESSION_HEADER, VERSION_HEADER};

/// Builds the HTTP client of one upstream (its own connection pool), trusting `ca_file` in
/// addition to the platform's roots. Start-up has already read the file
/// (`tls::check_ca_files`); should it have become unreadable since, the client keeps only the
/// platform's roots and the error is logged, so the upstream's TLS fails rather than the boot.
pub fn client(connect_timeout: Duration, ca_file: Option<&std::path::Path>) -> reqwest::Client {
    let builder = crate::tls::client_builder(ca_file).unwrap_or_else(|e| {
        tracing::error!(error = %e, "upstream CA file not usable; trusting the platform roots only");
        reqwest::Client::builder()
    });
    builder
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true)
        .pool_idle_timeout(Duration::from_secs(90))
        .build()
        .expect("the HTTP client configuration is static")
}

/// An HTTP upstream as configured, parsed once at start-up: its URL, the headers sent with
/// every request, the client headers passed through, and its own connection pool.
pub struct Endpoint {
    url: reqwest::Url,
    headers: HeaderMap,
    pass_through: Vec<HeaderName>,
    client: reqwest::Client,
    /// The upstream's `max_response_bytes`.
    max_message: usize,
}

impl Endpoint {
    /// The upstream as the loader parsed it, with its own connection pool.
    pub fn new(
        cfg: &crate::config::model::HttpTransport,
        parsed: &HttpUpstream,
        max_message: usize,
    ) -> Self {
        Self {
            max_message,
            url: parsed.url.clone(),
            headers: parsed.headers.clone(),
            pass_through: parsed.pass_through.clone(),
            // One pool per upstream, so its connections are reused across sessions.
            client: client(
                Duration::from_millis(cfg.connect_timeout_ms),
                cfg.ca_file.as_deref(),
            ),
        }
    }

    /// Whether some of the client's headers are copied to this upstream.
    pub fn passes_headers(&self) -> bool {
        !self.pass_through.is_empty()
    }
}

/// One conversation with an HTTP upstream.
pub struct HttpTransport {
    name: String,
    url: reqwest::Url,
    client: reqwest::Client,
    headers: HeaderMap,
    session: RwLock<Option<String>>,
    version: RwLock<Option<String>>,
    /// Speaks 2026-07-28: no session; the metadata headers are derived from each message.
    modern: bool,
    /// Headers of the client's request copied to this upstream; nothing else of the client's
    /// (its `Authorization` above all) ever reaches an upstream.
    pass_through: Vec<HeaderName>,
    /// The largest message read from the upstream (`max_response_bytes`).
    max_message: usize,
}

tokio::task_local! {
    /// The headers of the client request being served, set by the downstream endpoint for
    /// bindings with `pass_through_headers`. Requests an upstream is sent on behalf of no
    /// client request (its GET stream, reconnects) carry none.
    pub static CLIENT_HEADERS: Arc<HeaderMap>;
}

impl HttpTransport {
    pub fn new(name: &str, endpoint: &Endpoint) -> Self {
        Self {
            name: name.into(),
            url: endpoint.url.clone(),
            client: endpoint.client.clone(),
            headers: endpoint.headers.clone(),
            session: RwLock::new(None),
            version: RwLock::new(None),
            modern: false,
            pass_through: endpoint.pass_through.clone(),
            max_message: endpoint.max_message,
        }
    }

    /// The transport for 2026-07-28 traffic: stateless, metadata headers on every request.
    pub fn into_modern(mut self) -> Self {
        self.modern = true;
        self
    }

    /// The upstream's session id, once its `initialize` answer carried one.
    pub fn session_id(&self) -> Option<String> {
        self.session.read().expect("lock").clone()
    }

    /// Resumes a session established earlier (e.g. recorded by another replica).
    pub fn set_session(&self, id: Option<String>) {
        *self.session.write().expect("lock") = id;
    }

    /// The protocol version sent in `MCP-Protocol-Version` on every request after the
    /// handshake.
    pub fn set_version(&self, v: Option<String>) {
        *self.version.write().expect("lock") = v;
    }

    fn err(&self, message: impl Into<String>) -> UpstreamError {
        UpstreamError::Transport {
            upstream: self.name.clone(),
            message: message.into(),
        }
    }

    fn base_request(&self, method: reqwest::Method) -> reqwest::RequestBuilder {
        let mut rb = self
            .client
            .request(method, self.url.clone())
            .headers(self.headers.clone());
        if let Some(s) = self.session.read().expect("lock").as_deref() {
            rb = rb.header(SESSION_HEADER, s);
        }
        if let Some(v) = self.version.read().expect("lock").as_deref() {
            rb = rb.header(VERSION_HEADER, v);
        }
        if !self.pass_through.is_empty() {
            let copied: Vec<(HeaderName, HeaderValue)> = CLIENT_HEADERS
                .try_with(|h| {
                    self.pass_through
                        .iter()
                        .flat_map(|n| h.get_all(n).iter().map(|v| (n.clone(), v.clone())))
                        .collect()
                })
                .unwrap_or_default();
            for (k, v) in copied {
                rb = rb.header(k, v);
            }
        }
        rb
    }

    /// Opens the GET stream and feeds what arrives on it to `conn` until either ends. An
    /// upstream that offers no GET stream (405) is fine.
    pub fn spawn_listener(self: &Arc<Self>, conn: Connection) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut last_event: Option<String> = None;
            let mut backoff = Duration::from_millis(200);
            while !conn.is_closed() {
                let mut rb = me
                    .base_request(reqwest::Method::GET)
                    .header(ACCEPT, "text/event-stream");
                if let Some(id) = &last_event {
                    rb = rb.header("last-event-id", id);
                }
                let resp = tokio::select! {
                    r = rb.send() => r,
                    _ = conn.closed() => return,
                };
                match resp {
                    Ok(r) if r.status().is_success() && is_sse(r.headers()) => {
                        backoff = Duration::from_millis(200);
                        let mut events = bounded_events(r, me.max_message);
                        loop {
                            let ev = tokio::select! {
                                e = events.next() => e,
                                _ = conn.closed() => return,
                            };
                            match ev {
                                Some(Err(EventStreamError::Transport(BodyError::TooLarge))) => {
                                    tracing::warn!(upstream = %me.name, max_response_bytes = me.max_message, "upstream GET stream sent an event over max_response_bytes; reconnecting");
                                    break;
                                }
                                Some(Ok(ev)) => {
                                    if !ev.id.is_empty() {
                                        last_event = Some(ev.id.clone());
                                    }
                                    for m in parse_event_data(&ev.data, conn.name()) {
                                        conn.deliver(m);
                                    }
                                }
                                _ => break,
                            }
                        }
                    }
                    Ok(r) if r.status() == reqwest::StatusCode::METHOD_NOT_ALLOWED => return,
                    Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => {
                        tracing::info!(upstream = %me.name, "upstream session expired (GET 404)");
                        conn.mark_closed();
                        return;
                    }
                    Ok(r) => {
                        tracing::debug!(upstream = %me.name, status = %r.status(), "upstream GET stream refused");
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(upstream = %me.name, error = %e, "upstream GET stream failed");
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = conn.closed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        });
    }
}

/// `MCP-Protocol-Version`, `Mcp-Method` and `Mcp-Name`, mirrored from the message as the
/// 2026-07-28 transport requires.
fn modern_headers(mut rb: reqwest::RequestBuilder, msg: &Message) -> reqwest::RequestBuilder {
    let version = jsonrpc::params(msg)
        .and_then(|p| p.get("_meta"))
        .and_then(|m| m.get(crate::mcp::wire::meta::PROTOCOL_VERSION))
        .and_then(Value::as_str)
        .unwrap_or(crate::mcp::wire::version::LATEST_MODERN);
    rb = rb.header(VERSION_HEADER, version);
    if let Some(m) = jsonrpc::method(msg) {
        rb = rb.header(headers::METHOD, m);
    }
    if let Some(n) = headers::name_value(msg) {
        rb = rb.header(headers::NAME, headers::encode(&n));
    }
    rb
}

/// The JSON-RPC messages in a JSON body read as it arrives: a single object, an array of
/// them, or a sequence of objects separated by whitespace (newline-delimited JSON).
fn json_values(
    body: impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send + 'static,
    upstream: String,
    max: usize,
) -> BoxStream<'static, Message> {
    let state = (Box::pin(body), Vec::<u8>::new(), false);
    futures::stream::unfold(state, move |(mut body, mut buf, mut done)| {
        let upstream = upstream.clone();
        async move {
            loop {
                // Take every complete value at the front of the buffer.
                let mut out = Vec::new();
                let mut consumed = 0;
                {
                    let mut it = serde_json::Deserializer::from_slice(&buf).into_iter::<Value>();
                    loop {
                        match it.next() {
                            Some(Ok(v)) => {
                                consumed = it.byte_offset();
                                out.extend(messages(v));
                            }
                            Some(Err(e)) if e.is_eof() => break,
                            Some(Err(e)) => {
                                tracing::warn!(upstream = %upstream, error = %e, "upstream answered with invalid JSON");
                                out.push(violation(&upstream, &format!("its answer is not valid JSON ({e})")));
                                consumed = buf.len();
                                done = true;
                                break;
                            }
                            None => break,
                        }
                    }
                }
                buf.drain(..consumed);
                // What is left is one value still arriving: it may not grow past the limit.
                if !done && buf.len() > max {
                    out.push(too_large(&upstream, max, Value::Null));
                    buf = Vec::new();
                    done = true;
                }
                if !out.is_empty() {
                    return Some((futures::stream::iter(out), (body, buf, done)));
                }
                if done {
                    return None;
                }
                match body.next().await {
                    Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
                    Some(Err(e)) => {
                        tracing::debug!(upstream = %upstream, error = %e, "upstream answer broke off");
                        done = true;
                    }
                    None => done = true,
                }
            }
        }
    })
    .flatten()
    .boxed()
}

/// [`json_values`] for the limit's tests.
#[cfg(test)]
pub(super) fn json_values_for_test(
    body: impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send + 'static,
    max: usize,
) -> BoxStream<'static, Message> {
    json_values(body, "t".into(), max)
}

fn is_sse(h: &HeaderMap) -> bool {
    h.get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

/// The JSON-RPC messages in one SSE event's data (empty for priming events and pings); data
/// that is not JSON is a protocol violation, reported as such ([`violation`]).
fn parse_event_data(data: &str, upstream: &str) -> Vec<Message> {
    if data.trim().is_empty() {
        return Vec::new();
    }
    match serde_json::from_str::<Value>(data) {
        Ok(v) => messages(v),
        Err(e) => vec![violation(
            upstream,
            &format!("an event of its stream is not valid JSON ({e})"),
        )],
    }
}

/// The error standing for an upstream message over `max_response_bytes`, for request `id`
/// (`null` on the exchange's own stream, where the exchange is known).
pub(super) fn too_large(upstream: &str, max: usize, id: Value) -> Message {
    jsonrpc::error(
        id,
        jsonrpc::code::INTERNAL_ERROR,
        format!(
            "upstream `{upstream}` sent a message larger than its max_response_bytes ({max} bytes); it was not relayed"
        ),
        None,
    )
}

/// Why reading an upstream's body stopped: the body broke, or it outgrew the limit.
#[derive(Debug)]
enum BodyError {
    Read(reqwest::Error),
    TooLarge,
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Read(e) => write!(f, "{e}"),
            Self::TooLarge => f.write_str("an event over max_response_bytes"),
        }
    }
}

impl std::error::Error for BodyError {}

/// The SSE events of `resp`, none larger than `max` bytes: the bytes received since the last
/// complete event are counted, and the stream fails with [`BodyError::TooLarge`] as soon as
/// they exceed it (so at most `max` plus one network read is ever buffered).
fn bounded_events(
    resp: reqwest::Response,
    max: usize,
) -> BoxStream<'static, Result<eventsource_stream::Event, EventStreamError<BodyError>>> {
    let pending = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = pending.clone();
    resp.bytes_stream()
        .map(move |chunk| {
            let chunk = chunk.map_err(BodyError::Read)?;
            let n = counted.fetch_add(chunk.len(), std::sync::atomic::Ordering::Relaxed);
            if n.saturating_add(chunk.len()) > max {
                return Err(BodyError::TooLarge);
            }
            Ok(chunk)
        })
        .eventsource()
        .inspect(move |ev| {
            if ev.is_ok() {
                pending.store(0, std::sync::atomic::Ordering::Relaxed);
            }
        })
        .boxed()
}

/// Reads a whole body of at most `max` bytes; `Ok(None)` when it is (or declares itself)
/// larger, without reading on.
async fn read_bounded(
    mut resp: reqwest::Response,
    max: usize,
) -> reqwest::Result<Option<bytes::Bytes>> {
    if resp.content_length().is_some_and(|n| n > max as u64) {
        return Ok(None);
    }
    let mut body = bytes::BytesMut::new();
    while let Some(chunk) = resp.chunk().await? {
        if body.len() + chunk.len() > max {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body.freeze()))
}

/// An error response without an id standing for an upstream's protocol violation: the
/// exchange whose answer carried it ends with this error, which names the upstream's fault,
/// instead of "closed the connection after the request was sent".
pub(super) fn violation(upstream: &str, what: &str) -> Message {
    jsonrpc::error(
        Value::Null,
        jsonrpc::code::INTERNAL_ERROR,
        format!("upstream `{upstream}` broke the protocol: {what}"),
        None,
    )
}

/// The JSON-RPC messages a JSON value holds: itself, or the objects of an array.
fn messages(v: Value) -> Vec<Message> {
    match v {
        Value::Object(m) => vec![m],
        Value::Array(a) => a
            .into_iter()
            .filter_map(|v| match v {
                Value::Object(m) => Some(m),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

impl HttpTransport {
    /// A non-2xx answer: the JSON-RPC error it carries for this very request (a 2026-07-28
    /// server answers -32021 with 400 and -32601 with 404), the session gone (404 with a
    /// session), or the status as an error.
    async fn refused(
        &self,
        msg: &Message,
        resp: reqwest::Response,
    ) -> Result<Option<BoxStream<'static, Message>>, UpstreamError> {
        let status = resp.status();
        let body = read_bounded(resp, self.max_message)
            .await
            .ok()
            .flatten()
            .unwrap_or_default();
        if let Some(id) = msg.get("id")
            && let Ok(Value::Object(answer)) = serde_json::from_slice::<Value>(&body)
            && answer.get("id") == Some(id)
            && answer.contains_key("error")
        {
            return Ok(Some(futures::stream::iter([answer]).boxed()));
        }
        if status == reqwest::StatusCode::NOT_FOUND && self.session_id().is_some() {
            return Err(UpstreamError::SessionExpired(self.name.clone()));
        }
        Err(UpstreamError::Status {
            upstream: self.name.clone(),
            status: status.as_u16(),
            body: String::from_utf8_lossy(&body).chars().take(500).collect(),
        })
    }

    /// The messages of a successful answer: an SSE stream, JSON of a known length (the common
    /// case: one value, parsed once), or (as some servers stream) several JSON values
    /// concatenated or newline-delimited, yielded as each is complete.
    pub(crate) async fn answer(
        &self,
        resp: reqwest::Response,
    ) -> Result<Option<BoxStream<'static, Message>>, UpstreamError> {
        if is_sse(resp.headers()) {
            let name = self.name.clone();
            let upstream = self.name.clone();
            let max = self.max_message;
            // The stream ends at its first error; an event over the limit ends it with an
            // error that says so.
            let mut over = false;
            return Ok(Some(
                bounded_events(resp, max)
                    .take_while(move |ev| {
                        let go = !over;
                        match ev {
                            Err(EventStreamError::Transport(BodyError::TooLarge)) => over = true,
                            Err(e) => {
                                tracing::debug!(upstream = %name, error = %e, "upstream SSE stream broke");
                                over = true;
                                return futures::future::ready(false);
                            }
                            Ok(_) => {}
                        }
                        futures::future::ready(go)
                    })
                    .flat_map(move |ev| {
                        futures::stream::iter(match ev {
                            Ok(ev) => parse_event_data(&ev.data, &upstream),
                            Err(_) => vec![too_large(&upstream, max, Value::Null)],
                        })
                    })
                    .boxed(),
            ));
        }
        if resp.content_length().is_some() {
            let Some(body) = read_bounded(resp, self.max_message)
                .await
                .map_err(|e| self.err(format!("reading the answer failed: {e}")))?
            else {
                return Ok(Some(
                    futures::stream::iter([too_large(&self.name, self.max_message, Value::Null)])
                        .boxed(),
                ));
            };
            if body.iter().all(u8::is_ascii_whitespace) {
                return Ok(None);
            }
            if let Ok(v) = serde_json::from_slice::<Value>(&body) {
                return Ok(Some(futures::stream::iter(messages(v)).boxed()));
            }
            let stream = futures::stream::iter([Ok::<_, reqwest::Error>(body)]);
            return Ok(Some(json_values(
                stream,
                self.name.clone(),
                self.max_message,
            )));
        }
        Ok(Some(json_values(
            resp.bytes_stream(),
            self.name.clone(),
            self.max_message,
        )))
    }
}

#[async_trait]
impl Transport for HttpTransport {
    async fn send(
        &self,
        msg: Message,
        extra: &[(String, String)],
    ) -> Result<Option<BoxStream<'static, Message>>, UpstreamError> {
        let is_init = jsonrpc::method(&msg) == Some("initialize");
        let mut rb = self.base_request(reqwest::Method::POST);
        let mut trace = HeaderMap::new();
        crate::telemetry::inject_headers(&tracing::Span::current(), &mut trace);
        if !trace.is_empty() {
            rb = rb.headers(trace);
        }
        if self.modern {
            rb = modern_headers(rb, &msg);
        }
        // The client's `Mcp-Param-*` (2026-07-28) and the fencing token (either era).
        for (k, v) in extra {
            rb = rb.header(k.as_str(), v.as_str());
        }
        let resp = rb
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "application/json, text/event-stream")
            .body(jsonrpc::to_bytes(&msg))
            .send()
            .await
            .map_err(|e| match e.is_connect() {
                // Nothing was sent: a pool may send it to another endpoint.
                true => self.err(format!(
                    "{} (request not sent): {}",
                    super::conn::NOT_REACHED,
                    error_chain(&e)
                )),
                // Connected, so the request may have reached the upstream before it failed.
                false => self.err(format!(
                    "request failed after the connection was made; it may or may not have run: {}",
                    error_chain(&e)
                )),
            })?;
        if is_init && let Some(s) = resp.headers().get(SESSION_HEADER) {
            let s = s
                .to_str()
                .map_err(|_| self.err("the session id header is not visible ASCII"))?;
            self.set_session(Some(s.to_owned()));
        }
        if !resp.status().is_success() {
            return self.refused(&msg, resp).await;
        }
        if resp.status() == reqwest::StatusCode::ACCEPTED {
            return Ok(None);
        }
        self.answer(resp).await
    }

    fn cancels_by_notification(&self) -> bool {
        !self.modern
    }

    /// The HTTP session stays: the replica taking the session over resumes it by its id.
    async fn detach(&self) {}

    async fn close(&self) {
        if self.session_id().is_none() {
            return;
        }
        // Bounded: a stuck upstream must not hold up reaping or shutdown.
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            self.base_request(reqwest::Method::DELETE).send(),
        )
        .await;
        match r {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::debug!(upstream = %self.name, error = %e, "DELETE of the upstream session failed")
            }
            Err(_) => {
                tracing::debug!(upstream = %self.name, "DELETE of the upstream session timed out")
            }
        }
    }
}

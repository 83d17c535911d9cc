//! The Streamable HTTP transport to an upstream: one POST per message, answered with JSON,
//! an SSE stream or 202; the upstream's session id and protocol version carried as headers
//! once known; the GET stream for what the upstream sends outside any request; DELETE when the
//! conversation ends.
//!
//! Requests go through hyper-util's pooled client directly (no redirects followed: a 3xx is
//! the upstream's answer, as behind a plain reverse proxy); the URL is parsed once per
//! endpoint rather than on every request.

use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use eventsource_stream::{EventStreamError, Eventsource};
use futures::StreamExt;
use futures::stream::BoxStream;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, Response, StatusCode, Uri};
use http_body_util::{BodyDataStream, BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use serde_json::Value;

use super::conn::{Connection, Transport, UpstreamError};
use crate::config::parsed::HttpUpstream;
use crate::errors::error_chain;
use crate::mcp::wire::headers;
use crate::mcp::wire::jsonrpc::{self, Message};
use crate::server::threads::PerThread;

use crate::mcp::wire::headers::{SESSION_HEADER, VERSION_HEADER};

/// The HTTP client of one upstream: its own pool of kept-alive connections.
pub type Client = hyper_util::client::legacy::Client<Connector, Full<Bytes>>;

/// The error a body read fails with, whatever the body.
type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Builds the HTTP client of one upstream (its own connection pool), trusting `ca_file` in
/// addition to the platform's roots. See [`clients`].
pub fn client(connect_timeout: Duration, ca_file: Option<&std::path::Path>) -> Client {
    client_with(connect_timeout, upstream_tls(ca_file))
}

/// An upstream's clients, one per serving thread (`server::threads`): a pooled connection
/// runs as a task of the runtime that opened it, so each thread keeps its own pool and a
/// request never hands its upstream exchange to another thread. The trust roots are loaded
/// once for all of them. Start-up has already read `ca_file` (`tls::check_ca_files`); should
/// it have become unreadable since, the clients keep only the platform's roots and the error
/// is logged, so the upstream's TLS fails rather than the boot.
pub fn clients(connect_timeout: Duration, ca_file: Option<&std::path::Path>) -> Clients {
    let tls = upstream_tls(ca_file);
    PerThread::new(|| client_with(connect_timeout, tls.clone()))
}

/// An upstream's clients, one per serving thread.
pub type Clients = PerThread<Client>;

fn upstream_tls(ca_file: Option<&std::path::Path>) -> rustls::ClientConfig {
    crate::tls::client_tls(ca_file)
        .or_else(|e| {
            tracing::error!(error = %e, ca_file = ?ca_file, "CA file not usable; trusting the platform roots only");
            crate::tls::client_tls(None)
        })
        .expect("the platform's trust roots load")
}

/// `connect_timeout` bounds the whole connection set-up, TLS handshake included; connections
/// have `TCP_NODELAY` and TCP keep-alive probes (15 s, 3 retries), and an idle pooled
/// connection is closed after 90 s.
fn client_with(connect_timeout: Duration, tls: rustls::ClientConfig) -> Client {
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(connect_timeout));
    tcp.set_keepalive(Some(Duration::from_secs(15)));
    tcp.set_keepalive_interval(Some(Duration::from_secs(15)));
    tcp.set_keepalive_retries(Some(3));
    // `http` and `https` URLs alike; the TLS configuration offers ALPN `http/1.1` itself.
    let https = hyper_rustls::HttpsConnector::from((tcp, tls));
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_timer(TokioTimer::new())
        .build(Connector {
            inner: https,
            timeout: connect_timeout,
        })
}

/// The connector of [`client`]: TCP and TLS, the whole set-up bounded by the connect timeout
/// (the TCP connector's own timeout covers the TCP part only).
#[derive(Clone)]
pub struct Connector {
    inner: hyper_rustls::HttpsConnector<HttpConnector>,
    timeout: Duration,
}

type Connecting = Pin<
    Box<
        dyn std::future::Future<
                Output = Result<
                    hyper_rustls::MaybeHttpsStream<hyper_util::rt::TokioIo<tokio::net::TcpStream>>,
                    BoxError,
                >,
            > + Send,
    >,
>;

impl tower::Service<Uri> for Connector {
    type Response = hyper_rustls::MaybeHttpsStream<hyper_util::rt::TokioIo<tokio::net::TcpStream>>;
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Connecting {
        let connecting = self.inner.call(uri);
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, connecting).await {
                Ok(r) => r,
                Err(_) => Err(format!("connecting timed out after {timeout:?}").into()),
            }
        })
    }
}

/// The URL as a request target, and the `Authorization` its user info stands for (as a
/// browser or curl would send it): `http::Uri` carries no user info.
fn target_of(url: &url::Url) -> (Uri, Option<HeaderValue>) {
    let mut plain = url.clone();
    let auth = (!url.username().is_empty() || url.password().is_some()).then(|| {
        use base64::Engine;
        let user = percent_decode(url.username());
        let pass = url.password().map(percent_decode).unwrap_or_default();
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        let _ = plain.set_username("");
        let _ = plain.set_password(None);
        let mut v = HeaderValue::from_str(&format!("Basic {token}"))
            .expect("base64 is a valid header value");
        v.set_sensitive(true);
        v
    });
    // A parsed `url::Url` is always a valid URI (the loader accepts http(s) URLs only).
    let uri = plain.as_str().parse().expect("a parsed URL is a valid URI");
    (uri, auth)
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

/// An HTTP upstream as configured, parsed once at start-up: its URL, the headers sent with
/// every request, the client headers passed through, and its own connection pool.
pub struct Endpoint {
    url: Uri,
    headers: HeaderMap,
    pass_through: Vec<HeaderName>,
    clients: Arc<Clients>,
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
        let (url, auth) = target_of(&parsed.url);
        let mut headers = parsed.headers.clone();
        if let Some(auth) = auth
            && !headers.contains_key(AUTHORIZATION)
        {
            headers.insert(AUTHORIZATION, auth);
        }
        Self {
            max_message,
            url,
            headers,
            pass_through: parsed.pass_through.clone(),
            // One pool per upstream (and serving thread), so its connections are reused
            // across sessions.
            clients: Arc::new(clients(
                Duration::from_millis(cfg.connect_timeout_ms),
                cfg.ca_file.as_deref(),
            )),
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
    url: Uri,
    clients: Arc<Clients>,
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
            clients: endpoint.clients.clone(),
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

    /// The calling thread's client of this upstream.
    fn client(&self) -> &Client {
        self.clients.get()
    }

    fn err(&self, message: impl Into<String>) -> UpstreamError {
        UpstreamError::Transport {
            upstream: self.name.clone(),
            message: message.into(),
        }
    }

    /// A request to the upstream with its configured headers, the session and version once
    /// known, and the client's headers passed through.
    fn base_request(&self, method: Method, body: Bytes) -> Request<Full<Bytes>> {
        let mut req = Request::new(Full::new(body));
        *req.method_mut() = method;
        *req.uri_mut() = self.url.clone();
        let h = req.headers_mut();
        h.clone_from(&self.headers);
        if let Some(s) = self.session.read().expect("lock").as_deref()
            && let Ok(v) = HeaderValue::from_str(s)
        {
            h.append(SESSION_HEADER, v);
        }
        if let Some(v) = self.version.read().expect("lock").as_deref()
            && let Ok(v) = HeaderValue::from_str(v)
        {
            h.append(VERSION_HEADER, v);
        }
        if !self.pass_through.is_empty() {
            let _ = CLIENT_HEADERS.try_with(|client| {
                for n in &self.pass_through {
                    for v in client.get_all(n) {
                        h.append(n.clone(), v.clone());
                    }
                }
            });
        }
        req
    }

    /// Opens the GET stream and feeds what arrives on it to `conn` until either ends. An
    /// upstream that offers no GET stream (405) is fine.
    pub fn spawn_listener(self: &Arc<Self>, conn: Connection) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut last_event: Option<String> = None;
            let mut backoff = Duration::from_millis(200);
            while !conn.is_closed() {
                let mut req = me.base_request(Method::GET, Bytes::new());
                req.headers_mut()
                    .insert(ACCEPT, HeaderValue::from_static("text/event-stream"));
                if let Some(id) = last_event
                    .as_deref()
                    .and_then(|id| HeaderValue::from_str(id).ok())
                {
                    req.headers_mut().insert("last-event-id", id);
                }
                let resp = tokio::select! {
                    r = me.client().request(req) => r,
                    _ = conn.closed() => return,
                };
                match resp {
                    Ok(r) if r.status().is_success() && is_sse(r.headers()) => {
                        backoff = Duration::from_millis(200);
                        let mut events = bounded_events(r.into_body(), me.max_message);
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
                    Ok(r) if r.status() == StatusCode::METHOD_NOT_ALLOWED => return,
                    Ok(r) if r.status() == StatusCode::NOT_FOUND => {
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
/// 2026-07-28 transport requires. Fails with the header whose value cannot be sent.
fn modern_headers(h: &mut HeaderMap, msg: &Message) -> Result<(), &'static str> {
    let version = jsonrpc::params(msg)
        .and_then(|p| p.get("_meta"))
        .and_then(|m| m.get(crate::mcp::wire::meta::PROTOCOL_VERSION))
        .and_then(Value::as_str)
        .unwrap_or(crate::mcp::wire::version::LATEST_MODERN);
    let value = |v: &str, name: &'static str| HeaderValue::from_str(v).map_err(|_| name);
    h.append(VERSION_HEADER, value(version, VERSION_HEADER)?);
    if let Some(m) = jsonrpc::method(msg) {
        h.append(headers::METHOD, value(m, headers::METHOD)?);
    }
    if let Some(n) = headers::name_value(msg) {
        h.append(headers::NAME, value(&headers::encode(&n), headers::NAME)?);
    }
    Ok(())
}

/// The JSON-RPC messages in a JSON body read as it arrives: a single object, an array of
/// them, or a sequence of objects separated by whitespace (newline-delimited JSON).
fn json_values<E: std::fmt::Display>(
    body: impl futures::Stream<Item = Result<Bytes, E>> + Send + 'static,
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
pub(super) fn json_values_for_test<E: std::fmt::Display>(
    body: impl futures::Stream<Item = Result<Bytes, E>> + Send + 'static,
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
    Read(BoxError),
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
fn bounded_events<B: UpstreamBody>(
    body: B,
    max: usize,
) -> BoxStream<'static, Result<eventsource_stream::Event, EventStreamError<BodyError>>> {
    let pending = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = pending.clone();
    BodyDataStream::new(body)
        .map(move |chunk| {
            let chunk = chunk.map_err(|e| BodyError::Read(e.into()))?;
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
async fn read_bounded<B: UpstreamBody>(mut body: B, max: usize) -> Result<Option<Bytes>, BoxError> {
    if body.size_hint().exact().is_some_and(|n| n > max as u64) {
        return Ok(None);
    }
    // The common case, one chunk, is kept as it came rather than copied.
    let mut first: Option<Bytes> = None;
    let mut rest = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(chunk) = frame.map_err(Into::into)?.into_data() else {
            continue; // trailers
        };
        let held = first.as_ref().map_or(0, Bytes::len) + rest.len();
        if held + chunk.len() > max {
            return Ok(None);
        }
        match &first {
            None => first = Some(chunk),
            Some(_) => rest.extend_from_slice(&chunk),
        }
    }
    Ok(Some(match first {
        None => Bytes::new(),
        Some(f) if rest.is_empty() => f,
        Some(f) => {
            let mut all = bytes::BytesMut::from(&f[..]);
            all.extend_from_slice(&rest);
            all.freeze()
        }
    }))
}

/// What an upstream's answer body can be: hyper's incoming body in service, any body in the
/// fuzz target.
pub(crate) trait UpstreamBody:
    http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static
{
}

impl<B> UpstreamBody for B where
    B: http_body::Body<Data = Bytes, Error: Into<BoxError>> + Send + Unpin + 'static
{
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
    async fn refused<B: UpstreamBody>(
        &self,
        msg: &Message,
        resp: Response<B>,
    ) -> Result<Option<BoxStream<'static, Message>>, UpstreamError> {
        let status = resp.status();
        let body = read_bounded(resp.into_body(), self.max_message)
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
        if status == StatusCode::NOT_FOUND && self.session_id().is_some() {
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
    pub(crate) async fn answer<B: UpstreamBody>(
        &self,
        resp: Response<B>,
    ) -> Result<Option<BoxStream<'static, Message>>, UpstreamError> {
        let (head, body) = resp.into_parts();
        if is_sse(&head.headers) {
            let name = self.name.clone();
            let upstream = self.name.clone();
            let max = self.max_message;
            // The stream ends at its first error; an event over the limit ends it with an
            // error that says so.
            let mut over = false;
            return Ok(Some(
                bounded_events(body, max)
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
        if body.size_hint().exact().is_some() {
            let Some(body) = read_bounded(body, self.max_message)
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
            let stream = futures::stream::iter([Ok::<_, BoxError>(body)]);
            return Ok(Some(json_values(
                stream,
                self.name.clone(),
                self.max_message,
            )));
        }
        Ok(Some(json_values(
            BodyDataStream::new(body).map(|r| r.map_err(Into::<BoxError>::into)),
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
        let mut req = self.base_request(Method::POST, Bytes::from(jsonrpc::to_bytes(&msg)));
        let h = req.headers_mut();
        crate::telemetry::inject_headers(&tracing::Span::current(), h);
        let unsendable = |name: &str| {
            self.err(format!(
                "{} (request not sent): its `{name}` header would not be a valid header value",
                super::conn::NOT_REACHED
            ))
        };
        if self.modern {
            modern_headers(h, &msg).map_err(unsendable)?;
        }
        // The client's `Mcp-Param-*` (2026-07-28) and the fencing token (either era).
        for (k, v) in extra {
            let name = HeaderName::from_bytes(k.as_bytes()).map_err(|_| unsendable(k))?;
            let value = HeaderValue::from_str(v).map_err(|_| unsendable(k))?;
            h.append(name, value);
        }
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(
            ACCEPT,
            HeaderValue::from_static("application/json, text/event-stream"),
        );
        let resp = self
            .client()
            .request(req)
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
        if resp.status() == StatusCode::ACCEPTED {
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
            self.client()
                .request(self.base_request(Method::DELETE, Bytes::new())),
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

#[cfg(test)]
mod tests {
    use base64::Engine;

    #[test]
    fn user_info_in_the_url_is_sent_as_basic_authentication_and_left_out_of_the_target() {
        let url = "https://al%40ice:p+w%3A@up.example.com:8443/mcp?x=1"
            .parse()
            .unwrap();
        let (uri, auth) = super::target_of(&url);
        assert_eq!(uri.to_string(), "https://up.example.com:8443/mcp?x=1");
        let expected = base64::engine::general_purpose::STANDARD.encode("al@ice:p+w:");
        let auth = auth.expect("user info becomes a header");
        assert_eq!(auth.to_str().unwrap(), format!("Basic {expected}"));
        assert!(auth.is_sensitive());

        let (uri, auth) = super::target_of(&"http://127.0.0.1:9/mcp".parse().unwrap());
        assert_eq!(uri.to_string(), "http://127.0.0.1:9/mcp");
        assert!(auth.is_none());
    }
}

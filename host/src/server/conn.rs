//! One listener's connections, each bounded: a cap on open connections (per listener, and per
//! client address when configured), the TLS handshake, header-read, body-read and idle
//! timeouts, the HTTP/2 limits, and the strict HTTP checks (`strict.rs`) before the router.
//!
//! hyper's own HTTP/1 `header_read_timeout` is not used: it also runs while a kept-alive
//! connection waits for its next request (so it would cut idle connections at the header
//! timeout), and nothing bounds hyper-util's protocol sniffing of a connection that sends
//! nothing at all. A watchdog per connection (`Activity`) covers both.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future as _;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

use super::{strict, threads};
use crate::config::model::ListenerLimits;

/// How long a client may take to complete the TLS handshake before its connection is closed.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// HTTP/2: streams the client may reset before mcpg accepted them, at once, before the
/// connection is closed with `ENHANCE_YOUR_CALM` (the "rapid reset" flood, CVE-2023-44487).
pub const H2_MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// HTTP/2: streams mcpg may reset because the client broke the protocol on them, per
/// connection, before the connection is closed.
pub const H2_MAX_LOCAL_ERROR_RESETS: usize = 1024;
/// How long a timed-out connection gets to close gracefully (an HTTP/2 GOAWAY) before it is
/// dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);
/// At most one warning per listener this often while connections are refused.
const REFUSAL_WARN_EVERY: Duration = Duration::from_secs(10);

/// The limits one listener enforces, from `server.limits`.
#[derive(Debug, Clone)]
pub struct Limits {
    pub header_read: Duration,
    pub body_read: Duration,
    pub idle: Duration,
    pub max_connections: usize,
    pub per_client: Option<usize>,
    pub h2_max_concurrent_streams: u32,
    pub h2_max_header_list: u32,
}

impl From<&ListenerLimits> for Limits {
    fn from(l: &ListenerLimits) -> Self {
        Self {
            header_read: Duration::from_millis(l.header_read_timeout_ms),
            body_read: Duration::from_millis(l.body_read_timeout_ms),
            idle: Duration::from_millis(l.idle_timeout_ms),
            max_connections: l.max_connections as usize,
            per_client: l.max_connections_per_client.map(|n| n as usize),
            h2_max_concurrent_streams: l.http2_max_concurrent_streams,
            h2_max_header_list: l.http2_max_header_list_bytes,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self::from(&ListenerLimits::default())
    }
}

/// Serves one listener until told to stop: the accept loop only accepts; each connection is
/// served in its own task, so a slow or failing client never holds up the others, on the
/// serving thread with the fewest open connections when there are serving threads. On stop the
/// loop stops accepting and waits for its connections, each finishing its in-flight requests
/// (the caller enforces the deadline by aborting this task, which drops and so closes every
/// connection).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: Limits,
    mut stop: watch::Receiver<bool>,
) {
    let limits = Arc::new(limits);
    let builder = Arc::new(builder(&limits));
    let slots = Slots::new(&limits);
    let mut refusals = Refusals::default();
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            biased;
            _ = stopped(&mut stop) => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    let slot = match slots.take(peer.ip()) {
                        Ok(slot) => slot,
                        Err(why) => {
                            refusals.note(peer, why);
                            drop(tcp);
                            continue;
                        }
                    };
                    // Small SSE replies on kept-alive connections stall ~40 ms without it.
                    let _ = tcp.set_nodelay(true);
                    let conn = Conn {
                        peer,
                        app: app.clone(),
                        limits: limits.clone(),
                        builder: builder.clone(),
                        stop: stop.clone(),
                    };
                    let tls = tls.clone();
                    match threads::place() {
                        // Served start to finish on one serving thread (`threads.rs`), the
                        // socket moved from this runtime's reactor to that thread's.
                        Some(placed) => {
                            let on = placed.handle().clone();
                            conns.spawn_on(async move {
                                match tcp.into_std().and_then(TcpStream::from_std) {
                                    Ok(tcp) => conn.run(tcp, tls, slot).await,
                                    Err(e) => tracing::warn!(error = %e, "a connection could not be handed to its serving thread"),
                                }
                                drop(placed);
                            }, &on);
                        }
                        None => {
                            conns.spawn(conn.run(tcp, tls, slot));
                        }
                    }
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off as axum::serve does,
                    // rather than spin.
                    tracing::error!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            },
        }
    }
    drop(listener);
    while conns.join_next().await.is_some() {}
}

/// hyper's connection builder with the limits applied (HTTP/1.1 and HTTP/2, the latter
/// negotiated by ALPN on HTTPS or by its preface on plain HTTP).
fn builder(limits: &Limits) -> Builder<TokioExecutor> {
    let mut b = Builder::new(TokioExecutor::new());
    // The watchdog enforces the header-read timeout (see the module docs).
    b.http1().timer(TokioTimer::new()).header_read_timeout(None);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_header_list_size(limits.h2_max_header_list)
        .max_pending_accept_reset_streams(H2_MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(H2_MAX_LOCAL_ERROR_RESETS);
    b
}

/// Resolves once the listeners are told to stop (or the sender is gone). The guard `wait_for`
/// returns is not `Send`, so it must not outlive this future.
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

// ---------------------------------------------------------------------------------------------
// Connection slots.

/// Open connections per client address.
type ClientCounts = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// The open-connection budget of one listener, and of each client address when configured.
struct Slots {
    total: Arc<Semaphore>,
    per_client: Option<(usize, ClientCounts)>,
}

/// One open connection's place in the budget, given back when the connection ends.
struct Slot {
    _permit: OwnedSemaphorePermit,
    client: Option<(IpAddr, ClientCounts)>,
}

impl Slots {
    fn new(limits: &Limits) -> Self {
        Self {
            total: Arc::new(Semaphore::new(limits.max_connections)),
            per_client: limits.per_client.map(|n| (n, Arc::default())),
        }
    }

    fn take(&self, ip: IpAddr) -> Result<Slot, &'static str> {
        let permit = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| "the listener holds `server.limits.max_connections` connections")?;
        let client = match &self.per_client {
            None => None,
            Some((max, counts)) => {
                let mut c = counts.lock().unwrap_or_else(|p| p.into_inner());
                let n = c.entry(ip).or_insert(0);
                if *n >= *max {
                    return Err(
                        "the client holds `server.limits.max_connections_per_client` connections",
                    );
                }
                *n += 1;
                Some((ip, counts.clone()))
            }
        };
        Ok(Slot {
            _permit: permit,
            client,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some((ip, counts)) = &self.client {
            let mut c = counts.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = c.get_mut(ip) {
                *n -= 1;
                if *n == 0 {
                    c.remove(ip);
                }
            }
        }
    }
}

/// Logs refused connections: each at debug, and a warning at most every
/// [`REFUSAL_WARN_EVERY`] so a flood does not flood the log too.
#[derive(Default)]
struct Refusals {
    last_warning: Option<Instant>,
    since: u64,
}

impl Refusals {
    fn note(&mut self, peer: SocketAddr, why: &str) {
        self.since += 1;
        tracing::debug!(%peer, "connection refused: {why}");
        if self
            .last_warning
            .is_none_or(|t| t.elapsed() >= REFUSAL_WARN_EVERY)
        {
            tracing::warn!(
                refused = self.since,
                "connections refused: {why} (raise it in the config if this is legitimate load)"
            );
            self.last_warning = Some(Instant::now());
            self.since = 0;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// One connection.

struct Conn {
    peer: SocketAddr,
    app: Router,
    limits: Arc<Limits>,
    builder: Arc<Builder<TokioExecutor>>,
    stop: watch::Receiver<bool>,
}

impl Conn {
    async fn run(mut self, tcp: TcpStream, tls: Option<tokio_rustls::TlsAcceptor>, _slot: Slot) {
        let Some(acceptor) = tls else {
            return self.serve(tcp).await;
        };
        let peer = self.peer;
        let tls = tokio::select! {
            r = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)) => match r {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            },
            // A connection still shaking hands has no request in flight.
            _ = stopped(&mut self.stop) => return,
        };
        self.serve(tls).await;
    }

    /// Serves HTTP on `io` until the client closes, a timeout closes it, or the listener
    /// stops (then in-flight requests finish first).
    async fn serve<I>(mut self, io: I)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let peer = self.peer;
        let activity = Arc::new(Activity::new());
        let io = Watched {
            io,
            activity: activity.clone(),
        };
        let (app, limits) = (self.app.clone(), self.limits.clone());
        let requests = activity.clone();
        let service =
            hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                // The client's address, for limits per caller (`max_children_per_caller`).
                req.extensions_mut()
                    .insert(axum::extract::ConnectInfo(peer));
                let in_flight = requests.request_started();
                let (app, body_read) = (app.clone(), limits.body_read);
                async move {
                    let response = match strict::refusal(&req) {
                        Some(refusal) => refusal,
                        None => {
                            let req = req.map(|b| Body::new(StallTimeout::new(b, body_read)));
                            match app.oneshot(strict::with_host(req)).await {
                                Ok(r) => r,
                                Err(never) => match never {},
                            }
                        }
                    };
                    // The request is in flight until its response body is sent (or dropped).
                    Ok::<_, Infallible>(response.map(|b| {
                        Body::new(b.map_frame(move |f| {
                            let _ = &in_flight;
                            f
                        }))
                    }))
                }
            });
        let conn = self
            .builder
            .serve_connection_with_upgrades(TokioIo::new(io), service);
        tokio::pin!(conn);
        // One timer, armed for the earliest deadline seen. While requests are in flight there is
        // no deadline; the state changes wake the loop. The timer moves only to an earlier
        // deadline: one that moved later (the next request, the next idle spell) is found when
        // it fires, and it is then armed again. So a busy connection touches the runtime's
        // timer about once per `tick`, not on every request.
        let tick = self.limits.header_read.min(self.limits.idle);
        let timer = tokio::time::sleep(tick);
        tokio::pin!(timer);
        loop {
            if let Some((at, _)) = activity.deadline(&self.limits)
                && at < timer.deadline()
            {
                timer.as_mut().reset(at);
            }
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = stopped(&mut self.stop) => break,
                _ = activity.changed.notified() => {}
                _ = timer.as_mut() => {
                    match activity.deadline(&self.limits) {
                        Some((at, why)) if at <= Instant::now() => {
                            tracing::debug!(%peer, "closing the connection: {why}");
                            conn.as_mut().graceful_shutdown();
                            let _ = tokio::time::timeout(CLOSE_GRACE, conn.as_mut()).await;
                            return;
                        }
                        Some((at, _)) => timer.as_mut().reset(at),
                        None => timer.as_mut().reset(Instant::now() + tick),
                    }
                }
            }
        }
        conn.as_mut().graceful_shutdown();
        if let Err(e) = conn.await {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    }
}

/// What a connection is doing, for its watchdog: requests in flight (from the moment the head
/// is parsed until the response body is sent), when the next request's first byte arrived,
/// and when it last fell idle.
struct Activity {
    started: Instant,
    state: Mutex<State>,
    /// Wakes the watchdog when the deadline may have moved.
    changed: tokio::sync::Notify,
}

#[derive(Default)]
struct State {
    /// What the first bytes said: `Some(true)` for HTTP/2 (its connection preface).
    http2: Option<bool>,
    requests_seen: bool,
    in_flight: usize,
    head_since: Option<Instant>,
    idle_since: Option<Instant>,
}

/// A request in flight; dropping it ends the request.
struct InFlight(Arc<Activity>);

impl Activity {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            state: Mutex::default(),
            changed: tokio::sync::Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes arrived: with no request in flight, they start the next request's head on
    /// HTTP/1. On HTTP/2 bytes between requests are frames of the connection itself (pings,
    /// settings, window updates), so only the idle timeout applies there; a request's headers
    /// arrive as frames whose size h2 bounds.
    fn read(&self, first: &[u8]) {
        let mut s = self.state();
        let http2 = *s.http2.get_or_insert_with(|| first.starts_with(b"PRI"));
        if !http2 && s.in_flight == 0 && s.head_since.is_none() {
            s.head_since = Some(Instant::now());
            self.changed.notify_one();
        }
    }

    fn request_started(self: &Arc<Self>) -> InFlight {
        let mut s = self.state();
        s.requests_seen = true;
        s.in_flight += 1;
        s.head_since = None;
        self.changed.notify_one();
        InFlight(self.clone())
    }

    /// When the connection is to be closed if nothing changes, and why; `None` while a request
    /// is in flight.
    fn deadline(&self, limits: &Limits) -> Option<(Instant, &'static str)> {
        let s = self.state();
        if s.in_flight > 0 {
            None
        } else if !s.requests_seen {
            Some((
                self.started + limits.header_read,
                "no complete request head within `server.limits.header_read_timeout_ms` of connecting",
            ))
        } else if let Some(t) = s.head_since {
            Some((
                t + limits.header_read,
                "request head not complete within `server.limits.header_read_timeout_ms`",
            ))
        } else {
            Some((
                s.idle_since.unwrap_or(self.started) + limits.idle,
                "idle for `server.limits.idle_timeout_ms`",
            ))
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut s = self.0.state();
        s.in_flight -= 1;
        if s.in_flight == 0 {
            s.idle_since = Some(Instant::now());
            self.0.changed.notify_one();
        }
    }
}

/// A connection's byte stream, reporting reads to its [`Activity`].
struct Watched<I> {
    io: I,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read(&buf.filled()[before..]);
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

// ---------------------------------------------------------------------------------------------
// The body-read timeout.

/// A request body that fails when no part of it arrives for `limit`. tower-http's
/// `TimeoutBody` does the same but drops the body's size hint, which the early 413 on a
/// declared `Content-Length` reads.
struct StallTimeout<B> {
    body: B,
    limit: Duration,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<B> StallTimeout<B> {
    fn new(body: B, limit: Duration) -> Self {
        Self {
            body,
            limit,
            timer: None,
        }
    }
}

pub use crate::errors::BodyStalled;

impl<B> http_body::Body for StallTimeout<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<axum::BoxError>,
{
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        // The timer starts when the body first makes the reader wait: a body already read
        // with its head (most are) costs no timer.
        if let Poll::Ready(frame) = Pin::new(&mut self.body).poll_frame(cx) {
            self.timer = None;
            return Poll::Ready(frame.map(|r| r.map_err(Into::into)));
        }
        let limit = self.limit;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(BodyStalled(limit.as_millis()).into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

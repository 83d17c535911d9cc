//! The HTTP listeners of one replica and its graceful shutdown.
//!
//! `server.listen` carries MCP traffic plus `/healthz` and `/readyz`; `server.admin_listen`, when
//! set, is a second listener for the admin API and metrics (and the same probes, which
//! orchestrators often point at the admin port). Without it, the admin API is served on
//! `listen`. The MCP data plane's bindings are mounted on `listen` only.

pub mod health;

use std::net::SocketAddr;
use std::time::Duration;

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

pub use health::{Phase, Readiness};

/// A listener could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} ({what}): {source}")]
pub struct BindError {
    pub addr: SocketAddr,
    pub what: &'static str,
    #[source]
    pub source: std::io::Error,
}

/// Listeners bound and ready to serve.
pub struct Bound {
    main: TcpListener,
    admin: Option<TcpListener>,
    pub readiness: Readiness,
}

impl Bound {
    /// Opens `listen` and, if given, `admin_listen`. Binding before serving lets start-up fail
    /// with a clear message (port in use) before anything reports ready.
    pub async fn bind(
        listen: SocketAddr,
        admin_listen: Option<SocketAddr>,
    ) -> Result<Self, BindError> {
        let main = TcpListener::bind(listen)
            .await
            .map_err(|source| BindError {
                addr: listen,
                what: "server.listen",
                source,
            })?;
        let admin = match admin_listen {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|source| BindError {
                addr,
                what: "server.admin_listen",
                source,
            })?),
            None => None,
        };
        Ok(Self {
            main,
            admin,
            readiness: Readiness::default(),
        })
    }

    pub fn main_addr(&self) -> std::io::Result<SocketAddr> {
        self.main.local_addr()
    }

    pub fn admin_addr(&self) -> Option<std::io::Result<SocketAddr>> {
        self.admin.as_ref().map(TcpListener::local_addr)
    }

    /// Starts serving. `mcp` holds the bindings' endpoints (main listener only); `admin` the
    /// admin API routes: they go on the admin listener when there is one, else on the main
    /// listener. The replica stays unready until the caller marks it ready (once its presence
    /// is registered).
    pub fn start(self, mcp: Router, admin: Router) -> Running {
        let readiness = self.readiness.clone();
        let (stop_tx, stop_rx) = watch::channel(false);
        let probes = health::router(readiness.clone());
        let mut tasks = tokio::task::JoinSet::new();
        match self.admin {
            Some(listener) => {
                tasks.spawn(serve_one(
                    self.main,
                    probes.clone().merge(mcp),
                    stop_rx.clone(),
                ));
                tasks.spawn(serve_one(listener, probes.merge(admin), stop_rx));
            }
            None => {
                tasks.spawn(serve_one(
                    self.main,
                    probes.merge(admin).merge(mcp),
                    stop_rx,
                ));
            }
        }
        Running {
            readiness,
            stop: stop_tx,
            tasks,
        }
    }
}

/// Routes that exist only once the replica has joined the cluster: served from the start,
/// answering 503 ("starting") until they are set.
#[derive(Clone, Default)]
pub struct Late(Arc<OnceLock<Router>>);

impl Late {
    /// The router to serve now.
    pub fn router(&self) -> Router {
        let me = self.clone();
        Router::new().fallback(move |req: axum::extract::Request| {
            let me = me.clone();
            async move {
                match me.0.get() {
                    Some(r) => r.clone().oneshot(req).await.into_response(),
                    None => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        [(axum::http::header::RETRY_AFTER, "2")],
                        "starting: joining the cluster\n",
                    )
                        .into_response(),
                }
            }
        })
    }

    /// Fills the routes in (once).
    pub fn set(&self, r: Router) {
        let _ = self.0.set(r);
    }
}

/// Listeners being served.
pub struct Running {
    pub readiness: Readiness,
    stop: watch::Sender<bool>,
    tasks: tokio::task::JoinSet<()>,
}

impl Running {
    /// Keeps serving for `delay`, then stops accepting and waits up to `drain` for in-flight
    /// requests. Returns whether every in-flight request finished within the deadline. The
    /// caller turns the replica unready before calling this.
    pub async fn shutdown(mut self, delay: Duration, drain: Duration) -> bool {
        tokio::time::sleep(delay).await;
        let _ = self.stop.send(true);
        let tasks = &mut self.tasks;
        let drained =
            tokio::time::timeout(drain, async { while tasks.join_next().await.is_some() {} })
                .await
                .is_ok();
        if !drained {
            tracing::warn!("drain deadline reached with requests still in flight; closing them");
            self.tasks.abort_all();
        }
        drained
    }
}

async fn serve_one(listener: TcpListener, app: Router, mut stop: watch::Receiver<bool>) {
    // Small SSE replies on kept-alive connections stall ~40 ms without TCP_NODELAY.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "listener failed");
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

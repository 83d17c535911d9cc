//! The HTTP listeners of one replica and its graceful shutdown.
//!
//! `server.listen` carries MCP traffic plus `/healthz` and `/readyz`; `server.admin_listen`, when
//! set, is a second listener for the admin API and metrics (and the same probes, which
//! orchestrators often point at the admin port). Without it, the admin API is served on
//! `listen`. The MCP data plane's bindings are mounted on `listen` only. Either listener serves
//! HTTPS when its `tls` block is set (`tls.rs` holds the certificate; this module accepts and
//! serves), and with `server.admin_token` both guard the admin paths (`admin.rs`). Every
//! listener bounds its connections (`conn.rs`: `server.limits`) and refuses ambiguous hosts
//! (`strict.rs`). With `server.scheduler: pinned` each accepted connection is served on one of
//! the serving threads (`threads.rs`).

pub mod admin;
pub mod conn;
#[cfg(test)]
mod h2_tests;
pub mod health;
mod strict;
pub mod systemd;
pub mod threads;
#[cfg(test)]
mod tls_tests;

use std::net::SocketAddr;
use std::time::Duration;

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower::ServiceExt;

use crate::config::model::ServerConfig;
use crate::tls::{LoadError, ServerCert};

pub use admin::AdminToken;
pub use health::{Phase, Readiness};

/// What secures the listeners: each one's certificate (HTTPS when present), the admin token,
/// and the timeouts and connection limits (`server.limits`) each listener enforces.
#[derive(Debug, Clone, Default)]
pub struct Security {
    pub main_tls: Option<ServerCert>,
    pub admin_tls: Option<ServerCert>,
    pub admin_token: Option<AdminToken>,
    pub limits: conn::Limits,
}

impl Security {
    /// Loads `server.tls` and `server.admin_tls`; fails naming the key of an unusable file.
    pub fn from_config(s: &ServerConfig) -> Result<Self, LoadError> {
        Ok(Self {
            main_tls: s
                .tls
                .as_ref()
                .map(|t| ServerCert::load("server.tls", t))
                .transpose()?,
            admin_tls: s
                .admin_tls
                .as_ref()
                .map(|t| ServerCert::load("server.admin_tls", t))
                .transpose()?,
            admin_token: s.admin_token.as_deref().map(AdminToken::new),
            limits: conn::Limits::from(&s.limits),
        })
    }
}

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
    security: Security,
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
            security: Security::default(),
            readiness: Readiness::default(),
        })
    }

    /// Serves with these certificates and admin token (plain HTTP, unguarded by default).
    pub fn with_security(mut self, security: Security) -> Self {
        self.security = security;
        self
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
        let Security {
            main_tls,
            admin_tls,
            admin_token,
            limits,
        } = self.security;
        for cert in main_tls.iter().chain(admin_tls.iter()) {
            cert.spawn_reloader();
        }
        // Without a token, admin paths are served only on a loopback listener.
        let guarded = |r: Router, l: &TcpListener| {
            let loopback = l.local_addr().is_ok_and(|a| a.ip().is_loopback());
            admin::guard_listener(r, admin_token.clone(), loopback)
        };
        let mut tasks = tokio::task::JoinSet::new();
        match self.admin {
            Some(listener) => {
                let main = guarded(probes.clone().merge(mcp), &self.main);
                tasks.spawn(serve_one(
                    self.main,
                    main,
                    main_tls,
                    limits.clone(),
                    stop_rx.clone(),
                ));
                let admin = guarded(probes.merge(admin), &listener);
                tasks.spawn(serve_one(listener, admin, admin_tls, limits, stop_rx));
            }
            None => {
                let all = guarded(probes.merge(admin).merge(mcp), &self.main);
                tasks.spawn(serve_one(self.main, all, main_tls, limits, stop_rx));
            }
        }
        Running {
            readiness,
            stop: stop_tx,
            tasks,
        }
    }
}

/// Routes set after the listeners start serving: those that exist only once the replica has
/// joined the cluster (served from the start, answering 503 "starting" until they are set),
/// and the data plane's routes, which a config reload replaces. Each request runs on the
/// routes set when it arrived.
#[derive(Clone, Default)]
pub struct Late(Arc<arc_swap::ArcSwapOption<Router>>);

impl Late {
    /// The router to serve now.
    pub fn router(&self) -> Router {
        let me = self.clone();
        Router::new().fallback(move |req: axum::extract::Request| {
            let me = me.clone();
            async move {
                let current = me.0.load_full();
                match current {
                    Some(r) => Router::clone(&r).oneshot(req).await.into_response(),
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

    /// Fills the routes in, or replaces them.
    pub fn set(&self, r: Router) {
        self.0.store(Some(Arc::new(r)));
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

async fn serve_one(
    listener: TcpListener,
    app: Router,
    tls: Option<ServerCert>,
    limits: conn::Limits,
    stop: watch::Receiver<bool>,
) {
    let acceptor = tls.map(|cert| tokio_rustls::TlsAcceptor::from(cert.server_config()));
    conn::serve(listener, app, acceptor, limits, stop).await;
}

/// Listens for SIGTERM and Ctrl-C from the moment it is called (so a signal that comes while the
/// replica starts is not lost to the default action, which would kill the process without a
/// drain); the future resolves on the first of them. Call it inside the runtime, before starting.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::signal::unix::{SignalKind, signal};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    async move {
        let (Ok(mut term), Ok(mut int)) = (term, int) else {
            tracing::warn!("cannot listen for SIGTERM or SIGINT; stop mcpg with SIGKILL");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    }
}

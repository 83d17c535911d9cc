//! What the last attempt to reach an upstream found ([`Health`]), recorded by every connect,
//! era probe and shared-child start, and the probe each upstream gets when the gateway starts
//! ([`Upstream::probe`]): a broken upstream is found at boot, its cause logged at WARN and
//! named in the errors its clients get, not found on the first call.

use std::sync::{Arc, Mutex};

use serde::Serialize;

use super::{Hello, Kind, Upstream};
use crate::mcp::wire::jsonrpc::{RpcError, code};

/// An upstream's state as the last attempt to reach it found it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Health {
    /// `None` until something tried to reach it.
    pub up: Option<bool>,
    /// Why the last attempt failed (cleared by a success).
    pub error: Option<String>,
    /// When that was (milliseconds since the Unix epoch).
    pub checked_ms: u64,
}

/// An upstream's [`Health`], shared with its shared child's supervisor; every record also
/// sets the `mcpg_upstream_up` gauge.
#[derive(Clone)]
pub struct HealthCell {
    pub(super) binding: String,
    pub(super) upstream: String,
    health: Arc<Mutex<Health>>,
}

impl HealthCell {
    pub fn new(binding: &str, upstream: &str) -> Self {
        Self {
            binding: binding.to_owned(),
            upstream: upstream.to_owned(),
            health: Arc::default(),
        }
    }

    pub fn get(&self) -> Health {
        self.health.lock().expect("health lock").clone()
    }

    pub fn record<T>(&self, r: &Result<T, RpcError>) {
        crate::telemetry::metrics::metrics().upstream_up(&self.binding, &self.upstream, r.is_ok());
        let mut h = self.health.lock().expect("health lock");
        h.up = Some(r.is_ok());
        h.error = r.as_ref().err().map(|e| e.message.clone());
        h.checked_ms = crate::mcp::session::now_ms();
    }

    /// The error for a client whose request needs the upstream while it is known to be down:
    /// the cause the last attempt found, not merely "unavailable".
    pub fn unavailable(&self) -> RpcError {
        let h = self.get();
        let why = h.error.unwrap_or_else(|| "it is not connected".into());
        let prefix = format!("upstream `{}`", self.upstream);
        let message = if why.starts_with(&prefix) {
            format!("{why} (it is unavailable)")
        } else {
            format!("{prefix} is unavailable: {why}")
        };
        RpcError::new(code::CONNECTION_CLOSED, message)
    }
}

impl Upstream {
    /// What the last attempt to reach this upstream found.
    pub fn health(&self) -> Health {
        self.health.get()
    }

    /// The error for a request that needs this upstream while it is known to be down, with
    /// the cause the last attempt found.
    pub fn unavailable(&self) -> RpcError {
        self.health.unavailable()
    }

    /// Reaches the upstream once as a client would, and lets go: a stdio child is started and
    /// initialised (`per_session`: one probe child, then closed; `shared`: its supervisor's
    /// first start, waited for), an HTTP upstream gets its `initialize` (legacy; its session
    /// is then deleted) or `server/discover` round trip (the conversation 2026-07-28 clients
    /// then use). The outcome is recorded in [`Upstream::health`].
    pub async fn probe(&self) -> Result<(), RpcError> {
        if let Some(shared) = &self.shared {
            let mut rx = shared.clone();
            let started = tokio::time::timeout(
                self.timeout,
                rx.wait_for(|c| c.as_ref().is_some_and(|c| !c.is_closed())),
            )
            .await;
            return match started {
                Ok(Ok(_)) => Ok(()),
                _ => Err(self.health.unavailable()),
            };
        }
        let legacy = match &self.kind {
            Kind::Stdio { .. } => true,
            Kind::Http(_) => *self.speaks_modern.lock().expect("lock") == Some(false),
        };
        if legacy {
            let link = self.connect(&Hello::gateway(), None).await?;
            if link.owned {
                link.conn.close().await;
            }
            Ok(())
        } else {
            self.modern().await.map(drop)
        }
    }

    /// The periodic health probe of a pool's endpoint: [`Upstream::probe`], except that a
    /// conversation already open is asked for a round trip rather than trusted (the shared
    /// child and a bridging legacy session get `ping`, a 2026-07-28 conversation
    /// `server/discover`). The outcome is recorded as the probe's is.
    pub async fn check(&self) -> Result<(), RpcError> {
        let open = match &self.shared {
            Some(shared) => shared.borrow().clone().filter(|c| !c.is_closed()),
            None => self
                .modern
                .try_lock()
                .ok()
                .and_then(|m| m.clone())
                .filter(|h| !h.conn.is_closed())
                .map(|h| h.conn),
        };
        let Some(conn) = open else {
            return self.probe().await;
        };
        let deadline = self.deadline();
        let native =
            *self.speaks_modern.lock().expect("lock") == Some(true) && self.shared.is_none();
        let r = if native {
            super::discover(&conn, deadline)
                .await
                .map(drop)
                .ok_or_else(|| {
                    RpcError::new(
                        code::CONNECTION_CLOSED,
                        format!("upstream `{}` did not answer server/discover", self.name),
                    )
                })
        } else {
            match tokio::time::timeout_at(deadline, conn.call("ping", None)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) if e.code != code::CONNECTION_CLOSED => Ok(()),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(RpcError::new(
                    code::REQUEST_TIMEOUT,
                    format!("upstream `{}` did not answer ping in time", self.name),
                )),
            }
        };
        self.health.record(&r);
        r
    }
}

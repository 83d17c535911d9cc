//! Liveness and readiness: `GET /healthz` answers 200 while the process runs; `GET /readyz`
//! answers 200 only while the replica can serve: 503 while starting, draining, or while the
//! cluster coordinator does not answer its health check.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::Duration;

use mcpg_plugin_api::coordinator::Coordinator;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

/// Where the replica is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    Starting = 0,
    Ready = 1,
    Draining = 2,
}

/// Shared, cheaply cloned readiness state.
#[derive(Clone)]
pub struct Readiness(
    Arc<AtomicU8>,
    Arc<AtomicBool>,
    Arc<std::sync::OnceLock<UpstreamsReady>>,
);

/// Why the upstreams a binding requires (`ready_requires`) keep the replica unready, if they
/// do; the data plane's to say.
pub type UpstreamsReady = Arc<dyn Fn() -> Option<String> + Send + Sync>;

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("phase", &self.phase())
            .field("backend_ok", &self.backend_ok())
            .finish()
    }
}

impl Default for Readiness {
    fn default() -> Self {
        Self(
            Arc::new(AtomicU8::new(Phase::Starting as u8)),
            Arc::new(AtomicBool::new(true)),
            Arc::default(),
        )
    }
}

/// How often the coordinator's health is checked for `/readyz`.
const BACKEND_CHECK: Duration = Duration::from_secs(2);

impl Readiness {
    /// Checks the coordinator's health every two seconds for as long as the process runs;
    /// `/readyz` fails while it is unhealthy.
    pub fn watch_backend(&self, coordinator: Arc<dyn Coordinator>) {
        let ok = self.1.clone();
        tokio::spawn(async move {
            loop {
                let h = tokio::time::timeout(BACKEND_CHECK, coordinator.health()).await;
                let healthy = matches!(&h, Ok(h) if h.ok);
                if ok.swap(healthy, Ordering::AcqRel) != healthy {
                    match h {
                        Ok(h) if healthy => {
                            tracing::info!(detail = %h.detail, "cluster coordinator reachable again; ready")
                        }
                        Ok(h) => {
                            tracing::warn!(detail = %h.detail, "cluster coordinator unhealthy; not ready")
                        }
                        Err(_) => {
                            tracing::warn!("cluster coordinator health check timed out; not ready")
                        }
                    }
                }
                tokio::time::sleep(BACKEND_CHECK).await;
            }
        });
    }

    /// Whether the coordinator answered its last health check.
    pub fn backend_ok(&self) -> bool {
        self.1.load(Ordering::Acquire)
    }

    pub fn phase(&self) -> Phase {
        match self.0.load(Ordering::Acquire) {
            0 => Phase::Starting,
            1 => Phase::Ready,
            _ => Phase::Draining,
        }
    }

    /// Also requires the upstreams `check` names to be up (set once, at start).
    pub fn require_upstreams(&self, check: UpstreamsReady) {
        let _ = self.2.set(check);
    }

    /// Why required upstreams keep the replica unready, if they do.
    fn upstreams_down(&self) -> Option<String> {
        self.2.get().and_then(|f| f())
    }

    /// Marks the replica ready, unless it is already draining.
    pub fn set_ready(&self) {
        let _ = self.0.compare_exchange(
            Phase::Starting as u8,
            Phase::Ready as u8,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// Marks the replica as draining; it never becomes ready again.
    pub fn set_draining(&self) {
        self.0.store(Phase::Draining as u8, Ordering::Release);
    }
}

/// The `/healthz` and `/readyz` routes.
pub fn router(readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(readiness)
}

async fn readyz(State(r): State<Readiness>) -> (StatusCode, String) {
    let unavailable = |why: &str| (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n"));
    match r.phase() {
        Phase::Ready if !r.backend_ok() => unavailable("cluster coordinator unreachable"),
        Phase::Ready => match r.upstreams_down() {
            Some(why) => unavailable(&why),
            None => (StatusCode::OK, "ready\n".into()),
        },
        Phase::Starting => unavailable("starting"),
        Phase::Draining => unavailable("draining"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    async fn status(r: &Readiness, path: &str) -> StatusCode {
        router(r.clone())
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap()
            .status()
    }

    #[tokio::test]
    async fn readiness_follows_the_phase() {
        let r = Readiness::default();
        assert_eq!(status(&r, "/healthz").await, StatusCode::OK);
        assert_eq!(status(&r, "/readyz").await, StatusCode::SERVICE_UNAVAILABLE);
        r.set_ready();
        assert_eq!(status(&r, "/readyz").await, StatusCode::OK);
        r.set_draining();
        r.set_ready();
        assert_eq!(status(&r, "/readyz").await, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(status(&r, "/healthz").await, StatusCode::OK);
    }

    #[tokio::test]
    async fn required_upstreams_that_are_down_keep_the_replica_unready() {
        let r = Readiness::default();
        r.set_ready();
        let down = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let d = down.clone();
        r.require_upstreams(Arc::new(move || {
            d.load(Ordering::Acquire)
                .then(|| "upstream `time` of binding `b` is not up".to_owned())
        }));
        assert_eq!(status(&r, "/readyz").await, StatusCode::SERVICE_UNAVAILABLE);
        down.store(false, Ordering::Release);
        assert_eq!(status(&r, "/readyz").await, StatusCode::OK);
    }
}

//! The MCP data plane: each binding's endpoint on `server.listen`, served as one MCP server
//! made of the binding's upstreams.
//!
//! - [`wire`]: messages as raw JSON objects (lossless), revisions by era, the 2026-07-28
//!   per-request `_meta` keys and metadata headers (pure).
//! - [`names`]: prefixing and routing across several upstreams (pure).
//! - [`upstream`]: connections to upstream servers (stdio, Streamable HTTP).
//! - [`session`]: legacy-era sessions: records in the `sessions` capability, live state here.
//! - [`binding`]: one binding's request handling, relaying and list merging.
//! - [`modern`]: 2026-07-28 requests: discovery, native forwarding, and the bridge to legacy
//!   upstreams (input-required rounds, signed `requestState`).
//! - [`stamped`]: legacy sessions in front of upstreams that speak only 2026-07-28.
//! - [`ownership`]: which replica owns each session, the peer directory, takeover probes.
//! - [`forward`]: forwarding a request to the replica that owns its session.
//! - [`guard`]: DNS-rebinding protection.
//! - [`http`]: the downstream Streamable HTTP endpoint.

pub mod access;
pub mod binding;
pub mod bridge;
pub mod cluster;
pub mod front;
pub mod limits;
pub mod observe;
pub mod relay;
pub mod route;
pub mod serve;
pub mod session;
pub mod tasks;
pub mod upstream;
pub mod wire;

use std::sync::Arc;
use std::time::Duration;

use crate::capabilities::Capabilities;
use crate::config::ValidatedConfig;
use binding::Binding;
use cluster::forward;
use cluster::ownership::Ownership;
use front::guard;
use session::Sessions;
use tokio::sync::watch;

/// The bindings being served now: one generation, swapped whole by a config reload
/// (`crate::reload`). Requests hold the `Arc<Binding>` they started with.
pub type Bindings = Arc<arc_swap::ArcSwap<Vec<Arc<Binding>>>>;

/// The data plane of one replica.
pub struct Gateway {
    bindings: Bindings,
    /// What bindings are built with (a reload builds new ones).
    caps: Capabilities,
    pub sessions: Arc<Sessions>,
    pub ownership: Arc<Ownership>,
    pub forwarder: forward::Forwarder,
    pub guard: guard::Guard,
    pub max_body: usize,
    /// `listen` serves HTTPS (for URLs derived from requests).
    pub tls: bool,
    /// Exchanges of 2026-07-28 clients parked between input-required rounds, and the key
    /// signing their `requestState`.
    pub bridge: Arc<bridge::modern_to_legacy::Bridge>,
    /// The audit log every request is recorded in (when enabled).
    pub auditor: crate::audit::Auditor,
    /// Set at the drain deadline: long-lived streams end (with a reconnect hint).
    closing: watch::Sender<bool>,
    /// What this replica shares about its upstream pools (set once in `new`).
    pools: std::sync::OnceLock<Arc<cluster::pool_views::PoolViews>>,
}

impl Gateway {
    /// Builds every binding and its upstreams (shared stdio children start now; per-session
    /// ones start with their sessions).
    pub fn new(
        cfg: &ValidatedConfig,
        caps: Capabilities,
        ownership: Arc<Ownership>,
        auditor: crate::audit::Auditor,
    ) -> anyhow::Result<Arc<Self>> {
        let c = &cfg.config;
        let node_id = ownership.node_id().to_owned();
        let services = Arc::new(session::Services {
            delivery: session::delivery::Delivery::new(
                caps.delivery.clone(),
                c.mcp.sessions.event_log_max_events,
                Duration::from_millis(c.mcp.sessions.event_log_max_age_ms),
            ),
            server_requests: session::server_requests::ServerRequests::new(caps.pipelines.clone()),
            inflight: Default::default(),
            cancellation: caps.cancellation.clone(),
            ownership: ownership.clone(),
        });
        relay::cancel::spawn_listener(services.inflight.clone(), caps.cancellation.clone());
        let timeout = Duration::from_millis(c.mcp.limits.request_timeout_ms);
        let bindings = c
            .bindings
            .iter()
            .map(|b| {
                Binding::new(b, &cfg.base_dir, timeout, &caps, &cfg.parsed)
                    .map_err(|e| anyhow::anyhow!("binding `{}`: {e}", b.name))
            })
            .collect::<anyhow::Result<Vec<Arc<Binding>>>>()?;
        let gw = Arc::new(Self {
            bindings: Arc::new(arc_swap::ArcSwap::from_pointee(bindings)),
            caps: caps.clone(),
            sessions: Sessions::new(
                caps.sessions.clone(),
                services,
                ownership.clone(),
                (
                    Duration::from_millis(c.mcp.sessions.idle_ttl_ms),
                    Duration::from_millis(c.mcp.sessions.unused_ttl_ms),
                ),
                c.mcp.sessions.max_sessions as usize,
            ),
            forwarder: forward::Forwarder::new(
                ownership.secret().to_owned(),
                node_id,
                c.server.forwarding_ca_file.as_deref(),
            ),
            bridge: bridge::modern_to_legacy::Bridge::new(
                ownership.node_id().to_owned(),
                caps.pipelines.clone(),
            ),
            ownership,
            closing: watch::channel(false).0,
            guard: guard::Guard::new(
                cfg.listen.ip().is_loopback(),
                &c.server.allowed_hosts,
                &c.server.allowed_origins,
            ),
            max_body: c.mcp.limits.max_request_bytes as usize,
            tls: c.server.tls.is_some(),
            auditor,
            pools: Default::default(),
        });
        let views = cluster::pool_views::PoolViews::start(
            caps.pools.clone(),
            gw.bindings.clone(),
            &gw.sessions,
            gw.ownership.clone(),
        );
        let _ = gw.pools.set(views);
        gw.sessions.spawn_sweeper(gw.bindings.clone());
        gw.probe_upstreams(&gw.bindings(), &[]);
        Ok(gw)
    }

    /// What this replica shares about its upstream pools.
    pub fn pool_views(&self) -> &Arc<cluster::pool_views::PoolViews> {
        self.pools.get().expect("set in Gateway::new")
    }

    /// The bindings served now.
    pub fn bindings(&self) -> Arc<Vec<Arc<Binding>>> {
        self.bindings.load_full()
    }

    /// The bindings of `cfg` for a reload: those `kept` by name are the same objects; the
    /// rest are built anew, reusing the pools of the upstreams in `pools` (by binding, then
    /// upstream name). Nothing is served until [`Gateway::install`].
    pub fn build_bindings(
        &self,
        cfg: &ValidatedConfig,
        kept: &[&str],
        pools: &dyn Fn(&str) -> Vec<Arc<upstream::pool::Pool>>,
    ) -> anyhow::Result<Vec<Arc<Binding>>> {
        let now = self.bindings();
        let timeout = Duration::from_millis(cfg.config.mcp.limits.request_timeout_ms);
        cfg.config
            .bindings
            .iter()
            .map(|b| match now.iter().find(|n| n.name == b.name) {
                Some(n) if kept.contains(&b.name.as_str()) => Ok(n.clone()),
                _ => Binding::with_pools(
                    b,
                    &cfg.base_dir,
                    timeout,
                    &self.caps,
                    &cfg.parsed,
                    &pools(&b.name),
                )
                .map_err(|e| anyhow::anyhow!("binding `{}`: {e}", b.name)),
            })
            .collect()
    }

    /// Serves `next` from now on (the caller swaps the routes). Sessions served here of the
    /// bindings in `ending` end (their clients get 404); those of the bindings in `moving`
    /// move to the new binding, forgetting the upstreams named with each (in the background:
    /// each once no request of it runs). The upstreams that are new are probed.
    pub async fn install(
        &self,
        next: Vec<Arc<Binding>>,
        ending: &[String],
        moving: Vec<(String, Vec<String>)>,
    ) {
        let before = self.bindings.swap(Arc::new(next));
        for b in before.iter() {
            if ending.contains(&b.name) || moving.iter().any(|(n, _)| *n == b.name) {
                b.retire();
            }
        }
        let longest = before.iter().map(|b| b.longest_timeout()).max();
        // A session of the old config that a request was still creating when its binding
        // went is caught by a second pass, once such a request has timed out at the latest.
        let second = longest.unwrap_or_default() + Duration::from_secs(1);
        for name in ending {
            let n = self.sessions.end_binding(name).await;
            if n > 0 {
                tracing::info!(binding = %name, sessions = n, "config reload: the removed binding's sessions ended");
            }
            let (sessions, current, name) =
                (self.sessions.clone(), self.bindings.clone(), name.clone());
            tokio::spawn(async move {
                tokio::time::sleep(second).await;
                let now = current.load_full();
                sessions
                    .end_where(&|l| l.binding.name == name && !now.iter().any(|b| b.name == name))
                    .await;
            });
        }
        for (name, forget) in moving {
            let Some(was) = before.iter().find(|b| b.name == name) else {
                continue;
            };
            let (sessions, current, deadline) = (
                self.sessions.clone(),
                self.bindings.clone(),
                tokio::time::Instant::now() + was.longest_timeout(),
            );
            tokio::spawn(async move {
                let stale = |l: &session::Live| {
                    l.binding.name == name
                        && !current
                            .load()
                            .iter()
                            .any(|b| b.serves_sessions_of(&l.binding))
                };
                let n = sessions.move_where(&stale, &forget, deadline).await;
                if n > 0 {
                    tracing::info!(binding = %name, sessions = n, "config reload: the binding's sessions move to its new upstreams");
                }
                tokio::time::sleep(second).await;
                let late = deadline + second;
                sessions.move_where(&stale, &forget, late).await;
            });
        }
        let old: Vec<Arc<upstream::pool::Pool>> = before
            .iter()
            .flat_map(|b| b.upstreams.iter().cloned())
            .collect();
        self.probe_upstreams(&self.bindings(), &old);
    }

    /// Every binding's upstreams with what the last attempt to reach each found, for
    /// `/api/cluster/status`.
    pub fn upstream_status(&self) -> serde_json::Value {
        let all: Vec<serde_json::Value> = self
            .bindings()
            .iter()
            .flat_map(|b| {
                b.upstreams.iter().map(|u| {
                    let h = u.health();
                    serde_json::json!({
                        "binding": b.name,
                        "upstream": u.name,
                        "state": match h.up { Some(true) => "up", Some(false) => "down", None => "unknown" },
                        "error": h.error,
                        "checked_ms": h.checked_ms,
                    })
                })
            })
            .collect();
        serde_json::Value::Array(all)
    }

    /// Why the upstreams bindings require for readiness (`ready_requires`) keep this replica
    /// unready: the first that is not known to be up.
    pub fn required_upstreams_down(&self) -> Option<String> {
        self.bindings().iter().find_map(|b| {
            b.upstreams
                .iter()
                .filter(|u| b.ready_requires.contains(&u.name))
                .find(|u| u.health().up != Some(true))
                .map(|u| format!("upstream `{}` of binding `{}` is not up", u.name, b.name))
        })
    }

    /// Reaches every upstream once, in the background (see `Upstream::probe`): a broken one
    /// is found at start, its cause logged at WARN and kept for its clients' errors and
    /// `/api/cluster/status`.
    /// Upstreams already in `known` (the same pools) are not probed again.
    fn probe_upstreams(&self, bindings: &[Arc<Binding>], known: &[Arc<upstream::pool::Pool>]) {
        for b in bindings {
            for up in b
                .upstreams
                .iter()
                .filter(|u| !known.iter().any(|k| Arc::ptr_eq(k, u)))
            {
                let (binding, up) = (b.name.clone(), up.clone());
                tokio::spawn(async move {
                    match up.probe().await {
                        Ok(()) => {
                            tracing::info!(binding, upstream = %up.name, "upstream reachable")
                        }
                        Err(e) => {
                            tracing::warn!(binding, upstream = %up.name, cause = %e.message, "upstream unavailable")
                        }
                    }
                });
            }
        }
    }

    /// Shutdown, first step: this replica starts no session and takes none over; new
    /// sessions and sessions left without an owner go to other replicas.
    pub fn begin_drain(&self) {
        self.ownership.set_draining();
    }

    /// Hands every session served here over to the cluster, each once it has no request
    /// running, all by `deadline`.
    pub async fn hand_over(&self, deadline: tokio::time::Instant) {
        self.sessions.hand_over_all(deadline).await;
    }

    /// Ends long-lived streams (GET streams), each with a reconnect hint.
    pub fn close_streams(&self) {
        self.closing.send_replace(true);
    }

    /// Resolves when long-lived streams must end.
    pub fn streams_closing(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.closing.subscribe();
        async move {
            let _ = rx.wait_for(|c| *c).await;
        }
    }

    /// Last step of a shutdown: lets go of anything left and gives the ownership lease up.
    pub async fn shutdown(&self) {
        self.sessions.close_all().await;
        self.ownership.release().await;
    }
}
#[cfg(test)]
mod tests;

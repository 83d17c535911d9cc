//! One binding as configured: its path, its upstreams and how their names are prefixed, its
//! failure policy, its access rules, its rate limits and the store recording who owns each
//! task. Plain data:
//! what a request does with it is decided in `route/`, `relay/` and `bridge/`.

use std::sync::Arc;
use std::time::Duration;

use crate::capabilities::{Capabilities, Capability};
use crate::config::model::{BindingConfig, FailurePolicy, PrefixMode};
use crate::config::parsed::Parsed;
use crate::mcp::route::names::{Naming, UpstreamIdx};
use crate::mcp::upstream::pool::Pool;
use crate::telemetry::metrics::RequestRecorder;

pub struct Binding {
    pub name: String,
    pub path: String,
    pub naming: Naming,
    pub upstreams: Vec<Arc<Pool>>,
    policy: FailurePolicy,
    /// The `tasks` capability: who created each task (see `mcp::tasks`).
    pub tasks: Capability,
    /// Who may call this binding and what each caller may use.
    pub access: crate::mcp::access::Access,
    /// The upstreams this replica needs up to be ready (`ready_requires`).
    pub ready_requires: Vec<String>,
    /// Rate limits, quotas and concurrency limits (`rate_limits`).
    pub limits: crate::mcp::limits::Limits,
    /// Request metrics by upstream index; the last for requests that reached none.
    pub recorders: Vec<Arc<RequestRecorder>>,
    /// Set when a config reload removed or replaced this binding: its GET streams end.
    retired: tokio::sync::watch::Sender<bool>,
}

impl Binding {
    pub fn new(
        cfg: &BindingConfig,
        base_dir: &std::path::Path,
        default_timeout: Duration,
        caps: &Capabilities,
        parsed: &Parsed,
    ) -> anyhow::Result<Arc<Self>> {
        Self::with_pools(cfg, base_dir, default_timeout, caps, parsed, &[])
    }

    /// [`Binding::new`], reusing the pools in `kept` (by upstream name) instead of building
    /// them: a config reload keeps an unchanged upstream's children, connections and health.
    pub fn with_pools(
        cfg: &BindingConfig,
        base_dir: &std::path::Path,
        default_timeout: Duration,
        caps: &Capabilities,
        parsed: &Parsed,
        kept: &[Arc<Pool>],
    ) -> anyhow::Result<Arc<Self>> {
        let prefix = match cfg.prefix {
            PrefixMode::Auto => cfg.upstreams.len() > 1,
            PrefixMode::Always => true,
            PrefixMode::Never => false,
        };
        let recorders = cfg
            .upstreams
            .iter()
            .map(|u| Some(u.name.as_str()))
            .chain([None])
            .map(|u| Arc::new(RequestRecorder::new(&cfg.name, u)))
            .collect();
        Ok(Arc::new(Self {
            retired: tokio::sync::watch::channel(false).0,
            recorders,
            access: crate::mcp::access::Access::new(cfg, parsed)?,
            ready_requires: cfg.ready_requires.clone(),
            name: cfg.name.clone(),
            path: cfg.path.clone(),
            naming: Naming {
                prefix,
                sep: cfg.separator.clone(),
                upstreams: cfg.upstreams.iter().map(|u| u.name.clone()).collect(),
            },
            upstreams: cfg
                .upstreams
                .iter()
                .map(|u| match kept.iter().find(|p| p.name == u.name) {
                    Some(p) => Ok(p.clone()),
                    None => Pool::new(&cfg.name, u, parsed, base_dir, default_timeout)
                        .map_err(|e| anyhow::anyhow!("upstream `{}`: {e}", u.name)),
                })
                .collect::<anyhow::Result<_>>()?,
            policy: cfg.on_upstream_failure,
            tasks: caps.tasks.clone(),
            limits: crate::mcp::limits::Limits::new(
                cfg,
                parsed.limits(&cfg.name),
                &caps.rate_limits.store,
                crate::mcp::limits::budget::Clock::system(),
            ),
        }))
    }

    /// The longest request timeout among the binding's upstreams: a client's budget for one
    /// request (what a forward tells the owner).
    pub fn longest_timeout(&self) -> std::time::Duration {
        self.upstreams
            .iter()
            .map(|u| u.timeout)
            .max()
            .unwrap_or_default()
    }

    /// Whether a session started on `other` can go on here: the same upstream pools, in the
    /// same order (its conversations are one per upstream, by index), at the same path.
    pub fn serves_sessions_of(&self, other: &Binding) -> bool {
        self.path == other.path
            && self.naming.prefix == other.naming.prefix
            && self.naming.sep == other.naming.sep
            && self.upstreams.len() == other.upstreams.len()
            && self
                .upstreams
                .iter()
                .zip(&other.upstreams)
                .all(|(a, b)| Arc::ptr_eq(a, b))
    }

    /// The upstreams of `other` that this binding does not serve with the same pool
    /// (replaced or removed), by name.
    pub fn replaced_upstreams_of(&self, other: &Binding) -> Vec<String> {
        other
            .upstreams
            .iter()
            .filter(|o| !self.upstreams.iter().any(|u| Arc::ptr_eq(u, o)))
            .map(|o| o.name.clone())
            .collect()
    }

    /// A config reload removed or replaced this binding: its long-lived streams end (each
    /// with a reconnect hint), so nothing holds it and its upstreams any longer.
    pub fn retire(&self) {
        self.retired.send_replace(true);
    }

    /// Resolves once the binding is retired.
    pub fn retiring(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.retired.subscribe();
        async move {
            let _ = rx.wait_for(|r| *r).await;
        }
    }

    /// The index of every upstream, in order.
    pub fn indices(&self) -> impl Iterator<Item = UpstreamIdx> + use<> {
        UpstreamIdx::all(self.upstreams.len())
    }

    /// Whether an upstream of this binding sees some of the client's headers.
    pub fn passes_headers(&self) -> bool {
        self.upstreams.iter().any(|u| u.passes_headers())
    }

    pub fn fail_closed(&self) -> bool {
        self.policy == FailurePolicy::FailClosed
    }

    pub(crate) fn single_passthrough(&self) -> bool {
        self.upstreams.len() == 1 && !self.naming.prefix
    }
}

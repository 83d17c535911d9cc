//! One binding: several upstreams served as one MCP server. Routes each client request to
//! its upstream (or to all of them, merging list results page by page), relays what the
//! upstream sends back for it (progress, log messages, server requests, the response), and
//! relays server-to-client requests through the `pipelines` capability so the client's answer
//! finds the upstream that asked.

use std::sync::Arc;
use std::time::Duration;

use crate::capabilities::Capabilities;
use crate::config::model::{BindingConfig, FailurePolicy, PrefixMode};
use crate::mcp::relay::cancel::Inflight;
use crate::mcp::route::names::Naming;
use crate::mcp::session::delivery::Delivery;
use crate::mcp::session::server_requests::ServerRequests;
use crate::mcp::upstream::Upstream;

/// Everything bindings share on this replica.
pub struct Context {
    pub caps: Capabilities,
    /// Requests running here, for cancellation.
    pub inflight: Arc<Inflight>,
    /// Messages for legacy sessions' GET streams.
    pub delivery: Delivery,
    /// Server-to-client requests awaiting the client's answer.
    pub server_requests: ServerRequests,
}

pub struct Binding {
    pub name: String,
    pub path: String,
    pub naming: Naming,
    pub upstreams: Vec<Arc<Upstream>>,
    policy: FailurePolicy,
    pub(crate) ctx: Arc<Context>,
    /// Who may call this binding and what each caller may use.
    pub access: crate::mcp::access::Access,
}

impl Binding {
    pub fn new(
        cfg: &BindingConfig,
        base_dir: &std::path::Path,
        default_timeout: Duration,
        ctx: Arc<Context>,
    ) -> anyhow::Result<Arc<Self>> {
        let prefix = match cfg.prefix {
            PrefixMode::Auto => cfg.upstreams.len() > 1,
            PrefixMode::Always => true,
            PrefixMode::Never => false,
        };
        Ok(Arc::new(Self {
            access: crate::mcp::access::Access::new(cfg)?,
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
                .map(|u| {
                    Upstream::new(&cfg.name, u, base_dir, default_timeout)
                        .map_err(|e| anyhow::anyhow!("upstream `{}`: {e}", u.name))
                })
                .collect::<anyhow::Result<_>>()?,
            policy: cfg.on_upstream_failure,
            ctx,
        }))
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

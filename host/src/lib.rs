//! mcpg: a gateway for the Model Context Protocol whose replicas behave as one server.
//!
//! Map of the crate:
//! - [`config`]: the one configuration loader (parse, interpolate, schema, semantic rules) shared
//!   by `mcpg` and `mcpg-config-check`, and the generated reference docs.
//! - [`coordinator`]: choosing, loading, validating and booting the cluster coordinator.
//! - [`oci`]: plugins from OCI registries: the artifact format, the cache, pull and push.
//! - [`control`]: presence, leader election and the `/api/cluster/*` admin endpoints.
//! - [`capabilities`]: the store and bus of each capability (sessions, tasks, …).
//! - [`mcp`]: the MCP data plane: bindings, upstreams, sessions, both protocol eras.
//! - [`identity`]: this replica's node id.
//! - [`errors`]: errors rendered with their chain of causes.
//! - [`server`]: the HTTP listeners, health and readiness, graceful shutdown.
//! - [`telemetry`]: logs, metrics and traces.
//! - [`audit`]: the audit log of MCP requests (sinks, hash chain, `mcpg audit verify`).
//! - [`auth`]: downstream authentication and per-identity access rules.
//! - [`tls`]: listener certificates (reloaded on change) and custom CAs for outgoing TLS.
//! - [`reload`]: changing a running replica's config (what changed, applied without a
//!   restart).
//! - [`cli`]: the `mcpg` command line and boot sequence.
//! - `fuzzing` (hidden): the entry points of the fuzz targets in `fuzz/` and their replay test.

pub mod audit;
pub mod auth;
pub mod capabilities;
pub mod cli;
pub mod config;
pub mod control;
pub mod coordinator;
pub mod errors;
#[doc(hidden)]
pub mod fuzzing;
pub mod identity;
pub mod mcp;
pub mod oci;
pub mod reload;
pub mod server;
pub mod telemetry;
pub mod tls;

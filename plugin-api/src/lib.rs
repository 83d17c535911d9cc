//! The stable interface mcpg coordinator plugins are built against.
//!
//! mcpg replicas share state through a *cluster coordinator*. `cluster.kind: <kind>` in the
//! config selects the plugin `dev.mcpg.cluster.<kind>`, a native library (`cdylib`) that mcpg
//! loads at boot. This crate is everything such a plugin needs: the [`Coordinator`] trait with
//! its four primitives, the [`Plugin`](export::Plugin) trait, the [`export_plugin!`] macro and
//! the boundary types. Its companion crate `mcpg-plugin-testkit` proves a coordinator correct
//! with one call.
//!
//! # A complete minimal plugin
//!
//! `Cargo.toml`:
//!
//! ```toml
//! [package]
//! name = "mcpg-cluster-acme"
//! edition = "2024"
//!
//! [lib]
//! crate-type = ["cdylib", "rlib"]   # the .so mcpg loads, and an rlib for in-process tests
//!
//! # Publishable, but not on crates.io yet: depend on the mcpg repository by git (pinned to
//! # the release you target) or by path to a checkout.
//! [dependencies]
//! mcpg-plugin-api = { git = "<mcpg repository URL>", tag = "v0.1.0" }
//! serde_json = "1"
//!
//! [dev-dependencies]
//! mcpg-plugin-testkit = { git = "<mcpg repository URL>", tag = "v0.1.0" }
//! tokio = { version = "1", features = ["rt-multi-thread", "macros"] }
//! async-trait = "0.1"
//! ```
//!
//! Your Tokio and serde versions need not match mcpg's (each library links its own Tokio;
//! `abi_stable` comes through this crate). The `mcpg-plugin-api` version must be compatible
//! with the mcpg that loads the library, which checks it at load.
//!
//! `src/lib.rs`:
//!
//! ```
//! use std::sync::Arc;
//! use mcpg_plugin_api::prelude::*;
//!
//! pub struct Acme;
//!
//! impl Plugin for Acme {
//!     // `cluster.kind: acme` selects this plugin.
//!     const ID: &'static str = "dev.mcpg.cluster.acme";
//!
//!     fn config_schema() -> serde_json::Value {
//!         serde_json::json!({
//!             "type": "object",
//!             "additionalProperties": false,
//!             "required": ["endpoint"],
//!             "properties": {
//!                 "endpoint": {"type": "string", "description": "acme:// URL of the backend"},
//!                 "node_id": {"type": "string"}
//!             }
//!         })
//!     }
//!
//!     // Pure: no network, no files. Every finding, each at a JSON pointer into the config.
//!     fn validate(config: &serde_json::Value) -> Vec<PluginDiagnostic> {
//!         let mut out = mcpg_plugin_api::schema_check::check(&Self::config_schema(), config);
//!         if let Some(e) = config.get("endpoint").and_then(|v| v.as_str())
//!             && !e.starts_with("acme://")
//!         {
//!             out.push(PluginDiagnostic::error("/endpoint", "must be an acme:// URL"));
//!         }
//!         out
//!     }
//!
//!     // Runs on the plugin's own Tokio runtime. Connect, then return the coordinator.
//!     async fn boot(config: serde_json::Value, host: HostInfo) -> Result<Arc<dyn Coordinator>, String> {
//!         let node_id = host.node_id.unwrap_or_else(|| "acme-node".into());
//!         // A real plugin connects to `config["endpoint"]` here and returns its own
//!         // `impl Coordinator`; this one stands in with the in-process store.
//!         let store = mcpg_plugin_api::memory::MemoryStore::new(Default::default());
//!         Ok(Arc::new(store.handle(node_id)))
//!     }
//! }
//!
//! export_plugin!(Acme);
//! # fn main() {}
//! ```
//!
//! Build it with `cargo build --release` and point a config at the library:
//!
//! ```yaml
//! cluster:
//!   kind: acme
//!   endpoint: "acme://10.0.0.1"
//! plugins:
//!   - id: dev.mcpg.cluster.acme
//!     source: {path: ./target/release/libmcpg_cluster_acme.so}
//! ```
//!
//! `mcpg-config-check` then runs your `validate` on the `cluster` keys and reports each finding
//! at its line and column.
//!
//! # Backends with the usual building blocks: the layer
//!
//! A backend with a compare-and-set on a key, expiry and a notification channel implements
//! the small [`layer::Store`] trait instead, and [`layer::Layer`] derives the whole
//! coordinator (leases with fencing tokens, presence, watches, wildcard pub/sub), each
//! primitive overridable. [`support`] holds the building blocks for a backend that writes its
//! `Coordinator` by hand. The contract's corners are decided in the [`Coordinator`] docs.
//!
//! # Testing it
//!
//! Implement `mcpg_plugin_testkit::Harness` (how to make another instance over the same
//! backend) and call `mcpg_plugin_testkit::run(&harness).await.assert_passed()`. Run it against
//! the rlib in-process (`LoadedPlugin::from_module(export::root_module::<Acme>(), ..)`) and
//! against the built `.so` (`LoadedPlugin::load(path, Some(Acme::ID))`); both go through the
//! same boundary adapter; `mcpg_plugin_testkit::built_library` finds the `.so` that
//! `cargo test` builds beside the test. `plugins/template` in the mcpg repository does exactly
//! this, and `docs/plugins.md` walks through it all.
//!
//! # The rules of the boundary
//!
//! - Each library links its own Tokio. A plugin owns its runtime ([`export::runtime`]); every
//!   future the host polls completes over a runtime-agnostic channel, so the host never touches
//!   the plugin's Tokio. Dropping a future or stream on the host cancels the work in the plugin.
//! - No panic crosses the boundary: every entry point catches it. A panic in `boot` or
//!   `validate` fails that call with a message; a panic in a primitive fails that one call with
//!   [`ErrorKind::Panicked`](coordinator::ErrorKind::Panicked).
//! - The root module ([`abi::PluginMod`]) only grows by appending. mcpg checks its layout and
//!   this crate's version (semver-compatible) at load, and refuses a mismatch naming both
//!   versions. Libraries are never unloaded.
//!
//! [`Coordinator`]: coordinator::Coordinator

pub mod abi;
pub mod coordinator;
pub mod export;
pub mod layer;
pub mod memory;
pub mod remote;
pub mod schema_check;
pub mod support;
#[cfg(feature = "tls")]
pub mod tls;

#[doc(hidden)]
pub use abi_stable;

/// Every cluster coordinator plugin's id starts with this prefix, followed by its kind.
pub const CLUSTER_PLUGIN_PREFIX: &str = "dev.mcpg.cluster.";

/// The plugin id that serves `cluster.kind: <kind>`: `dev.mcpg.cluster.<kind>`.
pub fn cluster_plugin_id(kind: &str) -> String {
    format!("{CLUSTER_PLUGIN_PREFIX}{kind}")
}

/// Everything a plugin author needs, in one import.
pub mod prelude {
    pub use crate::coordinator::{
        CasOutcome, CoordError, CoordResult, Coordinator, Entry, ErrorKind, Health, KvEvent, Lease,
        Message, Peer, PeerEvent, Presence, subject_matches,
    };
    pub use crate::export::{HostInfo, Plugin, PluginDiagnostic, Severity};
    pub use crate::export_plugin;
    pub use async_trait::async_trait;
    pub use futures::stream::BoxStream;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `export_plugin!` spells out the symbol abi_stable looks a root module up by, so that
    /// plugin crates need no direct abi_stable dependency. This fails if abi_stable renames it.
    #[test]
    fn export_symbol_matches_abi_stable() {
        assert_eq!(
            abi_stable::library::ROOT_MODULE_LOADER_NAME,
            "_1as_0lib_1header_0root_bmodule_bloader"
        );
    }

    #[test]
    fn kinds_map_to_plugin_ids() {
        assert_eq!(cluster_plugin_id("redis"), "dev.mcpg.cluster.redis");
    }
}

//! The stable interface mcpg coordinator plugins are built against.
//!
//! Filled in below; see `docs/plugins.md` for the walk-through.

pub mod abi;
pub mod coordinator;
pub mod export;
pub mod memory;
pub mod remote;
pub mod schema_check;

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

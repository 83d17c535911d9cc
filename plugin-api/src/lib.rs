//! The stable interface mcpg coordinator plugins are built against.
//!
//! This crate is shared by the host and every plugin, so it holds only what both sides must agree
//! on. Today that is the naming contract between `cluster.kind` and plugin ids; the ABI itself
//! (the plugin's root module, the four coordinator primitives) grows here by appending.

/// Every cluster coordinator plugin's id starts with this prefix, followed by its kind.
pub const CLUSTER_PLUGIN_PREFIX: &str = "dev.mcpg.cluster.";

/// The plugin id that serves `cluster.kind: <kind>`: `dev.mcpg.cluster.<kind>`.
pub fn cluster_plugin_id(kind: &str) -> String {
    format!("{CLUSTER_PLUGIN_PREFIX}{kind}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_plugin_ids() {
        assert_eq!(cluster_plugin_id("redis"), "dev.mcpg.cluster.redis");
    }
}

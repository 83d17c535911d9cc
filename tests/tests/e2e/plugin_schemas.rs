//! Each shipped plugin's config schema, as the built library exports it, is committed under
//! `schemas/plugins/` and must not drift. `MCPG_BLESS=1` rewrites the files.

use crate::harness::{cdylib, repo_root};

#[test]
fn committed_plugin_schemas_match_what_the_libraries_export() {
    let dir = repo_root().join("schemas/plugins");
    let bless = std::env::var_os("MCPG_BLESS").is_some();
    for kind in ["redis", "nats", "etcd", "consul"] {
        let id = format!("dev.mcpg.cluster.{kind}");
        let plugin = mcpg_plugin_api::remote::LoadedPlugin::load(
            &cdylib(&format!("mcpg_cluster_{kind}")),
            Some(&id),
        )
        .unwrap();
        let mut text = serde_json::to_string_pretty(&plugin.config_schema()).unwrap();
        text.push('\n');
        let path = dir.join(format!("{id}.schema.json"));
        if bless {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &text).unwrap();
            continue;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == text,
            "{} is out of date with the plugin's config types; run `MCPG_BLESS=1 cargo test -p mcpg-e2e plugin_schemas` and commit the result",
            path.display()
        );
    }
}

//! The committed JSON Schema and configuration reference must match what the Rust types
//! generate. `MCPG_BLESS=1` rewrites them.

use std::path::Path;

fn check(path: &Path, generated: &str) {
    if std::env::var_os("MCPG_BLESS").is_some() {
        std::fs::write(path, generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is out of date with the config types; run `MCPG_BLESS=1 cargo test -p mcpg --test schema_drift` and commit the result",
        path.display()
    );
}

#[test]
fn committed_schema_and_reference_match_the_types() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let schema = mcpg::config::app_config_schema();
    let mut text = serde_json::to_string_pretty(&schema).unwrap();
    text.push('\n');
    check(&root.join("schemas/app-config.schema.json"), &text);
    check(
        &root.join("docs/configuration.md"),
        &mcpg::config::reference::configuration_markdown(&schema),
    );
}

//! The template plugin passes the coordinator test kit in-process (linked as an rlib, through
//! the same FFI adapter a loaded library uses) and as the `.so` mcpg loads.

use std::sync::Arc;
use std::time::Duration;

use mcpg_cluster_template::TemplatePlugin;
use mcpg_plugin_api::coordinator::Coordinator;
use mcpg_plugin_api::export::Plugin;
use mcpg_plugin_api::export::{HostInfo, root_module};
use mcpg_plugin_api::memory::lease_key;
use mcpg_plugin_api::remote::LoadedPlugin;
use mcpg_plugin_testkit::{Harness, built_library, run};

struct PluginHarness(LoadedPlugin);

#[async_trait::async_trait]
impl Harness for PluginHarness {
    async fn instance(&self, node_id: &str) -> Arc<dyn Coordinator> {
        let plugin = self.0.clone();
        let host = HostInfo {
            node_id: Some(node_id.to_owned()),
            host_version: "test".into(),
        };
        tokio::task::spawn_blocking(move || {
            plugin.boot(&serde_json::json!({"peer_ttl_ms": 600}), &host)
        })
        .await
        .unwrap()
        .expect("template boots")
    }

    async fn break_lease(&self, name: &str) -> bool {
        let c = self.instance("breaker").await;
        c.delete(&lease_key(name), None).await.unwrap_or(false)
    }

    fn peer_expiry(&self) -> Duration {
        Duration::from_millis(600)
    }

    async fn expire_presence(&self, node_id: &str) -> bool {
        let c = self.instance("expirer").await;
        let key = mcpg_plugin_api::memory::presence_key(node_id);
        c.delete(&key, None).await.unwrap_or(false)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_rlib_passes_the_test_kit() {
    let plugin = LoadedPlugin::from_module(root_module::<TemplatePlugin>(), "rlib".into());
    run(&PluginHarness(plugin)).await.assert_passed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_library_passes_the_test_kit() {
    // `cargo test` builds this crate's .so beside the test; `built_library` finds it there.
    let plugin = built_library("libmcpg_cluster_template.so", TemplatePlugin::ID);
    run(&PluginHarness(plugin)).await.assert_passed();
}

#[test]
fn validation_reports_every_problem_and_warns_on_clamping() {
    let plugin = LoadedPlugin::from_module(root_module::<TemplatePlugin>(), "rlib".into());
    let diags = plugin
        .validate(&serde_json::json!({"lease_ttl_ms": 1, "pool_size": 3, "lease_renew_before_expiry_percent": 150}))
        .unwrap();
    let mut got: Vec<_> = diags
        .iter()
        .map(|d| (d.pointer.as_str(), d.severity))
        .collect();
    got.sort_by_key(|(p, _)| *p);
    use mcpg_plugin_api::export::Severity::*;
    assert_eq!(
        got,
        vec![
            ("/lease_renew_before_expiry_percent", Warning),
            ("/lease_ttl_ms", Error),
            ("/pool_size", Error)
        ]
    );
    assert!(plugin.config_schema()["properties"]["peer_ttl_ms"].is_object());
}

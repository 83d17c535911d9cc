//! The Consul plugin's rules through `mcpg-config-check`, positioned in the YAML. (No Consul
//! server exists on this project's machines; the primitives are exercised against a real one
//! only when `CONSUL_HTTP_ADDR` is set: see `plugins/consul/tests/against_consul.rs`.)

use crate::harness::{TempDir, cdylib, config_check};

#[test]
fn config_check_applies_the_seed_consul_rules_with_positions() {
    let dir = TempDir::new("consul-check");
    let f = dir.write(
        "c.yaml",
        &format!(
            "cluster:\n  kind: consul\n  url: \"http://consul.svc:8500\"\n  service_name: mcpg\n  subscribe_wait_ms: 600001\n  lease_renew_before_expiry_percent: 0\n\
             plugins:\n  - id: dev.mcpg.cluster.consul\n    source: {{path: \"{}\"}}\n\
             bindings: [{{name: m, path: /mcp, upstreams: [{{name: t, stdio: {{command: x}}}}]}}]\n",
            cdylib("mcpg_cluster_consul").display()
        ),
    );
    let (code, text) = config_check(&f);
    let name = f.display().to_string();
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(&format!("{name}:3:3: cluster.url: Consul takes `address`")),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{name}:5:3: cluster.subscribe_wait_ms: must be at most 600000"
        )),
        "{text}"
    );
    assert!(text.contains(&format!("{name}:6:3: warning: cluster.lease_renew_before_expiry_percent: 0 is outside 1..=99 and is clamped to 1")), "{text}");
}

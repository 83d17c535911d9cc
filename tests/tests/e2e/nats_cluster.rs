//! Two `mcpg` replicas on one real NATS (JetStream) through the NATS coordinator plugin: both
//! boot, see each other, agree on one leader. Also the plugin phase of `mcpg-config-check` on
//! the seed's NATS rules (`url` and `bucket` are the classic mistakes).

use mcpg_backends::NatsServer;

use crate::harness::{TempDir, cdylib, config_check, start_agreeing_replicas};

fn config(nats: &str, listen: u16, admin: u16) -> String {
    format!(
        "server:\n  listen: \"127.0.0.1:{listen}\"\n  admin_listen: \"127.0.0.1:{admin}\"\n\
         cluster:\n  kind: nats\n  servers: [\"{nats}\"]\n  node: {{id: from-config, heartbeat_interval_sec: 1, peer_expiry_sec: 3}}\n\
         \x20 lease: {{default_ttl_sec: 3}}\n\
         plugins:\n  - id: dev.mcpg.cluster.nats\n    source: {{path: \"{}\"}}\n\
         bindings: [{{name: m, path: /mcp, upstreams: [{{name: t, stdio: {{command: x}}}}]}}]\n",
        cdylib("mcpg_cluster_nats").display()
    )
}

#[test]
fn two_replicas_on_one_nats_see_each_other_and_agree_on_a_leader() {
    let server = NatsServer::start();
    let (_dir, _replicas, status) =
        start_agreeing_replicas("nats-2", &["nats-a", "nats-b"], |listen, admin| {
            config(&server.url(), listen, admin)
        });
    assert_eq!(status["cluster_kind"], "nats");
}

#[test]
fn config_check_applies_the_seed_nats_rules_with_positions() {
    let dir = TempDir::new("nats-check");
    let f = dir.write(
        "c.yaml",
        &format!(
            "cluster:\n  kind: nats\n  url: \"nats://127.0.0.1:4222\"\n  bucket: mcpg\n  node:\n    id: a\n  lease:\n    renew_before_expiry_percent: 100\n\
             plugins:\n  - id: dev.mcpg.cluster.nats\n    source: {{path: \"{}\"}}\n\
             bindings: [{{name: m, path: /mcp, upstreams: [{{name: t, stdio: {{command: x}}}}]}}]\n",
            cdylib("mcpg_cluster_nats").display()
        ),
    );
    let (code, text) = config_check(&f);
    let name = f.display().to_string();
    assert_eq!(code, Some(1), "{text}");
    // A missing key is reported where its mapping starts.
    assert!(
        text.contains(&format!(
            "{name}:2:3: cluster.servers: required key is missing"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{name}:3:3: cluster.url: NATS takes a list of servers, not `url`"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{name}:4:3: cluster.bucket: NATS takes a structured `jetstream` block, not `bucket`"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{name}:8:5: cluster.lease.renew_before_expiry_percent: must be at most 99"
        )),
        "{text}"
    );
}

//! Two `mcpg` replicas on one real Redis through the Redis coordinator plugin: both boot, see
//! each other as peers, agree on one leader, and hand leadership over when the leader stops.
//! Also the plugin phase of `mcpg-config-check` on the seed's Redis rules.

use std::time::Duration;

use mcpg_backends::RedisServer;

use crate::harness::{
    TempDir, cdylib, config_check, get_json, peer_ids, start_agreeing_replicas, wait_until,
};

fn config(redis: &str, listen: u16, admin: u16) -> String {
    format!(
        "server:\n  listen: \"127.0.0.1:{listen}\"\n  admin_listen: \"127.0.0.1:{admin}\"\n\
         cluster:\n  kind: redis\n  url: \"{redis}\"\n  key_prefix: \"e2e:\"\n  lease_ttl_ms: 3000\n  peer_ttl_ms: 3000\n\
         plugins:\n  - id: dev.mcpg.cluster.redis\n    source: {{path: \"{}\"}}\n\
         bindings: [{{name: m, path: /mcp, upstreams: [{{name: t, stdio: {{command: x}}}}]}}]\n",
        cdylib("mcpg_cluster_redis").display()
    )
}

#[test]
fn two_replicas_on_one_redis_see_each_other_and_agree_on_a_leader() {
    let redis = RedisServer::start();
    let (_dir, mut replicas, first) =
        start_agreeing_replicas("redis-2", &["replica-a", "replica-b"], |listen, admin| {
            config(&redis.url(), listen, admin)
        });
    let leader = first["leader_id"].as_str().unwrap().to_owned();
    let status = |admin| get_json(admin, "/api/cluster/status");

    // Stop the leader: it resigns, and the other takes over with a larger token.
    let idx = replicas.iter().position(|r| r.id == leader).unwrap();
    let stopped = replicas.remove(idx);
    stopped.proc.signal("TERM");
    let (code, stderr) = stopped.proc.wait(Duration::from_secs(30));
    assert_eq!(code.code(), Some(0), "{stderr}");
    let (other, admin) = (&replicas[0].id, &replicas[0].admin);
    assert!(
        wait_until(Duration::from_secs(15), || status(*admin)
            .is_some_and(|s| s["role"] == "leader")),
        "{other} did not take over"
    );
    let after = status(*admin).unwrap();
    assert!(
        after["leadership_token"].as_u64() > first["leadership_token"].as_u64(),
        "{after}"
    );
    assert!(
        wait_until(Duration::from_secs(15), || peer_ids(*admin)
            == [other.to_string()]),
        "{:?}",
        peer_ids(*admin)
    );
}

#[test]
fn config_check_applies_the_seed_redis_rules_with_positions() {
    let dir = TempDir::new("redis-check");
    let lib = cdylib("mcpg_cluster_redis");
    let f = dir.write(
        "c.yaml",
        &format!(
            "cluster:\n  kind: redis\n  url: \"http://127.0.0.1:6379\"\n  pool_size: 8\n  lease_renew_before_expiry_percent: 120\n\
             plugins:\n  - id: dev.mcpg.cluster.redis\n    source: {{path: \"{}\"}}\n\
             bindings: [{{name: m, path: /mcp, upstreams: [{{name: t, stdio: {{command: x}}}}]}}]\n",
            lib.display()
        ),
    );
    let (code, text) = config_check(&f);
    let name = f.display().to_string();
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "{name}:3:3: cluster.url: scheme `http` is not supported: use redis:// or rediss://"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "{name}:4:3: cluster.pool_size: there is no `pool_size` key"
        )),
        "{text}"
    );
    assert!(text.contains(&format!("{name}:5:3: warning: cluster.lease_renew_before_expiry_percent: 120 is outside 1..=99 and is clamped to 99")), "{text}");
}

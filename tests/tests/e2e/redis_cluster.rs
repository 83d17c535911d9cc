//! Two `mcpg` replicas on one real Redis through the Redis coordinator plugin: both boot, see
//! each other as peers, agree on one leader, and hand leadership over when the leader stops.
//! Also the plugin phase of `mcpg-config-check` on the seed's Redis rules.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use mcpg_backends::RedisServer;

use crate::harness::{Proc, TempDir, bin, cdylib, free_port, http_get, wait_until};

fn config(redis: &str, listen: u16, admin: u16) -> String {
    format!(
        "server:\n  listen: \"127.0.0.1:{listen}\"\n  admin_listen: \"127.0.0.1:{admin}\"\n\
         cluster:\n  kind: redis\n  url: \"{redis}\"\n  key_prefix: \"e2e:\"\n  lease_ttl_ms: 3000\n  peer_ttl_ms: 3000\n\
         plugins:\n  - id: dev.mcpg.cluster.redis\n    source: {{path: \"{}\"}}\n\
         bindings: [{{name: m, path: /mcp, upstreams: [{{name: t, stdio: {{command: x}}}}]}}]\n",
        cdylib("mcpg_cluster_redis").display()
    )
}

fn status(admin: SocketAddr) -> Option<serde_json::Value> {
    match http_get(admin, "/api/cluster/status") {
        Ok((200, body)) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

fn peer_ids(admin: SocketAddr) -> Vec<String> {
    let Ok((200, body)) = http_get(admin, "/api/cluster/peers") else {
        return Vec::new();
    };
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let mut ids: Vec<String> = v["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["node_id"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    ids
}

#[test]
fn two_replicas_on_one_redis_see_each_other_and_agree_on_a_leader() {
    let redis = RedisServer::start();
    let dir = TempDir::new("redis-2");
    let mut replicas = Vec::new();
    for id in ["replica-a", "replica-b"] {
        let (listen, admin) = (free_port(), free_port());
        let f = dir.write(&format!("{id}.yaml"), &config(&redis.url(), listen, admin));
        let proc = Proc::spawn(
            Command::new(bin("mcpg"))
                .args(["--node-id", id, "--config"])
                .arg(f),
        );
        let main: SocketAddr = format!("127.0.0.1:{listen}").parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
        replicas.push((id, proc, main, admin));
    }
    for (id, _, main, _) in &replicas {
        assert!(
            wait_until(Duration::from_secs(30), || matches!(
                http_get(*main, "/readyz"),
                Ok((200, _))
            )),
            "{id} never became ready"
        );
    }
    for (id, _, _, admin) in &replicas {
        assert!(
            wait_until(Duration::from_secs(15), || peer_ids(*admin)
                == ["replica-a", "replica-b"]),
            "{id} sees peers {:?}",
            peer_ids(*admin)
        );
    }
    // Exactly one leader, and both replicas name the same one with the same fencing token.
    let agreed = wait_until(Duration::from_secs(15), || {
        let s: Vec<_> = replicas
            .iter()
            .filter_map(|(_, _, _, a)| status(*a))
            .collect();
        s.len() == 2
            && s.iter().filter(|x| x["role"] == "leader").count() == 1
            && s[0]["leader_id"] == s[1]["leader_id"]
            && s[0]["leadership_token"] == s[1]["leadership_token"]
            && !s[0]["leader_id"].is_null()
    });
    assert!(
        agreed,
        "replicas disagree: {:?}",
        replicas
            .iter()
            .map(|(_, _, _, a)| status(*a))
            .collect::<Vec<_>>()
    );
    let first = status(replicas[0].3).unwrap();
    let leader = first["leader_id"].as_str().unwrap().to_owned();
    assert_eq!(first["backend"]["ok"], true);

    // Stop the leader: it resigns, and the other takes over with a larger token.
    let idx = replicas.iter().position(|(id, ..)| *id == leader).unwrap();
    let (_, proc, _, _) = replicas.remove(idx);
    proc.signal("TERM");
    let (code, stderr) = proc.wait(Duration::from_secs(30));
    assert_eq!(code.code(), Some(0), "{stderr}");
    let (other, _, _, admin) = &replicas[0];
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
    let out = Command::new(bin("mcpg-config-check"))
        .arg(&f)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let name = f.display().to_string();
    assert_eq!(out.status.code(), Some(1), "{text}");
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

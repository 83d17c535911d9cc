//! Two `mcpg` replicas on one real NATS (JetStream) through the NATS coordinator plugin: both
//! boot, see each other, agree on one leader. Also the plugin phase of `mcpg-config-check` on
//! the seed's NATS rules (`url` and `bucket` are the classic mistakes).

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use mcpg_backends::NatsServer;

use crate::harness::{Proc, TempDir, bin, cdylib, free_port, http_get, wait_until};

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

fn get_json(admin: SocketAddr, path: &str) -> Option<serde_json::Value> {
    match http_get(admin, path) {
        Ok((200, body)) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

#[test]
fn two_replicas_on_one_nats_see_each_other_and_agree_on_a_leader() {
    let nats = NatsServer::start();
    let dir = TempDir::new("nats-2");
    let mut replicas = Vec::new();
    for id in ["nats-a", "nats-b"] {
        let (listen, admin) = (free_port(), free_port());
        let f = dir.write(&format!("{id}.yaml"), &config(&nats.url(), listen, admin));
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
    let peers = |admin: SocketAddr| -> Vec<String> {
        get_json(admin, "/api/cluster/peers")
            .map(|v| {
                v["peers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p["node_id"].as_str().unwrap().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    for (id, _, _, admin) in &replicas {
        assert!(
            wait_until(Duration::from_secs(15), || peers(*admin)
                == ["nats-a", "nats-b"]),
            "{id} sees {:?}",
            peers(*admin)
        );
    }
    let agreed = wait_until(Duration::from_secs(15), || {
        let s: Vec<_> = replicas
            .iter()
            .filter_map(|(_, _, _, a)| get_json(*a, "/api/cluster/status"))
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
            .map(|(_, _, _, a)| get_json(*a, "/api/cluster/status"))
            .collect::<Vec<_>>()
    );
    let status = get_json(replicas[0].3, "/api/cluster/status").unwrap();
    assert_eq!(status["cluster_kind"], "nats");
    assert_eq!(status["backend"]["ok"], true);
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
    let out = Command::new(bin("mcpg-config-check"))
        .arg(&f)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let name = f.display().to_string();
    assert_eq!(out.status.code(), Some(1), "{text}");
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

//! Two `mcpg` replicas on one real etcd through the etcd coordinator plugin: both boot, see each
//! other, agree on one leader. Also the plugin phase of `mcpg-config-check` on the seed's etcd
//! rules (`key_prefix` must end with `/`).

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use mcpg_backends::EtcdServer;

use crate::harness::{Proc, TempDir, bin, cdylib, free_port, http_get, wait_until};

fn config(etcd: &str, listen: u16, admin: u16) -> String {
    format!(
        "server:\n  listen: \"127.0.0.1:{listen}\"\n  admin_listen: \"127.0.0.1:{admin}\"\n\
         cluster:\n  kind: etcd\n  endpoints: [\"{etcd}\"]\n  key_prefix: \"/mcpg/e2e/\"\n\
         plugins:\n  - id: dev.mcpg.cluster.etcd\n    source: {{path: \"{}\"}}\n\
         bindings: [{{name: m, path: /mcp, upstreams: [{{name: t, stdio: {{command: x}}}}]}}]\n",
        cdylib("mcpg_cluster_etcd").display()
    )
}

fn get_json(admin: SocketAddr, path: &str) -> Option<serde_json::Value> {
    match http_get(admin, path) {
        Ok((200, body)) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

#[test]
fn two_replicas_on_one_etcd_see_each_other_and_agree_on_a_leader() {
    let etcd = EtcdServer::start();
    let dir = TempDir::new("etcd-2");
    let mut replicas = Vec::new();
    for id in ["etcd-a", "etcd-b"] {
        let (listen, admin) = (free_port(), free_port());
        let f = dir.write(&format!("{id}.yaml"), &config(&etcd.url(), listen, admin));
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
                == ["etcd-a", "etcd-b"]),
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
    assert_eq!(
        get_json(replicas[1].3, "/api/cluster/status").unwrap()["cluster_kind"],
        "etcd"
    );
}

#[test]
fn config_check_rejects_a_key_prefix_without_trailing_slash_with_its_position() {
    let dir = TempDir::new("etcd-check");
    let f = dir.write(
        "c.yaml",
        &format!(
            "cluster:\n  kind: etcd\n  endpoints: [\"http://etcd-0:2379\"]\n  key_prefix: /mcpg/prod\n\
             plugins:\n  - id: dev.mcpg.cluster.etcd\n    source: {{path: \"{}\"}}\n\
             bindings: [{{name: m, path: /mcp, upstreams: [{{name: t, stdio: {{command: x}}}}]}}]\n",
            cdylib("mcpg_cluster_etcd").display()
        ),
    );
    let out = Command::new(bin("mcpg-config-check"))
        .arg(&f)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "{}:4:3: cluster.key_prefix: must end with `/`: write `/mcpg/prod/`",
            f.display()
        )),
        "{text}"
    );
}

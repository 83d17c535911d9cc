//! `mcpg` replicas on one real PostgreSQL through the PostgreSQL coordinator plugin: two agree
//! on a leader and hand leadership over when it stops; three behind nginx survive the kill of
//! a session owner (the cluster scenario of `cluster_sessions.rs`). Also the plugin phase of
//! `mcpg-config-check` on the plugin's rules, and on `examples/postgres.yaml`.

use std::process::Command;
use std::time::Duration;

use mcpg_backends::PostgresServer;

use crate::cluster_sessions::{Backend, three_replicas_survive_a_kill};
use crate::harness::{
    TempDir, bin, cdylib, config_check, get_json, peer_ids, repo_root, start_agreeing_replicas,
    wait_until,
};

fn config(url: &str, listen: u16, admin: u16) -> String {
    format!(
        "server:\n  listen: \"127.0.0.1:{listen}\"\n  admin_listen: \"127.0.0.1:{admin}\"\n\
         cluster:\n  kind: postgres\n  url: \"{url}\"\n  schema: e2e\n  lease_ttl_ms: 3000\n  peer_ttl_ms: 3000\n\
         plugins:\n  - id: dev.mcpg.cluster.postgres\n    source: {{path: \"{}\"}}\n\
         bindings: [{{name: m, path: /mcp, upstreams: [{{name: t, stdio: {{command: x}}}}]}}]\n",
        cdylib("mcpg_cluster_postgres").display()
    )
}

#[test]
fn two_replicas_on_one_postgres_agree_on_a_leader_and_hand_over() {
    let pg = PostgresServer::start();
    let (_dir, mut replicas, first) =
        start_agreeing_replicas("pg-2", &["pg-a", "pg-b"], |listen, admin| {
            config(&pg.url(), listen, admin)
        });
    assert_eq!(first["cluster_kind"], "postgres");
    let leader = first["leader_id"].as_str().unwrap().to_owned();
    let idx = replicas.iter().position(|r| r.id == leader).unwrap();
    let stopped = replicas.remove(idx);
    stopped.proc.signal("TERM");
    let (code, stderr) = stopped.proc.wait(Duration::from_secs(30));
    assert_eq!(code.code(), Some(0), "{stderr}");
    let (other, admin) = (&replicas[0].id, replicas[0].admin);
    let status = || get_json(admin, "/api/cluster/status");
    assert!(
        wait_until(Duration::from_secs(15), || status()
            .is_some_and(|s| s["role"] == "leader")),
        "{other} did not take over"
    );
    let after = status().unwrap();
    assert!(
        after["leadership_token"].as_u64() > first["leadership_token"].as_u64(),
        "{after}"
    );
    assert!(
        wait_until(Duration::from_secs(15), || peer_ids(admin)
            == [other.to_string()]),
        "{:?}",
        peer_ids(admin)
    );
}

#[test]
fn three_replicas_on_postgres_behind_round_robin_survive_a_kill() {
    three_replicas_survive_a_kill(Backend::Postgres);
}

#[test]
fn config_check_applies_the_plugin_rules_with_positions() {
    let dir = TempDir::new("pg-check");
    let f = dir.write(
        "c.yaml",
        &format!(
            "cluster:\n  kind: postgres\n  url: \"mysql://u:hunter2@db/x\"\n  pool_size: 8\n  lease_renew_before_expiry_percent: 120\n  schema: Prod-1\n\
             plugins:\n  - id: dev.mcpg.cluster.postgres\n    source: {{path: \"{}\"}}\n\
             bindings: [{{name: m, path: /mcp, upstreams: [{{name: t, stdio: {{command: x}}}}]}}]\n",
            cdylib("mcpg_cluster_postgres").display()
        ),
    );
    let (code, text) = config_check(&f);
    let name = f.display().to_string();
    assert_eq!(code, Some(1), "{text}");
    for want in [
        format!(
            "{name}:3:3: cluster.url: scheme `mysql` is not supported: use postgres:// or postgresql://"
        ),
        format!("{name}:4:3: cluster.pool_size: unknown key"),
        format!(
            "{name}:5:3: warning: cluster.lease_renew_before_expiry_percent: 120 is outside 1..=99 and is clamped to 99"
        ),
        format!("{name}:6:3: cluster.schema:"),
    ] {
        assert!(text.contains(&want), "{want}\n{text}");
    }
    assert!(!text.contains("hunter2"), "{text}");
}

/// The example users copy passes the plugin's own validation, not only the host's.
#[test]
fn the_example_passes_the_plugin_phase() {
    let dir = TempDir::new("pg-example");
    let example = std::fs::read_to_string(repo_root().join("examples/postgres.yaml")).unwrap();
    let lib = cdylib("mcpg_cluster_postgres");
    let text = example.replace(
        "../target/release/libmcpg_cluster_postgres.so",
        lib.to_str().unwrap(),
    );
    assert_ne!(text, example, "the example names the release build");
    let f = dir.write("postgres.yaml", &text);
    let out = Command::new(bin("mcpg-config-check"))
        .args(["--deny-warnings"])
        .arg(&f)
        .env("MCPG_ADVERTISE_URL", "http://10.0.0.5:8080")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
}

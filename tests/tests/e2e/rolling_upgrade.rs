//! A rolling upgrade: one replica of the previous release (`tests/upgrade/previous-release`,
//! built by `tools/build-previous-release`) beside one of this tree, on one real Redis. They
//! must agree on everything ownership rests on: the forwarding secret, the peer directory, the
//! session records and each replica's ownership lease (`mcpg/owners/<node id>`). A session
//! started on the old replica is served through the new one (forwarded to its owner), and
//! once the old replica is killed, taken over by the new one only when the old lease is gone;
//! then the other way round.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use mcpg_backends::RedisServer;
use serde_json::json;

use crate::harness::{
    Proc, TempDir, bin, cdylib, free_port, legacy_session, peer_ids, session_post, wait_ready,
    wait_until,
};

/// The previous release's binaries, as `tools/build-previous-release` leaves them.
fn previous(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::harness::repo_root().join("target"));
    let p = target.join("previous/debug").join(name);
    assert!(
        p.exists(),
        "{} is missing: run tools/build-previous-release (tools/test does)",
        p.display()
    );
    p
}

fn config(redis: &str, plugin: &Path, listen: u16, admin: u16) -> String {
    format!(
        "server:\n  listen: \"127.0.0.1:{listen}\"\n  admin_listen: \"127.0.0.1:{admin}\"\n  shutdown_delay_ms: 0\n\
         cluster:\n  kind: redis\n  url: \"{redis}\"\n  key_prefix: \"upgrade:\"\n  lease_ttl_ms: 3000\n  peer_ttl_ms: 3000\n\
         plugins:\n  - id: dev.mcpg.cluster.redis\n    source: {{path: \"{}\"}}\n\
         mcp:\n  sessions: {{owner_ttl_ms: 3000}}\n\
         bindings: [{{name: m, path: /mcp, upstreams: [{{name: f, stdio: {{command: \"{}\", args: [\"--stdio\"]}}}}]}}]\n",
        plugin.display(),
        bin("mcpg-fixture-upstream").display()
    )
}

struct Side {
    proc: Proc,
    main: std::net::SocketAddr,
    admin: std::net::SocketAddr,
}

fn start(dir: &TempDir, id: &str, mcpg: PathBuf, plugin: PathBuf, redis: &str) -> Side {
    let (listen, admin) = (free_port(), free_port());
    let f = dir.write(
        &format!("{id}.yaml"),
        &config(redis, &plugin, listen, admin),
    );
    let proc = Proc::spawn(
        Command::new(mcpg)
            .args(["--node-id", id, "--config"])
            .arg(f),
    );
    let main = format!("127.0.0.1:{listen}").parse().unwrap();
    assert!(
        wait_ready(main, Duration::from_secs(60)),
        "{id} never became ready"
    );
    Side {
        proc,
        main,
        admin: format!("127.0.0.1:{admin}").parse().unwrap(),
    }
}

/// A replica started with a node id whose ownership lease a live replica holds gives up.
fn refused_as_duplicate(dir: &TempDir, id: &str, mcpg: PathBuf, plugin: PathBuf, redis: &str) {
    let f = dir.write(
        &format!("dup-{id}.yaml"),
        &config(redis, &plugin, free_port(), free_port()),
    );
    let proc = Proc::spawn(
        Command::new(mcpg)
            .args(["--node-id", id, "--config"])
            .arg(f),
    );
    let (status, stderr) = proc.wait(Duration::from_secs(60));
    assert!(
        !status.success() && stderr.contains("another live mcpg instance is using node id"),
        "a second `{id}` was not refused ({status}):\n{stderr}"
    );
}

fn echo(n: u64) -> serde_json::Value {
    json!({"jsonrpc":"2.0","id":n,"method":"tools/call","params":{"name":"echo","arguments":{"text":format!("hi {n}")}}})
}

/// A call in session `sid` through `via` answers (wherever the session is served).
fn served(via: std::net::SocketAddr, sid: &str, n: u64) -> bool {
    let (status, body) = session_post(via, "/mcp", sid, &echo(n));
    status == 200 && body.contains(&format!("hi {n}"))
}

/// The session's owner, as the admin API of `admin` reads its record.
fn owner(admin: std::net::SocketAddr, sid: &str) -> Option<String> {
    crate::harness::get_json(admin, &format!("/api/cluster/sessions/{sid}"))
        .and_then(|v| v["owner"].as_str().map(str::to_owned))
}

#[test]
fn the_previous_release_and_this_one_agree_on_session_ownership() {
    let redis = RedisServer::start();
    let dir = TempDir::new("upgrade");
    let old = start(
        &dir,
        "old",
        previous("mcpg"),
        previous("libmcpg_cluster_redis.so"),
        &redis.url(),
    );
    let new = start(
        &dir,
        "new",
        bin("mcpg"),
        cdylib("mcpg_cluster_redis"),
        &redis.url(),
    );
    let both = vec!["new".to_owned(), "old".to_owned()];
    for side in [&old, &new] {
        assert!(
            wait_until(Duration::from_secs(15), || peer_ids(side.admin) == both),
            "peers: {:?}",
            peer_ids(side.admin)
        );
    }

    // Each sees the other's ownership lease where it looks for its own: a replica of either
    // release started with the other's node id is refused as a duplicate.
    refused_as_duplicate(
        &dir,
        "old",
        bin("mcpg"),
        cdylib("mcpg_cluster_redis"),
        &redis.url(),
    );
    refused_as_duplicate(
        &dir,
        "new",
        previous("mcpg"),
        previous("libmcpg_cluster_redis.so"),
        &redis.url(),
    );

    // A session of the old replica, served through the new one: the new replica reads the
    // old one's record and peer entry, and the old one accepts its forwarding secret.
    let sid = legacy_session(old.main, "/mcp");
    assert_eq!(owner(new.admin, &sid).as_deref(), Some("old"));
    assert!(served(new.main, &sid, 1), "not forwarded to the old owner");
    assert_eq!(
        owner(new.admin, &sid).as_deref(),
        Some("old"),
        "taken over while its owner lives"
    );

    // The old replica dies: the new one takes the session over once the old ownership lease
    // has expired, never before.
    old.proc.signal("KILL");
    let _ = old.proc.wait(Duration::from_secs(10));
    assert!(
        wait_until(Duration::from_secs(30), || served(new.main, &sid, 2)),
        "the new replica never took the session over"
    );
    assert_eq!(owner(new.admin, &sid).as_deref(), Some("new"));

    // And the other way round: a session of the new replica, served through a restarted old
    // one, then taken over by it when the new replica dies.
    let old = start(
        &dir,
        "old",
        previous("mcpg"),
        previous("libmcpg_cluster_redis.so"),
        &redis.url(),
    );
    assert!(
        wait_until(Duration::from_secs(15), || peer_ids(old.admin) == both),
        "peers: {:?}",
        peer_ids(old.admin)
    );
    let sid = legacy_session(new.main, "/mcp");
    assert!(served(old.main, &sid, 3), "not forwarded to the new owner");
    assert_eq!(owner(old.admin, &sid).as_deref(), Some("new"));
    new.proc.signal("KILL");
    let _ = new.proc.wait(Duration::from_secs(10));
    assert!(
        wait_until(Duration::from_secs(30), || served(old.main, &sid, 4)),
        "the old replica never took the session over"
    );
    assert_eq!(owner(old.admin, &sid).as_deref(), Some("old"));
    old.proc.signal("TERM");
    let (status, stderr) = old.proc.wait(Duration::from_secs(30));
    assert!(status.success(), "{stderr}");
}

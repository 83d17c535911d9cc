//! `mcpg` booting, answering its probes, refusing bad configs, and shutting down cleanly.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use crate::harness::{Proc, TempDir, bin, free_port, http_get, wait_ready, wait_until};

fn start(config: &std::path::Path) -> Proc {
    Proc::spawn(
        Command::new(bin("mcpg"))
            .arg("--config")
            .arg(config)
            .env("MCPG_LOG", "info"),
    )
}

fn config(listen: u16, admin: u16, extra: &str) -> String {
    format!(
        "server:\n  listen: \"127.0.0.1:{listen}\"\n  admin_listen: \"127.0.0.1:{admin}\"\n{extra}\
         bindings: [{{name: m, path: /mcp, upstreams: [{{name: t, stdio: {{command: x}}}}]}}]\n"
    )
}

#[test]
fn serves_probes_and_drains_on_sigterm() {
    let dir = TempDir::new("gw-probes");
    let (port, admin_port) = (free_port(), free_port());
    // A shutdown delay keeps the listener open after SIGTERM so the 503 can be observed.
    let f = dir.write(
        "c.yaml",
        &config(port, admin_port, "  shutdown_delay_ms: 3000\n"),
    );
    let mcpg = start(&f);
    let main: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    assert!(
        wait_ready(main, Duration::from_secs(20)),
        "mcpg never became ready"
    );
    assert_eq!(http_get(main, "/healthz").unwrap().0, 200);
    assert_eq!(http_get(admin, "/readyz").unwrap().0, 200);
    assert_eq!(http_get(main, "/no-such-path").unwrap().0, 404);

    mcpg.signal("TERM");
    assert!(
        wait_until(Duration::from_secs(2), || matches!(
            http_get(main, "/readyz"),
            Ok((503, _))
        )),
        "readyz should turn 503 as soon as shutdown starts"
    );
    // Liveness stays up while draining.
    assert_eq!(http_get(main, "/healthz").unwrap().0, 200);
    let (status, stderr) = mcpg.wait(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(
        http_get(main, "/healthz").is_err(),
        "listener should be closed after exit"
    );
}

#[test]
fn ctrl_c_also_shuts_down_cleanly() {
    let dir = TempDir::new("gw-int");
    let port = free_port();
    let f = dir.write("c.yaml", &config(port, free_port(), ""));
    let mcpg = start(&f);
    let main: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(wait_ready(main, Duration::from_secs(20)));
    mcpg.signal("INT");
    let (status, stderr) = mcpg.wait(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "{stderr}");
}

#[test]
fn invalid_config_is_reported_like_config_check_and_exits_non_zero() {
    let dir = TempDir::new("gw-invalid");
    let f = dir.write("c.yaml", "server:\n  listen: nowhere\nbindings: [{name: m, path: /readyz, upstreams: [{name: t, stdio: {command: x}}]}]\n");
    let (status, stderr) = start(&f).wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1), "{stderr}");
    let name = f.display().to_string();
    assert!(
        stderr.contains(&format!("{name}:2:11: server.listen:")),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("{name}:3:28: bindings[0].path:")),
        "{stderr}"
    );

    let (status, stderr) = start(&dir.0.join("absent.yaml")).wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("cannot read"), "{stderr}");
}

#[test]
fn a_port_in_use_fails_start_with_a_clear_message() {
    let dir = TempDir::new("gw-port");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let f = dir.write("c.yaml", &config(port, free_port(), ""));
    let (status, stderr) = start(&f).wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "cannot listen on 127.0.0.1:{port} (server.listen)"
        )),
        "{stderr}"
    );
}

#[test]
fn a_bad_node_id_flag_is_refused() {
    let dir = TempDir::new("gw-node");
    let f = dir.write("c.yaml", &config(free_port(), free_port(), ""));
    let (status, stderr) = Proc::spawn(
        Command::new(bin("mcpg"))
            .args(["--node-id", "a b", "--config"])
            .arg(&f),
    )
    .wait(Duration::from_secs(10));
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--node-id"), "{stderr}");
}

/// mcpg sets mimalloc's `arena_eager_commit` to 0 before the first allocation, so an idle
/// replica does not hold committed arena pages nothing uses (issue 21's idle-RSS target); the
/// environment variable still overrides it. mimalloc prints its options with `MIMALLOC_VERBOSE`.
#[test]
fn mimalloc_commits_arenas_lazily_unless_the_environment_says_otherwise() {
    let option = |env: Option<&str>| {
        let mut cmd = Command::new(bin("mcpg"));
        cmd.arg("--version").env("MIMALLOC_VERBOSE", "1");
        match env {
            Some(v) => cmd.env("MIMALLOC_ARENA_EAGER_COMMIT", v),
            None => cmd.env_remove("MIMALLOC_ARENA_EAGER_COMMIT"),
        };
        let out = cmd.output().expect("run mcpg --version");
        assert!(out.status.success(), "{out:?}");
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        err.lines()
            .find_map(|l| l.split("option 'arena_eager_commit': ").nth(1))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("mimalloc printed no arena_eager_commit option:\n{err}"))
    };
    assert_eq!(option(None), "0");
    assert_eq!(option(Some("1")), "1");
}

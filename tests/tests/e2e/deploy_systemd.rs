//! The systemd unit (`deploy/systemd/mcpg.service`), checked the way systemd reads it, without
//! systemd running as PID 1: `systemd-analyze verify` (directives, values, the executables it
//! names) must say nothing, and `systemd-analyze security --offline=true` must rate its
//! exposure "OK" (at most 2.0 of 10). Its stop timeout must exceed the drain it waits for.
//! mcpg speaks `sd_notify` as `Type=notify` needs: `READY=1` once ready, `STOPPING=1` when it
//! drains, read here from a datagram socket standing in for systemd's. Not tested here: mcpg
//! running inside the unit's sandbox (no systemd to start it).

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::harness::{Proc, TempDir, bin, free_port, repo_root, wait_ready};

fn systemd_analyze() -> PathBuf {
    let p = PathBuf::from("/usr/bin/systemd-analyze");
    assert!(
        p.exists(),
        "systemd-analyze is missing: run tools/install-test-deps (apt-get install -y systemd)"
    );
    p
}

/// The unit's value for `key` (the last assignment wins, as in systemd).
fn directive<'a>(unit: &'a str, key: &str) -> Option<&'a str> {
    unit.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
}

/// A server setting's default, from the generated JSON Schema.
fn server_default_ms(key: &str) -> u64 {
    let schema: Value = serde_json::from_slice(
        &std::fs::read(repo_root().join("schemas/app-config.schema.json")).unwrap(),
    )
    .unwrap();
    schema["$defs"]["ServerConfig"]["properties"][key]["default"]
        .as_u64()
        .unwrap_or_else(|| panic!("no default for server.{key} in the schema"))
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let analyze = systemd_analyze();
    let unit = std::fs::read_to_string(repo_root().join("deploy/systemd/mcpg.service")).unwrap();
    let dir = TempDir::new("systemd");

    // `verify` checks that ExecStart's binary exists and is executable: the copy checked names
    // this build's binaries where the unit names /usr/local/bin, and nothing else changes.
    let exec = directive(&unit, "ExecStart").expect("ExecStart");
    assert!(exec.starts_with("/usr/local/bin/mcpg "), "{exec}");
    let bins = bin("mcpg").parent().unwrap().display().to_string();
    let path = dir.write(
        "mcpg.service",
        &unit.replace("/usr/local/bin/", &format!("{bins}/")),
    );
    let out = Command::new(&analyze)
        .args(["verify", "--man=no"])
        .arg(&path)
        .output()
        .expect("run systemd-analyze verify");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify ({}):\n{said}",
        out.status
    );

    let out = Command::new(&analyze)
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&path)
        .output()
        .expect("run systemd-analyze security");
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "systemd-analyze security ({}):\n{report}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let level: f64 = report
        .lines()
        .find_map(|l| l.split("Overall exposure level for mcpg.service:").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{report}"));
    assert!(
        level <= 2.0,
        "exposure level {level} (more than 2.0, \"OK\"):\n{report}"
    );

    // SIGTERM is mcpg's drain; the stop timeout must outlast it with the defaults the unit
    // runs with (a config that raises them must raise TimeoutStopSec too: the unit says so).
    assert_eq!(directive(&unit, "KillSignal"), Some("SIGTERM"));
    // `systemctl reload` is mcpg's SIGHUP: the config re-read without a restart.
    assert_eq!(
        directive(&unit, "ExecReload"),
        Some("/bin/kill -HUP $MAINPID")
    );
    // mcpg says when it is ready (see the test below), so systemd waits for it.
    assert_eq!(directive(&unit, "Type"), Some("notify"));
    let stop_s: u64 = directive(&unit, "TimeoutStopSec")
        .and_then(|v| v.strip_suffix('s'))
        .and_then(|v| v.parse().ok())
        .expect("TimeoutStopSec=<n>s");
    let drain_ms = server_default_ms("drain_timeout_ms") + server_default_ms("shutdown_delay_ms");
    assert!(
        stop_s * 1000 > drain_ms,
        "TimeoutStopSec={stop_s}s does not exceed the default drain ({drain_ms} ms)"
    );
    for key in ["NoNewPrivileges", "ProtectSystem", "DynamicUser"] {
        assert!(directive(&unit, key).is_some(), "{key} is not set");
    }
}

/// The datagrams mcpg sent to `NOTIFY_SOCKET` until `want` came (or `limit` passed).
fn notifications_until(
    sock: &std::os::unix::net::UnixDatagram,
    want: &str,
    limit: std::time::Duration,
) -> Vec<String> {
    let start = std::time::Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        if let Ok(n) = sock.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
            if got.last().is_some_and(|m| m.lines().any(|l| l == want)) {
                break;
            }
        }
    }
    got
}

#[test]
fn mcpg_tells_the_service_manager_when_it_is_ready_and_when_it_stops() {
    use std::time::Duration;
    let dir = TempDir::new("sd-notify");
    let sock_path = dir.0.join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let (port, admin) = (free_port(), free_port());
    let cfg = dir.write(
        "c.yaml",
        &format!(
            "server:\n  listen: \"127.0.0.1:{port}\"\n  admin_listen: \"127.0.0.1:{admin}\"\n  shutdown_delay_ms: 0\n\
             bindings: [{{name: m, path: /mcp, upstreams: [{{name: t, stdio: {{command: x}}}}]}}]\n"
        ),
    );
    let p = Proc::spawn(
        Command::new(bin("mcpg"))
            .arg("--config")
            .arg(&cfg)
            .env("NOTIFY_SOCKET", &sock_path),
    );
    let ready = notifications_until(&sock, "READY=1", Duration::from_secs(60));
    assert!(
        ready
            .last()
            .is_some_and(|m| m.contains("READY=1") && m.contains("STATUS=serving")),
        "no READY=1: {ready:?}"
    );
    // Ready means ready: the probe agrees.
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(wait_ready(addr, Duration::from_secs(5)));
    p.signal("TERM");
    let stopping = notifications_until(&sock, "STOPPING=1", Duration::from_secs(30));
    assert!(
        stopping.last().is_some_and(|m| m.contains("STOPPING=1")),
        "no STOPPING=1 after SIGTERM: {stopping:?}"
    );
    let (status, stderr) = p.wait(Duration::from_secs(30));
    assert!(status.success(), "{stderr}");
}

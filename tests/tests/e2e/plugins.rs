//! Coordinator plugins through the real binaries: booting from a `.so`, the control plane's
//! admin endpoints, and every way a library can be wrong without taking the host down.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use mcpg_plugin_api::coordinator::ErrorKind;
use mcpg_plugin_api::export::HostInfo;
use mcpg_plugin_api::remote::{LoadError, LoadedPlugin};

use crate::harness::{Proc, TempDir, bin, cdylib, free_port, http_get, wait_ready, wait_until};

fn plugin_config(kind: &str, id: &str, lib: &Path, listen: u16, admin: u16, extra: &str) -> String {
    format!(
        "server:\n  listen: \"127.0.0.1:{listen}\"\n  admin_listen: \"127.0.0.1:{admin}\"\n\
         cluster:\n  kind: {kind}\n{extra}\
         plugins:\n  - id: {id}\n    source: {{path: \"{}\"}}\n\
         bindings: [{{name: m, path: /mcp, upstreams: [{{name: t, stdio: {{command: x}}}}]}}]\n",
        lib.display()
    )
}

fn json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let (status, body) = http_get(addr, path).unwrap();
    assert_eq!(status, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

fn boot_and_check_status(
    config: &Path,
    node_id: &str,
    kind: &str,
    main: SocketAddr,
    admin: SocketAddr,
) {
    let mcpg = Proc::spawn(
        Command::new(bin("mcpg"))
            .args(["--node-id", node_id, "--config"])
            .arg(config),
    );
    assert!(
        wait_ready(main, Duration::from_secs(30)),
        "mcpg never became ready"
    );
    assert!(
        wait_until(Duration::from_secs(30), || json(
            admin,
            "/api/cluster/status"
        )["role"]
            == "leader"),
        "the only replica should become leader"
    );
    let status = json(admin, "/api/cluster/status");
    assert_eq!(status["node_id"], node_id);
    assert_eq!(status["leader_id"], node_id);
    assert_eq!(status["cluster_kind"], kind);
    assert!(
        status["leadership_token"].as_u64().unwrap() >= 1,
        "{status}"
    );
    assert_eq!(status["backend"]["ok"], true);
    let peers = json(admin, "/api/cluster/peers");
    assert_eq!(peers["peers"][0]["node_id"], node_id, "{peers}");
    // The admin API is on the admin listener only.
    assert_eq!(http_get(main, "/api/cluster/status").unwrap().0, 404);
    mcpg.signal("TERM");
    let (status, stderr) = mcpg.wait(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("resigned leadership"), "{stderr}");
}

#[test]
fn mcpg_boots_the_template_plugin_from_a_shared_library() {
    let dir = TempDir::new("pl-template");
    let (port, admin) = (free_port(), free_port());
    let lib = cdylib("mcpg_cluster_template");
    let f = dir.write(
        "c.yaml",
        &plugin_config(
            "template",
            "dev.mcpg.cluster.template",
            &lib,
            port,
            admin,
            "  lease_ttl_ms: 2000\n",
        ),
    );
    let addr = |p: u16| -> SocketAddr { format!("127.0.0.1:{p}").parse().unwrap() };
    boot_and_check_status(&f, "replica-7", "template", addr(port), addr(admin));
}

#[test]
fn single_node_runs_the_same_control_plane() {
    let dir = TempDir::new("pl-single");
    let (port, admin) = (free_port(), free_port());
    let f = dir.write(
        "c.yaml",
        &format!(
            "server: {{listen: \"127.0.0.1:{port}\", admin_listen: \"127.0.0.1:{admin}\"}}\n\
             bindings: [{{name: m, path: /mcp, upstreams: [{{name: t, stdio: {{command: x}}}}]}}]\n"
        ),
    );
    let addr = |p: u16| -> SocketAddr { format!("127.0.0.1:{p}").parse().unwrap() };
    boot_and_check_status(&f, "solo", "single_node", addr(port), addr(admin));
}

/// Starts mcpg on a config and expects it to refuse to start: exit code 1 (not a signal) with
/// `needle` in its error output.
fn refuses(tag: &str, config: String, needle: &str) {
    let dir = TempDir::new(tag);
    let f = dir.write("c.yaml", &config);
    let (status, stderr) = Proc::spawn(Command::new(bin("mcpg")).arg("--config").arg(&f))
        .wait(Duration::from_secs(30));
    assert_eq!(
        status.code(),
        Some(1),
        "{tag}: expected a clean exit 1, got {status:?}\n{stderr}"
    );
    assert!(
        stderr.contains(needle),
        "{tag}: expected `{needle}` in:\n{stderr}"
    );
}

fn libc() -> std::path::PathBuf {
    [
        "/lib/x86_64-linux-gnu/libc.so.6",
        "/usr/lib/x86_64-linux-gnu/libc.so.6",
        "/lib64/libc.so.6",
        "/usr/lib/libc.so.6",
    ]
    .iter()
    .map(std::path::PathBuf::from)
    .find(|p| p.exists())
    .expect("libc.so.6 should exist on this machine")
}

#[test]
fn broken_plugins_are_refused_with_a_clear_error() {
    let (p, a) = (free_port(), free_port());
    refuses(
        "pl-libc",
        plugin_config("x", "dev.mcpg.cluster.x", &libc(), p, a, ""),
        "is not an mcpg plugin",
    );
    refuses(
        "pl-skew",
        plugin_config(
            "skew",
            "dev.mcpg.cluster.skew",
            &cdylib("mcpg_test_plugin_abi_skew"),
            p,
            a,
            "",
        ),
        "has a different ABI layout than this mcpg expects (plugin built against mcpg-plugin-api 0.1.0, host has 0.1.0)",
    );
    refuses(
        "pl-version",
        plugin_config(
            "future",
            "dev.mcpg.cluster.future",
            &cdylib("mcpg_test_plugin_version_skew"),
            p,
            a,
            "",
        ),
        "was built against mcpg-plugin-api 7.0.0, but this mcpg has 0.1.0",
    );
    refuses(
        "pl-id",
        plugin_config(
            "other",
            "dev.mcpg.cluster.other",
            &cdylib("mcpg_cluster_template"),
            p,
            a,
            "",
        ),
        "reports id `dev.mcpg.cluster.template`, but the config declares it as `dev.mcpg.cluster.other`",
    );
    refuses(
        "pl-missing",
        plugin_config(
            "x",
            "dev.mcpg.cluster.x",
            Path::new("/nonexistent/libx.so"),
            p,
            a,
            "",
        ),
        "plugin library /nonexistent/libx.so: file not found",
    );
    refuses(
        "pl-boot-panic",
        plugin_config(
            "panicky",
            "dev.mcpg.cluster.panicky",
            &cdylib("mcpg_test_plugin_panicky"),
            p,
            a,
            "  panic_in: boot\n",
        ),
        "boot panicked: deliberate panic in boot",
    );
    refuses(
        "pl-validate-panic",
        plugin_config(
            "panicky",
            "dev.mcpg.cluster.panicky",
            &cdylib("mcpg_test_plugin_panicky"),
            p,
            a,
            "  panic_in: validate\n",
        ),
        "validate panicked: deliberate panic in validate",
    );
    refuses(
        "pl-invalid",
        plugin_config(
            "template",
            "dev.mcpg.cluster.template",
            &cdylib("mcpg_cluster_template"),
            p,
            a,
            "  pool_size: 4\n",
        ),
        "cluster.pool_size: unknown key",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_primitive_fails_that_call_and_the_host_keeps_going() {
    let plugin = LoadedPlugin::load(
        &cdylib("mcpg_test_plugin_panicky"),
        Some("dev.mcpg.cluster.panicky"),
    )
    .unwrap();
    let host = HostInfo {
        node_id: Some("n1".into()),
        host_version: "test".into(),
    };
    let p = plugin.clone();
    let c =
        tokio::task::spawn_blocking(move || p.boot(&serde_json::json!({"panic_in": "get"}), &host))
            .await
            .unwrap()
            .unwrap();
    let err = c.get("k").await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Panicked, "{err}");
    assert!(err.message.contains("deliberate panic in get(k)"), "{err}");
    // The plugin and its runtime survive: other calls still work.
    c.put("k", b"v".to_vec(), None).await.unwrap();
    assert_eq!(c.list("").await.unwrap()[0].value, b"v");
    assert!(matches!(
        LoadedPlugin::load(&libc(), None),
        Err(LoadError::NotAPlugin { .. })
    ));
}

fn config_check(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(bin("mcpg-config-check"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn config_check_runs_the_plugin_phase_with_positions() {
    let dir = TempDir::new("pl-check");
    let lib = cdylib("mcpg_cluster_template");
    let f = dir.write(
        "c.yaml",
        &format!(
            "cluster:\n  kind: template\n  lease_ttl_ms: 1\n  pool_size: 4\n  lease_renew_before_expiry_percent: 150\n\
             plugins:\n  - id: dev.mcpg.cluster.template\n    source: {{path: \"{}\"}}\n\
             bindings: [{{name: m, path: /mcp, upstreams: [{{name: t, stdio: {{command: x}}}}]}}]\n",
            lib.display()
        ),
    );
    let name = f.display().to_string();
    let (code, out) = config_check(&[f.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains(&format!("{name}:3:3: cluster.lease_ttl_ms: must be at least 10 (plugin dev.mcpg.cluster.template)")), "{out}");
    assert!(
        out.contains(&format!("{name}:4:3: cluster.pool_size: unknown key")),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "{name}:5:3: warning: cluster.lease_renew_before_expiry_percent: 150 is outside 1..=99"
        )),
        "{out}"
    );
    // --no-plugins checks the host's part only.
    let (code, out) = config_check(&["--no-plugins", f.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}");

    // A plugin library that is not there is an error (mcpg would not start with this file),
    // unless the file is checked away from where it runs: then a warning (keys not checked).
    let g = dir.write(
        "g.yaml",
        "cluster: {kind: redis, url: \"redis://x\"}\nplugins: [{id: dev.mcpg.cluster.redis, source: {path: ./nope.so}}]\n\
         bindings: [{name: m, path: /mcp, upstreams: [{name: t, stdio: {command: x}}]}]\n",
    );
    let (code, out) = config_check(&[g.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("plugins[0].source.path: plugin library")
            && out.contains("mcpg would not start")
            && out.contains("--not-here"),
        "{out}"
    );
    let (code, out) = config_check(&["--not-here", g.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("warning: plugins[0].source.path: plugin library")
            && out.contains("not found here"),
        "{out}"
    );
    let (code, _) = config_check(&["--not-here", "--deny-warnings", g.to_str().unwrap()]);
    assert_eq!(code, Some(1));

    // A plugin whose validation panics is an error, not a crash.
    let h = dir.write(
        "h.yaml",
        &format!(
            "cluster: {{kind: panicky, panic_in: validate}}\nplugins: [{{id: dev.mcpg.cluster.panicky, source: {{path: \"{}\"}}}}]\n\
             bindings: [{{name: m, path: /mcp, upstreams: [{{name: t, stdio: {{command: x}}}}]}}]\n",
            cdylib("mcpg_test_plugin_panicky").display()
        ),
    );
    let (code, out) = config_check(&[h.to_str().unwrap()]);
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("validate panicked"), "{out}");
}

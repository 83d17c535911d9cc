//! `mcpg-config-check` as users run it: the examples, the output formats and the exit codes.

use std::process::{Command, Output};

use crate::harness::{TempDir, bin, repo_root};

fn check(args: &[&str]) -> Output {
    Command::new(bin("mcpg-config-check"))
        .args(args)
        .env("MCPG_REDIS_URL", "redis://127.0.0.1:6379")
        .env("MCPG_NATS_URL", "nats://127.0.0.1:4222")
        .env("MCPG_ADVERTISE_URL", "http://10.0.0.5:8080")
        .env("HOSTNAME", "mcpg-e2e-0")
        .output()
        .expect("run mcpg-config-check")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn every_example_config_is_valid() {
    let dir = repo_root().join("examples");
    let mut examples: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    examples.sort();
    assert!(
        examples.len() >= 5,
        "single-node plus one example per backend"
    );
    for example in examples {
        // The plugin libraries the examples name are release builds users make; the plugin
        // phase is covered in plugins.rs.
        let out = check(&["--no-plugins", "--deny-warnings", example.to_str().unwrap()]);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}:\n{}",
            example.display(),
            stdout(&out)
        );
        assert!(
            stdout(&out).starts_with(&format!("✓ {}: valid (", example.display())),
            "{}",
            stdout(&out)
        );
    }
}

#[test]
fn valid_output_uses_the_documented_summary_line() {
    let dir = TempDir::new("cc-valid");
    let f = dir.write(
        "config.yaml",
        "cluster: {kind: nats, servers: [\"nats://127.0.0.1:4222\"], node: {id: a}}\n\
         plugins: [{id: dev.mcpg.cluster.nats, source: {path: ./libx.so}}]\n\
         bindings: [{name: m, path: /mcp, upstreams: [{name: t, stdio: {command: x}}]}]\n\
         audit: {enabled: true, stdout: true}\n\
         observability: {enabled: true}\n",
    );
    let out = check(&["--no-plugins", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        stdout(&out),
        format!(
            "✓ {}: valid (1 bindings, audit on, observability on, cluster: nats)\n",
            f.display()
        )
    );
}

#[test]
fn exit_codes_distinguish_invalid_unreadable_and_usage() {
    let dir = TempDir::new("cc-codes");
    let bad = dir.write("bad.yaml", "server:\n  listen: nowhere\n  bogus: 1\n");
    let out = check(&[bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    let name = bad.display().to_string();
    assert!(
        text.contains(&format!(
            "{name}:2:11: server.listen: `nowhere` is not an `IP:PORT` address"
        )),
        "{text}"
    );
    assert!(
        text.contains(&format!("{name}:3:3: server.bogus: unknown key")),
        "{text}"
    );
    assert!(text.contains("invalid (2 errors"), "{text}");

    let missing = dir.0.join("missing.yaml");
    let out = check(&[missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));

    // Unreadable wins over invalid when several files are checked.
    let out = check(&[bad.to_str().unwrap(), missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));

    let out = check(&["--no-such-flag", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let out = check(&[]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn deny_warnings_turns_warnings_into_failure() {
    let dir = TempDir::new("cc-warn");
    let f = dir.write("w.yaml", "cluster: {kind: single_node, url: \"redis://x\"}\nbindings: [{name: m, path: /mcp, upstreams: [{name: t, stdio: {command: x}}]}]\n");
    let out = check(&[f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("warning: cluster.url: `kind: single_node` ignores"),
        "{}",
        stdout(&out)
    );
    let out = check(&["--deny-warnings", f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout(&out).contains("denied by --deny-warnings"));
}

#[test]
fn json_format_reports_positions_for_ci_annotations() {
    let dir = TempDir::new("cc-json");
    let good = dir.write(
        "good.yaml",
        "bindings: [{name: m, path: /mcp, upstreams: [{name: t, stdio: {command: x}}]}]\n",
    );
    let bad = dir.write("bad.yaml", "bindings:\n  - name: m\n    path: /healthz\n    upstreams: [{name: t, stdio: {command: x}}]\n");
    let out = check(&[
        "--format",
        "json",
        good.to_str().unwrap(),
        bad.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON output");
    assert_eq!(v["valid"], false);
    assert_eq!(v["files"][0]["valid"], true);
    assert_eq!(
        v["files"][0]["summary"],
        "1 bindings, audit off, observability on, cluster: single_node"
    );
    let err = &v["files"][1]["errors"][0];
    assert_eq!(err["line"], 3);
    assert_eq!(err["column"], 11);
    assert_eq!(err["path"], "bindings[0].path");
    assert_eq!(err["severity"], "error");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("served by the gateway itself")
    );
}

#[test]
fn secrets_from_the_environment_are_never_printed() {
    let dir = TempDir::new("cc-secret");
    let f = dir.write("s.yaml", "server:\n  listen: \"${env.MCPG_E2E_SECRET}\"\n");
    for format in ["text", "json"] {
        let out = Command::new(bin("mcpg-config-check"))
            .args(["--format", format, f.to_str().unwrap()])
            .env("MCPG_E2E_SECRET", "hunter2-very-secret")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let all = format!("{}{}", stdout(&out), String::from_utf8_lossy(&out.stderr));
        assert!(all.contains("server.listen"), "{all}");
        assert!(!all.contains("hunter2"), "secret leaked: {all}");
    }
}

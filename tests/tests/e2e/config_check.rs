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
        // The examples' secrets have no placeholder defaults: set as an operator would.
        .env("MCPG_ADMIN_TOKEN", "9f2c41d7e08ab35c6d7f1e20b4a9c83e")
        .env("MCPG_CI_TOKEN", "5be03a9d1c7f46e28a0b93d4c6e1f75a")
        .env("SEARCH_API_KEY", "search-api-key-from-the-environment")
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

/// Runs `program` under a 256 MiB address-space limit (`ulimit -v`), the way a CI job that
/// checks configs from pull requests should be safe to run. Before alias expansion was bounded,
/// a 400-byte file took gigabytes and the process aborted out of memory.
fn run_capped(program: &std::path::Path, args: &[&str]) -> Output {
    Command::new("sh")
        .arg("-c")
        .arg("ulimit -v 262144 && exec \"$0\" \"$@\"")
        .arg(program)
        .args(args)
        .output()
        .expect("run sh")
}

#[test]
fn an_alias_bomb_is_refused_within_a_small_memory_limit_by_both_binaries() {
    let cases = repo_root().join("host/tests/config-cases");
    for (name, line) in [
        ("invalid-alias-bomb.yaml", 7),
        ("invalid-alias-bomb-unknown-key.yaml", 10),
    ] {
        let f = cases.join(name);
        let body = std::fs::read_to_string(&f).unwrap();
        let bomb: usize = body
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.len() + 1)
            .sum();
        assert!(bomb < 500, "{name}: the bomb is {bomb} bytes");
        let shown = f.display().to_string();
        let out = run_capped(&bin("mcpg-config-check"), &[&shown]);
        let text = stdout(&out);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{name}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains(&format!("{shown}:{line}:"))
                && text.contains("YAML alias expansion stopped here"),
            "{text}"
        );
        // `mcpg` refuses it with the same positioned error, before binding anything.
        let out = run_capped(&bin("mcpg"), &["--config", &shown]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{name}: {err}");
        assert!(
            err.contains(&format!("{shown}:{line}:"))
                && err.contains("YAML alias expansion stopped here"),
            "{err}"
        );
    }
    // The cap itself leaves room for an ordinary check.
    let example = repo_root().join("examples/single-node.yaml");
    let out = run_capped(&bin("mcpg-config-check"), &[example.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
}

#[test]
fn control_characters_in_values_cannot_forge_a_diagnostic() {
    let dir = TempDir::new("cc-ctl");
    let f = dir.write(
        "c.yaml",
        "server:\n  listen: \"x\\nc.yaml:1:1: server.listen: fine\\e[2K\\r\\L\\P\"\n\
         bindings: [{name: m, path: /mcp, upstreams: [{name: t, stdio: {command: x}}]}]\n",
    );
    let out = check(&[f.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    // One diagnostic line plus the verdict: the forged line is not a line of its own.
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(
        !text
            .chars()
            .any(|c| (c.is_control() && c != '\n') || matches!(c, '\u{2028}' | '\u{2029}')),
        "{text:?}"
    );
    assert!(
        text.contains(r"`x\nc.yaml:1:1: server.listen: fine\u{1b}[2K\r\u{2028}\u{2029}`"),
        "{text}"
    );
}

#[test]
fn invalid_utf8_is_reported_at_the_bad_byte() {
    let dir = TempDir::new("cc-utf8");
    let f = dir.0.join("u.yaml");
    std::fs::write(
        &f,
        b"server:\n  listen: \"127.0.0.1:8080\"\nbindings:\n  - name: caf\xc3\xa9-\xff\n",
    )
    .unwrap();
    let shown = f.display().to_string();
    let out = check(&[&shown]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("{shown}:4:16: (root): not valid UTF-8: byte 0xFF")),
        "{text}"
    );
}

/// A copied example with a relative plugin path that does not resolve: `mcpg` would exit 1,
/// so the checker says so (an error) when checking where the file runs, and only warns with
/// `--not-here`. In the same run, the newcomer fixture's every mistake is reported.
#[test]
fn one_run_reports_every_mistake_and_an_unresolvable_plugin_path_is_an_error_here() {
    let dir = TempDir::new("cc-here");
    let example = std::fs::read_to_string(repo_root().join("examples/redis.yaml")).unwrap();
    assert!(example.contains("source: {path: ../target/release/libmcpg_cluster_redis.so}"));
    let copied = dir.write("redis.yaml", &example);
    let mistakes = dir.write(
        "mistakes.yaml",
        &std::fs::read_to_string(
            repo_root().join("host/tests/config-cases/invalid-newcomer-mistakes.yaml"),
        )
        .unwrap(),
    );
    let (copied_s, mistakes_s) = (copied.display().to_string(), mistakes.display().to_string());
    let out = check(&[&copied_s, &mistakes_s]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "{copied_s}:17:20: plugins[0].source.path: plugin library "
        )) && text.contains("mcpg would not start")
            && text.contains("--not-here"),
        "{text}"
    );
    assert!(
        text.contains(&format!("✗ {copied_s}: invalid (1 error, 0 warnings)")),
        "{text}"
    );
    for (line, what) in [
        (
            3,
            "server.listen: `localhost:8080` is not an `IP:PORT` address",
        ),
        (
            4,
            "warning: server.forwarding_secret: this is a placeholder value",
        ),
        (
            6,
            "cluster.kind: unknown cluster kind `reddis`; did you mean `redis`?",
        ),
        (13, "bindings[0].path: must start with `/`: write `/mcp`"),
        (
            16,
            "bindings[0].upstreams[0].mode: unknown key here: `mode` belongs one level down, at `stdio.mode`",
        ),
        (18, "bindings[1].name: duplicate binding name `main`"),
        (
            22,
            "warning: bindings[1].auth.tokens[0].token: shorter than 32 characters",
        ),
        (
            25,
            "bindings[1].upstreams[0].http.url: `http://search example/mcp` is not a valid URL",
        ),
        (
            26,
            "obervability: unknown key; did you mean `observability`?",
        ),
    ] {
        assert!(
            text.contains(&format!("{mistakes_s}:{line}:")) && text.contains(what),
            "{what}:\n{text}"
        );
    }
    assert!(
        text.contains(&format!("✗ {mistakes_s}: invalid (7 errors, 2 warnings)")),
        "{text}"
    );

    // Checked away from where it runs: a warning, the keys not checked.
    let out = check(&["--not-here", &copied_s]);
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("warning: plugins[0].source.path: plugin library")
            && text.contains("not found here"),
        "{text}"
    );

    // And mcpg, on the same file, refuses to start (so the checker's error is the truth).
    let out = Command::new(bin("mcpg"))
        .args(["--config", &copied_s])
        .env("MCPG_REDIS_URL", "redis://127.0.0.1:1")
        .env("MCPG_ADVERTISE_URL", "http://127.0.0.1:1")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn help_opens_with_what_the_tool_does() {
    let out = check(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    assert!(
        text.starts_with("Checks mcpg configuration files with the loader mcpg itself boots with"),
        "{text}"
    );
    assert!(text.contains("--not-here"), "{text}");
    assert!(!text.contains("Command-line tools around mcpg"), "{text}");
}

/// `--probe` reaches every upstream after validation, as mcpg does at start: a broken stdio
/// upstream (a missing Python module) fails the file at its position with the child's own
/// words, a working one passes; without `--probe` the same file is valid.
#[test]
fn probe_reports_an_upstream_that_cannot_start_at_its_position() {
    let dir = TempDir::new("config-check-probe");
    let python = crate::peers::python().display().to_string();
    let echo = crate::peers::peers_script("echo_upstream.py")
        .display()
        .to_string();
    let f = dir.write(
        "probe.yaml",
        &format!(
            "bindings:\n  - name: b\n    path: /mcp\n    upstreams:\n      - name: ok\n        stdio: {{command: {python:?}, args: [{echo:?}]}}\n      - name: broken\n        stdio: {{command: {python:?}, args: [-m, mcpg_no_such_module]}}\n"
        ),
    );
    let f = f.display().to_string();
    let plain = check(&[&f]);
    assert_eq!(plain.status.code(), Some(0), "{}", stdout(&plain));
    let probed = check(&["--probe", &f]);
    let out = stdout(&probed);
    assert_eq!(probed.status.code(), Some(1), "{out}");
    assert!(
        out.contains(&format!("{f}:7:9: bindings[0].upstreams[1]: probe failed"))
            && out.contains("No module named mcpg_no_such_module"),
        "{out}"
    );
    assert!(
        !out.contains("upstreams[0]"),
        "the working upstream passes: {out}"
    );
}

/// A plugin from a registry that is not cached yet: the warning prints the exact command that
/// caches it, with the `--plain-http` and `--cache-dir` the config implies.
#[test]
fn an_uncached_registry_plugin_gets_the_exact_pull_command() {
    let dir = TempDir::new("config-check-pull-hint");
    let cache = dir.0.join("plugin cache");
    let f = dir.write(
        "oci.yaml",
        &format!(
            "cluster:\n  kind: redis\n  url: \"redis://127.0.0.1:6379\"\nplugins:\n  - id: dev.mcpg.cluster.redis\n    source:\n      oci: \"127.0.0.1:5999/mcpg/cluster-redis:1.0\"\n      plain_http: true\n      cache_dir: {:?}\nbindings:\n  - {{name: b, path: /mcp, upstreams: [{{name: s, stdio: {{command: x}}}}]}}\n",
            cache.display().to_string()
        ),
    );
    let out = check(&[&f.display().to_string()]);
    let text = stdout(&out);
    assert!(
        text.contains(&format!(
            "`mcpg plugin pull --plain-http --cache-dir '{}' 127.0.0.1:5999/mcpg/cluster-redis:1.0` caches it",
            cache.display()
        )),
        "{text}"
    );
}

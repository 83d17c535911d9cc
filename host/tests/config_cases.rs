//! Table-driven config tests: every `config-cases/NAME.yaml` is loaded with a fixed environment
//! and its diagnostics compared with `NAME.expected` beside it. `MCPG_BLESS=1` rewrites the
//! expected files; review the diff before committing it.

use std::path::{Path, PathBuf};

/// The environment every case sees. `SECRET_TOKEN`'s value must never appear in any output.
const ENV: &[(&str, &str)] = &[
    ("MCPG_REDIS_URL", "redis://127.0.0.1:6379"),
    ("MCPG_NATS_URL", "nats://127.0.0.1:4222"),
    ("HOSTNAME", "mcpg-test-0"),
    ("SECRET_TOKEN", "s3cr3t-t0ken-value"),
    ("PORT_FROM_ENV", "9090"),
    ("EMPTY_VAR", ""),
];

fn env(name: &str) -> Option<String> {
    ENV.iter()
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
}

fn cases_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/config-cases")
}

/// What a case produces, in the form kept in its `.expected` file.
fn render(path: &Path) -> String {
    let name = path.file_name().unwrap().to_string_lossy().to_string();
    let outcome = mcpg::config::load_file_with_env(path, &env).expect("case file is readable");
    let mut out = String::new();
    for d in &outcome.diagnostics {
        out.push_str(&d.render(&name));
        out.push('\n');
    }
    match &outcome.config {
        Some(c) => out.push_str(&format!("valid: {}\n", c.summary())),
        None => out.push_str(&format!("invalid: {} errors\n", outcome.errors().count())),
    }
    out
}

#[test]
fn every_case_matches_its_expected_diagnostics() {
    let bless = std::env::var_os("MCPG_BLESS").is_some();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(cases_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    cases.sort();
    assert!(
        cases.len() >= 20,
        "expected the full table of cases, found {}",
        cases.len()
    );
    let mut failures = Vec::new();
    for case in &cases {
        let actual = render(case);
        assert!(
            !actual.contains("s3cr3t-t0ken-value"),
            "{}: a secret from the environment was printed:\n{actual}",
            case.display()
        );
        // Every diagnostic is one line of printable text, whatever the file holds.
        assert!(
            !actual
                .chars()
                .any(|c| (c.is_control() && c != '\n') || matches!(c, '\u{2028}' | '\u{2029}')),
            "{}: a control character was printed raw:\n{actual:?}",
            case.display()
        );
        let expected_path = case.with_extension("expected");
        if bless {
            std::fs::write(&expected_path, &actual).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if expected != actual {
            failures.push(format!(
                "--- {}\nexpected:\n{expected}\nactual:\n{actual}",
                case.display()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} cases differ (MCPG_BLESS=1 to accept):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Every case name says what it expects: `valid-*` loads, `invalid-*` does not.
#[test]
fn case_names_match_their_verdict() {
    for entry in std::fs::read_dir(cases_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let name = path.file_stem().unwrap().to_string_lossy().to_string();
        let outcome = mcpg::config::load_file_with_env(&path, &env).unwrap();
        match name.split('-').next() {
            Some("valid") => assert!(outcome.config.is_some(), "{name} should be valid"),
            Some("invalid") => assert!(outcome.config.is_none(), "{name} should be invalid"),
            _ => panic!("case {name} must start with valid- or invalid-"),
        }
    }
}

#[test]
fn ten_independent_mistakes_are_all_reported_in_one_run() {
    let outcome =
        mcpg::config::load_file_with_env(&cases_dir().join("invalid-ten-mistakes.yaml"), &env)
            .unwrap();
    let errors: Vec<_> = outcome.errors().collect();
    assert_eq!(errors.len(), 10, "{errors:#?}");
    // Each on its own line of the file.
    let mut lines: Vec<_> = errors.iter().map(|e| e.pos.line).collect();
    lines.dedup();
    assert_eq!(lines.len(), 10);
}

#[test]
fn relative_paths_resolve_against_the_config_directory() {
    let outcome =
        mcpg::config::load_file_with_env(&cases_dir().join("valid-relative-paths.yaml"), &env)
            .unwrap();
    let cfg = outcome.config.expect("valid");
    let dir = cases_dir();
    assert_eq!(
        cfg.config.plugins[0].source.path.as_deref(),
        Some(dir.join("plugins/libx.so").as_path())
    );
    assert_eq!(
        cfg.config.mcp.configurations.sessions.store.dir.as_deref(),
        Some(dir.join("state/sessions").as_path())
    );
    assert_eq!(
        cfg.config.bindings[0].upstreams[0]
            .stdio
            .as_ref()
            .unwrap()
            .cwd
            .as_deref(),
        Some(Path::new("/srv/abs"))
    );
}

/// Issue 27's newcomer: seven mistakes and two weak secrets, all reported in one run (the
/// duplicate binding name and the bad URL used to appear only after the others were fixed).
#[test]
fn a_newcomers_mistakes_are_all_reported_in_one_run_with_advice() {
    let outcome =
        mcpg::config::load_file_with_env(&cases_dir().join("invalid-newcomer-mistakes.yaml"), &env)
            .unwrap();
    let rendered: Vec<String> = outcome.diagnostics.iter().map(|d| d.render("f")).collect();
    let all = rendered.join("\n");
    assert_eq!(outcome.errors().count(), 7, "{all}");
    assert_eq!(outcome.warnings().count(), 2, "{all}");
    for expected in [
        "f:3:11: server.listen: `localhost:8080` is not an `IP:PORT` address",
        "f:4:22: warning: server.forwarding_secret: this is a placeholder value",
        "f:6:9: cluster.kind: unknown cluster kind `reddis`; did you mean `redis`?",
        "f:13:11: bindings[0].path: must start with `/`: write `/mcp`",
        "f:16:9: bindings[0].upstreams[0].mode: unknown key here: `mode` belongs one level down, at `stdio.mode`",
        "f:18:11: bindings[1].name: duplicate binding name `main`",
        "f:22:29: warning: bindings[1].auth.tokens[0].token: shorter than 32 characters",
        "f:25:21: bindings[1].upstreams[0].http.url: `http://search example/mcp` is not a valid URL",
        "f:26:1: obervability: unknown key; did you mean `observability`?",
    ] {
        assert!(all.contains(expected), "missing {expected:?} in:\n{all}");
    }
    assert!(
        !all.contains("does not match"),
        "a regex in a message:\n{all}"
    );
}

/// The plugin phase does not wait for the rest of the file to be valid: with a mistake
/// elsewhere, the selected plugin is still there to check, and a library that is not where
/// the file says is an error (a warning when checking for another machine).
#[test]
fn the_plugin_phase_runs_on_a_file_with_other_mistakes() {
    let dir = std::env::temp_dir().join(format!("mcpg-cases-plugin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("c.yaml");
    std::fs::write(
        &f,
        "server: {listen: nowhere}\n\
         cluster: {kind: redis, url: \"redis://127.0.0.1:6379\"}\n\
         plugins: [{id: dev.mcpg.cluster.redis, source: {path: ./lib/missing.so}}]\n\
         bindings: [{name: m, path: /mcp, upstreams: [{name: t, stdio: {command: x}}]}]\n",
    )
    .unwrap();
    let outcome = mcpg::config::load_file_with_env(&f, &env).unwrap();
    assert!(outcome.config.is_none());
    assert_eq!(outcome.errors().count(), 1, "{:?}", outcome.diagnostics);
    let target = outcome
        .plugin
        .as_ref()
        .expect("the plugin phase has its input");
    assert_eq!(
        target.source.path.as_deref(),
        Some(dir.join("lib/missing.so").as_path()),
        "resolved against the file's directory, as mcpg resolves it"
    );
    let here = mcpg::coordinator::check_plugin(target, true);
    assert_eq!(here.len(), 1, "{here:?}");
    assert_eq!(here[0].severity, mcpg::config::Severity::Error);
    assert_eq!((here[0].pos.line, here[0].pos.column), (3, 55));
    assert!(
        here[0].message.contains("mcpg would not start"),
        "{}",
        here[0].message
    );
    let elsewhere = mcpg::coordinator::check_plugin(target, false);
    assert_eq!(elsewhere[0].severity, mcpg::config::Severity::Warning);
    std::fs::remove_dir_all(&dir).unwrap();
}

//! The official MCP conformance suite (`@modelcontextprotocol/conformance`, server mode) run
//! against mcpg fronting a fixture upstream that implements the suite's fixture tools,
//! resources and prompts (`tests/peers/conformance_upstream.py`, built on the `mcp` package),
//! for both spec versions, with the fixture reached over HTTP and over stdio, and with each
//! era bridged to the other. No expected failures are listed for the direct runs; the one run
//! that bridges modern clients to a legacy-only upstream lists the limits of that bridge, each
//! with its reason, in `tests/conformance/expected-failures-2026-07-28-bridged.yml` (the suite
//! fails the run on any other failure and on any listed one that passes).

use std::process::Command;

use crate::harness::{TempDir, repo_root};
use crate::peers::{Gateway, conformance_fixture, deps, node, peers_script, python};

/// How mcpg reaches the fixture in a run.
enum Via {
    /// Streamable HTTP; `protocol` as configured (`auto` probes and keeps the fixture's era).
    Http(&'static str),
    /// A stdio child (`per_session` for legacy clients; one shared child for modern ones).
    Stdio,
}

/// Runs the suite for `version`; `baseline` names the expected-failures file
/// (`tests/conformance/expected-failures-<baseline>.yml`), when the run has one.
fn run_suite(version: &str, via: Via, baseline: Option<&str>) {
    let (_fixture, url) = conformance_fixture();
    let upstream = match via {
        Via::Http(protocol) => {
            format!("{{name: fixture, http: {{url: {url:?}, protocol: {protocol}}}}}")
        }
        Via::Stdio => format!(
            "{{name: fixture, stdio: {{command: {:?}, args: [{:?}, --stdio]}}}}",
            python().display().to_string(),
            peers_script("conformance_upstream.py")
                .display()
                .to_string()
        ),
    };
    let gw = Gateway::start(
        &format!("conformance-{version}"),
        &format!("bindings:\n  - name: conformance\n    path: /mcp\n    upstreams: [{upstream}]\n"),
    );
    let out = TempDir::new("conformance-out");
    let baseline =
        baseline.map(|b| repo_root().join(format!("tests/conformance/expected-failures-{b}.yml")));
    let suite = deps().join("node/node_modules/@modelcontextprotocol/conformance/dist/index.js");
    // The suite insists on a localhost URL (its DNS-rebinding check compares hosts).
    let target = format!("http://localhost:{}/mcp", gw.addr.port());
    // Node 22 (the suite's requirement) first on PATH, as the suite may start node itself.
    let node = node();
    let path = format!(
        "{}:{}",
        node.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut cmd = Command::new(&node);
    cmd.env("PATH", path)
        .arg(&suite)
        .args(["server", "--url", &target, "--requirements", version, "-o"])
        .arg(&out.0);
    if let Some(b) = &baseline {
        assert!(b.exists(), "{} is missing", b.display());
        cmd.arg("--expected-failures").arg(b);
    }
    let result = cmd.output().expect("run the conformance suite");
    let stdout = String::from_utf8_lossy(&result.stdout);
    let summary = stdout
        .split("=== SUMMARY ===")
        .nth(1)
        .unwrap_or(&stdout)
        .to_owned();
    assert!(
        result.status.success(),
        "conformance {version} through mcpg failed:\n{summary}\n{}",
        String::from_utf8_lossy(&result.stderr)
    );
    eprintln!("conformance {version} through mcpg:\n{summary}");
}

#[test]
fn conformance_2025_11_25_through_mcpg_to_an_http_upstream() {
    run_suite("2025-11-25", Via::Http("auto"), None);
}

#[test]
fn conformance_2026_07_28_through_mcpg_to_an_http_upstream() {
    run_suite("2026-07-28", Via::Http("auto"), None);
}

#[test]
fn conformance_2025_11_25_through_mcpg_to_a_stdio_upstream() {
    run_suite("2025-11-25", Via::Stdio, None);
}

#[test]
fn conformance_2026_07_28_through_mcpg_to_a_stdio_upstream() {
    run_suite("2026-07-28", Via::Stdio, None);
}

/// Legacy clients in front of an upstream spoken to in 2026-07-28 only: stamped `_meta`,
/// input-required rounds turned into server requests.
#[test]
fn conformance_2025_11_25_bridged_to_a_modern_upstream() {
    run_suite("2025-11-25", Via::Http("modern"), None);
}

/// Modern clients in front of an upstream spoken to in the legacy era only: the bridging
/// session, server requests turned into input-required rounds.
#[test]
fn conformance_2026_07_28_bridged_to_a_legacy_upstream() {
    run_suite(
        "2026-07-28",
        Via::Http("legacy"),
        Some("2026-07-28-bridged"),
    );
}

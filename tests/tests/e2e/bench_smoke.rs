//! The benchmark's pieces in smoke mode, so they cannot rot: `mcp-load` drives the fixture
//! upstream directly and through `mcpg`, in both eras and at a fixed rate, for a moment each.
//! Only correctness is checked (requests made, no errors); timings are the benchmark's job.

use std::process::Command;

use serde_json::Value;

use crate::harness::bin;
use crate::peers::Gateway;

fn load(url: &str, args: &[&str]) -> Value {
    let out = Command::new(bin("mcp-load"))
        .args([
            "--url",
            url,
            "--duration-secs",
            "1",
            "--tool",
            "payload",
            "--payload-bytes",
            "100",
        ])
        .args(args)
        .output()
        .expect("run mcp-load");
    assert!(
        out.status.success(),
        "mcp-load {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("mcp-load prints JSON")
}

#[test]
fn mcp_load_drives_the_fixture_directly_and_through_mcpg() {
    let (_fixture, url) = crate::mcp_peers::bench_fixture();
    let gw = Gateway::start(
        "bench-smoke",
        &format!(
            "bindings:\n  - name: f\n    path: /mcp\n    upstreams: [{{name: f, http: {{url: {url:?}}}}}]\n"
        ),
    );
    let through = gw.url("/mcp");
    for target in [url.as_str(), through.as_str()] {
        for args in [
            &["--era", "modern", "--concurrency", "4"][..],
            &["--era", "legacy", "--concurrency", "4"][..],
            &["--era", "modern", "--rate", "200", "--concurrency", "8"][..],
        ] {
            let r = load(target, args);
            assert_eq!(r["errors"], 0, "{target} {args:?}: {r}");
            assert!(r["requests"].as_u64() > Some(0), "{target} {args:?}: {r}");
            assert!(
                r["latency_us"]["p50"].as_f64() > Some(0.0),
                "{target} {args:?}: {r}"
            );
        }
    }
}

/// `mcp-sessions` (the memory benchmark's session holder) opens sessions through mcpg, holds
/// them until its stdin closes, and ends them.
#[test]
fn mcp_sessions_opens_holds_and_ends_sessions_through_mcpg() {
    use std::io::Write;
    let (_fixture, url) = crate::mcp_peers::bench_fixture();
    let gw = Gateway::start(
        "bench-sessions",
        &format!(
            "bindings:\n  - name: f\n    path: /mcp\n    upstreams: [{{name: f, http: {{url: {url:?}, protocol: legacy}}}}]\n"
        ),
    );
    let mut child = Command::new(bin("mcp-sessions"))
        .args(["--url", &gw.url("/mcp"), "--sessions", "5"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run mcp-sessions");
    let mut stdin = child.stdin.take().unwrap();
    let _ = stdin.write_all(b"\n");
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "opened 5");
}

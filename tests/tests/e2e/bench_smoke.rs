//! The benchmark's pieces in smoke mode, so they cannot rot: `mcp-load` drives the fixture
//! upstream directly and through `mcpg`, in both eras and at a fixed rate, for a moment each.
//! Only correctness is checked (requests made, no errors); timings are the benchmark's job.

use std::process::Command;

use serde_json::Value;

use crate::harness::bin;
use crate::peers::Gateway;

/// `mcp-load` for one second; `tools/call` of `payload` with 100 B unless `args` name a tool.
fn load(url: &str, args: &[&str]) -> Value {
    let tool: &[&str] = if args.contains(&"--tool") {
        &[]
    } else {
        &["--tool", "payload", "--payload-bytes", "100"]
    };
    let out = Command::new(bin("mcp-load"))
        .args(["--url", url, "--duration-secs", "1"])
        .args(tool)
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

/// The scaling benchmark's pieces: a fixture offering more tools (`--tools`), a binding of
/// several upstreams with prefixed names, and `mcp-load` sending `tools/list` (checking how
/// many tools are listed) and calling a prefixed tool, in both eras.
#[test]
fn mcp_load_lists_and_calls_prefixed_tools_of_several_upstreams() {
    let (_fixture, url) = crate::mcp_peers::bench_fixture_with(&["--tools", "5"]);
    let gw = Gateway::start(
        "bench-smoke-upstreams",
        &format!(
            "bindings:\n  - name: f\n    path: /mcp\n    prefix: always\n    upstreams:\n\
             \x20     - {{name: u1, http: {{url: {url:?}}}}}\n\
             \x20     - {{name: u2, http: {{url: {url:?}}}}}\n"
        ),
    );
    let through = gw.url("/mcp");
    for era in ["modern", "legacy"] {
        for args in [
            &["--tool", "list", "--expect-tools", "10"][..],
            &["--tool", "echo", "--tool-prefix", "u2__"][..],
        ] {
            let r = load(&through, &[&["--era", era], args].concat());
            assert_eq!(r["errors"], 0, "{era} {args:?}: {r}");
            assert!(r["requests"].as_u64() > Some(0), "{era} {args:?}: {r}");
        }
        // The count is checked: a wrong expectation is an error on every request.
        let r = load(
            &through,
            &["--era", era, "--tool", "list", "--expect-tools", "11"],
        );
        assert_eq!(r["requests"], 0, "{era}: {r}");
        assert!(r["errors"].as_u64() > Some(0), "{era}: {r}");
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

//! Upstream pools end to end, on one mcpg and three fixture endpoints (HTTP): 2026-07-28 calls
//! balanced over the endpoints keep succeeding while one endpoint is killed (requests that
//! could not reach it are sent to another), the management API shows it out of rotation
//! and back once it returns, a legacy session's pin is in its record, and drain works.
//! (The two-replica, nginx, Redis and stdio-pool proof is `pools_cluster`.)

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{
    MCP_ACCEPT, MCP_JSON, Proc, TempDir, bin, free_port, get_json, http, legacy_session,
    wait_ready, wait_until,
};

/// The fixture upstream listening on `port` (both eras over HTTP), once it accepts.
pub(crate) fn fixture(port: u16) -> Proc {
    let p = Proc::spawn(
        Command::new(bin("mcpg-fixture-upstream")).args(["--listen", &format!("127.0.0.1:{port}")]),
    );
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || std::net::TcpStream::connect(
            addr
        )
        .is_ok()),
        "the fixture endpoint on {port} never listened"
    );
    p
}

/// One 2026-07-28 `tools/call` of `echo`; whether it got a result.
fn call(addr: SocketAddr) -> Result<(), String> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {
    "name": "echo", "arguments": {"text": "hi"},
    "_meta": {
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientInfo": {"name": "e2e", "version": "0"},
        "io.modelcontextprotocol/clientCapabilities": {},
    }}});
    let (status, _, text) = http(
        addr,
        "POST",
        "/mcp",
        &[
            MCP_JSON,
            MCP_ACCEPT,
            ("MCP-Protocol-Version", "2026-07-28"),
            ("Mcp-Method", "tools/call"),
            ("Mcp-Name", "echo"),
        ],
        body.to_string().as_bytes(),
    );
    if status == 200 && text.contains("\"result\"") && text.contains("hi") {
        Ok(())
    } else {
        Err(format!("{status}: {text}"))
    }
}

fn replicas(admin: SocketAddr) -> Vec<Value> {
    let v = get_json(admin, "/api/cluster/servers/fx/replicas").expect("the replicas");
    v["servers"][0]["replicas"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn endpoint(admin: SocketAddr, name: &str) -> Value {
    replicas(admin)
        .into_iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no endpoint {name}"))
}

#[test]
fn a_pool_keeps_serving_when_an_endpoint_dies_and_takes_it_back_when_it_returns() {
    let ports = [free_port(), free_port(), free_port()];
    let mut fx: Vec<Option<Proc>> = ports.iter().map(|&p| Some(fixture(p))).collect();
    let (port, admin_port) = (free_port(), free_port());
    let dir = TempDir::new("pools");
    let cfg = dir.write(
        "mcpg.yaml",
        &format!(
            r#"server: {{listen: "127.0.0.1:{port}", admin_listen: "127.0.0.1:{admin_port}"}}
bindings:
  - name: b
    path: /mcp
    upstreams:
      - name: fx
        health: {{interval_ms: 500, timeout_ms: 2000, healthy_threshold: 1, unhealthy_threshold: 2, outlier: {{consecutive_failures: 2, base_ejection_ms: 1000}}}}
        endpoints:
          - {{name: a, http: {{url: "http://127.0.0.1:{}/mcp"}}}}
          - {{name: b, http: {{url: "http://127.0.0.1:{}/mcp"}}}}
          - {{name: c, http: {{url: "http://127.0.0.1:{}/mcp"}}}}
"#,
            ports[0], ports[1], ports[2]
        ),
    );
    let _mcpg = Proc::spawn(Command::new(bin("mcpg")).arg("--config").arg(&cfg));
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    assert!(
        wait_ready(addr, Duration::from_secs(30)),
        "mcpg never became ready"
    );

    // Balanced: every endpoint serves.
    for _ in 0..30 {
        call(addr).expect("a call before the kill");
    }
    let before: Vec<u64> = replicas(admin)
        .iter()
        .map(|r| r["requests"].as_u64().unwrap())
        .collect();
    assert!(
        before.iter().all(|&n| n >= 5),
        "round robin over all three: {before:?}"
    );

    // A legacy session is pinned, and its record says where.
    let sid = legacy_session(addr, "/mcp");
    let s = get_json(admin, &format!("/api/cluster/sessions/{sid}")).expect("the session");
    assert!(
        matches!(
            s["upstream_endpoints"]["fx"].as_str(),
            Some("a" | "b" | "c")
        ),
        "{s}"
    );

    // Kill b: no stateless call fails (none is in flight on it when it dies here).
    fx[1].take().unwrap().signal("KILL");
    let mut failed = Vec::new();
    for _ in 0..90 {
        if let Err(e) = call(addr) {
            failed.push(e);
        }
    }
    assert!(failed.is_empty(), "failed calls after the kill: {failed:?}");
    let b = endpoint(admin, "b");
    assert!(b["not_reached"].as_u64().unwrap() >= 1, "{b}");
    assert!(
        wait_until(Duration::from_secs(20), || endpoint(admin, "b")["state"]
            != "healthy"),
        "b never left the rotation: {}",
        endpoint(admin, "b")
    );

    // Bring it back: it returns to the rotation and serves again.
    fx[1] = Some(fixture(ports[1]));
    assert!(
        wait_until(Duration::from_secs(30), || endpoint(admin, "b")["state"]
            == "healthy"),
        "b never came back: {}",
        endpoint(admin, "b")
    );
    let served = endpoint(admin, "b")["requests"].as_u64().unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || {
            call(addr).expect("a call after the return");
            endpoint(admin, "b")["requests"].as_u64().unwrap() > served
        }),
        "b serves again"
    );

    // Drain a: it gets no new work; unknown endpoints and actions are JSON errors.
    let (status, _, text) = http(
        admin,
        "POST",
        "/api/cluster/servers/fx/replicas/a/drain",
        &[],
        b"",
    );
    assert_eq!(status, 200, "{text}");
    let a_before = endpoint(admin, "a")["requests"].as_u64().unwrap();
    for _ in 0..12 {
        call(addr).expect("a call while a drains");
    }
    assert_eq!(endpoint(admin, "a")["requests"].as_u64().unwrap(), a_before);
    assert_eq!(endpoint(admin, "a")["admin"], "draining");
    let (status, _, text) = http(
        admin,
        "POST",
        "/api/cluster/servers/fx/replicas/zz/drain",
        &[],
        b"",
    );
    assert_eq!(status, 404, "{text}");
    assert!(text.contains("\"status\":404"), "{text}");
    let (status, _, _) = http(
        admin,
        "POST",
        "/api/cluster/servers/fx/replicas/a/explode",
        &[],
        b"",
    );
    assert_eq!(status, 400);
}

//! Cluster-wide rate limits: three `mcpg` replicas on one real Redis behind nginx
//! round-robin, real clients (the Python `mcp` client in both eras) with two identities. A
//! quota of N tool calls per window per caller holds across the replicas, the other caller
//! is unaffected, refusals are 429 with `Retry-After` (and JSON-RPC code 429 with the limit
//! and the wait in `data`), and the quota comes back with the next window.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mcpg_backends::RedisServer;
use serde_json::{Value, json};

use crate::cluster_sessions::Nginx;
use crate::harness::{
    MCP_ACCEPT, MCP_JSON, Proc, TempDir, bin, cdylib, header, http, http_get, start_replicas,
};
use crate::peers::py_client_env;

/// Calls each caller may make per window, and the window.
const N: usize = 6;
const WINDOW_MS: u64 = 15_000;
const ALICE: &str = "alice-0123456789abcdef0123456789abcdef";
const BOB: &str = "bob-0123456789abcdef0123456789abcdef01";

struct Replicas {
    procs: Vec<Proc>,
    mains: Vec<SocketAddr>,
    admins: Vec<SocketAddr>,
    _redis: RedisServer,
    _dir: TempDir,
}

fn start() -> Replicas {
    let redis = RedisServer::start();
    let dir = TempDir::new("rate-limits");
    let f = dir.write(
        "mcpg.yaml",
        &format!(
            "cluster:\n  kind: redis\n  url: \"{}\"\n  key_prefix: \"rl:\"\n\
             plugins:\n  - id: dev.mcpg.cluster.redis\n    source: {{path: \"{}\"}}\n\
             bindings:\n  - name: rl\n    path: /mcp\n    upstreams: [{{name: fx, stdio: {{command: \"{}\", args: [\"--stdio\"]}}}}]\n    \
             auth:\n      tokens:\n        - {{name: alice, token: {ALICE}}}\n        - {{name: bob, token: {BOB}}}\n    \
             rate_limits:\n      - {{name: per-caller, scope: caller, count: tool_calls, quota: \"{N}/{}s\"}}\n",
            redis.url(),
            cdylib("mcpg_cluster_redis").display(),
            bin("mcpg-fixture-upstream").display(),
            WINDOW_MS / 1000,
        ),
    );
    let started = start_replicas(&f, "rl", 3, |_, _| {});
    let mains = started.iter().map(|r| r.main).collect();
    let admins = started.iter().map(|r| r.admin).collect();
    let procs = started.into_iter().map(|r| r.proc).collect();
    Replicas {
        procs,
        mains,
        admins,
        _redis: redis,
        _dir: dir,
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// Sleeps until just after a quota window begins (windows are aligned to the Unix epoch).
fn at_window_start() -> u64 {
    let next = (now_ms() / WINDOW_MS + 1) * WINDOW_MS;
    std::thread::sleep(Duration::from_millis(next - now_ms() + 50));
    next / WINDOW_MS
}

/// `calls` echo calls by the Python client as `token` in `mode`: (succeeded, refusals seen).
fn run(url: &str, mode: &str, token: &str, calls: usize) -> (usize, Vec<String>) {
    let plan = json!({"calls": (0..calls)
        .map(|i| json!({"name": "echo", "arguments": {"text": format!("call {i}")}}))
        .collect::<Vec<_>>()});
    let r = py_client_env(url, mode, plan, &[("MCPG_TEST_BEARER", token)]);
    let mut ok = 0;
    let mut refused = Vec::new();
    for c in r["calls"].as_array().unwrap_or_else(|| panic!("{r}")) {
        match c.get("exception").and_then(Value::as_str) {
            None => ok += 1,
            Some(e) => refused.push(e.to_owned()),
        }
    }
    (ok, refused)
}

/// The sum over the replicas of `mcpg_rate_limited{binding="rl",limit="per-caller"}`.
fn refused_metric(admins: &[SocketAddr]) -> u64 {
    admins
        .iter()
        .map(|a| {
            let (_, text) = http_get(*a, "/metrics").unwrap();
            text.lines()
                .find(|l| {
                    l.starts_with("mcpg_rate_limited_total{") && l.contains("limit=\"per-caller\"")
                })
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0) as u64
        })
        .sum()
}

/// A raw 2026-07-28 `tools/call` as alice: status, headers, body.
fn raw_call(addr: SocketAddr) -> (u16, Vec<(String, String)>, String) {
    let body = json!({"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x"},
        "_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}});
    let bearer = format!("Bearer {ALICE}");
    http(
        addr,
        "POST",
        "/mcp",
        &[
            MCP_JSON,
            MCP_ACCEPT,
            ("Authorization", &bearer),
            ("MCP-Protocol-Version", "2026-07-28"),
            ("Mcp-Method", "tools/call"),
            ("Mcp-Name", "echo"),
        ],
        body.to_string().as_bytes(),
    )
}

type Run = (usize, Vec<String>);

#[test]
fn a_per_caller_quota_holds_across_three_replicas_behind_round_robin() {
    let c = start();
    let nginx = Nginx::start(&c.mains);
    let url = format!("http://{}/mcp", nginx.addr);
    // Each attempt runs inside one window; a machine so slow that the clients straddle a
    // window boundary gets another try rather than a wrong count.
    let mut outcome: Option<(Run, Run, Run, _, u64)> = None;
    for _ in 0..3 {
        let before = refused_metric(&c.admins);
        let window = at_window_start();
        let (alice_legacy, alice_modern, bob) = std::thread::scope(|s| {
            let a = s.spawn(|| run(&url, "legacy", ALICE, N));
            let m = s.spawn(|| run(&url, "2026-07-28", ALICE, N));
            let b = s.spawn(|| run(&url, "legacy", BOB, N));
            (a.join().unwrap(), m.join().unwrap(), b.join().unwrap())
        });
        // One more, over the quota: the raw answer.
        let raw = raw_call(nginx.addr);
        if now_ms() / WINDOW_MS == window {
            let refused = refused_metric(&c.admins) - before;
            outcome = Some((alice_legacy, alice_modern, bob, raw, refused));
            break;
        }
    }
    let (alice_legacy, alice_modern, bob, (status, headers, text), refused) =
        outcome.expect("three attempts each straddled a window boundary");
    let alice_ok = alice_legacy.0 + alice_modern.0;
    eprintln!(
        "rate_limits: alice made {} calls through 3 replicas, {alice_ok} got through against a quota of {N}; bob {}/{N}",
        2 * N + 1,
        bob.0
    );
    assert_eq!(
        alice_ok, N,
        "the quota holds cluster-wide: {alice_legacy:?} {alice_modern:?}"
    );
    assert_eq!(bob, (N, vec![]), "the other caller is unaffected");
    for e in alice_legacy.1.iter().chain(&alice_modern.1) {
        assert!(
            e.contains("MCPError(429")
                && e.contains("'limit': 'per-caller'")
                && e.contains("retryAfterSeconds"),
            "{e}"
        );
    }
    assert_eq!(
        refused,
        N as u64 + 1,
        "mcpg_rate_limited_total over the replicas"
    );
    assert_eq!(status, 429, "{text}");
    let wait: u64 = header(&headers, "retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("429 without a Retry-After: {headers:?}"));
    assert!((1..=WINDOW_MS / 1000).contains(&wait), "Retry-After {wait}");
    let v: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["id"], 9);
    assert_eq!(v["error"]["code"], 429);
    assert_eq!(v["error"]["data"]["reason"], "rate_limited");
    assert_eq!(v["error"]["data"]["limit"], "per-caller");

    // The next window gives alice her quota again.
    at_window_start();
    let again = run(&url, "legacy", ALICE, N);
    assert_eq!(again, (N, vec![]), "the quota resets with the window");
    drop(c.procs);
}

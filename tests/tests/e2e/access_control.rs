//! Access control and the audit log end to end: a binding behind static tokens and JWTs from a
//! JWKS the test serves (tokens signed by the test), per-identity rules seen through the real
//! Python `mcp` client in both eras, sessions bound to the identity that made them (on one
//! replica and across two sharing Redis), what upstreams receive of the client's headers, and
//! the audit file: who called what, redacted, verified by `mcpg audit verify`, then altered
//! and caught.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use mcpg_backends::RedisServer;
use serde_json::{Value, json};

use crate::harness::{
    MCP_ACCEPT, MCP_JSON, bin, cdylib, header, http, http_get, start_agreeing_replicas,
};
use crate::peers::{Gateway, auth_fixture, py_client_env, time_stdio};

const CI_TOKEN: &str = "ci-token-0123456789abcdef";
const UPSTREAM_KEY: &str = "upstream-secret-key-42";

/// A JWT from the fixture's issuer; `query` overrides its claims (see `auth_fixture.py`).
fn jwt(fixture: u16, query: &str) -> String {
    let addr: SocketAddr = format!("127.0.0.1:{fixture}").parse().unwrap();
    let (status, body) = http_get(addr, &format!("/token?{query}")).expect("mint a token");
    assert_eq!(status, 200, "{body}");
    body.trim().to_owned()
}

/// The binding every test here uses: `mcp-server-time` and the fixture's header-revealing
/// upstream, behind tokens and JWTs, with rules by identity.
fn binding(fixture: u16) -> String {
    format!(
        r#"bindings:
  - name: tools
    path: /mcp
    upstreams:
      - {time}
      - name: up
        http:
          url: http://127.0.0.1:{fixture}/mcp
          protocol: legacy
          headers: {{X-Api-Key: "{UPSTREAM_KEY}"}}
          pass_through_headers: [x-tenant]
    auth:
      tokens: [{{name: ci, token: "{CI_TOKEN}"}}]
      jwt:
        jwks_url: http://127.0.0.1:{fixture}/jwks.json
        issuer: http://issuer.test
        audiences: [http://mcpg.test/mcp]
        clock_skew_ms: 0
    access:
      default: deny
      rules:
        - allow: {{tools: ["time__*"]}}
        - match: {{claims: {{groups: admins}}}}
          allow: {{tools: ["*"]}}
          deny: {{tools: [time__convert_time]}}
        - match: {{tokens: [ci]}}
          allow: {{tools: [up__headers]}}
"#,
        time = time_stdio("")
    )
}

fn post(
    addr: SocketAddr,
    bearer: Option<&str>,
    sid: Option<&str>,
    body: &Value,
) -> (u16, Vec<(String, String)>, String) {
    let auth = bearer.map(|b| format!("Bearer {b}"));
    let mut headers = vec![MCP_JSON, MCP_ACCEPT];
    if let Some(a) = &auth {
        headers.push(("Authorization", a));
    }
    if let Some(s) = sid {
        headers.push(("Mcp-Session-Id", s));
    }
    http(addr, "POST", "/mcp", &headers, body.to_string().as_bytes())
}

fn initialize(addr: SocketAddr, bearer: &str) -> String {
    let init = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"0"}}});
    let (status, headers, body) = post(addr, Some(bearer), None, &init);
    assert_eq!(status, 200, "initialize: {body}");
    header(&headers, "mcp-session-id")
        .expect("a session id")
        .to_owned()
}

fn list_tools() -> Value {
    json!({"jsonrpc":"2.0","id":1,"method":"tools/list","params":{}})
}

#[test]
fn unauthenticated_and_bad_tokens_get_401_with_the_metadata_document() {
    let (_fx, fixture) = auth_fixture();
    let gw = Gateway::start("auth-401", &binding(fixture));
    let init = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"0"}}});

    let (status, headers, _) = post(gw.addr, None, None, &init);
    assert_eq!(status, 401);
    let challenge = header(&headers, "www-authenticate").expect("a challenge");
    let metadata = format!(
        "http://{}/.well-known/oauth-protected-resource/mcp",
        gw.addr
    );
    assert!(
        challenge.starts_with(&format!("Bearer resource_metadata=\"{metadata}\"")),
        "{challenge}"
    );
    assert!(
        !challenge.contains("error="),
        "no token, no error code: {challenge}"
    );

    let (status, body) = http_get(gw.addr, "/.well-known/oauth-protected-resource/mcp").unwrap();
    assert_eq!(status, 200, "{body}");
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["resource"], format!("http://{}/mcp", gw.addr));
    assert_eq!(doc["authorization_servers"], json!(["http://issuer.test"]));

    let bad = [
        ("expired", jwt(fixture, "exp_in=-120"), "expired"),
        (
            "wrong audience",
            jwt(fixture, "aud=http://other.test/mcp"),
            "audience",
        ),
        (
            "wrong issuer",
            jwt(fixture, "iss=http://evil.test"),
            "issuer",
        ),
        ("unknown signer", jwt(fixture, "rogue=1"), "signature"),
        ("not a JWT", "not-a-jwt-at-all".into(), "not valid"),
        (
            "wrong static token",
            "ci-token-0123456789abcdeX".into(),
            "not valid",
        ),
    ];
    for (what, token, says) in &bad {
        let (status, headers, body) = post(gw.addr, Some(token), None, &init);
        assert_eq!(status, 401, "{what}: {body}");
        let c = header(&headers, "www-authenticate").unwrap_or_default();
        assert!(c.contains("error=\"invalid_token\""), "{what}: {c}");
        assert!(body.contains(says), "{what}: {body}");
        assert!(
            !body.contains(token.as_str()),
            "{what}: the token is echoed: {body}"
        );
    }
    // A token that is fine gets in.
    let good = jwt(fixture, "sub=alice");
    let (status, _, body) = post(gw.addr, Some(&good), None, &init);
    assert_eq!(status, 200, "{body}");
}

#[test]
fn rules_shape_what_each_caller_sees_and_sessions_belong_to_their_maker() {
    let (_fx, fixture) = auth_fixture();
    let body = format!(
        "{}audit:\n  enabled: true\n  include_arguments: true\n  redact: [password]\n  file: {{path: audit.jsonl}}\n",
        binding(fixture)
    );
    let gw = Gateway::start("auth-rules", &body);
    let url = gw.url("/mcp");
    let admin = jwt(fixture, "sub=alice&groups=admins,staff");
    let user = jwt(fixture, "sub=bob&groups=staff");

    // An admin, legacy era: the admins' rule adds the upstream's tool, its deny removes one.
    let plan = json!({"calls": [
        {"name": "time__get_current_time", "arguments": {"timezone": "UTC"}},
        {"name": "up__headers", "arguments": {"password": "hunter2", "note": "kept"}},
        {"name": "time__convert_time", "arguments": {"source_timezone": "UTC", "time": "12:00", "target_timezone": "UTC"}},
    ]});
    let r = py_client_env(
        &url,
        "legacy",
        plan.clone(),
        &[
            ("MCPG_TEST_BEARER", &admin),
            (
                "MCPG_TEST_HEADERS",
                r#"{"X-Tenant": "acme", "X-Other": "dropped"}"#,
            ),
        ],
    );
    assert_eq!(
        r["tools"],
        json!(["time__get_current_time", "up__headers"]),
        "{r}"
    );
    assert_eq!(r["calls"][0]["is_error"], false, "{r}");
    // What the upstream received: its own key and the header passed through; not the
    // client's Authorization, nor any other client header.
    let seen: Value = serde_json::from_str(r["calls"][1]["text"][0].as_str().unwrap()).unwrap();
    assert_eq!(seen["x-api-key"], UPSTREAM_KEY, "{seen}");
    assert_eq!(seen["x-tenant"], "acme", "{seen}");
    assert!(seen.get("authorization").is_none(), "{seen}");
    assert!(seen.get("x-other").is_none(), "{seen}");
    let refused = &r["calls"][2];
    assert!(
        refused["is_error"] == true || refused.get("exception").is_some(),
        "a denied call must fail: {r}"
    );
    assert!(refused.to_string().contains("not available"), "{r}");

    // Another identity, 2026-07-28 era: only what every caller may use (the admins' deny
    // is theirs alone).
    let r = py_client_env(&url, "2026-07-28", plan, &[("MCPG_TEST_BEARER", &user)]);
    assert_eq!(
        r["tools"],
        json!(["time__get_current_time", "time__convert_time"]),
        "{r}"
    );
    assert_eq!(r["calls"][0]["is_error"], false, "{r}");
    assert!(r["calls"][1].to_string().contains("not available"), "{r}");

    // A static token's rule.
    let r = py_client_env(&url, "legacy", json!({}), &[("MCPG_TEST_BEARER", CI_TOKEN)]);
    assert_eq!(
        r["tools"],
        json!([
            "time__get_current_time",
            "time__convert_time",
            "up__headers"
        ]),
        "{r}"
    );

    // A session is its maker's: another identity gets 404, no token 401, the maker 200.
    let sid = initialize(gw.addr, &admin);
    let (status, _, body) = post(gw.addr, Some(&user), Some(&sid), &list_tools());
    assert_eq!(status, 404, "bob with alice's session: {body}");
    assert!(!body.contains("up__headers"), "{body}");
    let (status, _, _) = post(gw.addr, Some(CI_TOKEN), Some(&sid), &list_tools());
    assert_eq!(status, 404);
    let (status, _, _) = post(gw.addr, None, Some(&sid), &list_tools());
    assert_eq!(status, 401);
    let (status, _, body) = post(gw.addr, Some(&admin), Some(&sid), &list_tools());
    assert_eq!(status, 200, "{body}");
    let stolen_get = http(
        gw.addr,
        "GET",
        "/mcp",
        &[
            ("Accept", "text/event-stream"),
            ("Mcp-Session-Id", &sid),
            ("Authorization", &format!("Bearer {user}")),
        ],
        b"",
    );
    assert_eq!(stolen_get.0, 404, "{}", stolen_get.2);
    let stolen_delete = http(
        gw.addr,
        "DELETE",
        "/mcp",
        &[
            ("Mcp-Session-Id", &sid),
            ("Authorization", &format!("Bearer {user}")),
        ],
        b"",
    );
    assert_eq!(stolen_delete.0, 404, "{}", stolen_delete.2);
    let (status, _, _) = post(gw.addr, Some(&admin), Some(&sid), &list_tools());
    assert_eq!(status, 200, "the session survived the attempts");

    // The audit file, once mcpg has stopped (and flushed).
    let audit = gw._dir.0.join("audit.jsonl");
    gw._proc.signal("TERM");
    let Gateway {
        _proc: proc,
        _dir: dir,
        ..
    } = gw;
    let (status, stderr) = proc.wait(Duration::from_secs(30));
    assert!(status.success(), "mcpg exit: {status}\n{stderr}");
    let text = std::fs::read_to_string(&audit).expect("the audit file");
    let records: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let find = |f: &dyn Fn(&Value) -> bool| records.iter().find(|r| f(r)).cloned();
    let call = find(&|r| {
        r["identity"] == "jwt:alice"
            && r["method"] == "tools/call"
            && r["name"] == "time__get_current_time"
    })
    .unwrap_or_else(|| panic!("alice's call is recorded: {text}"));
    assert_eq!(call["outcome"]["status"], "ok");
    assert_eq!(call["upstream"], "time");
    assert_eq!(call["era"], "legacy");
    assert!(
        call["session"].is_string() && call["replica"].is_string(),
        "{call}"
    );
    assert_eq!(call["arguments"], json!({"timezone": "UTC"}));
    let redacted = find(&|r| r["name"] == "up__headers" && r["identity"] == "jwt:alice")
        .expect("the upstream call is recorded");
    assert_eq!(
        redacted["arguments"],
        json!({"password": "[redacted]", "note": "kept"})
    );
    let denied =
        find(&|r| r["identity"] == "jwt:bob" && r["name"] == "up__headers" && r["era"] == "modern")
            .unwrap_or_else(|| panic!("bob's refused call is recorded: {text}"));
    assert_eq!(denied["outcome"]["status"], "denied");
    assert!(
        find(&|r| r["identity"] == "token:ci" && r["method"] == "tools/list").is_some(),
        "{text}"
    );
    for secret in ["hunter2", CI_TOKEN, UPSTREAM_KEY, admin.as_str(), "eyJ"] {
        assert!(
            !text.contains(secret),
            "the audit file holds a secret ({secret})"
        );
        assert!(
            !stderr.contains(secret),
            "the log holds a secret ({secret})"
        );
    }

    // `mcpg audit verify`: the file as written passes; one altered record is caught.
    let verify = |p: &std::path::Path| {
        Command::new(bin("mcpg"))
            .args(["audit", "verify"])
            .arg(p)
            .output()
            .expect("run mcpg audit verify")
    };
    let ok = verify(&audit);
    assert!(
        ok.status.success(),
        "{}{}",
        String::from_utf8_lossy(&ok.stdout),
        String::from_utf8_lossy(&ok.stderr)
    );
    let line = text
        .lines()
        .position(|l| l.contains("\"jwt:bob\""))
        .expect("a record of bob's");
    let altered: Vec<String> = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            if i == line {
                l.replace("\"jwt:bob\"", "\"jwt:eve\"")
            } else {
                l.to_owned()
            }
        })
        .collect();
    let tampered = dir.0.join("tampered.jsonl");
    std::fs::write(&tampered, altered.join("\n") + "\n").unwrap();
    let caught = verify(&tampered);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&caught.stdout),
        String::from_utf8_lossy(&caught.stderr)
    );
    assert_eq!(caught.status.code(), Some(1), "{said}");
    assert!(
        said.contains(&format!(":{}:", line + 1)),
        "names the line: {said}"
    );
}

#[test]
fn a_session_is_its_makers_on_every_replica() {
    let (_fx, fixture) = auth_fixture();
    let redis = RedisServer::start();
    let plugin = cdylib("mcpg_cluster_redis");
    let (_dir, replicas, _) =
        start_agreeing_replicas("auth-cluster", &["auth-a", "auth-b"], |l, adm| {
            format!(
                "server:\n  listen: \"127.0.0.1:{l}\"\n  admin_listen: \"127.0.0.1:{adm}\"\n\
             cluster:\n  kind: redis\n  url: \"{}\"\n  key_prefix: \"auth:\"\n\
             plugins:\n  - id: dev.mcpg.cluster.redis\n    source: {{path: \"{}\"}}\n{}",
                redis.url(),
                plugin.display(),
                binding(fixture)
            )
        });
    let (a, b) = (replicas[0].main, replicas[1].main);
    let alice = jwt(fixture, "sub=alice");
    let bob = jwt(fixture, "sub=bob");
    let sid = initialize(a, &alice);
    // On the replica that does not own it: another identity learns nothing, the maker is
    // served (forwarded to the owner).
    let (status, _, body) = post(b, Some(&bob), Some(&sid), &list_tools());
    assert_eq!(status, 404, "{body}");
    let (status, _, body) = post(b, Some(&alice), Some(&sid), &list_tools());
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("time__get_current_time"), "{body}");
    let (status, _, _) = post(a, Some(&bob), Some(&sid), &list_tools());
    assert_eq!(status, 404);
}

/// A 2026-07-28 request (the metadata headers mirror the body) with a bearer token.
fn modern(
    addr: SocketAddr,
    bearer: &str,
    method: &str,
    name: &str,
    mut params: Value,
) -> (u16, String) {
    params["_meta"] = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {"tasks": {}},
    });
    let body = json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params});
    let auth = format!("Bearer {bearer}");
    let (status, _, text) = http(
        addr,
        "POST",
        "/mcp",
        &[
            MCP_JSON,
            MCP_ACCEPT,
            ("Authorization", &auth),
            ("MCP-Protocol-Version", "2026-07-28"),
            ("Mcp-Method", method),
            ("Mcp-Name", name),
        ],
        body.to_string().as_bytes(),
    );
    (status, text)
}

#[test]
fn a_task_is_its_makers() {
    // server-everything runs tasks; 2026-07-28 clients share mcpg's one conversation with it,
    // so without identity binding any caller holding a task id could read it.
    let (_fx, fixture) = auth_fixture();
    let everything = crate::peers::everything_http();
    let gw = Gateway::start(
        "auth-tasks",
        &format!(
            "bindings:\n  - name: tasks\n    path: /mcp\n    upstreams: [{{name: everything, http: {{url: \"{}\"}}}}]\n    auth:\n      jwt: {{jwks_url: \"http://127.0.0.1:{fixture}/jwks.json\", issuer: \"http://issuer.test\", audiences: [\"http://mcpg.test/mcp\"]}}\n",
            everything.url
        ),
    );
    let alice = jwt(fixture, "sub=alice");
    let bob = jwt(fixture, "sub=bob");
    let (status, text) = modern(
        gw.addr,
        &alice,
        "tools/call",
        "simulate-research-query",
        json!({"name": "simulate-research-query", "arguments": {"topic": "gateways"}, "task": {"ttl": 60000}}),
    );
    assert_eq!(status, 200, "{text}");
    let task = text
        .split("\"taskId\":\"")
        .nth(1)
        .and_then(|t| t.split('"').next())
        .unwrap_or_else(|| panic!("a task was created: {text}"))
        .to_owned();
    let get = json!({"taskId": task});
    let (status, text) = modern(gw.addr, &bob, "tasks/get", &task, get.clone());
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("Task not found"),
        "bob reads alice's task: {text}"
    );
    assert!(!text.contains("\"status\""), "{text}");
    let (status, text) = modern(gw.addr, &alice, "tasks/get", &task, get);
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("\"status\""), "alice reads her task: {text}");
}

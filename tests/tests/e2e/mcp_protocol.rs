//! The downstream endpoint's protocol edges, over raw HTTP: every malformed request gets the
//! status and JSON-RPC error the transport specification names, and everything mcpg does not
//! know passes through unchanged (raw JSON in, raw JSON out).

use serde_json::{Value, json};

use std::time::Duration;

use crate::harness::{free_port, get_json, header, http, http_for, sse_messages, wait_until};
use crate::peers::{Gateway, peers_script, python};

/// What one malformed request is, and the status and JSON-RPC code it must get.
type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<u8>, u16, Option<i64>);

const JSON: (&str, &str) = ("Content-Type", "application/json");
const ACCEPT: (&str, &str) = ("Accept", "application/json, text/event-stream");

fn echo_gateway(tag: &str, extra: &str) -> Gateway {
    Gateway::start(
        tag,
        &format!(
            "{extra}bindings:\n  - name: echo\n    path: /mcp\n    upstreams: [{{name: echo, stdio: {{command: {:?}, args: [{:?}]}}}}]\n",
            python().display().to_string(),
            peers_script("echo_upstream.py").display().to_string()
        ),
    )
}

fn body_json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
}

/// Starts a legacy session; returns its id.
fn initialize(gw: &Gateway) -> String {
    let (status, headers, body) = http(
        gw.addr,
        "POST",
        "/mcp",
        &[JSON, ACCEPT],
        json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"0"}}})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(status, 200, "{body}");
    let r = body_json(&body);
    assert_eq!(r["result"]["protocolVersion"], "2025-06-18", "{r}");
    // Unknown fields of the upstream's answer reach the client.
    assert_eq!(r["result"]["x-unknown-init-field"], json!([1, 2, 3]), "{r}");
    assert_eq!(
        r["result"]["capabilities"]["x-vendor-capability"],
        json!({"on": true})
    );
    header(&headers, "mcp-session-id")
        .expect("initialize answers with Mcp-Session-Id")
        .to_owned()
}

#[test]
fn malformed_requests_get_the_statuses_the_spec_names() {
    let gw = echo_gateway(
        "mcp-proto-errors",
        "mcp:\n  limits: {max_request_bytes: 2048}\n",
    );
    let sid = initialize(&gw);
    let session = ("Mcp-Session-Id", sid.as_str());
    let list = json!({"jsonrpc":"2.0","id":1,"method":"tools/list"}).to_string();
    let cases: Vec<Case> = vec![
        ("bad JSON", vec![JSON, ACCEPT, session], b"{not json".to_vec(), 400, Some(-32700)),
        ("not an object", vec![JSON, ACCEPT, session], b"42".to_vec(), 400, Some(-32600)),
        ("batch", vec![JSON, ACCEPT, session], format!("[{list}]").into_bytes(), 400, Some(-32600)),
        (
            "not JSON-RPC 2.0",
            vec![JSON, ACCEPT, session],
            br#"{"id":1,"method":"tools/list"}"#.to_vec(),
            400,
            Some(-32600),
        ),
        (
            "wrong content type",
            vec![("Content-Type", "text/plain"), ACCEPT, session],
            list.clone().into_bytes(),
            415,
            Some(-32600),
        ),
        (
            "Accept without SSE",
            vec![JSON, ("Accept", "application/json"), session],
            list.clone().into_bytes(),
            406,
            Some(-32600),
        ),
        ("no session", vec![JSON, ACCEPT], list.clone().into_bytes(), 400, Some(-32600)),
        (
            "unknown session",
            vec![JSON, ACCEPT, ("Mcp-Session-Id", "0123456789abcdef")],
            list.clone().into_bytes(),
            404,
            Some(-32600),
        ),
        (
            "unsupported protocol version",
            vec![JSON, ACCEPT, session, ("MCP-Protocol-Version", "1999-01-01")],
            list.clone().into_bytes(),
            400,
            Some(-32600),
        ),
        (
            "foreign Origin",
            vec![JSON, ACCEPT, session, ("Origin", "http://evil.example")],
            list.clone().into_bytes(),
            403,
            Some(-32600),
        ),
        (
            "foreign Host (DNS rebinding)",
            vec![JSON, ACCEPT, session, ("Host", "evil.example:80")],
            list.clone().into_bytes(),
            403,
            Some(-32600),
        ),
        (
            "too large",
            vec![JSON, ACCEPT, session],
            format!(r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"echo","pad":"{}"}}}}"#, "x".repeat(4096)).into_bytes(),
            413,
            Some(-32600),
        ),
    ];
    for (what, headers, body, want, code) in cases {
        let (status, _, text) = http(gw.addr, "POST", "/mcp", &headers, &body);
        assert_eq!(status, want, "{what}: {text}");
        if let Some(code) = code {
            assert_eq!(body_json(&text)["error"]["code"], code, "{what}: {text}");
        }
    }
    // The session survived every bad request.
    let (status, _, text) = http(
        gw.addr,
        "POST",
        "/mcp",
        &[JSON, ACCEPT, session],
        list.as_bytes(),
    );
    assert_eq!(status, 200, "{text}");
    assert_eq!(body_json(&text)["result"]["tools"][0]["name"], "echo");
    // Loopback names and same-origin browsers are allowed.
    let (status, _, _) = http(
        gw.addr,
        "POST",
        "/mcp",
        &[
            JSON,
            ACCEPT,
            session,
            ("Host", "localhost"),
            ("Origin", "http://localhost:3000"),
        ],
        list.as_bytes(),
    );
    assert_eq!(status, 200);
    // ping is answered, notifications are accepted, GET without SSE is refused.
    let (status, _, text) = http(
        gw.addr,
        "POST",
        "/mcp",
        &[JSON, ACCEPT, session],
        br#"{"jsonrpc":"2.0","id":"p","method":"ping"}"#,
    );
    assert_eq!(
        (status, body_json(&text)["result"].clone()),
        (200, json!({}))
    );
    let (status, _, _) = http(
        gw.addr,
        "POST",
        "/mcp",
        &[JSON, ACCEPT, session],
        br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#,
    );
    assert_eq!(status, 202);
    let (status, _, _) = http(
        gw.addr,
        "GET",
        "/mcp",
        &[("Accept", "application/json"), session],
        b"",
    );
    assert_eq!(status, 406);
    // DELETE ends the session; it is then unknown.
    let (status, _, _) = http(gw.addr, "DELETE", "/mcp", &[session], b"");
    assert_eq!(status, 200);
    let (status, _, _) = http(
        gw.addr,
        "POST",
        "/mcp",
        &[JSON, ACCEPT, session],
        list.as_bytes(),
    );
    assert_eq!(status, 404);
}

#[test]
fn unknown_fields_and_methods_pass_through_unchanged() {
    let gw = echo_gateway("mcp-proto-lossless", "");
    let sid = initialize(&gw);
    let session = ("Mcp-Session-Id", sid.as_str());
    let post = |msg: &Value| {
        let (status, _, text) = http(
            gw.addr,
            "POST",
            "/mcp",
            &[JSON, ACCEPT, session],
            msg.to_string().as_bytes(),
        );
        (status, text)
    };
    // A known method with fields mcpg has never heard of, at every level.
    let call = json!({
        "jsonrpc": "2.0", "id": "call-1", "method": "tools/call",
        "x-envelope": {"kept": true},
        "params": {
            "name": "echo",
            "arguments": {"n": 1, "nested": {"a": [1, "two", null, 3.5, {"é": "ü"}]}},
            "_meta": {"progressToken": "tok", "vendor.example/trace": "abc"},
            "x-param": [true]
        }
    });
    let (status, text) = post(&call);
    assert_eq!(status, 200, "{text}");
    let r = body_json(&text);
    assert_eq!(r["id"], "call-1", "the client's id comes back");
    assert_eq!(
        r["x-envelope-extra"], "kept",
        "unknown envelope fields of the answer"
    );
    assert_eq!(
        r["result"]["x-extra"],
        json!({"nested": {"deep": [true, null, 1.5, "é"]}})
    );
    assert_eq!(r["result"]["content"][0]["x-content-extra"], 1);
    let received = &r["result"]["received"];
    assert_eq!(received["x-envelope"], call["x-envelope"]);
    assert_eq!(received["params"]["arguments"], call["params"]["arguments"]);
    assert_eq!(received["params"]["x-param"], call["params"]["x-param"]);
    assert_eq!(received["params"]["_meta"]["vendor.example/trace"], "abc");
    assert!(
        received["params"]["_meta"]["progressToken"].is_number(),
        "progress tokens are the gateway's own upstream (restored on the way back)"
    );
    // A method mcpg does not know goes to the upstream as it is.
    let custom =
        json!({"jsonrpc":"2.0","id":7,"method":"vendor/custom","params":{"anything":{"x":[1,2]}}});
    let (status, text) = post(&custom);
    assert_eq!(status, 200, "{text}");
    let r = body_json(&text);
    assert_eq!(r["result"]["received"]["method"], "vendor/custom");
    assert_eq!(r["result"]["received"]["params"], custom["params"]);
    // Unknown list fields survive the list path too.
    let (_, text) = post(&json!({"jsonrpc":"2.0","id":8,"method":"tools/list"}));
    let r = body_json(&text);
    assert_eq!(r["result"]["x-list-extra"], "kept", "{r}");
    assert_eq!(r["result"]["tools"][0]["x-tool-extra"], json!({"a": null}));
    // Client notifications reach the upstream unchanged.
    let note = json!({"jsonrpc":"2.0","method":"notifications/vendor","params":{"x":{"y":1}}});
    let (status, _) = post(&note);
    assert_eq!(status, 202);
    let (_, text) = post(&json!({"jsonrpc":"2.0","id":9,"method":"echo/notifications"}));
    let seen = body_json(&text)["result"]["notifications"].clone();
    assert!(
        seen.as_array().unwrap().contains(&note),
        "upstream saw {seen}"
    );
}

/// Request headers as a test builds them.
type Headers = Vec<(&'static str, String)>;
/// A modern case: what it is, the body, how its headers are spoiled, the status and code.
type ModernCase<'a> = (&'a str, Value, Box<dyn FnOnce(&mut Headers)>, u16, i64);

/// A 2026-07-28 request with its metadata headers; `f` edits the headers before sending.
fn modern(gw: &Gateway, body: &Value, f: impl FnOnce(&mut Headers)) -> (u16, Value) {
    let mut h: Headers = vec![
        ("Content-Type", "application/json".into()),
        ("Accept", "application/json, text/event-stream".into()),
        ("MCP-Protocol-Version", "2026-07-28".into()),
        (
            "Mcp-Method",
            body["method"].as_str().unwrap_or_default().into(),
        ),
    ];
    if let Some(n) = body["params"]["name"].as_str() {
        h.push(("Mcp-Name", n.into()));
    }
    f(&mut h);
    let headers: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let (status, _, text) = http(
        gw.addr,
        "POST",
        "/mcp",
        &headers,
        body.to_string().as_bytes(),
    );
    (
        status,
        if text.is_empty() {
            Value::Null
        } else {
            body_json(&text)
        },
    )
}

fn modern_call(name: &str) -> Value {
    json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{
        "name": name, "arguments": {},
        "_meta": {"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}
    }})
}

#[test]
fn modern_requests_are_checked_against_their_headers() {
    let gw = echo_gateway("mcp-proto-modern", "");
    // A well-formed request is served without any session, and is told it is complete.
    let (status, r) = modern(&gw, &modern_call("echo"), |_| {});
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["result"]["content"][0]["text"], "ok");
    assert_eq!(
        r["result"]["resultType"], "complete",
        "legacy results gain resultType"
    );
    let set = |h: &mut Headers, k: &'static str, v: &str| {
        h.retain(|(n, _)| *n != k);
        h.push((k, v.into()));
    };
    // Header edits: one replaced, or one removed.
    let replace = |k: &'static str, v: &'static str| -> Box<dyn FnOnce(&mut Headers)> {
        Box::new(move |h| set(h, k, v))
    };
    let remove = |k: &'static str| -> Box<dyn FnOnce(&mut Headers)> {
        Box::new(move |h| h.retain(|(n, _)| *n != k))
    };
    let cases: Vec<ModernCase> = vec![
        (
            "Mcp-Method differs",
            modern_call("echo"),
            replace("Mcp-Method", "tools/list"),
            400,
            -32020,
        ),
        (
            "Mcp-Method missing",
            modern_call("echo"),
            remove("Mcp-Method"),
            400,
            -32020,
        ),
        (
            "Mcp-Name differs",
            modern_call("echo"),
            replace("Mcp-Name", "other"),
            400,
            -32020,
        ),
        (
            "Mcp-Name missing",
            modern_call("echo"),
            remove("Mcp-Name"),
            400,
            -32020,
        ),
        (
            "Mcp-Name bad base64",
            modern_call("echo"),
            replace("Mcp-Name", "=?base64?***?="),
            400,
            -32020,
        ),
        (
            "version header differs from body",
            modern_call("echo"),
            replace("MCP-Protocol-Version", "2025-11-25"),
            400,
            -32020,
        ),
        (
            "unsupported version",
            {
                let mut c = modern_call("echo");
                c["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] =
                    json!("2099-01-01");
                c
            },
            replace("MCP-Protocol-Version", "2099-01-01"),
            400,
            -32022,
        ),
        (
            "no client capabilities",
            {
                let mut c = modern_call("echo");
                c["params"]["_meta"]
                    .as_object_mut()
                    .unwrap()
                    .remove("io.modelcontextprotocol/clientCapabilities");
                c
            },
            Box::new(|_| {}),
            400,
            -32602,
        ),
        (
            "ping was removed",
            json!({"jsonrpc":"2.0","id":1,"method":"ping","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}}),
            Box::new(|_| {}),
            404,
            -32601,
        ),
        (
            "forged requestState",
            {
                let mut c = modern_call("echo");
                c["params"]["requestState"] = json!("mcpg1.eyJ2IjoxLCJ1IjoiZWNobyJ9.AAAA");
                c
            },
            Box::new(|_| {}),
            200,
            -32602,
        ),
    ];
    for (what, body, edit, want, code) in cases {
        let (status, r) = modern(&gw, &body, edit);
        assert_eq!(status, want, "{what}: {r}");
        assert_eq!(r["error"]["code"], code, "{what}: {r}");
        if code == -32022 {
            assert_eq!(r["error"]["data"]["requested"], "2099-01-01");
            assert!(
                r["error"]["data"]["supported"]
                    .to_string()
                    .contains("2026-07-28")
            );
        }
    }
    // Base64-encoded names are decoded before comparing.
    let (status, r) = modern(&gw, &modern_call("é"), |h| {
        set(h, "Mcp-Name", "=?base64?w6k=?=")
    });
    assert_eq!(status, 200, "{r}");
    // GET and DELETE belong to the legacy era.
    let (status, _, _) = http(
        gw.addr,
        "GET",
        "/mcp",
        &[
            ("Accept", "text/event-stream"),
            ("MCP-Protocol-Version", "2026-07-28"),
        ],
        b"",
    );
    assert_eq!(status, 405);
    // server/discover describes the binding.
    let discover = json!({"jsonrpc":"2.0","id":"d","method":"server/discover","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{}}}});
    let (status, r) = modern(&gw, &discover, |_| {});
    assert_eq!(status, 200, "{r}");
    assert!(
        r["result"]["supportedVersions"]
            .to_string()
            .contains("2026-07-28"),
        "{r}"
    );
    assert!(r["result"]["capabilities"]["tools"].is_object(), "{r}");
    assert_eq!(r["result"]["resultType"], "complete");
    assert!(
        r["result"]["ttlMs"].is_number() && r["result"]["cacheScope"].is_string(),
        "{r}"
    );
}

#[test]
fn the_get_stream_resumes_after_last_event_id() {
    let gw = echo_gateway("mcp-proto-resume", "");
    let sid = initialize(&gw);
    let session = ("Mcp-Session-Id", sid.as_str());
    // Three messages outside any request, while the client has no GET stream open.
    let (status, _, text) = http(
        gw.addr,
        "POST",
        "/mcp",
        &[JSON, ACCEPT, session],
        br#"{"jsonrpc":"2.0","id":1,"method":"echo/emit","params":{"count":3}}"#,
    );
    assert_eq!(status, 200, "{text}");
    let get = |last: &str| {
        let (status, headers, body) = http_for(
            gw.addr,
            "GET",
            "/mcp",
            &[
                ("Accept", "text/event-stream"),
                session,
                ("Last-Event-ID", last),
            ],
            b"",
            Duration::from_millis(1500),
        );
        assert_eq!(status, 200);
        assert!(
            header(&headers, "content-type")
                .unwrap()
                .starts_with("text/event-stream")
        );
        sse_messages(&body)
    };
    let all = get("0");
    assert_eq!(
        all.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
        [1, 2, 3],
        "{all:?}"
    );
    let after_second = get(&all[1].0.to_string());
    assert_eq!(
        after_second,
        [all[2]],
        "only what came after the named event is replayed"
    );
}

#[test]
fn an_abandoned_session_is_reclaimed_after_its_idle_ttl() {
    let gw = echo_gateway("mcp-proto-idle", "mcp:\n  sessions: {idle_ttl_ms: 1000}\n");
    let sid = initialize(&gw);
    let session = ("Mcp-Session-Id", sid.as_str());
    let list = br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
    let (status, _, _) = http(gw.addr, "POST", "/mcp", &[JSON, ACCEPT, session], list);
    assert_eq!(status, 200);
    // Silence for three times the TTL (any request would count as activity), then the
    // session is gone.
    std::thread::sleep(Duration::from_secs(3));
    let (status, _, text) = http(gw.addr, "POST", "/mcp", &[JSON, ACCEPT, session], list);
    assert_eq!(status, 404, "the idle session was not reclaimed: {text}");
}

fn echo_upstream(name: &str, extra: &str) -> String {
    format!(
        "{{name: {name}, stdio: {{command: {:?}, args: [{:?}]{extra}}}}}",
        python().display().to_string(),
        peers_script("echo_upstream.py").display().to_string()
    )
}

fn call(gw: &Gateway, session: (&str, &str), method: &str, params: Value) -> Value {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let (status, _, text) = http(
        gw.addr,
        "POST",
        "/mcp",
        &[JSON, ACCEPT, session],
        body.to_string().as_bytes(),
    );
    assert_eq!(status, 200, "{method}: {text}");
    body_json(&text)
}

/// A shared child that dies fails only what was in flight, and is restarted for what follows.
#[test]
fn a_shared_child_that_dies_is_restarted() {
    let gw = Gateway::start(
        "mcp-proto-restart",
        &format!(
            "bindings:\n  - name: echo\n    path: /mcp\n    upstreams: [{}]\n",
            echo_upstream("echo", ", mode: shared, restart_backoff_ms: 100")
        ),
    );
    let sid = initialize(&gw);
    let session = ("Mcp-Session-Id", sid.as_str());
    let before = call(&gw, session, "echo/sleep", json!({"ms": 1}));
    let pid = before["result"]["pid"].clone();
    assert!(pid.is_number(), "{before}");
    let crashed = call(&gw, session, "echo/exit", json!({}));
    assert_eq!(
        crashed["error"]["code"], -32000,
        "in flight when the child died: {crashed}"
    );
    // The supervisor starts a new child after its backoff; the session goes on with it.
    let mut after = Value::Null;
    let restarted = crate::harness::wait_until(Duration::from_secs(10), || {
        after = call(&gw, session, "echo/sleep", json!({"ms": 1}));
        after["result"]["pid"].is_number()
    });
    assert!(restarted, "no restart: {after}");
    assert_ne!(after["result"]["pid"], pid, "a new child answers");
}

/// A request that outlives its timeout is cancelled upstream and answered with -32001.
#[test]
fn a_request_past_its_timeout_gets_an_error() {
    let gw = Gateway::start(
        "mcp-proto-timeout",
        &format!(
            "bindings:\n  - name: echo\n    path: /mcp\n    upstreams: [{}]\n",
            echo_upstream("echo", "").replace("}}", "}, request_timeout_ms: 300}")
        ),
    );
    let sid = initialize(&gw);
    let r = call(
        &gw,
        ("Mcp-Session-Id", sid.as_str()),
        "echo/sleep",
        json!({"ms": 3000}),
    );
    assert_eq!(r["error"]["code"], -32001, "{r}");
}

/// One upstream that cannot start: fail_open serves the others, fail_closed refuses.
#[test]
fn a_failing_upstream_is_left_out_or_fails_the_binding_as_configured() {
    let broken = "{name: broken, stdio: {command: /nonexistent/mcp-server}}";
    for policy in ["fail_open", "fail_closed"] {
        let gw = Gateway::start(
            &format!("mcp-proto-{policy}"),
            &format!(
                "bindings:\n  - name: echo\n    path: /mcp\n    on_upstream_failure: {policy}\n    upstreams: [{}, {broken}]\n",
                echo_upstream("echo", "")
            ),
        );
        let init = json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"0"}}});
        let (status, headers, text) = http(
            gw.addr,
            "POST",
            "/mcp",
            &[JSON, ACCEPT],
            init.to_string().as_bytes(),
        );
        assert_eq!(status, 200, "{text}");
        if policy == "fail_closed" {
            let r = body_json(&text);
            assert_eq!(
                r["error"]["code"], -32000,
                "fail_closed refuses the session: {r}"
            );
            assert!(
                r["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains("/nonexistent/mcp-server"),
                "{r}"
            );
            continue;
        }
        let sid = header(&headers, "mcp-session-id")
            .expect("fail_open starts the session")
            .to_owned();
        let session = ("Mcp-Session-Id", sid.as_str());
        let tools = call(&gw, session, "tools/list", json!({}));
        assert_eq!(tools["result"]["tools"][0]["name"], "echo__echo", "{tools}");
        let broken_call = call(&gw, session, "tools/call", json!({"name": "broken__x"}));
        assert_eq!(broken_call["error"]["code"], -32000, "{broken_call}");
        let ok = call(&gw, session, "tools/call", json!({"name": "echo__echo"}));
        assert_eq!(ok["result"]["content"][0]["text"], "ok", "{ok}");
    }
}

/// What [`http`] returns: status, headers, body.
type Answer = (u16, Vec<(String, String)>, String);

/// Sends `echo/sleep` (1.5 s) with request id `id` on session `sid` from a thread of its own,
/// and returns once it has had time to reach the upstream; join for its answer.
fn sleep_in_flight(gw: &Gateway, sid: &str, id: &str) -> std::thread::JoinHandle<Answer> {
    let (addr, sid) = (gw.addr, sid.to_owned());
    let body = json!({"jsonrpc": "2.0", "id": id, "method": "echo/sleep", "params": {"ms": 1500}});
    let t = std::thread::spawn(move || {
        http_for(
            addr,
            "POST",
            "/mcp",
            &[JSON, ACCEPT, ("Mcp-Session-Id", sid.as_str())],
            body.to_string().as_bytes(),
            Duration::from_secs(10),
        )
    });
    std::thread::sleep(Duration::from_millis(300));
    t
}

/// `notifications/cancelled` stops the request (through the `cancellation` bus) and reaches
/// the upstream under the upstream's own request id.
#[test]
fn a_cancelled_request_is_stopped_and_the_upstream_told() {
    let gw = echo_gateway("mcp-proto-cancel", "");
    let sid = initialize(&gw);
    let slow = sleep_in_flight(&gw, &sid, "slow");
    let session = ("Mcp-Session-Id", sid.as_str());
    let (status, _, _) = http(
        gw.addr,
        "POST",
        "/mcp",
        &[JSON, ACCEPT, session],
        br#"{"jsonrpc":"2.0","method":"notifications/cancelled","params":{"requestId":"slow","reason":"changed my mind"}}"#,
    );
    assert_eq!(status, 202);
    let (status, headers, text) = slow.join().unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(
        header(&headers, "content-type")
            .unwrap()
            .starts_with("text/event-stream")
    );
    assert!(
        !text.contains("\"result\"") && !text.contains("\"error\""),
        "a cancelled request gets no response: {text}"
    );
    let seen = call(&gw, session, "echo/notifications", json!({}));
    let cancelled: Vec<&Value> = seen["result"]["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|n| n["method"] == "notifications/cancelled")
        .collect();
    assert_eq!(cancelled.len(), 1, "{seen}");
    assert!(
        cancelled[0]["params"]["requestId"].is_number(),
        "the upstream's own id: {seen}"
    );
    assert_eq!(cancelled[0]["params"]["reason"], "changed my mind");
}

/// Two requests with the same id in flight on one session: the second is refused with an
/// error at once (ids must be unique among a session's requests), the first is answered.
#[test]
fn a_request_id_already_in_flight_is_refused_and_the_first_answered() {
    let gw = echo_gateway("mcp-proto-dup-id", "");
    let sid = initialize(&gw);
    let first = sleep_in_flight(&gw, &sid, "dup");
    let (status, _, text) = http(
        gw.addr,
        "POST",
        "/mcp",
        &[JSON, ACCEPT, ("Mcp-Session-Id", sid.as_str())],
        br#"{"jsonrpc":"2.0","id":"dup","method":"echo/sleep","params":{"ms":1}}"#,
    );
    assert_eq!(status, 200, "{text}");
    let second = body_json(&text);
    assert_eq!(second["id"], "dup", "{second}");
    assert_eq!(second["error"]["code"], -32600, "{second}");
    let (status, _, text) = first.join().unwrap();
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("\"result\"") && text.contains("\"dup\""),
        "the first request is answered: {text}"
    );
}

/// A broken upstream (a stdio program that dies at start, as a missing Python module does) is
/// found when mcpg starts: `/readyz` stays 200, `/api/cluster/status` shows it down with the
/// child's own words, `initialize` and `server/discover` name it, and a call to it carries
/// the cause instead of "not connected".
#[test]
fn a_broken_upstream_is_found_at_start_and_its_cause_reaches_clients() {
    let admin = free_port();
    let broken = format!(
        "{{name: broken, stdio: {{command: {:?}, args: [-m, mcpg_no_such_module]}}}}",
        python().display().to_string()
    );
    let gw = Gateway::start(
        "mcp-proto-probe",
        &format!(
            "  admin_listen: \"127.0.0.1:{admin}\"\nbindings:\n  - name: echo\n    path: /mcp\n    upstreams: [{}, {broken}]\n",
            echo_upstream("echo", "")
        ),
    );
    let admin: std::net::SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    let down = || {
        get_json(admin, "/api/cluster/status").and_then(|s| {
            s["upstreams"]
                .as_array()?
                .iter()
                .find(|u| u["upstream"] == "broken" && u["state"] == "down")
                .cloned()
        })
    };
    assert!(
        wait_until(Duration::from_secs(20), || down().is_some()),
        "the probe at start finds it: {:?}",
        get_json(admin, "/api/cluster/status")
    );
    let status = down().unwrap();
    let cause = status["error"].as_str().unwrap_or_default();
    assert!(
        cause.contains("No module named"),
        "the child's own words: {status}"
    );
    assert_eq!(crate::harness::http_get(gw.addr, "/readyz").unwrap().0, 200);

    let (code, headers, body) = http(
        gw.addr,
        "POST",
        "/mcp",
        &[JSON, ACCEPT],
        json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"0"}}})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(code, 200, "{body}");
    let init = body_json(&body);
    let missing = &init["result"]["_meta"]["dev.mcpg/unavailableUpstreams"];
    assert_eq!(missing[0]["name"], "broken", "{init}");
    assert!(
        missing[0]["error"]
            .as_str()
            .unwrap()
            .contains("No module named"),
        "{init}"
    );
    let sid = header(&headers, "mcp-session-id").unwrap().to_owned();
    let r = call(
        &gw,
        ("Mcp-Session-Id", sid.as_str()),
        "tools/call",
        json!({"name": "broken__anything", "arguments": {}}),
    );
    let message = r["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("No module named"),
        "the call names the cause: {r}"
    );

    let (code, _, body) = http(
        gw.addr,
        "POST",
        "/mcp",
        &[JSON, ACCEPT, ("MCP-Protocol-Version", "2026-07-28"), ("Mcp-Method", "server/discover")],
        json!({"jsonrpc":"2.0","id":1,"method":"server/discover","params":{"_meta":{"io.modelcontextprotocol/protocolVersion":"2026-07-28","io.modelcontextprotocol/clientCapabilities":{},"io.modelcontextprotocol/clientInfo":{"name":"raw","version":"0"}}}})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(code, 200, "{body}");
    let discover = body_json(&body);
    assert_eq!(
        discover["result"]["_meta"]["dev.mcpg/unavailableUpstreams"][0]["name"], "broken",
        "{discover}"
    );
}

/// `ready_requires` lets an operator make an upstream a condition of readiness: with the
/// broken upstream required, `/readyz` stays 503 and says which upstream keeps it so; with
/// only the working one required, it turns 200.
#[test]
fn ready_requires_makes_readiness_wait_for_the_named_upstreams() {
    let python = python().display().to_string();
    let broken = format!(
        "{{name: broken, stdio: {{command: {python:?}, args: [-m, mcpg_no_such_module]}}}}"
    );
    let dir = crate::harness::TempDir::new("mcp-proto-ready-requires");
    let start = |name: &str, required: &str| {
        let port = free_port();
        let f = dir.write(
            &format!("{name}.yaml"),
            &format!(
                "server:\n  listen: \"127.0.0.1:{port}\"\nbindings:\n  - name: echo\n    path: /mcp\n    ready_requires: [{required}]\n    upstreams: [{}, {broken}]\n",
                echo_upstream("echo", "")
            ),
        );
        let proc = crate::harness::Proc::spawn(
            std::process::Command::new(crate::harness::bin("mcpg"))
                .arg("--config")
                .arg(&f),
        );
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        (proc, addr)
    };
    let (_broken_proc, broken_addr) = start("broken", "broken");
    let (_echo_proc, echo_addr) = start("echo", "echo");
    assert!(
        crate::harness::wait_ready(echo_addr, Duration::from_secs(30)),
        "requiring the working upstream: ready"
    );
    // Past "starting", it says what keeps it unready.
    let mut said = (0, String::new());
    wait_until(Duration::from_secs(30), || {
        said = crate::harness::http_get(broken_addr, "/readyz").unwrap_or_default();
        said.1.contains("upstream")
    });
    assert_eq!(said.0, 503, "{}", said.1);
    assert!(
        said.1.contains("upstream `broken` of binding `echo`"),
        "{}",
        said.1
    );
}

/// Ids beyond 64 bits cannot be kept exactly (mcpg does not parse numbers with arbitrary
/// precision): such a request is refused with 400 and `id: null`, never answered under an
/// id rounded to a float the client never sent.
#[test]
fn ids_beyond_64_bits_are_refused_with_a_null_id() {
    let gw = echo_gateway("mcp-proto-big-id", "");
    let sid = initialize(&gw);
    for id in [
        "1180591620717411303424",
        "1234567890123456789012345678901234567890",
        "1.5",
    ] {
        let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/list"}}"#);
        let (status, _, text) = http(
            gw.addr,
            "POST",
            "/mcp",
            &[JSON, ACCEPT, ("Mcp-Session-Id", sid.as_str())],
            body.as_bytes(),
        );
        assert_eq!(status, 400, "{id}: {text}");
        let r = body_json(&text);
        assert_eq!(r["id"], Value::Null, "{id}: {r}");
        assert_eq!(r["error"]["code"], -32600, "{id}: {r}");
    }
    // The largest id that fits is kept exactly.
    let r = call_id(&gw, &sid, "18446744073709551615");
    assert!(r.contains("18446744073709551615"), "{r}");
}

fn call_id(gw: &Gateway, sid: &str, id: &str) -> String {
    let body = format!(r#"{{"jsonrpc":"2.0","id":{id},"method":"tools/list"}}"#);
    let (status, _, text) = http(
        gw.addr,
        "POST",
        "/mcp",
        &[JSON, ACCEPT, ("Mcp-Session-Id", sid)],
        body.as_bytes(),
    );
    assert_eq!(status, 200, "{text}");
    text
}

/// Lists of several upstreams, each paginated, merge into pages that a real client walks to
/// the end, seeing every item once and in order.
#[test]
fn merged_lists_keep_pagination_intact() {
    let gw = Gateway::start(
        "mcp-proto-pages",
        &format!(
            "bindings:\n  - name: echo\n    path: /mcp\n    upstreams: [{}, {}]\n",
            echo_upstream("a", ""),
            echo_upstream("b", "")
        ),
    );
    for mode in ["legacy", "2026-07-28"] {
        let r = crate::peers::py_client(&gw.url("/mcp"), mode, json!({}));
        assert_eq!(
            r["tools"],
            json!(["a__echo", "a__echo2", "b__echo", "b__echo2"]),
            "{mode}: {r}"
        );
    }
}

/// `GET /mcpg/meta` describes the replica on the MCP listener; `GET /api/cluster/sessions/{id}`
/// shows a session's record on the admin API (here on the same listener) while it exists.
#[test]
fn meta_and_session_status_describe_the_replica_and_its_sessions() {
    let gw = echo_gateway("mcp-proto-meta", "");
    let meta = crate::harness::get_json(gw.addr, "/mcpg/meta").expect("/mcpg/meta answers");
    assert_eq!(meta["product"], "mcpg");
    assert!(
        meta["protocol_versions"]["modern"]
            .to_string()
            .contains("2026-07-28"),
        "{meta}"
    );
    assert!(
        meta["protocol_versions"]["legacy"]
            .to_string()
            .contains("2025-11-25"),
        "{meta}"
    );
    assert_eq!(meta["cluster"]["kind"], "single_node");
    assert!(
        meta["cluster"]["id"]
            .as_str()
            .is_some_and(|s| !s.is_empty()),
        "{meta}"
    );
    let sid = initialize(&gw);
    let status = crate::harness::get_json(gw.addr, &format!("/api/cluster/sessions/{sid}"))
        .expect("the session's status");
    assert_eq!(status["binding"], "echo", "{status}");
    assert_eq!(status["state"], "live");
    assert_eq!(status["owner"], meta["node_id"]);
    assert_eq!(status["client"]["name"], "raw");
    let (code, _, _) = http(gw.addr, "GET", "/api/cluster/sessions/nope", &[], b"");
    assert_eq!(code, 404);
    let (code, _, _) = http(
        gw.addr,
        "DELETE",
        "/mcp",
        &[("Mcp-Session-Id", sid.as_str())],
        b"",
    );
    assert_eq!(code, 200);
    let (code, _, _) = http(
        gw.addr,
        "GET",
        &format!("/api/cluster/sessions/{sid}"),
        &[],
        b"",
    );
    assert_eq!(code, 404, "an ended session has no status");
}

/// With a durable `sessions` store, a session outlives the process: after a restart the next
/// request with its id revives it from its record (a new child, started with the client's own
/// `initialize`), and the client carries on without initialising again.
#[test]
fn a_session_in_a_durable_store_is_revived_after_a_restart() {
    let store = crate::harness::TempDir::new("mcp-proto-revive-store");
    let extra = format!(
        "mcp:\n  configurations:\n    sessions:\n      store: {{kind: file, dir: {:?}}}\n",
        store.0.display().to_string()
    );
    let gw = echo_gateway("mcp-proto-revive", &extra);
    let sid = initialize(&gw);
    let before = call(
        &gw,
        ("Mcp-Session-Id", sid.as_str()),
        "echo/sleep",
        json!({"ms": 1}),
    );
    let pid = before["result"]["pid"].clone();
    let config_text = std::fs::read_to_string(gw._dir.0.join("mcpg.yaml")).unwrap();
    let addr = gw.addr;
    drop(gw);
    let config = store.write("mcpg.yaml", &config_text);
    // The same config (same port, same store) in a new process.
    let _proc = crate::harness::Proc::spawn(
        std::process::Command::new(crate::harness::bin("mcpg"))
            .arg("--config")
            .arg(&config),
    );
    assert!(
        crate::harness::wait_ready(addr, Duration::from_secs(20)),
        "mcpg did not come back"
    );
    let body = json!({"jsonrpc": "2.0", "id": 2, "method": "echo/sleep", "params": {"ms": 1}});
    let (status, _, text) = http(
        addr,
        "POST",
        "/mcp",
        &[JSON, ACCEPT, ("Mcp-Session-Id", sid.as_str())],
        body.to_string().as_bytes(),
    );
    assert_eq!(status, 200, "the session was not revived: {text}");
    let after = body_json(&text);
    assert!(after["result"]["pid"].is_number(), "{after}");
    assert_ne!(
        after["result"]["pid"], pid,
        "a new child serves the revived session"
    );
}

/// `mcp.sessions.max_sessions` bounds the sessions one replica serves: the next `initialize`
/// gets 503 with a JSON-RPC error, and a slot freed by DELETE can be used again.
#[test]
fn sessions_beyond_the_limit_are_refused() {
    let gw = echo_gateway("mcp-proto-max", "mcp:\n  sessions: {max_sessions: 1}\n");
    let first = initialize(&gw);
    let init = json!({"jsonrpc":"2.0","id":"second","method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"raw","version":"0"}}});
    let (status, _, text) = http(
        gw.addr,
        "POST",
        "/mcp",
        &[JSON, ACCEPT],
        init.to_string().as_bytes(),
    );
    assert_eq!(status, 503, "{text}");
    let r = body_json(&text);
    assert_eq!(r["id"], "second");
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("maximum of 1 sessions"),
        "{r}"
    );
    let (status, _, _) = http(
        gw.addr,
        "DELETE",
        "/mcp",
        &[("Mcp-Session-Id", first.as_str())],
        b"",
    );
    assert_eq!(status, 200);
    let (status, headers, text) = http(
        gw.addr,
        "POST",
        "/mcp",
        &[JSON, ACCEPT],
        init.to_string().as_bytes(),
    );
    assert_eq!(status, 200, "{text}");
    assert!(header(&headers, "mcp-session-id").is_some());
}

//! The data plane in the legacy era (initialize, `Mcp-Session-Id`), proven with clients and
//! servers nobody here wrote: the Python `mcp` client and the TypeScript SDK client, in front
//! of `mcp-server-time` (stdio) and `server-everything` (Streamable HTTP and stdio).

use serde_json::{Value, json};

use crate::peers::{Gateway, everything_http, everything_stdio, py_client, time_stdio, ts_client};

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

/// The plan every client runs against the two-upstream binding: one call, prompt and read of
/// each kind, through prefixed names.
fn plan() -> Value {
    json!({
        "calls": [
            {"name": "time__convert_time", "arguments": {"source_timezone": "UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"}},
            {"name": "everything__echo", "arguments": {"message": "hello through mcpg"}},
            {"name": "everything__get-sum", "arguments": {"a": 2, "b": 3}},
            {"name": "everything__get-resource-links", "arguments": {"count": 2}},
            {"name": "nobody__echo", "arguments": {}}
        ],
        "prompts": [
            {"name": "everything__simple-prompt"},
            {"name": "everything__args-prompt", "arguments": {"city": "Paris"}}
        ],
        "reads": [
            "everything+demo://resource/static/document/features.md",
            "everything+demo://resource/dynamic/text/1"
        ]
    })
}

/// What every client must have seen through the binding.
fn check(report: &Value, client: &str) {
    let tools = strings(&report["tools"]);
    for t in [
        "time__get_current_time",
        "time__convert_time",
        "everything__echo",
        "everything__get-sum",
    ] {
        assert!(
            tools.contains(&t.to_owned()),
            "{client}: {t} missing from {tools:?}"
        );
    }
    assert!(
        tools
            .iter()
            .all(|t| t.starts_with("time__") || t.starts_with("everything__")),
        "{client}: unprefixed tool in {tools:?}"
    );
    assert!(strings(&report["prompts"]).contains(&"everything__simple-prompt".to_owned()));
    let resources = strings(&report["resources"]);
    assert!(
        resources.contains(&"everything+demo://resource/static/document/features.md".to_owned()),
        "{client}: {resources:?}"
    );
    assert!(
        strings(&report["templates"])
            .contains(&"everything+demo://resource/dynamic/text/{resourceId}".to_owned())
    );
    let calls = report["calls"].as_array().unwrap();
    let text = |i: usize| calls[i]["text"].to_string();
    assert!(
        text(0).contains("Asia/Tokyo") && text(0).contains("21:00"),
        "{client}: {}",
        calls[0]
    );
    assert!(
        text(1).contains("Echo: hello through mcpg"),
        "{client}: {}",
        calls[1]
    );
    assert!(
        text(2).contains("The sum of 2 and 3 is 5."),
        "{client}: {}",
        calls[2]
    );
    assert_eq!(calls[3]["is_error"], false, "{client}: {}", calls[3]);
    // An unknown prefix is the client's mistake: a JSON-RPC error, not a crash.
    assert!(
        calls[4]["exception"]
            .as_str()
            .is_some_and(|e| e.contains("unknown tool")),
        "{client}: {}",
        calls[4]
    );
    let prompts = report["prompts_got"].as_array().unwrap();
    assert!(
        prompts[0]["text"].to_string().contains("simple prompt"),
        "{client}: {prompts:?}"
    );
    assert!(
        prompts[1]["text"].to_string().contains("Paris"),
        "{client}: {prompts:?}"
    );
    let reads = report["reads"].as_array().unwrap();
    assert!(
        reads[0]["text"].to_string().contains("Everything Server"),
        "{client}: {reads:?}"
    );
    assert!(reads[1]["exception"].is_null(), "{client}: {reads:?}");
}

#[test]
fn python_and_typescript_clients_use_time_and_everything_through_one_binding() {
    let everything = everything_http();
    let gw = Gateway::start(
        "mcp-legacy-two",
        &format!(
            "bindings:\n  - name: all\n    path: /mcp\n    upstreams:\n      - {}\n      - {{name: everything, http: {{url: {:?}}}}}\n",
            time_stdio(""),
            everything.url
        ),
    );
    let url = gw.url("/mcp");
    let py = py_client(&url, "legacy", plan());
    assert_eq!(py["era"], "legacy");
    assert_eq!(py["protocol_version"], "2025-11-25");
    assert_eq!(
        py["server"], "all",
        "several upstreams are one server named after the binding"
    );
    check(&py, "python legacy");
    let ts = ts_client(&url, plan());
    assert_eq!(ts["protocol_version"], "2025-11-25");
    assert!(ts["session"].is_string());
    check(&ts, "typescript");
}

#[test]
fn a_single_unprefixed_upstream_is_passed_through_as_itself() {
    let gw = Gateway::start(
        "mcp-legacy-one",
        &format!(
            "bindings:\n  - name: time\n    path: /time\n    upstreams: [{}]\n",
            time_stdio("")
        ),
    );
    let plan =
        json!({"calls": [{"name": "get_current_time", "arguments": {"timezone": "Europe/Paris"}}]});
    for report in [
        py_client(&gw.url("/time"), "legacy", plan.clone()),
        ts_client(&gw.url("/time"), plan.clone()),
    ] {
        assert_eq!(
            report["server"], "mcp-time",
            "the upstream's own serverInfo: {report}"
        );
        assert_eq!(
            strings(&report["tools"]),
            ["get_current_time", "convert_time"]
        );
        let call = &report["calls"][0];
        assert_eq!(call["is_error"], false, "{call}");
        assert!(call["text"].to_string().contains("Europe/Paris"), "{call}");
    }
}

#[test]
fn server_everything_over_stdio_per_session_and_shared() {
    for mode in ["per_session", "shared"] {
        let gw = Gateway::start(
            &format!("mcp-legacy-ev-{mode}"),
            &format!(
                "bindings:\n  - name: ev\n    path: /ev\n    upstreams: [{}]\n",
                everything_stdio("everything")
                    .replace("stdio]}", &format!("stdio], mode: {mode}}}"))
            ),
        );
        let plan = json!({
            "calls": [{"name": "echo", "arguments": {"message": mode}}],
            "reads": ["demo://resource/static/document/features.md"]
        });
        // Two clients one after the other: the second must not see the first's child.
        for client in ["first", "second"] {
            let r = py_client(&gw.url("/ev"), "legacy", plan.clone());
            assert_eq!(
                r["server"], "mcp-servers/everything",
                "{mode} {client}: {r}"
            );
            assert_eq!(
                r["calls"][0]["text"],
                json!([format!("Echo: {mode}")]),
                "{mode} {client}"
            );
            assert!(
                r["reads"][0]["text"]
                    .to_string()
                    .contains("Everything Server")
            );
        }
    }
}

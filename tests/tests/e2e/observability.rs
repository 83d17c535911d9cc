//! What mcpg tells an operator, checked from outside: `GET /metrics` behind the admin token,
//! accepted by a real `promtool` and counting what really happened; request spans exported over
//! OTLP/HTTP to a collector in the test (protobuf decoded with the OTLP messages), parented on
//! the caller's W3C trace context from a header or from `_meta`, with that context passed on to
//! the upstream and, through forwarding, from one replica to the next; and JSON log lines that
//! carry the request's fields at top level.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mcpg_backends::RedisServer;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message as _;
use serde_json::{Value, json};

use crate::harness::{
    MCP_ACCEPT, MCP_JSON, cdylib, http, legacy_session, start_agreeing_replicas, wait_until,
};
use crate::peers::{Gateway, py_client, time_stdio};

// ---------------------------------------------------------------------------------------------
// Metrics
// ---------------------------------------------------------------------------------------------

const ADMIN_TOKEN: &str = "obs-admin-token-5f1c9a7e20b4";
const FORWARDING_SECRET: &str = "obs-forwarding-secret-8d33e1";
const CHILD_SECRET: &str = "obs-child-env-secret-41aa07";

/// The value of every sample of `name` whose labels include all of `labels`.
pub(crate) fn samples(body: &str, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
            (n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse().ok())?
        })
        .collect()
}

/// `promtool check metrics` on `body`: its exit status and everything it printed.
pub(crate) fn promtool_check(body: &str) -> (bool, String) {
    let mut child = match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => panic!(
            "promtool could not be run ({e}): run tools/install-test-deps (it installs Debian's \
             prometheus package, which has promtool)"
        ),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

/// Real clients of both eras and one failing request go through a binding in front of
/// `mcp-server-time`; `/metrics` on the admin listener then refuses a caller without the admin
/// token, passes `promtool check metrics` without a finding, counts the successful calls and
/// the failure under their binding, upstream and method, has the latency and coordinator
/// histograms and the build info, and shows none of the config's secrets.
#[test]
fn metrics_pass_promtool_and_count_what_happened() {
    let admin = crate::harness::free_port();
    let gw = Gateway::start(
        "obs-metrics",
        &format!(
            "  admin_listen: \"127.0.0.1:{admin}\"\n  admin_token: \"{ADMIN_TOKEN}\"\n  forwarding_secret: \"{FORWARDING_SECRET}\"\n\
             bindings:\n  - name: clock\n    path: /mcp\n    upstreams: [{}]\n",
            time_stdio(&format!(", env: {{OBS_SECRET: \"{CHILD_SECRET}\"}}"))
        ),
    );
    let admin: SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();

    let plan = json!({"calls": [{"name": "get_current_time", "arguments": {"timezone": "UTC"}}]});
    for mode in ["legacy", "2026-07-28"] {
        let r = py_client(&gw.url("/mcp"), mode, plan.clone());
        assert!(
            r["tools"].to_string().contains("get_current_time"),
            "{mode}: {r}"
        );
        assert!(
            r["calls"][0].to_string().contains("UTC"),
            "{mode}: the call did not answer: {r}"
        );
    }
    // A request the upstream answers with a JSON-RPC error: a method it does not serve.
    let sid = legacy_session(gw.addr, "/mcp");
    let (status, _, text) = http(
        gw.addr,
        "POST",
        "/mcp",
        &[MCP_JSON, MCP_ACCEPT, ("Mcp-Session-Id", &sid)],
        json!({"jsonrpc":"2.0","id":9,"method":"prompts/get","params":{"name":"nope"}})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(status, 200, "{text}");
    assert!(
        text.contains("\"error\""),
        "expected a JSON-RPC error: {text}"
    );

    // Without the token, or with a wrong one, /metrics is refused.
    let (status, _, _) = http(admin, "GET", "/metrics", &[], b"");
    assert_eq!(status, 401, "/metrics without the admin token");
    let (status, _, _) = http(
        admin,
        "GET",
        "/metrics",
        &[("Authorization", "Bearer not-the-token")],
        b"",
    );
    assert_eq!(status, 401, "/metrics with a wrong token");
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let (status, headers, body) =
        http(admin, "GET", "/metrics", &[("Authorization", &bearer)], b"");
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        crate::harness::header(&headers, "content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );

    let (ok, said) = promtool_check(&body);
    assert!(
        ok,
        "promtool check metrics failed:\n{said}\n--- body ---\n{body}"
    );
    assert!(
        said.trim().is_empty(),
        "promtool check metrics found something:\n{said}"
    );

    let calls_ok = samples(
        &body,
        "mcpg_requests_total",
        &[
            ("binding", "clock"),
            ("upstream", "time"),
            ("method", "tools/call"),
            ("outcome", "ok"),
        ],
    );
    assert!(
        calls_ok.iter().sum::<f64>() >= 2.0,
        "two successful tools/call (one per client era): {calls_ok:?}\n{body}"
    );
    let errors = samples(
        &body,
        "mcpg_requests_total",
        &[
            ("binding", "clock"),
            ("method", "prompts/get"),
            ("outcome", "error"),
        ],
    );
    assert_eq!(errors, [1.0], "the failed request\n{body}");
    assert!(
        samples(
            &body,
            "mcpg_request_duration_seconds_count",
            &[("binding", "clock"), ("method", "tools/call")]
        )
        .iter()
        .sum::<f64>()
            >= 2.0,
        "{body}"
    );
    assert!(
        !samples(
            &body,
            "mcpg_request_duration_seconds_bucket",
            &[("binding", "clock"), ("le", "+Inf")]
        )
        .is_empty(),
        "{body}"
    );
    assert!(
        samples(
            &body,
            "mcpg_coordinator_operation_duration_seconds_count",
            &[]
        )
        .iter()
        .sum::<f64>()
            > 0.0,
        "the coordinator was called (sessions are stored there)\n{body}"
    );
    let build = samples(&body, "mcpg_build_info", &[]);
    assert_eq!(build, [1.0], "{body}");
    assert!(
        body.lines()
            .any(|l| l.starts_with("mcpg_build_info{") && l.contains(env!("CARGO_PKG_VERSION"))),
        "{body}"
    );
    for secret in [ADMIN_TOKEN, FORWARDING_SECRET, CHILD_SECRET] {
        assert!(!body.contains(secret), "{secret} appears in /metrics");
    }

    // The open-sessions gauge (recounted every few seconds) settles on the one raw session
    // still open (the Python client ended its own), and on none once it is deleted.
    let metrics = || {
        let (status, _, body) = http(admin, "GET", "/metrics", &[("Authorization", &bearer)], b"");
        assert_eq!(status, 200);
        body
    };
    let open = || samples(&metrics(), "mcpg_sessions_open", &[("binding", "clock")]);
    assert!(
        wait_until(Duration::from_secs(20), || open() == [1.0]),
        "mcpg_sessions_open with one raw session open: {:?}",
        open()
    );
    // The session's child started: the last attempt to reach the upstream succeeded.
    let up = samples(
        &metrics(),
        "mcpg_upstream_up",
        &[("binding", "clock"), ("upstream", "time")],
    );
    let (status, _, _) = http(gw.addr, "DELETE", "/mcp", &[("Mcp-Session-Id", &sid)], b"");
    assert!(status < 300, "DELETE of the raw session: {status}");
    assert!(
        wait_until(Duration::from_secs(20), || open() == [0.0]),
        "mcpg_sessions_open once the session is deleted: {:?}",
        open()
    );
    assert_eq!(
        up,
        [1.0],
        "mcpg_upstream_up after a per_session child started"
    );
}

// ---------------------------------------------------------------------------------------------
// Traces
// ---------------------------------------------------------------------------------------------

/// One exported span, as the tests look at it.
#[derive(Clone, Debug)]
struct Seen {
    /// `service.instance.id` of the exporting replica.
    node: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    kind: i32,
    attrs: BTreeMap<String, String>,
}

/// An OTLP/HTTP collector on a loopback port: every `POST` body is decoded as an
/// `ExportTraceServiceRequest` and its spans kept; anything it cannot take is kept as a
/// problem, which the tests assert is empty.
struct Collector {
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Seen>>>,
    problems: Arc<Mutex<Vec<String>>>,
}

impl Collector {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let spans = Arc::new(Mutex::new(Vec::new()));
        let problems = Arc::new(Mutex::new(Vec::new()));
        let (s, p) = (spans.clone(), problems.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let (s, p) = (s.clone(), p.clone());
                std::thread::spawn(move || serve_otlp(conn, &s, &p));
            }
        });
        Self {
            addr,
            spans,
            problems,
        }
    }

    fn spans(&self) -> Vec<Seen> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits (generously: the exporter batches) for a span in `trace` named `name`.
    fn wait_for(&self, trace: &str, name: &str, count: usize) -> Vec<Seen> {
        let found = || -> Vec<Seen> {
            self.spans()
                .into_iter()
                .filter(|s| s.trace_id == trace && s.name == name)
                .collect()
        };
        wait_until(Duration::from_secs(30), || found().len() >= count);
        let problems = self.problems.lock().unwrap().clone();
        assert!(problems.is_empty(), "the collector was sent: {problems:?}");
        found()
    }
}

/// Serves one kept-alive connection: HTTP/1.1 requests with a `Content-Length` body.
fn serve_otlp(conn: TcpStream, spans: &Mutex<Vec<Seen>>, problems: &Mutex<Vec<String>>) {
    let mut out = conn.try_clone().unwrap();
    let mut r = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let mut parts = line.split_whitespace();
        let (method, path) = (
            parts.next().unwrap_or_default().to_owned(),
            parts.next().unwrap_or_default().to_owned(),
        );
        let (mut len, mut ctype, mut chunked) = (0usize, String::new(), false);
        loop {
            let mut h = String::new();
            if r.read_line(&mut h).unwrap_or(0) == 0 {
                return;
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                match k.trim().to_ascii_lowercase().as_str() {
                    "content-length" => len = v.trim().parse().unwrap_or(0),
                    "content-type" => ctype = v.trim().to_owned(),
                    "transfer-encoding" => chunked = v.contains("chunked"),
                    _ => {}
                }
            }
        }
        if chunked {
            problems
                .lock()
                .unwrap()
                .push("a chunked body (this collector reads Content-Length)".into());
            return;
        }
        let mut body = vec![0; len];
        if r.read_exact(&mut body).is_err() {
            return;
        }
        if method != "POST" || path != "/v1/traces" || ctype != "application/x-protobuf" {
            problems
                .lock()
                .unwrap()
                .push(format!("{method} {path} ({ctype})"));
        }
        match ExportTraceServiceRequest::decode(&body[..]) {
            Ok(req) => spans.lock().unwrap().extend(flatten(&req)),
            Err(e) => problems
                .lock()
                .unwrap()
                .push(format!("a body that is no ExportTraceServiceRequest: {e}")),
        }
        let reply =
            "HTTP/1.1 200 OK\r\nContent-Type: application/x-protobuf\r\nContent-Length: 0\r\n\r\n";
        if out.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attrs(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .filter_map(|kv| {
            let v = match kv.value.as_ref()?.value.as_ref()? {
                AnyValue::StringValue(s) => s.clone(),
                AnyValue::IntValue(i) => i.to_string(),
                AnyValue::BoolValue(b) => b.to_string(),
                AnyValue::DoubleValue(d) => d.to_string(),
                other => format!("{other:?}"),
            };
            Some((kv.key.clone(), v))
        })
        .collect()
}

fn flatten(req: &ExportTraceServiceRequest) -> Vec<Seen> {
    let mut out = Vec::new();
    for rs in &req.resource_spans {
        let resource = rs
            .resource
            .as_ref()
            .map(|r| attrs(&r.attributes))
            .unwrap_or_default();
        let node = resource
            .get("service.instance.id")
            .cloned()
            .unwrap_or_default();
        for s in rs.scope_spans.iter().flat_map(|s| &s.spans) {
            out.push(Seen {
                node: node.clone(),
                name: s.name.clone(),
                trace_id: hex(&s.trace_id),
                span_id: hex(&s.span_id),
                parent: hex(&s.parent_span_id),
                kind: s.kind,
                attrs: attrs(&s.attributes),
            });
        }
    }
    out
}

/// `SPAN_KIND_SERVER` in the OTLP protobuf.
const SERVER: i32 = 2;

fn header_binding(fixture: u16) -> String {
    format!(
        "bindings:\n  - name: hdr\n    path: /mcp\n    upstreams: [{{name: hdr, http: {{url: \"http://127.0.0.1:{fixture}/mcp\", protocol: legacy}}}}]\n"
    )
}

/// The JSON-RPC response in a JSON or SSE body.
fn response(text: &str) -> Value {
    if let Ok(v) = serde_json::from_str::<Value>(text) {
        return v;
    }
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .find(|v| v.get("result").is_some() || v.get("error").is_some())
        .unwrap_or_else(|| panic!("no JSON-RPC response in {text:?}"))
}

/// The headers the fixture's `headers` tool says it received.
fn upstream_saw(reply: &Value) -> Value {
    let text = reply["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("not a headers result: {reply}"));
    serde_json::from_str(text).unwrap()
}

/// `(trace id, parent span id)` of a `traceparent` value.
fn traceparent(v: &Value) -> (String, String) {
    let s = v.as_str().unwrap_or_else(|| panic!("no traceparent: {v}"));
    let parts: Vec<&str> = s.split('-').collect();
    assert_eq!(parts.len(), 4, "not a traceparent: {s}");
    (parts[1].to_owned(), parts[2].to_owned())
}

/// A legacy `tools/call headers` in session `sid`, with `traceparent` as an HTTP header.
fn legacy_call(addr: SocketAddr, sid: &str, id: i64, tp: &str) -> Value {
    let (status, _, text) = http(
        addr,
        "POST",
        "/mcp",
        &[
            MCP_JSON,
            MCP_ACCEPT,
            ("Mcp-Session-Id", sid),
            ("traceparent", tp),
        ],
        json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"headers","arguments":{}}})
            .to_string()
            .as_bytes(),
    );
    assert_eq!(status, 200, "{text}");
    response(&text)
}

fn assert_request_span(s: &Seen, what: &str) {
    assert_eq!(s.kind, SERVER, "{what}: kind {s:?}");
    for (k, v) in [
        ("mcp.method.name", "tools/call"),
        ("gen_ai.tool.name", "headers"),
        ("gen_ai.operation.name", "execute_tool"),
    ] {
        assert_eq!(
            s.attrs.get(k).map(String::as_str),
            Some(v),
            "{what}: {k} in {s:?}"
        );
    }
}

const LEGACY_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const LEGACY_SPAN: &str = "00f067aa0ba902b7";
const MODERN_TRACE: &str = "8a3c60f7d188f8fa79d48a391a778fa6";
const MODERN_SPAN: &str = "53995c3f42cd8ad8";

/// A legacy call with a `traceparent` header and a 2026-07-28 call with `traceparent` only in
/// `params._meta` each leave a SERVER span named `tools/call headers` with the MCP attributes,
/// in the caller's trace and parented on the caller's span; the HTTP upstream gets a
/// `traceparent` of the same trace whose parent is mcpg's span. Spans still queued when mcpg
/// gets SIGTERM are exported before it exits. mcpg's JSON log lines for the legacy request
/// carry its `request_id` and `session` at top level.
#[test]
fn traces_reach_an_otlp_collector_with_mcp_attributes_and_the_callers_parent() {
    let collector = Collector::start();
    let (_fixture, port) = crate::peers::auth_fixture();
    let gw = Gateway::start(
        "obs-traces",
        &format!(
            "observability:\n  logs: {{format: json}}\n  tracing: {{otlp_endpoint: \"http://{}\"}}\n{}",
            collector.addr,
            header_binding(port)
        ),
    );

    // Legacy: the caller's context in the traceparent header.
    let sid = legacy_session(gw.addr, "/mcp");
    let reply = legacy_call(
        gw.addr,
        &sid,
        7,
        &format!("00-{LEGACY_TRACE}-{LEGACY_SPAN}-01"),
    );
    let (up_trace, up_parent) = traceparent(&upstream_saw(&reply)["traceparent"]);
    assert_eq!(
        up_trace, LEGACY_TRACE,
        "the upstream is in the caller's trace"
    );
    assert_ne!(
        up_parent, LEGACY_SPAN,
        "the upstream's parent is mcpg's span, not the caller's"
    );

    // 2026-07-28: the caller's context only in params._meta.
    let body = json!({"jsonrpc":"2.0","id":"m1","method":"tools/call","params":{
        "name": "headers", "arguments": {},
        "_meta": {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {},
            "traceparent": format!("00-{MODERN_TRACE}-{MODERN_SPAN}-01")
        }
    }});
    let (status, _, text) = http(
        gw.addr,
        "POST",
        "/mcp",
        &[
            MCP_JSON,
            MCP_ACCEPT,
            ("MCP-Protocol-Version", "2026-07-28"),
            ("Mcp-Method", "tools/call"),
            ("Mcp-Name", "headers"),
        ],
        body.to_string().as_bytes(),
    );
    assert_eq!(status, 200, "{text}");
    let modern_reply = response(&text);
    let (m_up_trace, m_up_parent) = traceparent(&upstream_saw(&modern_reply)["traceparent"]);
    assert_eq!(m_up_trace, MODERN_TRACE, "{modern_reply}");
    assert_ne!(m_up_parent, MODERN_SPAN);

    // SIGTERM: the spans still in the batch queue are exported before mcpg exits.
    let proc = gw._proc;
    proc.signal("TERM");
    let (code, stderr) = proc.wait(Duration::from_secs(30));
    assert_eq!(code.code(), Some(0), "{stderr}");

    let legacy = collector.wait_for(LEGACY_TRACE, "tools/call headers", 1);
    assert_eq!(
        legacy.len(),
        1,
        "one span for the legacy call; all spans: {:?}",
        collector.spans()
    );
    let s = &legacy[0];
    assert_request_span(s, "legacy");
    assert_eq!(
        s.parent, LEGACY_SPAN,
        "parented on the caller's span: {s:?}"
    );
    assert_eq!(s.attrs.get("mcp.session.id"), Some(&sid), "{s:?}");
    assert_eq!(
        s.attrs.get("jsonrpc.request.id").map(String::as_str),
        Some("7")
    );
    assert_eq!(up_parent, s.span_id, "the upstream's parent is this span");
    assert!(!s.node.is_empty(), "service.instance.id is set: {s:?}");

    let modern = collector.wait_for(MODERN_TRACE, "tools/call headers", 1);
    assert_eq!(modern.len(), 1, "all spans: {:?}", collector.spans());
    let m = &modern[0];
    assert_request_span(m, "2026-07-28");
    assert_eq!(
        m.parent, MODERN_SPAN,
        "parented on the _meta context: {m:?}"
    );
    assert_eq!(m_up_parent, m.span_id, "the upstream's parent is this span");

    // The JSON log lines of the legacy call carry its id and session at top level.
    let lines: Vec<Value> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        !lines.is_empty(),
        "observability.logs.format: json writes JSON lines:\n{stderr}"
    );
    // `initialize` logs "session started" inside its request span; the modern call logs its
    // bridged conversation inside its own (a string id stays a string).
    assert!(
        lines
            .iter()
            .any(|l| l["request_id"] == json!(0) && l["session"] == json!(sid)),
        "no log line with request_id 0 and session {sid} at top level:\n{stderr}"
    );
    assert!(
        lines.iter().any(|l| l["request_id"] == json!("m1")
            && l["method"] == "tools/call"
            && l["tool"] == "headers"
            && l["binding"] == "hdr"),
        "no log line of the modern call with its fields at top level:\n{stderr}"
    );
    assert!(
        lines
            .iter()
            .all(|l| l.get("otel.name").is_none() && l.get("otel.kind").is_none()),
        "otel.* fields are not logged:\n{stderr}"
    );
}

/// Two replicas on Redis, both exporting: a call sent to B for a session A owns is forwarded;
/// B's span is a child of the caller's, A's span a child of B's, the upstream's context a child
/// of A's, all in the caller's trace.
#[test]
fn a_forwarded_request_is_traced_through_both_replicas() {
    let collector = Collector::start();
    let (_fixture, port) = crate::peers::auth_fixture();
    let redis = RedisServer::start();
    let plugin = cdylib("mcpg_cluster_redis");
    let binding = header_binding(port);
    let (_dir, replicas, _) = start_agreeing_replicas("obs-fwd", &["obs-a", "obs-b"], |l, a| {
        format!(
            "server:\n  listen: \"127.0.0.1:{l}\"\n  admin_listen: \"127.0.0.1:{a}\"\n\
             cluster:\n  kind: redis\n  url: \"{}\"\n  key_prefix: \"obs:\"\n  lease_ttl_ms: 3000\n  peer_ttl_ms: 3000\n\
             plugins:\n  - id: dev.mcpg.cluster.redis\n    source: {{path: \"{}\"}}\n\
             observability:\n  tracing: {{otlp_endpoint: \"http://{}\"}}\n{binding}",
            redis.url(),
            plugin.display(),
            collector.addr
        )
    });
    let (a, b) = (&replicas[0], &replicas[1]);
    assert_eq!((a.id, b.id), ("obs-a", "obs-b"));

    const TRACE: &str = "0c1d2e3f405162738495a6b7c8d9eaf1";
    const CALLER: &str = "1122334455667788";
    let sid = legacy_session(a.main, "/mcp");
    let reply = legacy_call(b.main, &sid, 3, &format!("00-{TRACE}-{CALLER}-01"));
    let (up_trace, up_parent) = traceparent(&upstream_saw(&reply)["traceparent"]);
    assert_eq!(up_trace, TRACE);

    for r in replicas {
        r.proc.signal("TERM");
        let (code, stderr) = r.proc.wait(Duration::from_secs(30));
        assert_eq!(code.code(), Some(0), "{}: {stderr}", r.id);
    }
    let spans = collector.wait_for(TRACE, "tools/call headers", 2);
    let on = |node: &str| -> Vec<&Seen> { spans.iter().filter(|s| s.node == node).collect() };
    let (on_a, on_b) = (on("obs-a"), on("obs-b"));
    assert_eq!(on_b.len(), 1, "B's span: {spans:?}");
    assert_eq!(on_a.len(), 1, "A's span: {spans:?}");
    let (sa, sb) = (on_a[0], on_b[0]);
    assert_request_span(sb, "the forwarding replica");
    assert_request_span(sa, "the owner");
    assert_eq!(sb.parent, CALLER, "B's span is the caller's child: {sb:?}");
    assert_eq!(
        sa.parent, sb.span_id,
        "A's span is B's child: {sa:?} {sb:?}"
    );
    assert_eq!(up_parent, sa.span_id, "the upstream's parent is A's span");
    for s in [sa, sb] {
        assert_eq!(s.attrs.get("mcp.session.id"), Some(&sid), "{s:?}");
    }
}

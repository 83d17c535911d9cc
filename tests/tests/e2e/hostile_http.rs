//! Hostile and careless HTTP against a real mcpg, over raw TCP: slow, silent and idle
//! connections are closed after the configured timeouts, connection caps close the excess, a
//! declared body above the limit is refused before it is sent, ambiguous hosts and malformed
//! chunking are 400, and content negotiation answers 415 and 406 as the transport
//! specification says. The timeouts are configured small (1 s) and asserted only as generous
//! upper bounds; these tests run one at a time (`.config/nextest.toml`, group `timing`).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{MCP_ACCEPT, MCP_JSON, free_port, header, http, wait_until};
use crate::peers::{Gateway, peers_script, python};

/// Far above every configured timeout here: a connection still open after it was never going
/// to be closed.
const BOUND: Duration = Duration::from_secs(15);

/// An echo binding behind mcpg with these `server.limits` (`None`: the defaults).
fn echo_gateway(tag: &str, server_limits: Option<&str>) -> Gateway {
    let limits = server_limits.map_or(String::new(), |l| format!("  limits: {l}\n"));
    Gateway::start(
        tag,
        &format!(
            "{limits}mcp:\n  limits: {{max_request_bytes: 4096}}\nbindings:\n  - name: echo\n    path: /mcp\n    upstreams: [{{name: echo, stdio: {{command: {:?}, args: [{:?}]}}}}]\n",
            python().display().to_string(),
            peers_script("echo_upstream.py").display().to_string()
        ),
    )
}

fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect")
}

/// Reads until the server closes the connection; returns what it sent, or `None` if the
/// connection is still open after `limit`.
fn read_until_closed(s: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return Some(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return None;
            }
            // Reset by the server: closed too.
            Err(_) => return Some(got),
        }
    }
}

/// The status code of the first response in `raw`.
fn status_of(raw: &[u8]) -> Option<u16> {
    String::from_utf8_lossy(raw)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
}

/// Sends `raw` on a fresh connection and returns the status of the answer (the connection is
/// closed by the request's `Connection: close` or by the server).
fn raw_status(addr: SocketAddr, raw: &str) -> Option<u16> {
    let mut s = connect(addr);
    s.write_all(raw.as_bytes()).unwrap();
    let got = read_until_closed(&mut s, BOUND).expect("the server answers and closes");
    status_of(&got)
}

fn initialize_body() -> String {
    json!({"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw","version":"0"}}}).to_string()
}

#[test]
fn timeouts_close_slow_silent_and_idle_connections() {
    // The admin listener is bounded the same way.
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gw = echo_gateway(
        "hostile-timeouts",
        Some(&format!(
            "{{header_read_timeout_ms: 1000, body_read_timeout_ms: 1000, idle_timeout_ms: 1000}}\n  admin_listen: \"{admin}\""
        )),
    );
    let addr = gw.addr;

    // A bare TCP connect that never sends a byte, on either listener.
    let mut bare = connect(addr);
    let mut bare_admin = connect(admin);
    // Unfinished headers.
    let mut unfinished = connect(addr);
    write!(unfinished, "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nX-Slow: ").unwrap();
    // A kept-alive connection after one complete exchange.
    let mut idle = connect(addr);
    write!(idle, "GET /healthz HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut head = [0u8; 12];
    idle.set_read_timeout(Some(BOUND)).unwrap();
    idle.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 200", "the kept-alive request is answered");
    // A silent chunked body: the head is complete, the body stops after a few bytes.
    let mut silent_body = connect(addr);
    write!(
        silent_body,
        "POST /mcp HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n10\r\n{{\"jsonrpc\""
    )
    .unwrap();

    for (what, s) in [
        ("bare connect", &mut bare),
        ("bare connect to the admin listener", &mut bare_admin),
        ("unfinished headers", &mut unfinished),
        ("idle keep-alive", &mut idle),
    ] {
        assert!(
            read_until_closed(s, BOUND).is_some(),
            "{what}: still open after {BOUND:?} with a 1 s timeout"
        );
    }
    let answer = read_until_closed(&mut silent_body, BOUND)
        .expect("silent chunked body: still open with a 1 s body timeout");
    assert_eq!(
        status_of(&answer),
        Some(408),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    assert!(
        String::from_utf8_lossy(&answer).contains("body_read_timeout_ms"),
        "the answer names the timeout: {}",
        String::from_utf8_lossy(&answer)
    );

    // Slowloris: a header byte every 200 ms never completes the head within 1 s.
    let mut drip = connect(addr);
    let started = Instant::now();
    let head = format!(
        "GET /healthz HTTP/1.1\r\nHost: {addr}\r\nX-Drip: {}\r\n\r\n",
        "a".repeat(200)
    );
    let mut closed = false;
    for b in head.bytes() {
        if drip.write_all(&[b]).is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        if started.elapsed() > BOUND {
            break;
        }
    }
    assert!(
        closed || read_until_closed(&mut drip, Duration::from_secs(1)).is_some(),
        "slowloris: the dripping connection was never closed"
    );

    // Everyone else is served throughout.
    let (status, _, body) = http(
        addr,
        "POST",
        "/mcp",
        &[MCP_JSON, MCP_ACCEPT],
        initialize_body().as_bytes(),
    );
    assert_eq!(status, 200, "{body}");
}

#[test]
fn a_declared_length_above_the_limit_is_refused_before_the_body() {
    let gw = echo_gateway("hostile-413", None);
    let mut s = connect(gw.addr);
    write!(
        s,
        "POST /mcp HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nAccept: application/json, text/event-stream\r\nContent-Length: 999999999\r\n\r\n",
        gw.addr
    )
    .unwrap();
    // Nothing of the body is sent: the answer comes anyway.
    s.set_read_timeout(Some(BOUND)).unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).expect("an answer before any of the body");
    let text = String::from_utf8_lossy(&buf[..n]);
    assert_eq!(status_of(&buf[..n]), Some(413), "{text}");
    assert!(text.contains("4096"), "the answer names the limit: {text}");
}

#[test]
fn ambiguous_hosts_and_malformed_chunks_are_bad_requests() {
    let gw = echo_gateway("hostile-strict", None);
    let addr = gw.addr;
    let init = initialize_body();
    let post = |target: &str, hosts: &[&str], framing: &str| {
        let mut r = format!("POST {target} HTTP/1.1\r\n");
        for h in hosts {
            r.push_str(&format!("Host: {h}\r\n"));
        }
        r.push_str("Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\nConnection: close\r\n");
        r.push_str(framing);
        r
    };
    let by_length = format!("Content-Length: {}\r\n\r\n{init}", init.len());
    let here = addr.to_string();
    let cases = [
        (
            "two Host headers",
            post("/mcp", &[&here, "evil.example"], &by_length),
            400,
        ),
        (
            "the same Host twice",
            post("/mcp", &[&here, &here], &by_length),
            400,
        ),
        (
            "absolute-form target naming another host",
            post("http://evil.example/mcp", &[&here], &by_length),
            400,
        ),
        (
            "absolute-form target naming another port",
            post("http://127.0.0.1:1/mcp", &[&here], &by_length),
            400,
        ),
        ("no Host at all", post("/mcp", &[], &by_length), 400),
        (
            "chunk size `zz`",
            post(
                "/mcp",
                &[&here],
                "Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
            ),
            400,
        ),
        // The controls: agreeing hosts are served.
        (
            "absolute-form target agreeing with Host",
            post(&format!("http://{here}/mcp"), &[&here], &by_length),
            200,
        ),
        (
            "well-formed chunks",
            post(
                "/mcp",
                &[&here],
                &format!(
                    "Transfer-Encoding: chunked\r\n\r\n{:x}\r\n{init}\r\n0\r\n\r\n",
                    init.len()
                ),
            ),
            200,
        ),
    ];
    for (what, raw, want) in cases {
        assert_eq!(raw_status(addr, &raw), Some(want), "{what}");
    }
}

/// A request's name, its headers and the status it must get.
type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, u16);

#[test]
fn content_negotiation_answers_415_and_406() {
    let gw = echo_gateway("hostile-negotiation", None);
    let init = initialize_body();
    let post = |headers: &[(&str, &str)]| http(gw.addr, "POST", "/mcp", headers, init.as_bytes());
    let code = |body: &str| -> Value {
        serde_json::from_str::<Value>(body).unwrap_or_default()["error"]["code"].clone()
    };
    let cases: [Case; 9] = [
        (
            "application/jsonx",
            vec![("Content-Type", "application/jsonx"), MCP_ACCEPT],
            415,
        ),
        (
            "application/json-patch+json",
            vec![("Content-Type", "application/json-patch+json"), MCP_ACCEPT],
            415,
        ),
        ("no Content-Type", vec![MCP_ACCEPT], 415),
        ("no Accept", vec![MCP_JSON], 406),
        (
            "the stream refused with q=0",
            vec![
                MCP_JSON,
                ("Accept", "application/json, text/event-stream;q=0"),
            ],
            406,
        ),
        (
            "JSON refused with q=0 under a wildcard",
            vec![MCP_JSON, ("Accept", "application/json;q=0, */*")],
            406,
        ),
        (
            "charset parameter",
            vec![
                ("Content-Type", "application/json; charset=utf-8"),
                MCP_ACCEPT,
            ],
            200,
        ),
        (
            "weights above zero",
            vec![
                MCP_JSON,
                ("Accept", "application/json;q=0.9, text/event-stream;q=0.1"),
            ],
            200,
        ),
        ("a wildcard", vec![MCP_JSON, ("Accept", "*/*")], 200),
    ];
    let mut sid = None;
    for (what, headers, want) in cases {
        let (status, h, body) = post(&headers);
        assert_eq!(status, want, "{what}: {body}");
        if want != 200 {
            assert_eq!(code(&body), json!(-32600), "{what}: {body}");
        } else {
            sid = header(&h, "mcp-session-id").map(str::to_owned);
        }
    }
    // The GET stream needs `text/event-stream` in `Accept` too.
    let sid = sid.expect("initialize answers with a session");
    let session = ("Mcp-Session-Id", sid.as_str());
    let version = ("MCP-Protocol-Version", "2025-06-18");
    for (what, headers) in [
        ("no Accept", vec![session, version]),
        (
            "the stream refused with q=0",
            vec![session, version, ("Accept", "text/event-stream;q=0")],
        ),
    ] {
        let (status, _, body) = http(gw.addr, "GET", "/mcp", &headers, b"");
        assert_eq!(status, 406, "GET, {what}: {body}");
    }
}

#[test]
fn connection_caps_close_the_excess() {
    for (what, limits, cap) in [
        (
            "per listener",
            "{max_connections: 3, header_read_timeout_ms: 60000}",
            3,
        ),
        (
            "per client address",
            "{max_connections_per_client: 2, header_read_timeout_ms: 60000}",
            2,
        ),
    ] {
        let gw = echo_gateway("hostile-caps", Some(limits));
        // Let the readiness probe's connection go.
        assert!(
            wait_until(BOUND, || {
                let mut held: Vec<TcpStream> = (0..cap).map(|_| connect(gw.addr)).collect();
                let mut extra = connect(gw.addr);
                let refused = read_until_closed(&mut extra, Duration::from_secs(2)).is_some();
                held.clear();
                refused
            }),
            "{what}: a connection beyond {cap} was never closed"
        );
        // Once the held connections are gone, new ones are served again.
        assert!(
            wait_until(BOUND, || matches!(
                crate::harness::http_get(gw.addr, "/healthz"),
                Ok((200, _))
            )),
            "{what}: not served again after the excess connections closed"
        );
        // Below the cap, connections are served.
        assert!(
            wait_until(BOUND, || {
                let held: Vec<TcpStream> = (0..cap - 1).map(|_| connect(gw.addr)).collect();
                let served = matches!(crate::harness::http_get(gw.addr, "/healthz"), Ok((200, _)));
                drop(held);
                served
            }),
            "{what}: refused below the cap"
        );
    }
}

//! The exchange loop against a real loopback HTTP upstream: a client's cancellation ends a
//! request whose upstream answers with JSON (still being sent when the cancellation comes),
//! and the upstream is told with `notifications/cancelled`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

use super::exchange::{Relay, Sent};
use crate::config::model::UpstreamConfig;
use crate::config::parsed::HttpUpstream;
use crate::mcp::upstream::{Hello, Upstream};
use crate::mcp::wire::jsonrpc;

/// Only a hang bound (the request's own deadline is a minute away).
const HANG: Duration = Duration::from_secs(10);

/// Reads one HTTP/1.1 request's body (by its Content-Length).
async fn read_body(s: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < end + len {
        let n = s.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(buf[end..end + len].to_vec())
}

/// A legacy HTTP upstream that answers `initialize`, keeps every notification it gets, and
/// never answers `slow` (it holds the connection open).
async fn holding_upstream(seen: Arc<Mutex<Vec<Value>>>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                while let Some(body) = read_body(&mut s).await {
                    let Ok(m) = serde_json::from_slice::<Value>(&body) else {
                        // The GET stream: not offered.
                        let _ = s
                            .write_all(
                                b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n",
                            )
                            .await;
                        continue;
                    };
                    let reply = match m["method"].as_str() {
                        Some("initialize") => json!({"jsonrpc": "2.0", "id": m["id"], "result": {
                            "protocolVersion": "2025-06-18", "capabilities": {}, "serverInfo": {"name": "h", "version": "0"}}}).to_string(),
                        Some("slow") => {
                            seen.lock().unwrap().push(m);
                            std::future::pending::<()>().await;
                            unreachable!()
                        }
                        _ => {
                            seen.lock().unwrap().push(m);
                            let _ = s.write_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n").await;
                            continue;
                        }
                    };
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                        reply.len()
                    );
                    let _ = s.write_all(head.as_bytes()).await;
                    let _ = s.write_all(reply.as_bytes()).await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_cancelled_request_to_an_http_upstream_ends_and_the_upstream_is_told() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let url = format!("http://{}/mcp", holding_upstream(seen.clone()).await);
    let cfg: UpstreamConfig = serde_json::from_value(json!({
        "name": "h", "request_timeout_ms": 60_000, "http": {"url": url, "protocol": "legacy"},
    }))
    .expect("an upstream config");
    let parsed = HttpUpstream {
        url: url.parse().expect("a URL"),
        headers: Default::default(),
        pass_through: Vec::new(),
    };
    let up = Upstream::new("b", &cfg, Some(&parsed), ".".as_ref(), HANG).expect("an upstream");
    let link = up.connect(&Hello::gateway(), None).await.expect("connects");

    let (cancel, cancelled) = oneshot::channel();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let request = jsonrpc::request(json!("client-id"), "slow", None);
    let sent = tokio::spawn(async move {
        Relay::start(&link.conn, request, &[], deadline, Some(cancelled)).await
    });
    let asked = || seen.lock().unwrap().iter().any(|m| m["method"] == "slow");
    while !asked() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    cancel
        .send("changed my mind".to_owned())
        .expect("still waiting");
    let ended = tokio::time::timeout(HANG, sent)
        .await
        .expect("the exchange ends when the client cancels")
        .expect("no panic");
    assert!(matches!(ended, Err(Sent::Cancelled)), "ended as cancelled");

    let told = || {
        seen.lock()
            .unwrap()
            .iter()
            .find(|m| m["method"] == "notifications/cancelled")
            .cloned()
    };
    let until = tokio::time::Instant::now() + HANG;
    while told().is_none() && tokio::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let n = told().expect("the upstream is told");
    let slow_id = seen
        .lock()
        .unwrap()
        .iter()
        .find(|m| m["method"] == "slow")
        .unwrap()["id"]
        .clone();
    assert_eq!(
        n["params"]["requestId"], slow_id,
        "under the upstream's own id: {n}"
    );
}

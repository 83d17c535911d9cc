//! A loopback HTTP/1.1 upstream for in-process tests, written on plain TCP so each test says
//! exactly what goes on the wire: every POST body is handed to the test's handler, which
//! answers with bytes, 202, or never.

use std::sync::Arc;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How the test upstream answers one POST.
pub(crate) enum Answer {
    /// 200 with this content type and body.
    Body(&'static str, Vec<u8>),
    /// 202, no body (a notification or response was taken).
    Accepted,
    /// Nothing, ever (the connection stays open).
    Hold,
}

/// An `initialize` result of a legacy upstream, for handlers to answer with.
pub(crate) fn initialized(m: &Value) -> Answer {
    let r = json!({"jsonrpc": "2.0", "id": m["id"], "result": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "serverInfo": {"name": "t", "version": "0"}}});
    Answer::Body("application/json", r.to_string().into_bytes())
}

/// Reads one HTTP/1.1 request's body (by its Content-Length); `None` at the end.
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

/// Serves `handler` on a free loopback port until the test ends; its `/mcp` URL. A body that
/// is not JSON (the GET stream's empty one) gets 405.
pub(crate) async fn serve(handler: impl Fn(Value) -> Answer + Send + Sync + 'static) -> String {
    let handler = Arc::new(handler);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            // An answer is written as head then body: without this, Nagle and delayed ACK
            // hold each answer ~40 ms on a kept-alive connection.
            let _ = s.set_nodelay(true);
            let handler = handler.clone();
            tokio::spawn(async move {
                while let Some(body) = read_body(&mut s).await {
                    let answer = match serde_json::from_slice::<Value>(&body) {
                        Ok(m) => handler(m),
                        Err(_) => {
                            let _ = s
                                .write_all(
                                    b"HTTP/1.1 405 Method Not Allowed\r\ncontent-length: 0\r\n\r\n",
                                )
                                .await;
                            continue;
                        }
                    };
                    let (ctype, body) = match answer {
                        Answer::Body(t, b) => (t, b),
                        Answer::Accepted => {
                            let _ = s
                                .write_all(b"HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n")
                                .await;
                            continue;
                        }
                        Answer::Hold => std::future::pending().await,
                    };
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\n\r\n",
                        body.len()
                    );
                    let _ = s.write_all(head.as_bytes()).await;
                    let _ = s.write_all(&body).await;
                }
            });
        }
    });
    format!("http://{addr}/mcp")
}

/// A legacy HTTP upstream at `url`, as the loader would build it.
pub(crate) fn upstream(url: &str, timeout_ms: u64) -> Arc<super::Upstream> {
    upstream_speaking(url, timeout_ms, "legacy")
}

/// An HTTP upstream at `url` with `protocol` (`legacy`, `auto`, `modern`).
pub(crate) fn upstream_speaking(
    url: &str,
    timeout_ms: u64,
    protocol: &str,
) -> Arc<super::Upstream> {
    upstream_from(
        json!({
            "name": "t", "request_timeout_ms": timeout_ms, "http": {"url": url, "protocol": protocol},
        }),
        url,
    )
}

/// An HTTP upstream at `url` from the upstream config `cfg` (whose `http.url` is `url`).
pub(crate) fn upstream_from(cfg: serde_json::Value, url: &str) -> Arc<super::Upstream> {
    let cfg: crate::config::model::UpstreamConfig =
        serde_json::from_value(cfg).expect("an upstream config");
    let parsed = crate::config::parsed::HttpUpstream {
        url: url.parse().expect("a URL"),
        headers: Default::default(),
        pass_through: Vec::new(),
    };
    super::Upstream::new(
        "b",
        &cfg,
        Some(&parsed),
        ".".as_ref(),
        std::time::Duration::from_secs(60),
    )
    .expect("an upstream")
}

//! Every wait on an upstream obeys its request timeout: an HTTP upstream that accepts
//! connections and never answers ends `initialize`, the era probe and a 2026-07-28 request at
//! `request_timeout_ms`, in each configured era.

use std::time::Duration;

use super::Hello;
use super::test_server::upstream_speaking;
use crate::mcp::wire::jsonrpc::code;

/// Far above the configured 300 ms and far below the fixed waits it replaced (10 s for the
/// probe, 30 s for `initialize`): only a hang bound, never a performance assertion.
const HANG: Duration = Duration::from_secs(8);

/// A loopback port that accepts every connection and never sends a byte.
async fn silent_upstream() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    addr
}

#[tokio::test]
async fn a_silent_upstream_times_out_at_its_request_timeout_in_every_era() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let url = format!("http://{}/mcp", silent_upstream().await);
    for protocol in ["legacy", "auto", "modern"] {
        let up = upstream_speaking(&url, 300, protocol);
        let legacy = tokio::time::timeout(HANG, up.connect(&Hello::gateway(), None))
            .await
            .unwrap_or_else(|_| panic!("{protocol}: initialize outlived its timeout"));
        let e = legacy.err().expect("a silent upstream cannot connect");
        if protocol != "modern" {
            assert_eq!(e.code, code::REQUEST_TIMEOUT, "{protocol}: {}", e.message);
        }
        let modern = tokio::time::timeout(HANG, up.modern())
            .await
            .unwrap_or_else(|_| panic!("{protocol}: the era probe outlived its timeout"));
        assert!(
            modern.is_err(),
            "{protocol}: a silent upstream has no conversation"
        );
    }
}

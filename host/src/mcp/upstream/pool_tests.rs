//! A pool of real loopback HTTP endpoints, built by the config loader: stateless requests
//! spread over the endpoints, one that refuses connections skipped (its request retried
//! elsewhere, the failures counted) and ejected; legacy sessions pinned, moved off a dead
//! pinned endpoint; drained endpoints avoided.

use std::sync::Arc;

use serde_json::json;

use super::Hello;
use super::outlier::State;
use super::pool::{Admin, Pool};
use super::test_server::{Answer, initialized, serve};

/// An endpoint that answers `initialize`, takes notifications and answers anything else.
async fn endpoint() -> String {
    serve(|m| {
        if m["method"] == "initialize" {
            initialized(&m)
        } else if m.get("id").is_none() {
            Answer::Accepted
        } else {
            let r = json!({"jsonrpc": "2.0", "id": m["id"], "result": {}});
            Answer::Body("application/json", r.to_string().into_bytes())
        }
    })
    .await
}

/// A loopback URL where nothing listens (connections are refused).
async fn refusing() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("http://{addr}/mcp")
}

fn pool(urls: &[&str], balance: &str) -> Arc<Pool> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let endpoints: Vec<String> = urls
        .iter()
        .zip(["a", "b", "c"])
        .map(|(u, n)| {
            format!("          - {{name: {n}, http: {{url: \"{u}\", protocol: legacy}}}}\n")
        })
        .collect();
    let text = format!(
        "bindings:\n  - name: b\n    path: /mcp\n    upstreams:\n      - name: p\n        balance: {balance}\n        health: {{interval_ms: 0, outlier: {{consecutive_failures: 2, max_ejection_percent: 50}}}}\n        endpoints:\n{}",
        endpoints.concat()
    );
    let out = crate::config::load_str("c.yaml", ".".as_ref(), &text, &|_| None);
    let cfg = out
        .config
        .unwrap_or_else(|| panic!("{:?}", out.diagnostics));
    let u = &cfg.config.bindings[0].upstreams[0];
    Pool::new(
        "b",
        u,
        &cfg.parsed,
        ".".as_ref(),
        std::time::Duration::from_secs(10),
    )
    .expect("a pool")
}

#[tokio::test]
async fn stateless_requests_spread_and_skip_an_endpoint_that_refuses_connections() {
    let (a, b, dead) = (endpoint().await, endpoint().await, refusing().await);
    for balance in ["round_robin", "least_requests"] {
        let p = pool(&[&a, &b, &dead], balance);
        let mut counts = [0; 3];
        for _ in 0..60 {
            let (i, h) = p
                .modern_on(&mut Vec::new())
                .await
                .expect("another endpoint serves it");
            let _f = p.start(i);
            h.conn.call("tools/list", None).await.expect("answered");
            p.outcome(i, true);
            counts[i] += 1;
        }
        assert_eq!(counts[2], 0, "{balance}: the dead endpoint served nothing");
        assert!(counts[0] >= 15 && counts[1] >= 15, "{balance}: {counts:?}");
        let view = p.view();
        assert_eq!(view[2].state, State::Ejected, "{balance}: {view:?}");
        assert!(
            view[2].failures >= 2 && view[2].ejections >= 1,
            "{balance}: {view:?}"
        );
        assert_eq!(view[0].requests + view[1].requests, 60);
    }
}

#[tokio::test]
async fn a_legacy_session_stays_on_its_pin_and_moves_when_the_pinned_endpoint_is_gone() {
    let (a, b, dead) = (endpoint().await, endpoint().await, refusing().await);
    let p = pool(&[&a, &b, &dead], "round_robin");
    let hello = Hello::gateway();
    for _ in 0..4 {
        let l = p
            .connect_pinned(&hello, None, Some("b"))
            .await
            .expect("pinned");
        assert_eq!(l.endpoint.as_deref(), Some("b"));
    }
    // New sessions land on live endpoints only, each named in its link.
    for _ in 0..4 {
        let l = p.connect(&hello, None).await.expect("a session");
        assert!(
            matches!(l.endpoint.as_deref(), Some("a" | "b")),
            "{:?}",
            l.endpoint
        );
    }
    // Pinned to an endpoint that refuses: re-initialised on another one.
    let l = p
        .connect_pinned(&hello, None, Some("c"))
        .await
        .expect("moved to a live endpoint");
    assert!(matches!(l.endpoint.as_deref(), Some("a" | "b")));
}

#[tokio::test]
async fn drained_and_disabled_endpoints_get_no_new_work_and_come_back_when_enabled() {
    let (a, b) = (endpoint().await, endpoint().await);
    let p = pool(&[&a, &b], "round_robin");
    assert!(p.set_admin("a", Admin::Draining));
    assert!(!p.set_admin("nope", Admin::Draining));
    for _ in 0..6 {
        assert_eq!(p.modern_on(&mut Vec::new()).await.expect("served").0, 1);
    }
    // A drained endpoint keeps the sessions pinned to it; a disabled one does not.
    let hello = Hello::gateway();
    let l = p.connect_pinned(&hello, None, Some("a")).await.unwrap();
    assert_eq!(l.endpoint.as_deref(), Some("a"));
    assert!(p.set_admin("a", Admin::Disabled));
    let l = p.connect_pinned(&hello, None, Some("a")).await.unwrap();
    assert_eq!(l.endpoint.as_deref(), Some("b"));
    assert!(p.set_admin("a", Admin::Enabled));
    let picks: Vec<usize> = (0..4).map(|_| p.pick(&[]).unwrap()).collect();
    assert!(picks.contains(&0) && picks.contains(&1), "{picks:?}");
}

/// Sends one request over a fresh HTTP conversation with `url`; the error it ends with.
async fn send_error(url: &str) -> super::UpstreamError {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cfg: crate::config::model::HttpTransport =
        serde_json::from_value(json!({"url": url})).unwrap();
    let parsed = crate::config::parsed::HttpUpstream {
        url: url.parse().unwrap(),
        headers: Default::default(),
        pass_through: Vec::new(),
    };
    let endpoint = super::http::Endpoint::new(&cfg, &parsed, 16 << 20);
    let t = Arc::new(super::http::HttpTransport::new("t", &endpoint));
    let conn = super::Connection::new("t", t, None);
    let msg = json!({"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "x"}});
    let r = conn
        .request_with(msg.as_object().unwrap().clone(), &[])
        .await;
    r.err().expect("the request fails")
}

#[tokio::test]
async fn a_refused_connection_is_not_reached_but_a_request_the_endpoint_read_may_have_run() {
    let e = send_error(&refusing().await).await;
    assert!(e.not_reached(), "{e}");
    // An endpoint that reads the request and closes without answering may have run it.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            use tokio::io::AsyncReadExt;
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
        }
    });
    let e = send_error(&format!("http://{addr}/mcp")).await;
    assert!(!e.not_reached(), "{e}");
}

#[test]
fn the_pin_is_kept_in_the_record_and_records_without_one_read_as_before() {
    let old = json!({
        "format": 1, "id": "s", "binding": "b", "protocol_version": "2025-06-18",
        "hello": {"protocolVersion": "2025-06-18"}, "owner": "n1", "created_ms": 1, "active_ms": 1,
    });
    let mut r: crate::mcp::session::record::SessionRecord =
        serde_json::from_value(old).expect("a record of an earlier release reads");
    assert!(r.upstream_endpoints.is_empty());
    assert!(
        serde_json::to_value(&r)
            .unwrap()
            .get("upstream_endpoints")
            .is_none(),
        "no pin, no key: earlier releases read the record unchanged"
    );
    r.upstream_endpoints.insert("search".into(), "b".into());
    let back: crate::mcp::session::record::SessionRecord =
        serde_json::from_value(serde_json::to_value(&r).unwrap()).unwrap();
    assert_eq!(back.upstream_endpoints["search"], "b");
}

/// An endpoint that lists `tools`.
async fn listing(tools: serde_json::Value) -> String {
    serve(move |m| {
        if m["method"] == "initialize" {
            initialized(&m)
        } else if m.get("id").is_none() {
            Answer::Accepted
        } else {
            let result = if m["method"] == "tools/list" {
                json!({"tools": tools.clone()})
            } else {
                json!({})
            };
            let r = json!({"jsonrpc": "2.0", "id": m["id"], "result": result});
            Answer::Body("application/json", r.to_string().into_bytes())
        }
    })
    .await
}

#[tokio::test]
async fn endpoints_listing_different_tools_are_reported_not_merged() {
    let echo = json!({"name": "echo", "inputSchema": {"type": "object"}});
    let echo2 = json!({"name": "echo", "description": "v2", "inputSchema": {"type": "object"}});
    let add = json!({"name": "add", "inputSchema": {"type": "object"}});
    let a = listing(json!([echo.clone(), add])).await;
    let b = listing(json!([echo2])).await;
    let dead = refusing().await;
    let p = pool(&[&a, &b, &dead], "round_robin");
    assert!(p.tool_lists().is_none(), "nothing compared yet");
    p.compare_tools().await;
    let c = p.tool_lists().expect("compared");
    assert!(!c.consistent, "{c:?}");
    assert_eq!(c.only_on["add"], ["a"]);
    assert_eq!(c.defined_differently, ["echo"]);
    assert!(c.unreadable.contains_key("c"), "{c:?}");
    assert_eq!((c.tools["a"], c.tools["b"]), (2, 1));

    let a = listing(json!([echo.clone()])).await;
    let b = listing(json!([echo])).await;
    let p = pool(&[&a, &b], "round_robin");
    p.compare_tools().await;
    assert!(p.tool_lists().unwrap().consistent);
}

//! The exchange loop against a real loopback HTTP upstream: a client's cancellation ends a
//! request whose upstream answers with JSON (still being sent when the cancellation comes),
//! and the upstream is told with `notifications/cancelled`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::exchange::{Relay, Sent};
use crate::mcp::upstream::Hello;
use crate::mcp::upstream::test_server::{Answer, initialized, serve, upstream};
use crate::mcp::wire::jsonrpc;

/// Only a hang bound (the request's own deadline is a minute away).
const HANG: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_cancelled_request_to_an_http_upstream_ends_and_the_upstream_is_told() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let seen = Arc::new(Mutex::new(Vec::<Value>::new()));
    let kept = seen.clone();
    // A legacy upstream that keeps what it is sent and never answers `slow`.
    let url = serve(move |m: Value| match m["method"].as_str() {
        Some("initialize") => initialized(&m),
        Some("slow") => {
            kept.lock().unwrap().push(m);
            Answer::Hold
        }
        _ => {
            kept.lock().unwrap().push(m);
            Answer::Accepted
        }
    })
    .await;
    let up = upstream(&url, 60_000);
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

/// What a test exchange does with the upstream's messages: the response ends it.
struct Plain;

impl super::exchange::Shape for Plain {
    fn upstream(&self) -> &str {
        "t"
    }

    async fn step(
        &self,
        _: &crate::mcp::upstream::Exchange,
        m: jsonrpc::Message,
    ) -> super::exchange::Step {
        match jsonrpc::kind(&m) {
            jsonrpc::Kind::Response => super::exchange::Step::Final(m),
            _ => super::exchange::Step::Skip,
        }
    }

    async fn finish(
        &self,
        _: crate::mcp::upstream::Exchange,
        _: Value,
        m: jsonrpc::Message,
    ) -> jsonrpc::Message {
        m
    }
}

/// An upstream whose answer ends without a response after the request was sent (its stream
/// closed: the upstream may have run the request) is reported as an unknown outcome, "may or
/// may not have run"; a request that never left mcpg (the conversation was already closed)
/// keeps an error that does not say it may have run.
#[tokio::test]
async fn an_answer_lost_after_the_request_was_sent_is_an_unknown_outcome() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let url = serve(move |m: Value| match m["method"].as_str() {
        Some("initialize") => initialized(&m),
        // An SSE answer that ends before any message: the request was taken, no answer came.
        Some("lost") => Answer::Body("text/event-stream", Vec::new()),
        _ => Answer::Accepted,
    })
    .await;
    let up = upstream(&url, 60_000);
    let link = up.connect(&Hello::gateway(), None).await.expect("connects");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);

    let request = jsonrpc::request(json!(7), "lost", None);
    let Ok(relay) = Relay::start(&link.conn, request, &[], deadline, None).await else {
        panic!("the request was sent")
    };
    let reply = tokio::time::timeout(HANG, super::exchange::reply(relay, Plain, json!(7)))
        .await
        .expect("no hang");
    let crate::mcp::relay::Reply::Json(m) = reply else {
        panic!("one JSON-RPC error")
    };
    assert_eq!(m["id"], json!(7));
    let msg = m["error"]["message"].as_str().unwrap_or_default();
    assert_eq!(
        msg,
        "upstream `t` closed the connection after the request was sent; it may or may not have run"
    );

    link.conn.close().await;
    let request = jsonrpc::request(json!(8), "lost", None);
    let Err(Sent::NotReached(e)) = Relay::start(&link.conn, request, &[], deadline, None).await
    else {
        panic!("a closed conversation takes no request")
    };
    assert!(!e.message.contains("may or may not"), "{}", e.message);
}

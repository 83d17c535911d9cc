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

//! An upstream that breaks the protocol is named as the culprit: an answer that is not JSON,
//! one with an id the request never had, or JSON nested past any sane depth ends the request
//! with "upstream `t` broke the protocol: …", not "closed the connection after the request was sent".

use serde_json::{Value, json};

use super::Hello;
use super::test_server::{Answer, initialized, serve, upstream};

async fn answer_of(bad: Vec<u8>) -> String {
    let url = serve(move |m: Value| match m["method"].as_str() {
        Some("initialize") => initialized(&m),
        Some("tools/call") => Answer::Body("application/json", bad.clone()),
        _ => Answer::Accepted,
    })
    .await;
    let up = upstream(&url, 10_000);
    let link = up.connect(&Hello::gateway(), None).await.expect("connects");
    let e = link
        .conn
        .call("tools/call", Some(json!({"name": "x"})))
        .await
        .expect_err("a broken answer is an error");
    e.message
}

#[tokio::test]
async fn an_upstream_breaking_the_protocol_is_named_for_it() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let not_json = answer_of(b"hello, not JSON".to_vec()).await;
    assert!(
        not_json.contains("upstream `t` broke the protocol: its answer is not valid JSON"),
        "{not_json}"
    );
    let wrong_id = answer_of(
        json!({"jsonrpc": "2.0", "id": 987654, "result": {}})
            .to_string()
            .into_bytes(),
    )
    .await;
    assert!(
        wrong_id.contains("broke the protocol: it answered with id 987654"),
        "{wrong_id}"
    );
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep = answer_of(deep.into_bytes()).await;
    assert!(deep.contains("broke the protocol"), "{deep}");
}

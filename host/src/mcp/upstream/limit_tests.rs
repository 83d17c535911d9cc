//! `max_response_bytes`: an upstream message over the limit is never relayed (nor buffered
//! whole); the request it answered ends with an error naming the upstream and the limit, and
//! the conversation goes on (an HTTP upstream's next answer, a stdio child's next line).

use serde_json::{Value, json};

use super::Hello;
use super::stdio::{line_messages, read_line_bounded, sniff_head};
use super::test_server::{Answer, initialized, serve};

const LIMIT: usize = 4096;

/// A legacy HTTP upstream at `url` with `max_response_bytes: LIMIT`.
fn limited(url: &str) -> std::sync::Arc<super::Upstream> {
    super::test_server::upstream_from(
        json!({"name": "t", "max_response_bytes": LIMIT, "http": {"url": url, "protocol": "legacy"}}),
        url,
    )
}

fn result_of(id: &Value, text_len: usize) -> Vec<u8> {
    json!({"jsonrpc": "2.0", "id": id, "result": {"content": [{"type": "text", "text": "x".repeat(text_len)}]}})
        .to_string()
        .into_bytes()
}

/// Answers `tools/call` with a result whose text is `params.arguments.n` bytes long, as JSON
/// or (with `sse`) as one SSE event.
async fn big_answers(sse: bool) -> std::sync::Arc<super::Upstream> {
    let url = serve(move |m: Value| match m["method"].as_str() {
        Some("initialize") => initialized(&m),
        Some("tools/call") => {
            let n = m["params"]["arguments"]["n"].as_u64().unwrap_or(0) as usize;
            let body = result_of(&m["id"], n);
            if sse {
                let mut ev = b"event: message\ndata: ".to_vec();
                ev.extend_from_slice(&body);
                ev.extend_from_slice(b"\n\n");
                Answer::Body("text/event-stream", ev)
            } else {
                Answer::Body("application/json", body)
            }
        }
        _ => Answer::Accepted,
    })
    .await;
    limited(&url)
}

async fn call(up: &super::Upstream, n: usize) -> Result<Value, String> {
    let link = up.connect(&Hello::gateway(), None).await.expect("connects");
    link.conn
        .call(
            "tools/call",
            Some(json!({"name": "big", "arguments": {"n": n}})),
        )
        .await
        .map_err(|e| e.message)
}

fn assert_refused(e: &str) {
    assert!(
        e.contains("upstream `t` sent a message larger than its max_response_bytes (4096 bytes)"),
        "{e}"
    );
}

#[tokio::test]
async fn an_http_answer_over_the_limit_is_refused_and_the_next_one_relayed() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    for sse in [false, true] {
        let up = big_answers(sse).await;
        assert_refused(&call(&up, 64 * 1024).await.expect_err("over the limit"));
        let ok = call(&up, 100).await.expect("a small answer is relayed");
        assert_eq!(ok["content"][0]["text"].as_str().map(str::len), Some(100));
    }
}

#[tokio::test]
async fn a_streamed_json_answer_may_not_grow_past_the_limit() {
    // Newline-delimited JSON without a length: small values pass, a value still arriving past
    // the limit ends the answer with the error.
    let small = json!({"jsonrpc": "2.0", "method": "notifications/message", "params": {}});
    let mut chunks: Vec<Result<bytes::Bytes, std::io::Error>> =
        vec![Ok(format!("{small}\n").into_bytes().into())];
    let open = b"{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{\"t\":\"".to_vec();
    chunks.push(Ok(open.into()));
    for _ in 0..8 {
        chunks.push(Ok(vec![b'x'; 1024].into()));
    }
    let out: Vec<_> = futures::StreamExt::collect(super::http::json_values_for_test(
        futures::stream::iter(chunks),
        LIMIT,
    ))
    .await;
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(out[0]["method"], "notifications/message");
    assert_refused(out[1]["error"]["message"].as_str().expect("an error"));
}

#[tokio::test]
async fn a_stdio_line_over_the_limit_is_skipped_to_its_end() {
    let big = String::from_utf8(result_of(&json!(7), 3 * LIMIT)).expect("utf-8");
    let next = json!({"jsonrpc": "2.0", "id": 8, "result": {}}).to_string();
    let input = format!("{big}\n{next}\n");
    let mut reader = input.as_bytes();
    let mut line = Vec::new();
    let len = read_line_bounded(&mut reader, &mut line, LIMIT)
        .await
        .expect("reads")
        .expect("a line");
    assert_eq!(len, big.len());
    assert_eq!(line.len(), LIMIT, "only the limit is kept");
    let out = line_messages("t", &line, len, LIMIT);
    assert_eq!(out.len(), 1);
    assert_eq!(
        out[0]["id"], 7,
        "the error answers the request the line answered"
    );
    assert_refused(out[0]["error"]["message"].as_str().expect("an error"));
    // The next line is read whole: the conversation resynchronised.
    let len = read_line_bounded(&mut reader, &mut line, LIMIT)
        .await
        .expect("reads")
        .expect("a line");
    assert_eq!(line_messages("t", &line, len, LIMIT)[0]["id"], 8);
    assert_eq!(
        read_line_bounded(&mut reader, &mut line, LIMIT)
            .await
            .expect("reads"),
        None
    );
}

#[test]
fn the_head_of_a_cut_line_says_what_it_is() {
    let h = sniff_head(br#"{"jsonrpc":"2.0","id":42,"result":{"content":[{"text":"xxxx"#);
    assert_eq!(h.id, Some(json!(42)));
    assert!(!h.method);
    let h = sniff_head(br#"{"result":{"a":[1,2,"#);
    assert_eq!(h.id, None, "an id not reached is unknown");
    let h = sniff_head(
        br#"{"jsonrpc":"2.0","id":"s1","method":"sampling/createMessage","params":{"x":"#,
    );
    assert!(h.method, "a request of the upstream's is not an answer");
    // A big oversized notification makes no error.
    let head = br#"{"jsonrpc":"2.0","method":"notifications/message","params":{"data":"xx"#;
    assert!(line_messages("t", head, 10 * LIMIT, LIMIT).is_empty());
    assert!(sniff_head(b"[[[[[[").id.is_none());
}

/// `max_children_per_caller`: a caller at its share is refused with an error naming the
/// limit, other callers are not, and a child given back frees its place.
#[test]
fn a_caller_at_its_share_of_children_is_refused() {
    let cfg: crate::config::model::UpstreamConfig = serde_json::from_value(json!({
        "name": "t",
        "stdio": {"command": "true", "max_children": 3, "max_children_per_caller": 2},
    }))
    .expect("an upstream config");
    let up = super::Upstream::new(
        "b",
        &cfg,
        None,
        ".".as_ref(),
        std::time::Duration::from_secs(60),
    )
    .expect("an upstream");
    let hello = |caller: &str| Hello {
        caller: Some(caller.into()),
        ..Hello::gateway()
    };
    let a1 = up.child_permit(&hello("addr:10.0.0.1")).expect("first");
    let _a2 = up.child_permit(&hello("addr:10.0.0.1")).expect("second");
    let e = up
        .child_permit(&hello("addr:10.0.0.1"))
        .err()
        .expect("a third of the same caller is refused");
    assert!(
        e.message.contains(
            "upstream `t` already runs this caller's max_children_per_caller (2) children"
        ),
        "{}",
        e.message
    );
    let _b = up
        .child_permit(&hello("id:alice"))
        .expect("another caller gets the last child");
    let e = up
        .child_permit(&hello("id:bob"))
        .err()
        .expect("the upstream is full");
    assert!(e.message.contains("max_children limit"), "{}", e.message);
    drop(a1);
    assert!(
        up.child_permit(&hello("addr:10.0.0.1")).is_ok(),
        "given back"
    );
}

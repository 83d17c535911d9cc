//! Request fencing at the last step before an upstream, against a real loopback HTTP
//! upstream: each request of a legacy session carries the session's fencing token where the
//! upstream asks for it (`fencing_token: meta`), none is handed to the upstream once the
//! ownership lease cannot be proven, and the window between the check and the upstream
//! reading the request is measured (printed; nothing timed is asserted).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::time::Instant;

use super::dispatch::{Client, dispatch};
use crate::mcp::relay::Reply;
use crate::mcp::tests::kit::{self, Replica};
use crate::mcp::upstream::test_server::{Answer, initialized, serve};
use crate::mcp::wire::jsonrpc;

/// Requests measured.
const N: usize = 300;

#[tokio::test]
async fn requests_carry_the_owners_token_and_none_reaches_the_upstream_once_unproven() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let seen = Arc::new(Mutex::new(Vec::<(Instant, Value)>::new()));
    let kept = seen.clone();
    let url = serve(move |m: Value| match m["method"].as_str() {
        Some("initialize") => initialized(&m),
        Some("tools/call") => {
            kept.lock().unwrap().push((Instant::now(), m.clone()));
            let r = json!({"jsonrpc": "2.0", "id": m["id"], "result": {"content": []}});
            Answer::Body("application/json", r.to_string().into_bytes())
        }
        _ => Answer::Accepted,
    })
    .await;
    let store = kit::store();
    let r = Replica::start(&store, "node-a", None, 10).await;
    let cfg = kit::binding_config(json!({"upstreams": [{
        "name": "t",
        "http": {"url": url, "protocol": "legacy"},
        "fencing_token": "meta",
    }]}));
    let b = kit::binding(&r.caps, &cfg);
    let (live, _) = r
        .sessions
        .create(
            &b,
            &json!({"protocolVersion": "2025-06-18", "clientInfo": {"name": "unit"}}),
            None,
            None,
        )
        .await
        .expect("a session");
    let call = |i: usize| {
        jsonrpc::request(
            json!(i),
            "tools/call",
            Some(json!({"name": "x", "arguments": {}})),
        )
    };

    let mut window = Vec::with_capacity(N);
    for i in 0..N {
        let t0 = Instant::now();
        let reply = dispatch(&b, Client::Session(&live), call(i)).await;
        assert!(matches!(reply, Reply::Json(ref m) if m.get("result").is_some()));
        let (t1, m) = seen.lock().unwrap().last().cloned().expect("it arrived");
        assert_eq!(
            m["params"]["_meta"]["dev.mcpg/fencingToken"],
            json!(live.record.lock().unwrap().epoch)
        );
        window.push(t1.duration_since(t0));
    }
    window.sort();
    let at = |q: f64| window[((N as f64 * q) as usize).min(N - 1)];
    eprintln!(
        "fence check -> upstream read (upper bound, from before dispatch): p50 {:?}, p99 {:?}, max {:?} over {N}",
        at(0.5),
        at(0.99),
        window[N - 1]
    );

    // The lease given up: the request is answered with an error and never reaches the upstream.
    r.ownership.release().await;
    let before = seen.lock().unwrap().len();
    let reply = dispatch(&b, Client::Session(&live), call(N)).await;
    let Reply::Json(m) = reply else {
        panic!("an error answer")
    };
    assert!(
        m["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot prove")
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        seen.lock().unwrap().len(),
        before,
        "not handed to the upstream"
    );
}

/// `header`: the token goes as `Mcp-Fencing-Token` for the transport and the message is left
/// as it is; `off`: nothing at all.
#[test]
fn header_mode_sends_the_token_as_a_header_and_off_changes_nothing() {
    use crate::config::model::FencingToken;
    let msg = jsonrpc::request(json!(1), "tools/call", Some(json!({"name": "x"})));
    let mut m = msg.clone();
    let extra = super::dispatch::fencing_token(FencingToken::Header, 7, &mut m);
    assert_eq!(
        extra,
        vec![("mcp-fencing-token".to_owned(), "7".to_owned())]
    );
    assert_eq!(m, msg);
    let mut m = msg.clone();
    assert!(super::dispatch::fencing_token(FencingToken::Off, 7, &mut m).is_empty());
    assert_eq!(m, msg);
}

//! The signed `requestState`: sealed on one replica, opened on any replica of the cluster
//! (the key is shared through the `pipelines` capability), refused when altered in any part
//! or signed by another cluster.

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use mcpg_plugin_api::coordinator::Coordinator;
use mcpg_plugin_api::memory::MemoryStore;

use super::kit;
use crate::capabilities::Capabilities;
use crate::mcp::bridge::request_state::{State, StateKey};
use crate::mcp::wire::jsonrpc::code;

fn key(store: &MemoryStore, node: &str) -> StateKey {
    let c: Arc<dyn Coordinator> = Arc::new(store.handle(node));
    StateKey::new(
        Capabilities::build(&Default::default(), &c)
            .unwrap()
            .pipelines,
    )
}

fn state() -> State {
    State {
        v: 1,
        u: "one".into(),
        s: None,
        p: Some("parked-7".into()),
        n: Some("node-a".into()),
    }
}

#[tokio::test]
async fn a_sealed_state_opens_on_every_replica_of_the_cluster() {
    let store = kit::store();
    let (a, b) = (key(&store, "node-a"), key(&store, "node-b"));
    let sealed = a.seal(&state()).await.unwrap();
    assert!(sealed.starts_with("mcpg1."), "{sealed}");
    for k in [&a, &b] {
        let st = k.open(&sealed).await.unwrap();
        assert_eq!(
            (st.v, st.u.as_str(), st.s, st.p.as_deref(), st.n.as_deref()),
            (1, "one", None, Some("parked-7"), Some("node-a"))
        );
    }
    // Sealed on B (which found the key A created), opened on A.
    let native = State {
        s: Some("upstream-own-state".into()),
        p: None,
        n: None,
        ..state()
    };
    let sealed = b.seal(&native).await.unwrap();
    assert_eq!(
        a.open(&sealed).await.unwrap().s.as_deref(),
        Some("upstream-own-state")
    );
}

#[tokio::test]
async fn an_altered_or_foreign_state_is_refused() {
    let store = kit::store();
    let a = key(&store, "node-a");
    let sealed = a.seal(&state()).await.unwrap();
    let (body, tag) = sealed
        .strip_prefix("mcpg1.")
        .unwrap()
        .split_once('.')
        .unwrap();

    // The body rewritten to send the retry to another replica, keeping the tag.
    let forged_body = URL_SAFE_NO_PAD.encode(
        serde_json::to_vec(&State {
            n: Some("node-evil".into()),
            ..state()
        })
        .unwrap(),
    );
    let mut flipped_tag = URL_SAFE_NO_PAD.decode(tag).unwrap();
    flipped_tag[0] ^= 1;
    let altered = [
        format!("mcpg1.{forged_body}.{tag}"),
        format!("mcpg1.{body}.{}", URL_SAFE_NO_PAD.encode(&flipped_tag)),
        format!("mcpg1.{body}"),
        format!("mcpg0.{body}.{tag}"),
        format!("mcpg1.{body}.{tag}!"),
        body.to_owned(),
        String::new(),
    ];
    for s in altered {
        let e = a
            .open(&s)
            .await
            .err()
            .unwrap_or_else(|| panic!("opened {s}"));
        assert_eq!(e.code, code::INVALID_PARAMS, "{s}");
    }
    // Another cluster (another store, so another key) does not accept it.
    let other = key(&kit::store(), "node-a");
    assert!(other.open(&sealed).await.is_err());
    // The original still opens.
    assert!(a.open(&sealed).await.is_ok());
}

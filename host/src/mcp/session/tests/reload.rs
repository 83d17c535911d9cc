//! Sessions across a config reload: a binding changed in place (same pools) goes on serving
//! the very same live session; a binding whose upstreams were replaced gets it moved (handed
//! over and claimed on the new binding, same id); [`Sessions::end_binding`] ends those of a
//! removed one. A moved session's client is told its lists may have changed.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::config::model::BindingConfig;
use crate::mcp::binding::Binding;
use crate::mcp::session::SessionError;
use crate::mcp::session::placement::Resolved;
use crate::mcp::tests::kit::{self, Replica};

/// `cfg` built as a reload builds it: reusing `pools` (none: every upstream new).
fn rebuilt(
    r: &Replica,
    cfg: &BindingConfig,
    pools: &[Arc<crate::mcp::upstream::pool::Pool>],
) -> Arc<Binding> {
    let text = json!({"bindings": [cfg]}).to_string();
    let loaded = crate::config::load_str("unit.yaml", std::path::Path::new("."), &text, &|_| None);
    let valid = loaded.config.expect("the binding config loads");
    Binding::with_pools(
        cfg,
        std::path::Path::new("."),
        Duration::from_secs(5),
        &r.caps,
        &valid.parsed,
        pools,
    )
    .expect("a binding")
}

/// The methods in session `id`'s event log: what a GET stream resuming from the start replays.
async fn logged(r: &Replica, id: &str) -> Vec<String> {
    use futures::StreamExt;
    let (_, mut s) = r
        .sessions
        .services
        .delivery
        .stream(id, Some(0))
        .await
        .expect("a stream");
    let mut out = Vec::new();
    while let Ok(Some((_, m))) = tokio::time::timeout(Duration::from_millis(200), s.next()).await {
        out.push(m["method"].as_str().unwrap_or_default().to_owned());
    }
    out
}

async fn resolve(r: &Replica, b: &Arc<Binding>, id: &str) -> Result<Resolved, SessionError> {
    r.sessions.resolve(b, id, false, None, None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_place_change_keeps_the_live_session_and_its_conversations() {
    let store = kit::store();
    let r = Replica::start(&store, "a", None, 10).await;
    let id = r.create(None).await;
    let Ok(Resolved::Local(before)) = resolve(&r, &r.binding, &id).await else {
        panic!("the session is served here");
    };
    let changed = kit::binding_config(json!({
        "access": {"default": "allow", "rules": [{"deny": {"tools": ["one_danger"]}}]}
    }));
    let next = rebuilt(&r, &changed, &r.binding.upstreams);
    assert!(
        next.serves_sessions_of(&r.binding),
        "same pools, same order"
    );
    let Ok(Resolved::Local(after)) = resolve(&r, &next, &id).await else {
        panic!("the session goes on under the changed binding");
    };
    assert!(Arc::ptr_eq(&before, &after), "the very same live session");
    assert!(Arc::ptr_eq(&after.binding.upstreams[0], &next.upstreams[0]));
    assert!(r.record(&id).await.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaced_upstreams_move_the_session_to_the_new_binding() {
    let store = kit::store();
    let r = Replica::start(&store, "a", None, 10).await;
    let id = r.create(None).await;
    let Ok(Resolved::Local(before)) = resolve(&r, &r.binding, &id).await else {
        panic!("the session is served here");
    };
    // `one` kept, `two` replaced (a new pool: what a changed command or URL makes).
    let two_new = rebuilt(&r, &kit::binding_config(json!({})), &[]).upstreams[1].clone();
    let next = rebuilt(
        &r,
        &kit::binding_config(json!({})),
        &[r.binding.upstreams[0].clone(), two_new],
    );
    assert!(!next.serves_sessions_of(&r.binding));
    assert_eq!(next.replaced_upstreams_of(&r.binding), ["two"]);
    let Ok(Resolved::Local(after)) = resolve(&r, &next, &id).await else {
        panic!("the session moves to the new binding, served here");
    };
    assert!(!Arc::ptr_eq(&before, &after), "claimed anew");
    assert!(before.is_closed(), "the old live session is let go");
    assert!(Arc::ptr_eq(&after.binding, &next));
    assert_eq!(after.id, id, "same session id: the client sees no change");
    let rec = r.record(&id).await.expect("the record stays");
    assert_eq!(rec.owner, "a");
    assert!(!rec.upstream_sessions.contains_key("two"));
    assert_eq!(r.sessions.live_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_moves_every_session_of_a_changed_binding() {
    let store = kit::store();
    let r = Replica::start(&store, "a", None, 10).await;
    let (one, two) = (r.create(None).await, r.create(None).await);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    assert_eq!(r.sessions.move_binding("another", &[], deadline).await, 0);
    assert_eq!(
        r.sessions
            .move_binding(kit::BINDING, &["two".to_owned()], deadline)
            .await,
        2
    );
    assert_eq!(r.sessions.live_count(), 0);
    for id in [&one, &two] {
        let rec = r.record(id).await.expect("handed over, not ended");
        assert_eq!(rec.owner, "", "no owner: the next request claims it");
        assert_eq!(
            logged(&r, id).await,
            [
                "notifications/tools/list_changed",
                "notifications/prompts/list_changed",
                "notifications/resources/list_changed"
            ],
            "the client is told its lists may have changed"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_hand_over_tells_the_client_nothing() {
    let store = kit::store();
    let r = Replica::start(&store, "a", None, 10).await;
    let id = r.create(None).await;
    r.sessions
        .hand_over_all(tokio::time::Instant::now() + Duration::from_secs(5))
        .await;
    assert_eq!(r.record(&id).await.expect("handed over").owner, "");
    assert!(logged(&r, &id).await.is_empty(), "same binding, same lists");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ending_a_binding_ends_only_its_sessions() {
    let store = kit::store();
    let r = Replica::start(&store, "a", None, 10).await;
    let (one, two) = (r.create(None).await, r.create(None).await);
    assert_eq!(r.sessions.end_binding("another").await, 0);
    assert!(r.record(&one).await.is_some());
    assert_eq!(r.sessions.end_binding(kit::BINDING).await, 2);
    assert!(r.record(&one).await.is_none());
    assert!(r.record(&two).await.is_none());
    assert_eq!(r.sessions.live_count(), 0);
}

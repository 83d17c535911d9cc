//! Placement decisions of `Sessions::place`, with a forward closure standing in for the
//! inter-replica HTTP call: here, forwarded to the live owner, looked up again after a
//! misdirected forward, waiting on the owner's lease after an unreachable one, never forwarded
//! twice, and the refusals (another identity, another binding, the session limit).

use std::sync::Arc;
use std::sync::Mutex;

use serde_json::json;

use crate::mcp::binding::Binding;
use crate::mcp::cluster::forward::ForwardError;
use crate::mcp::front::respond::McpError;
use crate::mcp::session::placement::Placed;
use crate::mcp::session::{SessionError, Sessions};
use crate::mcp::tests::kit::{self, Replica};

/// Every URL the forward closure was called with, and what it answers each time.
#[derive(Default)]
struct Forwards {
    urls: Mutex<Vec<String>>,
    answers: Mutex<Vec<Result<&'static str, ForwardError>>>,
}

impl Forwards {
    fn answering(answers: Vec<Result<&'static str, ForwardError>>) -> Arc<Self> {
        let f = Arc::new(Self::default());
        *f.answers.lock().unwrap() = answers.into_iter().rev().collect();
        f
    }

    fn urls(&self) -> Vec<String> {
        self.urls.lock().unwrap().clone()
    }
}

async fn place(
    s: &Sessions,
    b: &Arc<Binding>,
    id: &str,
    forwarded: bool,
    identity: Option<&str>,
    f: &Arc<Forwards>,
) -> Result<Placed<&'static str>, SessionError> {
    s.place(b, id, forwarded, identity, |url| {
        let f = f.clone();
        async move {
            f.urls.lock().unwrap().push(url);
            f.answers
                .lock()
                .unwrap()
                .pop()
                .unwrap_or(Err(ForwardError::Misdirected))
        }
    })
    .await
}

fn unreachable(url: &str) -> ForwardError {
    ForwardError::Unreachable {
        url: url.into(),
        message: "connection refused".into(),
    }
}

fn placed_here(r: Result<Placed<&'static str>, SessionError>) -> bool {
    matches!(r, Ok(Placed::Here(..)))
}

/// A session live here is served here, counted as running while the request lasts, and
/// nothing is forwarded.
#[tokio::test(start_paused = true)]
async fn a_session_live_here_is_placed_here() {
    let store = kit::store();
    let a = Replica::start(&store, "node-a", Some("http://node-a.test"), 10).await;
    let id = a.create(None).await;
    let f = Forwards::answering(vec![]);
    let placed = place(&a.sessions, &a.binding, &id, false, None, &f).await;
    let Ok(Placed::Here(live, busy)) = placed else {
        panic!("not placed here")
    };
    assert_eq!(live.id, id);
    assert!(
        !live.let_go_if_idle(),
        "a running request keeps the session"
    );
    drop(busy);
    assert!(live.let_go_if_idle(), "idle once the request is done");
    assert!(f.urls().is_empty(), "nothing was forwarded");
}

/// A session owned by a live peer is forwarded to the URL it advertises, and its answer is
/// the request's.
#[tokio::test(start_paused = true)]
async fn a_session_of_a_live_peer_is_forwarded_to_its_url() {
    let store = kit::store();
    let a = Replica::start(&store, "node-a", Some("http://node-a.test"), 10).await;
    let b = Replica::start(&store, "node-b", Some("http://node-b.test"), 10).await;
    let id = a.create(None).await;
    let f = Forwards::answering(vec![Ok("from A")]);
    match place(&b.sessions, &b.binding, &id, false, None, &f).await {
        Ok(Placed::Answered(a)) => assert_eq!(a, "from A"),
        Ok(Placed::Here(..)) => panic!("placed on B"),
        Err(e) => panic!("{e}"),
    }
    assert_eq!(f.urls(), ["http://node-a.test"]);
    assert_eq!(b.sessions.live_count(), 0);
}

/// A forward that reaches a replica which no longer owns the session looks again (the
/// remembered owner forgotten) and is answered by the second try.
#[tokio::test(start_paused = true)]
async fn a_misdirected_forward_looks_again() {
    let store = kit::store();
    let a = Replica::start(&store, "node-a", Some("http://node-a.test"), 10).await;
    let b = Replica::start(&store, "node-b", Some("http://node-b.test"), 10).await;
    let id = a.create(None).await;
    let f = Forwards::answering(vec![Err(ForwardError::Misdirected), Ok("second")]);
    match place(&b.sessions, &b.binding, &id, false, None, &f).await {
        Ok(Placed::Answered(a)) => assert_eq!(a, "second"),
        _ => panic!("not answered by the second forward"),
    }
    assert_eq!(f.urls().len(), 2);
}

/// A forward that keeps being misdirected gives up after a bounded number of looks.
#[tokio::test(start_paused = true)]
async fn forwards_that_keep_being_misdirected_end_unsettled() {
    let store = kit::store();
    let a = Replica::start(&store, "node-a", Some("http://node-a.test"), 10).await;
    let b = Replica::start(&store, "node-b", Some("http://node-b.test"), 10).await;
    let id = a.create(None).await;
    let f = Forwards::answering(vec![]);
    assert!(matches!(
        place(&b.sessions, &b.binding, &id, false, None, &f).await,
        Err(SessionError::Unsettled)
    ));
    assert!(f.urls().len() > 1, "it looked again");
    assert_eq!(a.record(&id).await.unwrap().owner, "node-a");
}

/// An owner that cannot be reached but still holds its ownership lease is not taken over on
/// the strength of a failed forward: the request ends unavailable (503) once the wait for the
/// lease is over, the record still names the owner, and the unreachable owner is not
/// forwarded to again.
#[tokio::test(start_paused = true)]
async fn an_unreachable_owner_holding_its_lease_keeps_its_session() {
    let store = kit::store();
    let a = Replica::start(&store, "node-a", Some("http://node-a.test"), 10).await;
    let b = Replica::start(&store, "node-b", Some("http://node-b.test"), 10).await;
    let id = a.create(None).await;
    let f = Forwards::answering(vec![Err(unreachable("http://node-a.test"))]);
    match place(&b.sessions, &b.binding, &id, false, None, &f).await {
        Err(SessionError::Rpc(e)) => {
            assert_eq!(
                e.code,
                crate::mcp::wire::jsonrpc::code::INTERNAL_ERROR,
                "{}",
                e.message
            );
            let mcp = McpError::from(SessionError::Rpc(e));
            assert_eq!(mcp.status(), axum::http::StatusCode::SERVICE_UNAVAILABLE);
        }
        Ok(_) => panic!("placed although the owner holds its lease"),
        Err(e) => panic!("unexpected error: {e}"),
    }
    assert_eq!(f.urls(), ["http://node-a.test"], "forwarded once");
    assert_eq!(a.record(&id).await.unwrap().owner, "node-a");
    assert_eq!(b.sessions.live_count(), 0);
}

/// An unreachable owner whose lease is gone (its presence lingering in the directory) is
/// taken over: the request is served here.
#[tokio::test(start_paused = true)]
async fn an_unreachable_owner_whose_lease_is_gone_is_taken_over() {
    let store = kit::store();
    let a = Replica::start(&store, "node-a", Some("http://node-a.test"), 10).await;
    let b = Replica::start(&store, "node-b", Some("http://node-b.test"), 10).await;
    let id = a.create(None).await;
    a.ownership.release().await;
    let f = Forwards::answering(vec![Err(unreachable("http://node-a.test"))]);
    assert!(placed_here(
        place(&b.sessions, &b.binding, &id, false, None, &f).await
    ));
    assert_eq!(f.urls().len(), 1);
    let r = b.record(&id).await.unwrap();
    assert_eq!(
        (r.owner.as_str(), r.owner_token),
        ("node-b", b.ownership.token())
    );
}

/// A hung owner (it takes the forward and never answers, as a paused process does) is given
/// up on once its ownership lease is gone, and its session taken over; the request itself is
/// not run here (the owner took it and may have run it), the next one is.
#[tokio::test(start_paused = true)]
async fn a_hung_owner_is_taken_over_once_its_lease_is_gone() {
    let store = kit::store();
    let a = Replica::start(&store, "node-a", Some("http://node-a.test"), 10).await;
    let b = Replica::start(&store, "node-b", Some("http://node-b.test"), 10).await;
    let id = a.create(None).await;
    let placed = b.sessions.place(&b.binding, &id, false, None, |_url| {
        std::future::pending::<Result<(), ForwardError>>()
    });
    tokio::pin!(placed);
    // Still held: the forward is waited for.
    let early = tokio::time::timeout(kit::OWNER_TTL / 2, &mut placed).await;
    assert!(early.is_err(), "a live owner's answer is waited for");
    a.ownership.release().await;
    let r = tokio::time::timeout(kit::OWNER_TTL * 2, placed)
        .await
        .expect("not waited for forever");
    let Err(SessionError::Rpc(e)) = r else {
        panic!("the request the hung owner took is not run again here")
    };
    assert!(e.message.contains("not run again"), "{}", e.message);
    assert_eq!(b.record(&id).await.unwrap().owner, "node-b", "taken over");
    let f = Forwards::answering(vec![]);
    assert!(placed_here(
        place(&b.sessions, &b.binding, &id, false, None, &f).await
    ));
    assert!(f.urls().is_empty());
}

/// A forward the owner took and never answered (its connection broke: the owner died while
/// running it) is not run a second time anywhere: the client is told it may have run. The
/// next request waits for the owner's lease as for an unreachable owner.
#[tokio::test(start_paused = true)]
async fn a_forward_lost_after_it_was_sent_is_never_run_twice() {
    let store = kit::store();
    let a = Replica::start(&store, "node-a", Some("http://node-a.test"), 10).await;
    let b = Replica::start(&store, "node-b", Some("http://node-b.test"), 10).await;
    let id = a.create(None).await;
    let f = Forwards::answering(vec![Err(ForwardError::Lost {
        url: "http://node-a.test".into(),
        message: "connection reset".into(),
    })]);
    let r = place(&b.sessions, &b.binding, &id, false, None, &f).await;
    let Err(SessionError::Rpc(e)) = r else {
        panic!("a lost forward is not placed again")
    };
    assert!(
        e.message.contains("may or may not have run"),
        "{}",
        e.message
    );
    assert_eq!(f.urls().len(), 1, "forwarded once, not retried");
    assert_eq!(
        b.record(&id).await.unwrap().owner,
        "node-a",
        "not taken over"
    );
}

/// A request another replica forwarded is never forwarded again: the session is owned
/// elsewhere, so it is refused as misdirected and the forwarding replica looks again.
#[tokio::test(start_paused = true)]
async fn a_forwarded_request_is_never_forwarded_again() {
    let store = kit::store();
    let a = Replica::start(&store, "node-a", Some("http://node-a.test"), 10).await;
    let b = Replica::start(&store, "node-b", Some("http://node-b.test"), 10).await;
    let id = a.create(None).await;
    let f = Forwards::answering(vec![Ok("never")]);
    assert!(matches!(
        place(&b.sessions, &b.binding, &id, true, None, &f).await,
        Err(SessionError::Misdirected)
    ));
    assert!(f.urls().is_empty());
    // Where the session lives, a forwarded request is served.
    assert!(placed_here(
        place(&a.sessions, &a.binding, &id, true, None, &f).await
    ));
}

/// A session is only for the identity that created it: anyone else (or nobody) is told it
/// does not exist, here and on another replica, before anything is forwarded.
#[tokio::test(start_paused = true)]
async fn another_identity_is_told_the_session_does_not_exist() {
    let store = kit::store();
    let a = Replica::start(&store, "node-a", Some("http://node-a.test"), 10).await;
    let b = Replica::start(&store, "node-b", Some("http://node-b.test"), 10).await;
    let id = a.create(Some("token:alice")).await;
    let f = Forwards::answering(vec![Ok("never"), Ok("never")]);
    for who in [Some("token:bob"), None] {
        assert!(matches!(
            place(&a.sessions, &a.binding, &id, false, who, &f).await,
            Err(SessionError::NotFound)
        ));
        assert!(matches!(
            place(&b.sessions, &b.binding, &id, false, who, &f).await,
            Err(SessionError::NotFound)
        ));
        assert!(matches!(
            a.sessions.exists(&a.binding, &id, who).await,
            Err(SessionError::NotFound)
        ));
    }
    assert!(f.urls().is_empty());
    assert!(placed_here(
        place(&a.sessions, &a.binding, &id, false, Some("token:alice"), &f).await
    ));
    assert!(
        a.sessions
            .exists(&a.binding, &id, Some("token:alice"))
            .await
            .is_ok()
    );
    assert!(matches!(
        place(&a.sessions, &a.binding, "no-such-session", false, None, &f).await,
        Err(SessionError::NotFound)
    ));
}

/// A session presented on another binding's endpoint belongs to the other endpoint, here
/// and on another replica; the client is told it does not exist.
#[tokio::test(start_paused = true)]
async fn a_session_of_another_binding_is_refused() {
    let store = kit::store();
    let a = Replica::start(&store, "node-a", Some("http://node-a.test"), 10).await;
    let b = Replica::start(&store, "node-b", Some("http://node-b.test"), 10).await;
    let id = a.create(None).await;
    let other_cfg = kit::binding_config(json!({"name": "other", "path": "/other"}));
    let f = Forwards::answering(vec![]);
    for r in [&a, &b] {
        let other = kit::binding(&r.caps, &other_cfg);
        let e = place(&r.sessions, &other, &id, false, None, &f)
            .await
            .err()
            .expect("refused");
        assert!(matches!(e, SessionError::WrongBinding), "{e}");
        assert!(matches!(McpError::from(e), McpError::SessionNotFound));
    }
    assert!(f.urls().is_empty());
}

/// A replica at its session limit starts no session: the refusal is a 503 with the
/// `session_limit` reason, not an answer to `initialize`.
#[tokio::test(start_paused = true)]
async fn the_session_limit_refuses_new_sessions() {
    let store = kit::store();
    let a = Replica::start(&store, "node-a", None, 1).await;
    a.create(None).await;
    let e = a
        .sessions
        .create(
            &a.binding,
            &json!({"protocolVersion": "2025-06-18"}),
            None,
            None,
        )
        .await
        .err()
        .expect("refused");
    assert!(matches!(e, SessionError::Limit { max: 1 }), "{e}");
    let mcp = McpError::not_started(e);
    assert_eq!(mcp.status(), axum::http::StatusCode::SERVICE_UNAVAILABLE);
    let m = mcp.to_message(json!(1));
    assert_eq!(m["error"]["data"]["reason"], "session_limit");
    assert_eq!(a.sessions.live_count(), 1);
}

/// A new session needs `params.protocolVersion`; without it `initialize` is answered with
/// invalid params, and nothing is recorded.
#[tokio::test(start_paused = true)]
async fn initialize_without_a_protocol_version_is_invalid_params() {
    let store = kit::store();
    let a = Replica::start(&store, "node-a", None, 10).await;
    let e = a
        .sessions
        .create(&a.binding, &json!({}), None, None)
        .await
        .err()
        .expect("refused");
    let SessionError::Rpc(rpc) = e else {
        panic!("{e}")
    };
    assert_eq!(rpc.code, crate::mcp::wire::jsonrpc::code::INVALID_PARAMS);
    assert!(
        a.caps.sessions.store.list("s/").await.unwrap().is_empty(),
        "nothing recorded"
    );
}

/// A draining replica takes no session over: a session whose owner is gone is sent to a live
/// peer instead of being claimed here (a forwarded request, which must not travel again, is
/// still served here).
#[tokio::test(start_paused = true)]
async fn a_draining_replica_sends_orphaned_sessions_to_a_peer() {
    let store = kit::store();
    let a = Replica::start(&store, "node-a", Some("http://node-a.test"), 10).await;
    let b = Replica::start(&store, "node-b", Some("http://node-b.test"), 10).await;
    a.put_record(&kit::record("orphan", "", 0, kit::fresh()))
        .await;
    a.ownership.set_draining();
    let f = Forwards::answering(vec![Ok("from B")]);
    match place(&a.sessions, &a.binding, "orphan", false, None, &f).await {
        Ok(Placed::Answered(x)) => assert_eq!(x, "from B"),
        _ => panic!("the draining replica did not send the session on"),
    }
    assert_eq!(f.urls(), ["http://node-b.test"]);
    assert_eq!(a.record("orphan").await.unwrap().owner, "", "not claimed");
    assert!(placed_here(
        place(&a.sessions, &a.binding, "orphan", true, None, &f).await
    ));
    drop(b);
}

//! Request fencing and what a lost or unprovable ownership lease costs: a replica that cannot
//! prove its lease now (the backend stalls, the process was paused) runs no request and hands
//! none to an upstream, but keeps its sessions; once the lease is taken again, sessions whose
//! records still name the old token are claimed back (same conversations), and one another
//! replica took over meanwhile is dropped here; a session whose record the backend lost is
//! ended here, its upstream sessions closed.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use mcpg_plugin_api::coordinator::{
    CasOutcome, CoordResult, Coordinator, Entry, Health, KvEvent, Lease, Message, Peer, PeerEvent,
    Presence,
};
use mcpg_plugin_api::memory::{MemoryCoordinator, lease_key};
use tokio::sync::watch;

use crate::mcp::session::placement::Placed;
use crate::mcp::session::record::record_key;
use crate::mcp::session::{Live, SessionError, Sessions};
use crate::mcp::tests::kit::{self, Replica};

fn live(s: &Sessions, id: &str) -> Arc<Live> {
    s.live.lock().unwrap().get(id).cloned().expect("live here")
}

/// Places a request of session `id` on `r`; nothing is forwarded in these tests.
async fn place(r: &Replica, id: &str) -> Result<Placed<()>, SessionError> {
    r.sessions
        .place(&r.binding, id, false, None, |_url| async {
            Err(crate::mcp::cluster::forward::ForwardError::Misdirected)
        })
        .await
}

fn here(p: &Result<Placed<()>, SessionError>) -> Option<Arc<Live>> {
    match p {
        Ok(Placed::Here(l, _)) => Some(l.clone()),
        _ => None,
    }
}

/// A coordinator whose reads hang while `stalled` is set: the backend stalls for this replica
/// (its lease, renewed inside the in-memory store, is untouched).
struct Stallable {
    inner: MemoryCoordinator,
    stalled: watch::Receiver<bool>,
}

#[async_trait]
impl Coordinator for Stallable {
    fn node_id(&self) -> String {
        self.inner.node_id()
    }
    async fn health(&self) -> Health {
        self.inner.health().await
    }
    async fn get(&self, key: &str) -> CoordResult<Option<Entry>> {
        let mut s = self.stalled.clone();
        let _ = s.wait_for(|stalled| !*stalled).await;
        self.inner.get(key).await
    }
    async fn put(&self, key: &str, value: Vec<u8>, ttl: Option<Duration>) -> CoordResult<u64> {
        self.inner.put(key, value, ttl).await
    }
    async fn create(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> CoordResult<Option<u64>> {
        self.inner.create(key, value, ttl).await
    }
    async fn compare_and_swap(
        &self,
        key: &str,
        expected: u64,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> CoordResult<CasOutcome> {
        self.inner.compare_and_swap(key, expected, value, ttl).await
    }
    async fn delete(&self, key: &str, expected: Option<u64>) -> CoordResult<bool> {
        self.inner.delete(key, expected).await
    }
    async fn list(&self, prefix: &str) -> CoordResult<Vec<Entry>> {
        self.inner.list(prefix).await
    }
    async fn publish(&self, subject: &str, payload: Vec<u8>) -> CoordResult<()> {
        self.inner.publish(subject, payload).await
    }
    async fn subscribe(&self, pattern: &str) -> CoordResult<BoxStream<'static, Message>> {
        self.inner.subscribe(pattern).await
    }
    async fn acquire(
        &self,
        name: &str,
        ttl: Option<Duration>,
        wait: Duration,
    ) -> CoordResult<Option<Box<dyn Lease>>> {
        self.inner.acquire(name, ttl, wait).await
    }
    async fn register(&self, meta: String) -> CoordResult<Box<dyn Presence>> {
        self.inner.register(meta).await
    }
    async fn peers(&self) -> CoordResult<Vec<Peer>> {
        self.inner.peers().await
    }
    async fn watch_peers(&self) -> CoordResult<BoxStream<'static, PeerEvent>> {
        self.inner.watch_peers().await
    }
    async fn watch_prefix(&self, prefix: &str) -> CoordResult<BoxStream<'static, KvEvent>> {
        self.inner.watch_prefix(prefix).await
    }
}

/// While the backend does not answer, the owner cannot prove its lease once the proof
/// window (a tenth of the TTL) has passed: requests are refused (503 with `Retry-After`) and
/// the last check before an upstream refuses too, but the session and its conversations stay.
/// When the backend answers again, the same live session serves again.
#[tokio::test(start_paused = true)]
async fn a_stalled_backend_fences_requests_but_keeps_the_session() {
    let store = kit::store();
    let (stall, stalled) = watch::channel(false);
    let coordinator = Arc::new(Stallable {
        inner: store.handle("node-a"),
        stalled,
    });
    let a = Replica::on(coordinator, "node-a", None, 10, kit::IDLE_TTL).await;
    let id = a.create(None).await;
    let before = live(&a.sessions, &id);
    assert!(here(&place(&a, &id).await).is_some(), "served while proven");
    assert!(before.fence().is_ok());

    stall.send(true).unwrap();
    tokio::time::sleep(kit::OWNER_TTL / 5).await;
    assert!(!a.ownership.provable());
    let refused = place(&a, &id).await;
    assert!(
        matches!(refused, Err(SessionError::Fenced)),
        "a request is not run while the lease cannot be proven"
    );
    let e = crate::mcp::front::respond::McpError::from(SessionError::Fenced);
    assert_eq!(e.status(), axum::http::StatusCode::SERVICE_UNAVAILABLE);
    let r = e.respond(serde_json::json!(1));
    assert_eq!(r.headers()["retry-after"], "1");
    assert!(before.fence().is_err(), "nor handed to an upstream");
    assert!(!before.is_closed(), "the session is kept");
    assert_eq!(a.sessions.live_count(), 1);

    stall.send(false).unwrap();
    kit::eventually("the lease is proven again", || a.ownership.provable()).await;
    let again = here(&place(&a, &id).await).expect("served again");
    assert!(Arc::ptr_eq(&again, &before), "the same live session");
}

/// A pause of the process past its TTL (SIGSTOP: time jumps while nothing here runs): a
/// request read after the pause is judged after it, and refused; the lease is lost meanwhile,
/// taken again, and the session (nobody took it over) claimed back under the new token with
/// its conversations.
#[tokio::test(start_paused = true)]
async fn a_request_read_after_a_pause_is_judged_after_it() {
    let store = kit::store();
    let a = Replica::start(&store, "node-a", None, 10).await;
    let id = a.create(None).await;
    let before = live(&a.sessions, &id);
    let old_token = a.ownership.token();

    tokio::time::advance(kit::OWNER_TTL * 2).await;
    assert!(
        before.fence().is_err(),
        "the check before the upstream refuses"
    );
    assert!(
        here(&place(&a, &id).await).is_none(),
        "no request runs right after the pause"
    );

    kit::eventually("A holds a new lease", || {
        a.ownership.provable() && a.ownership.token() > old_token
    })
    .await;
    let again = here(&place(&a, &id).await).expect("served again");
    assert!(Arc::ptr_eq(&again, &before), "the same live session");
    let r = a.record(&id).await.unwrap();
    assert_eq!(
        (r.owner.as_str(), r.owner_token),
        ("node-a", a.ownership.token())
    );
    assert_eq!(
        before.fence().unwrap(),
        2,
        "the claim back is a claim: the session's token to upstreams grew"
    );
}

/// The fencing token upstreams are given grows with every change of owner, whichever
/// replica's lease token is larger: each replica's ownership lease counts its tokens on its
/// own (here both leases hold token 1), so the owner's lease token cannot tell an upstream
/// which of two owners is the later one; the session's epoch, bumped by each claim's
/// compare-and-swap, can. (With the lease token, B's requests carried 1 like A's.)
#[tokio::test(start_paused = true)]
async fn the_token_upstreams_see_grows_with_each_change_of_owner() {
    let store = kit::store();
    let a = Replica::start(&store, "node-a", None, 10).await;
    let b = Replica::start(&store, "node-b", None, 10).await;
    assert_eq!(
        a.ownership.token(),
        b.ownership.token(),
        "leases count apart"
    );
    let id = a.create(None).await;
    let at_a = live(&a.sessions, &id).fence().unwrap();

    a.ownership.release().await;
    let at_b = here(&place(&b, &id).await)
        .expect("taken over by B")
        .fence()
        .unwrap();
    assert!(at_b > at_a, "B's token {at_b} is above A's {at_a}");
    let r = b.record(&id).await.unwrap();
    assert_eq!((r.owner.as_str(), r.epoch), ("node-b", at_b));
}

/// The backend drops A's ownership lease (a stall nobody used): A keeps its session, and once
/// it holds a new lease, claims it back by compare-and-set on the record that still names its
/// old token; a write under the old token is fenced off afterwards.
#[tokio::test(start_paused = true)]
async fn a_lost_lease_keeps_sessions_and_claims_them_back() {
    let store = kit::store();
    let a = Replica::start(&store, "node-a", None, 10).await;
    let id = a.create(None).await;
    let before = live(&a.sessions, &id);
    let old_token = a.ownership.token();
    let mut retaken = a.ownership.retaken();

    let raw = store.handle("raw");
    assert!(
        raw.delete(&lease_key("mcpg/owners/node-a"), None)
            .await
            .unwrap()
    );
    tokio::time::timeout(kit::OWNER_TTL * 3, retaken.changed())
        .await
        .expect("the lease is taken again")
        .unwrap();
    kit::eventually("the session is claimed back", || {
        before.record.lock().unwrap().owner_token == a.ownership.token()
    })
    .await;
    assert!(a.ownership.token() > old_token);
    assert!(!before.is_closed(), "its conversations are kept");
    let r = a.record(&id).await.unwrap();
    assert_eq!(
        (r.owner.as_str(), r.owner_token),
        ("node-a", a.ownership.token())
    );
    let mut stale = before.current_record();
    stale.owner_token = old_token;
    assert!(
        !a.sessions
            .fenced(&stale, |_| async { Ok(true) })
            .await
            .unwrap(),
        "a write under the old token is refused"
    );
}

/// While A's lease was lost, B took the session over (its record names B): A, holding a new
/// lease, finds that and drops its copy (the conversation goes; B serves the session).
#[tokio::test(start_paused = true)]
async fn a_session_taken_over_during_the_loss_is_dropped() {
    let store = kit::store();
    let a = Replica::start(&store, "node-a", None, 10).await;
    let id = a.create(None).await;
    let before = live(&a.sessions, &id);
    let mut retaken = a.ownership.retaken();

    let mut taken = a.record(&id).await.unwrap();
    taken.owner = "node-b".into();
    taken.owner_token = 999;
    a.put_record(&taken).await;
    let raw = store.handle("raw");
    raw.delete(&lease_key("mcpg/owners/node-a"), None)
        .await
        .unwrap();
    tokio::time::timeout(kit::OWNER_TTL * 3, retaken.changed())
        .await
        .expect("the lease is taken again")
        .unwrap();
    kit::eventually("A dropped its copy", || a.sessions.live_count() == 0).await;
    assert!(before.is_closed());
    assert_eq!(a.record(&id).await.unwrap().owner, "node-b");
}

/// The backend lost the session's record (a restart without persistence): the owner ends the
/// session at its next refresh (closing its upstream sessions rather than leaving them to a
/// replica that will never come), and the client's next request finds no session (404), so
/// it can initialise again.
#[tokio::test(start_paused = true)]
async fn a_lost_record_ends_the_session_and_answers_not_found() {
    let store = kit::store();
    let a = Replica::with_idle_ttl(&store, "node-a", None, 10, Duration::from_secs(60)).await;
    let id = a.create(None).await;
    let before = live(&a.sessions, &id);
    assert!(
        a.caps
            .sessions
            .store
            .delete(&record_key(&id), None)
            .await
            .unwrap()
    );
    // The next request past a refresh interval notices.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let _ = place(&a, &id).await;
    kit::eventually("the session ended here", || before.is_closed()).await;
    let next = place(&a, &id).await;
    assert!(
        matches!(next, Err(SessionError::NotFound)),
        "the client is told the session is gone"
    );
}
